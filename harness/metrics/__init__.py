"""Metrics; importing this package registers every metric in :data:`harness.specs.METRICS`."""
from __future__ import annotations

from harness.metrics import box_iou, deletion, localization, selection, uniformity  # noqa: F401
