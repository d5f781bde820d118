"""Faithfulness: does perturbing what a method calls important change the model's output as it should?

Deletion / insertion in most-relevant-first (MoRF) and least-relevant-first (LeRF) order
(Petsiuk et al. 2018; Gevaert et al. 2024). One case per (dataset, model, method, metric) of the suite.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "faithfulness"


def test_faithfulness(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
