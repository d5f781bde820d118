"""Benchmark-wide settings, applied once per process so a metric and its floor run under the same ones.

- torch uses 2 threads (the reference machine has 2 cores).
- glibc's allocator keeps large buffers: ``mallopt(M_MMAP_MAX, 0)`` serves every allocation from the heap
  instead of fresh ``mmap`` pages, and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` stops it returning freed memory
  to the OS. Otherwise activation buffers are unmapped and faulted in again on every forward pass, which
  moves batched CPU timings by up to 40% (see shared/reference/peers.md, "Measuring a metric against its
  floor on a CPU"). ``M_MMAP_THRESHOLD`` alone cannot do this: glibc caps it at 32 MiB, below one ResNet-18
  activation at batch 256.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import pytest
import torch

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


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(2)
    config.stash[ALLOCATOR_KEY] = pin_allocator()


ALLOCATOR_KEY = pytest.StashKey[dict[str, int]]()


@pytest.fixture
def allocator(pytestconfig: pytest.Config) -> dict[str, int]:
    """The allocator settings in force (recorded with every benchmark)."""
    return pytestconfig.stash[ALLOCATOR_KEY]
