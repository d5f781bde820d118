"""The xaiharness pytest plugin: options, suite loading, resume, and the controller that writes results.

Workers run cases and attach one plain-data payload per case to the test report (``user_properties``);
only the controller (the main process, with or without xdist) writes ``results.h5``, case by case as
reports arrive, and renders ``report.md`` at the end of the session.
"""
from __future__ import annotations

import os
from typing import Any

import pytest
from tabulate import tabulate

from harness.plugin.options import add_options
from harness.plugin.state import STATE, RunState, create_state, environment, suite_names
from harness.recorder import PROPERTY
from harness.specs import FAMILIES

STATIC_MARKERS = {
    "slow": "long-running cases (full-size suites)",
    "gpu": "cases that need a CUDA device",
    "reproduce": "reproductions of a seed system's reference results",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for family in FAMILIES:
        config.addinivalue_line("markers", f"{family}: cases of the {family} metric family")
    for name, text in STATIC_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    for name in suite_names(config):
        config.addinivalue_line("markers", f"{name}: cases of the suite suites/{name}.toml")
    if config.option.help:
        return
    if hasattr(config, "workerinput"):
        _share_cores()
    state = config.stash[STATE] = create_state(config)
    if state.suite.name not in suite_names(config):  # a suite given by path, outside the suites folder
        config.addinivalue_line("markers", f"{state.suite.name}: cases of the suite {state.suite.path}")
    for marker in state.suite.settings["markers"]:
        config.addinivalue_line("markers", f"{marker}: set by suite {state.suite.name}")
    if state.is_controller:
        config.pluginmanager.register(Controller(state), "xaiharness-controller")


def _share_cores() -> None:
    """Each xdist worker gets its share of the cores, so workers never oversubscribe the CPU."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // max(1, workers)))


def state_of(config: pytest.Config) -> RunState:
    """The session's :class:`RunState` (the suite, the run folder)."""
    return config.stash[STATE]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(STATE, None)
    if state is None or not state.recorded:
        return
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if case is not None and state.recorded.get(case.id) == case.key():
            item.add_marker(pytest.mark.skip(reason=f"recorded in run {state.run}"))


def _payload(report: pytest.TestReport) -> dict[str, Any] | None:
    for name, value in report.user_properties:
        if name == PROPERTY:
            return value
    return None


def _message(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    text = str(report.longrepr or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("E ")]
    return " ".join(ln[1:].strip() for ln in lines)[:2000] or text[-2000:]


class Controller:
    """Registered on the controller only: writes each case as its report arrives, then the report."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = _payload(report) if report.when == "call" else None
        if payload is None:
            return
        from harness.store import write_case, write_environment

        state = self.state
        if not state.started:
            state.run_dir.mkdir(parents=True, exist_ok=True)
            write_environment(state.results_path, environment(state))
            state.started = True
        write_case(state.results_path, payload, status=report.outcome, message=_message(report))
        state.written.append(payload["id"])

    def pytest_sessionfinish(self) -> None:
        if self.state.written:
            from harness.report import write_report

            write_report(self.state.run_dir)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = self.state
        if not state.written:
            return
        from harness.report.markdown import summary_rows
        from harness.store import read_run

        _, records = read_run(state.results_path)
        written = set(state.written)
        rows = summary_rows([r for r in records if r.attrs["id"] in written])
        terminalreporter.section("xaiharness results")
        shown = rows[:40]
        terminalreporter.write_line(tabulate(shown, headers=["case", "primary", "mean"], tablefmt="simple"))
        if len(rows) > len(shown):
            terminalreporter.write_line(f"... and {len(rows) - len(shown)} more")
        terminalreporter.write_line(f"results: {state.results_path}")
        terminalreporter.write_line(f"report:  {state.run_dir / 'report.md'}")
