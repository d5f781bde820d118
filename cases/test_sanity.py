"""Sanity checks: does the attribution depend on the model's parameters and on the class it explains?

Parameter randomisation (Adebayo et al. 2018; attribench; Quantus MPRT) re-attributes with layer-wise
re-initialised copies of the model through ``explainer``; random logit (Sixt et al. 2020; Quantus RandomLogit)
re-attributes a random other class through ``explain``. Lower similarity is better for both.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "sanity"


def test_sanity(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
