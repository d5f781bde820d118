"""Command-line and ini options of the xaiharness plugin, each parsed at parse time."""
from __future__ import annotations

import argparse
import re

import pytest

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
RUN_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_device(value: str) -> str:
    if not DEVICE_PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"invalid device {value!r}; choose auto, cpu, cuda or cuda:N")
    return value


def parse_run_name(value: str) -> str:
    if not RUN_PATTERN.match(value) or value in {".", ".."}:
        raise argparse.ArgumentTypeError(
            f"invalid run name {value!r}; use letters, digits, '.', '_' and '-' (it names a folder in reports/)"
        )
    return value


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("xaiharness", "xaiharness benchmark")
    group.addoption(
        "--suite", default=None, metavar="NAME|PATH",
        help="suite to run: a name in suites/ or a path to a .toml file (default: the suite named in -m, "
        "otherwise the ini value xai_suite, 'default')",
    )
    group.addoption(
        "--device", default="auto", type=parse_device, metavar="auto|cpu|cuda|cuda:N",
        help="where models run; auto gives xdist worker i the GPU i mod n when there are GPUs (default: auto)",
    )
    group.addoption(
        "--cache-dir", default=None, metavar="DIR",
        help="cache of data sets, trained models and attributions (default: ini xai_cache_dir, "
        "else $XDG_CACHE_HOME/xaiharness or ~/.cache/xaiharness)",
    )
    group.addoption(
        "--run", default=None, type=parse_run_name, metavar="NAME",
        help="name of the run folder under the reports directory (default: <date>-<time>-<suite>)",
    )
    group.addoption(
        "--resume", default=None, type=parse_run_name, metavar="RUN",
        help="continue run RUN: skip the cases it recorded as passed with the same spec, append the rest",
    )
    group.addoption(
        "--reports-dir", default=None, metavar="DIR",
        help="where run folders are written (default: ini xai_reports_dir, 'reports')",
    )
    parser.addini("xai_suite", "suite run when --suite is not given", default="default")
    parser.addini("xai_suites_dir", "folder of suite files, relative to the rootdir", default="suites")
    parser.addini("xai_cache_dir", "cache folder (default: the user cache)", default="")
    parser.addini("xai_reports_dir", "folder of run folders, relative to the rootdir", default="reports")
