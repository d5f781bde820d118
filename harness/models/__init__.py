"""Models: importing this package registers every built-in :class:`~harness.specs.ModelSpec`."""
from __future__ import annotations

from harness.models import backbones, chaos_mlp, cnn, mlp

__all__ = ["backbones", "chaos_mlp", "cnn", "mlp"]
