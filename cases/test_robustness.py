"""Robustness: do attributions stay put when the input moves a little?

Max- and Avg-Sensitivity (Yeh et al. 2019; attribench; captum ``sensitivity_max``; Quantus MaxSensitivity /
AvgSensitivity): the case's method re-attributes perturbed inputs through ``explain``.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "robustness"


def test_robustness(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
