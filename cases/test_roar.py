"""Remove and retrain, and removal without retraining: does removing what a method ranks first remove the
information the model uses?

ROAR / KAR (Hooker et al. 2019) retrain a fresh model on data with the top-ranked (ROAR) or all but the
top-ranked (KAR) inputs replaced by the data-set mean, through ``fit``; LeRF / MoRF (Samek et al. 2017) and
ROAD (Rong et al. 2022) remove inputs from the test images only. One case per (data set, model, method,
protocol); a Random and a Sobel ranking are methods of the grid like any other.
"""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "roar"


def test_roar(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
