"""Expands the session's suite into cases: one per compatible (dataset, model, method, metric)."""
from __future__ import annotations

import pytest

from harness.cases import Case, expand
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A family the suite has no case for is deselected, not reported as an empty skipped test."""
    empty = [item for item in items if "case" in getattr(item, "fixturenames", ())
             and not isinstance(getattr(item, "callspec", None) and item.callspec.params.get("case"), Case)]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [item for item in items if item not in empty]
