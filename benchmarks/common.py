"""Shared pieces of the CPU speed benchmarks: workloads, floors, recorded rows, timing rounds, table rows.

A benchmark times a metric call against its *floor*: the same number of rows, batched ``CHUNK`` at a time,
through the same model (or explainer) under ``torch.inference_mode()``. Rounds alternate floor (in
pytest-benchmark's untimed ``setup``, timed here) and metric; after warm-up rounds, medians and the median of
per-round ratios are recorded (see shared/reference/peers.md, "Measuring a metric against its floor on a
CPU"). Allocator and thread settings: ``conftest.py``.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK = 256
"""Rows per batched forward of a floor (the harness's default batch budget, ``RunContext.batch_size``)."""


@dataclass(frozen=True)
class Workload:
    """A model on a batch of real images, and how many timed / warm-up rounds a case on it gets."""

    name: str
    rows_per_sample: int
    """Perturbed rows per sample for every metric on it: the Quantus step counts its image size allows
    (``features_in_step`` must divide H * W): 784 / 8 = 98, 3 * 4096 / 128 = 96."""
    rounds: int
    warmup: int
    """Warm-up rounds on top of the first, untimed call every case makes to record its rows."""


WORKLOADS = {
    "cnn_16x1x28x28": Workload("cnn_16x1x28x28", rows_per_sample=98, rounds=8, warmup=2),
    "resnet18_8x3x64x64": Workload("resnet18_8x3x64x64", rows_per_sample=96, rounds=3, warmup=0),
}


def digits(n: int) -> Tensor:
    """sklearn's 8x8 digits, bilinearly upscaled to (n, 1, 28, 28) and standardised."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    return (images - images.mean()) / images.std()


def photos(n: int) -> Tensor:
    """Centre crops of scikit-image's bundled photos, resized to (n, 3, 64, 64), ImageNet-normalised."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
             "retina", "colorwheel"]
    out = []
    for name in names[:n]:
        image = torch.tensor(getattr(data, name)()[..., :3], dtype=torch.float32).permute(2, 0, 1) / 255.0
        side = min(image.shape[1:])
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        crop = image[None, :, top: top + side, left: left + side]
        out.append(F.interpolate(crop, size=(64, 64), mode="bilinear", antialias=True, align_corners=False))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (torch.cat(out) - mean[:, None, None]) / std[:, None, None]


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
    )


def model_and_inputs(name: str) -> tuple[nn.Module, Tensor]:
    """Random-init models (seed 0) in eval mode, on real images."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    if name == "cnn_16x1x28x28":
        return small_cnn().eval(), digits(16)
    return resnet18(num_classes=10).eval(), photos(8)


def input_x_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """A realistic attribution to rank pixels by: input x gradient of the target logit."""
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target[:, None]).sum().backward()
    return (x * x.grad).detach()


def repeated_rows(x: Tensor, rows: int) -> Tensor:
    """``rows`` rows of ``x``'s samples, sample-major (each sample repeated, as a metric's rows come)."""
    return x.repeat_interleave(max(1, math.ceil(rows / max(1, x.shape[0]))), dim=0)[:rows].contiguous()


def forward_runner(model: nn.Module, rows: Tensor, chunk: int = CHUNK) -> Callable[[], None]:
    """All ``rows`` through the model, ``chunk`` at a time, under inference mode."""

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, rows.shape[0], chunk):
                model(rows[start: start + chunk])

    return run


def captured_rows(model: nn.Module, call: Callable[[], object]) -> Tensor:
    """Every row that went through ``model`` during ``call()``, in order (a forward pre-hook copies them)."""
    seen: list[Tensor] = []
    handle = model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        call()
    finally:
        handle.remove()
    return torch.cat(seen)


@dataclass
class Rounds:
    """Floors timed in ``setup`` before every round of the timed call, so the two alternate."""

    floors: dict[str, Callable[[], None]]
    times: dict[str, list[float]] = field(default_factory=dict)

    def run_floors(self) -> None:
        for name, floor in self.floors.items():
            start = time.perf_counter()
            floor()
            self.times.setdefault(name, []).append(time.perf_counter() - start)


@dataclass(frozen=True)
class SpeedRow:
    """One line of the summary table (plain data)."""

    metric: str
    tool: str
    workload: str
    setting: str
    seconds: float
    floor_seconds: float
    passes: int
    """Rows the tool sent through the model (recorded by a forward hook), or through the explainer."""
    ratio: float
    """Median over rounds of metric time / floor time in the same round (the headline ratio)."""
    ratio_own_rows: float
    """The same against the floor over the tool's own perturbed rows (its overhead without the data's)."""
    note: str = ""


def ratios(metric_times: list[float], floor_times: list[float]) -> dict[str, float]:
    """Medians, the ratio of medians, of minima, and the median of per-round ratios (``paired``)."""
    metric, floor = statistics.median(metric_times), statistics.median(floor_times)
    return {
        "metric_s": metric, "floor_s": floor, "ratio": metric / floor,
        "ratio_min": min(metric_times) / min(floor_times),
        "ratio_paired": statistics.median(m / f for m, f in zip(metric_times, floor_times, strict=True)),
    }


def benchmark_times(benchmark: Any) -> list[float] | None:
    """The timed rounds (warm-up excluded); ``None`` when nothing was timed (xdist, --benchmark-disable)."""
    return None if benchmark.disabled else list(benchmark.stats.stats.data)
