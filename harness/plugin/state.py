"""State of one pytest session of the harness, kept in ``config.stash``."""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.suite import Suite, SuiteError, find_suite, load_suite


@dataclass
class RunState:
    config: pytest.Config
    suite: Suite
    reports_dir: Path
    run: str
    resume: bool
    recorded: dict[str, str] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    started: bool = False

    @property
    def run_dir(self) -> Path:
        return self.reports_dir / self.run

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.h5"

    @property
    def is_controller(self) -> bool:
        return not hasattr(self.config, "workerinput")


STATE = pytest.StashKey[RunState]()


def _rooted(config: pytest.Config, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(config.rootpath) / path


def suites_dir(config: pytest.Config) -> Path:
    return _rooted(config, config.getini("xai_suites_dir"))


def suite_names(config: pytest.Config) -> list[str]:
    return sorted(p.stem for p in suites_dir(config).glob("*.toml"))


def suites_named_in(markexpr: str, names: list[str]) -> list[str]:
    """Suite names that ``-m`` selects by name: words of the expression, except those after ``not``."""
    selected = re.sub(r"\bnot\s+[A-Za-z_][A-Za-z0-9_]*", " ", markexpr)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", selected))
    return [name for name in names if name in words]


def choose_suite(config: pytest.Config) -> str:
    """``--suite``; else the one suite named as a word in ``-m``; else the ini default."""
    if config.getoption("suite"):
        return str(config.getoption("suite"))
    named = suites_named_in(config.getoption("markexpr") or "", suite_names(config))
    if len(named) > 1:
        raise pytest.UsageError(f"-m names several suites ({', '.join(named)}); choose one with --suite")
    return named[0] if named else str(config.getini("xai_suite"))


def create_state(config: pytest.Config) -> RunState:
    try:
        suite = load_suite(find_suite(choose_suite(config), suites_dir(config)))
    except SuiteError as exc:
        raise pytest.UsageError(f"bad suite: {exc}") from None
    resume = config.getoption("resume")
    run = resume or config.getoption("run") or f"{time.strftime('%Y%m%d-%H%M%S')}-{suite.name}"
    reports_dir = _rooted(config, config.getoption("reports_dir") or config.getini("xai_reports_dir"))
    state = RunState(config=config, suite=suite, reports_dir=reports_dir, run=run, resume=bool(resume))
    if resume:
        from harness.store import recorded_keys

        if not state.results_path.exists():
            raise pytest.UsageError(f"--resume {resume}: no results at {state.results_path}")
        state.recorded = recorded_keys(state.results_path)
    return state


def environment(state: RunState) -> dict[str, Any]:
    import captum
    import numpy
    import torch

    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "run": state.run,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suite": state.suite.name,
        "suite_path": str(state.suite.path),
        "suite_toml": state.suite.text,
        "settings": json.dumps(dict(state.suite.settings), sort_keys=True),
        "seed": state.suite.seed,
        "order": json.dumps({section: [e.key for e in getattr(state.suite, section)]
                             for section in ("datasets", "models", "methods", "metrics")}),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "captum": captum.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": ", ".join(cuda) or "none",
        "workers": str(getattr(state.config.option, "numprocesses", None) or 0),
        "cores": len(os.sched_getaffinity(0)),
    }
