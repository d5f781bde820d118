"""Feature selection: does recursive elimination by attribution keep the features known to matter?

RFEwNA (ChaosMining, arXiv 2406.12150): refit the model on the kept features, rank them by mean |attribution|,
drop the lowest share, until the number of relevant features is left; scikit-learn RFE with linear, tree and
SVM estimators as baselines (cases with the method ``none``). Select with ``pytest cases -k rfe``.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "selection"


def test_selection(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
