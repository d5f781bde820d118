"""Coverage criteria for testing networks (DeepImportance's IDC and the baselines it compares with);
importing this package registers every criterion in :data:`harness.coverage.base.CRITERIA`."""
from __future__ import annotations

from harness.coverage import base, idc, neuron, pattern, relevance, surprise

__all__ = ["base", "idc", "neuron", "pattern", "relevance", "surprise"]
