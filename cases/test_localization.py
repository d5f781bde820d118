"""Localisation: does the attribution point at the inputs known to carry the signal?

Ground-truth metrics on data sets that know where the signal is (ChaosMining-style pasted objects: Arras et
al. 2022; Zhang et al. 2018; ChaosMining, arXiv 2406.12150). Only data sets with a mask get these cases.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "localization"


def test_localization(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
