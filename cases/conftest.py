"""Expands the session's suite into cases: one per compatible (dataset, model, method, metric)."""
from __future__ import annotations

import pytest

from harness.cases import expand
from harness.plugin import state_of


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    family = getattr(metafunc.module, "FAMILY", None)
    if family is None:
        raise pytest.UsageError(f"{metafunc.module.__name__} takes `case` but sets no FAMILY")
    cases = expand(state_of(metafunc.config).suite, family)
    params = [
        pytest.param(case, id=case.id, marks=[getattr(pytest.mark, m) for m in case.markers()])
        for case in cases
    ]
    metafunc.parametrize("case", params)
