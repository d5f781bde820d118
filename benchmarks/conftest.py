"""Benchmark-wide settings, applied once per process so a metric and its floor run under the same ones, and
the summary table printed at the end of a run.

- torch uses ``--bench-threads`` threads (default 2: the reference machine has 2 cores; on a machine shared
  with other work, 1 thread keeps the ratios meaningful, since a 2-thread op waits for a descheduled thread).
- glibc's allocator keeps large buffers: ``mallopt(M_MMAP_MAX, 0)`` serves every allocation from the heap
  instead of fresh ``mmap`` pages, and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` stops it returning freed memory
  to the OS. Otherwise activation buffers are unmapped and faulted in again on every forward pass, which
  moves batched CPU timings by up to 40% (see shared/reference/peers.md, "Measuring a metric against its
  floor on a CPU"). ``M_MMAP_THRESHOLD`` alone cannot do this: glibc caps it at 32 MiB, below one ResNet-18
  activation at batch 256.

Every speed test appends a :class:`SpeedRow` to the ``speed_table`` fixture; the table (metric, tool,
workload, seconds, forward passes, ratio to the floor) is printed after the run and, with
``--speed-table PATH``, written there as markdown.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

import pytest
import torch
from tabulate import tabulate

from benchmarks.common import SpeedRow

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
ALLOCATOR = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**30}


def pin_allocator() -> dict[str, int]:
    """Apply :data:`ALLOCATOR` with ``mallopt``; return what was set (empty where there is no glibc)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return {}
    ok = libc.mallopt(M_MMAP_MAX, ALLOCATOR["M_MMAP_MAX"]) and libc.mallopt(
        M_TRIM_THRESHOLD, ALLOCATOR["M_TRIM_THRESHOLD"]
    )
    return dict(ALLOCATOR) if ok else {}


ALLOCATOR_KEY = pytest.StashKey[dict[str, int]]()
TABLE_KEY = pytest.StashKey[list[SpeedRow]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xaiharness-benchmarks", "xaiharness speed benchmarks")
    group.addoption("--bench-threads", type=int, default=2,
                    help="torch CPU threads for metrics and floors alike (default: 2)")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds per peer case, with no warm-up round; for a quick check "
                         "(default: per workload, benchmarks/common.py WORKLOADS)")
    group.addoption("--speed-table", type=Path, default=None,
                    help="also write the summary table as markdown to this path (default: print only)")


def quantus_softmax_notice(record: logging.LogRecord) -> bool:
    """False for Quantus 0.6's root-logger notice, logged on every prediction of a model without a softmax
    layer ("... torch.nn.Softmax module is added as the output layer"), which floods the live log."""
    return "Softmax module is added" not in record.getMessage()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addFilter(quantus_softmax_notice)
    torch.set_num_threads(config.getoption("--bench-threads"))
    config.stash[ALLOCATOR_KEY] = pin_allocator()
    config.stash[TABLE_KEY] = []


@pytest.fixture
def allocator(pytestconfig: pytest.Config) -> dict[str, int]:
    """The allocator settings in force (recorded with every benchmark)."""
    return pytestconfig.stash[ALLOCATOR_KEY]


@pytest.fixture
def bench_rounds(pytestconfig: pytest.Config) -> int | None:
    """``--bench-rounds``: timed rounds that replace the workload's rounds and warm-up, or ``None``."""
    return pytestconfig.getoption("--bench-rounds")


@pytest.fixture
def speed_table(pytestconfig: pytest.Config) -> list[SpeedRow]:
    """The run's summary table; tests append their rows."""
    return pytestconfig.stash[TABLE_KEY]


def table_markdown(rows: list[SpeedRow], threads: int, allocator: dict[str, int]) -> str:
    body = tabulate(
        [(r.metric, r.tool, r.workload, r.setting, f"{r.seconds:.3f}", f"{r.floor_seconds:.3f}", r.passes,
          f"{r.ratio:.2f}", f"{r.ratio_own_rows:.2f}", r.note) for r in rows],
        headers=("metric", "tool", "workload", "setting", "seconds", "floor s", "forward passes",
                 "ratio to floor", "ratio to own rows", "note"),
        tablefmt="github",
    )
    return (
        f"{body}\n\nseconds, floor s: medians over rounds. ratio to floor: median over rounds of metric "
        "time / floor time in the same round, the floor sending as many rows of the plain inputs through "
        "the model (or explainer), 256 at a time, under inference_mode. ratio to own rows: the same with "
        "the floor over the rows the tool itself sent (its overhead alone: masked rows run slower than "
        f"plain ones through max pooling). {threads} torch threads; allocator "
        f"{allocator or 'default (no glibc mallopt)'}.\n"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(TABLE_KEY, [])
    if not rows:
        return
    text = table_markdown(rows, torch.get_num_threads(), config.stash.get(ALLOCATOR_KEY, {}))
    terminalreporter.section("speed against the forward-pass floor")
    terminalreporter.write(text)
    path = config.getoption("--speed-table")
    if path is not None:
        path.write_text(text)
