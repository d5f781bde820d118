"""The loss-gradient occlusion study (Subramanian et al., arXiv 2207.07769): occluding inputs ranked by the
gradient of the loss with the true label, and how accuracy (or AUROC) moves against the un-occluded input,
averaged over independently trained models.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "loss_gradient"


def test_loss_gradient(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
