from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest
import torch

from harness.cache import Cache, load_tensors, save_tensors, spec_key


def test_spec_key_is_order_independent_and_sensitive() -> None:
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})
    assert spec_key({"a": 1}) != spec_key({"a": 1.5})


def test_entry_built_once_and_reused(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls: list[int] = []

    def build(path: Path) -> None:
        calls.append(1)
        save_tensors(path / "t.pt", {"x": torch.arange(3)})

    first = cache.get_or_build("things", {"n": 3}, build)
    second = cache.get_or_build("things", {"n": 3}, build)
    assert first == second and len(calls) == 1
    assert torch.equal(load_tensors(first / "t.pt")["x"], torch.arange(3))
    cache.get_or_build("things", {"n": 4}, build)
    assert len(calls) == 2


def test_failed_build_leaves_nothing_and_retries(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def broken(path: Path) -> None:
        (path / "partial").write_text("x")
        raise RuntimeError("boom")

    try:
        cache.get_or_build("things", {"n": 1}, broken)
    except RuntimeError:
        pass
    assert not cache.entry("things", {"n": 1}).exists()
    assert [p.name for p in (tmp_path / "things").iterdir() if not p.name.endswith(".lock")] == []
    ok = cache.get_or_build("things", {"n": 1}, lambda p: (p / "done").write_text("y"))
    assert (ok / "done").read_text() == "y"


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls: list[int] = []
    barrier = threading.Barrier(4)

    def build(path: Path) -> None:
        calls.append(1)
        (path / "v").write_text("1")

    def worker() -> None:
        barrier.wait()
        cache.get_or_build("things", {"shared": True}, build)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_cache_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": object()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):  # arbitrary objects are refused
        load_tensors(path)
