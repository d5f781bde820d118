"""Metrics; importing this package registers every metric in :data:`harness.specs.METRICS`."""
from __future__ import annotations

from harness.metrics import (  # noqa: F401
    box_iou,
    coverage,
    coverage_rq,
    deletion,
    faithfulness_correlation,
    impact_coverage,
    infidelity,
    irof,
    localization,
    minimal_subset,
    occlusion,
    pixel_perturbation,
    randomisation,
    road,
    roar,
    selection,
    sensitivity,
    sensitivity_n,
    uniformity,
)
