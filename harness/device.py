"""Choosing the device for a process: one GPU per xdist worker when there are GPUs."""
from __future__ import annotations

import os

import torch


def worker_index() -> int:
    """0 for the main process, i for xdist worker ``gw<i>``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = worker.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def resolve_device(choice: str) -> torch.device:
    """``auto`` → worker i gets ``cuda:(i mod n)`` if CUDA is available (n counts the devices that
    CUDA_VISIBLE_DEVICES leaves visible), else the CPU; ``cuda`` → the same but required; ``cuda:N`` → that
    device; ``cpu`` → the CPU."""
    if choice == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise ValueError(f"--device {choice}: CUDA is not available here; use --device cpu or auto")
    count = torch.cuda.device_count()
    if choice in ("auto", "cuda"):
        return torch.device("cuda", worker_index() % count)
    index = int(choice.split(":", 1)[1])
    if index >= count:
        raise ValueError(f"--device {choice}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)
