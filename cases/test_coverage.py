"""Coverage of test sets (DeepImportance's IDC and the baseline criteria) and the seed's research questions:
RQ1 pruning the attributor's neurons, RQ2 noise on important pixels, RQ3 adversarial share, RQ4 evenness,
RQ5 cost (the ``coverage`` metric's timings)."""
from __future__ import annotations

from collections.abc import Callable

from fixtures.evaluation import check
from harness.cases import Case
from harness.specs import MetricResult

FAMILY = "coverage"


def test_coverage(case: Case, evaluate: Callable[[], MetricResult]) -> None:
    check(evaluate())
