"""Shared fixtures of the harness's own tests."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.workspace import single_threaded

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def project(pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A copy of the project's cases/ and wiring with a tiny suite; the harness comes from this checkout."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{pytester.path}")
    monkeypatch.syspath_prepend(str(pytester.path))
    shutil.copytree(ROOT / "cases", pytester.path / "cases")
    shutil.copy(ROOT / "conftest.py", pytester.path / "conftest.py")
    pytester.makeini(f"[pytest]\naddopts = -p no:cacheprovider --cache-dir {shared_cache}\nxai_suite = tiny\n")
    (pytester.path / "suites").mkdir()
    return pytester


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest, and time most steadily on a shared machine, on one thread."""
    with single_threaded(torch.device("cpu")):
        yield


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same global random state, so a failure reproduces on a rerun."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
