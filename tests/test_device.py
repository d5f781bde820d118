"""Device choice: one GPU per xdist worker, respecting what CUDA_VISIBLE_DEVICES leaves visible."""
from __future__ import annotations

import pytest
import torch

from harness.device import resolve_device, worker_index


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(("worker", "count", "expected"), [
    (None, 2, "cuda:0"), ("gw0", 2, "cuda:0"), ("gw1", 2, "cuda:1"), ("gw2", 2, "cuda:0"), ("gw5", 4, "cuda:1"),
    ("gw3", 1, "cuda:0"),
])
def test_auto_gives_worker_i_gpu_i_mod_n(
    monkeypatch: pytest.MonkeyPatch, worker: str | None, count: int, expected: str
) -> None:
    fake_gpus(monkeypatch, count)
    if worker is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cuda") == torch.device(expected)


def test_auto_without_gpu_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_explicit_gpu_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"--device cuda:2: only 2 CUDA device\(s\) visible \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu or auto"):
        resolve_device("cuda")


def test_worker_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw12")
    assert worker_index() == 12
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert worker_index() == 0
