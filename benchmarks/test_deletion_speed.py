"""Deletion (100 steps, attribench's max_fraction = 0.15) against its forward-pass floor, on the CPU.

``floor``: the same number of rows (samples x steps) of the same smooth images (each sample repeated
``steps`` times, as the metric's rows come) through the same model in the same batch size under
``torch.inference_mode()``. The project's goal is metric / floor <= 1.2.

``floor_perturbed``: the same forward passes over the metric's own perturbed rows (captured once by a
forward hook). A CPU forward pass depends on the data: max pooling branches, and a run of identical rows
trains the branch predictor, so masked rows cost more than the clean ones. metric / floor_perturbed is the
implementation's own overhead (masks, sorting, bookkeeping); floor_perturbed / floor is the data's share.

Each round runs both floors (in pytest-benchmark's untimed ``setup``, timed here) and then the metric, so
they alternate; medians, ratios of medians and of minima, and medians of per-round ratios go to
``extra_info``. Allocator settings: see ``conftest.py``. Run with
``python -m pytest benchmarks -p no:xdist --benchmark-only -s``.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.specs import METRICS, MetricInputs, MetricResult, RunContext

STEPS = 100
PARAMS = {"steps": STEPS, "max_fraction": 0.15, "order": "morf", "masker": "constant"}
SETTINGS = {"cnn_16x1x28x28": (30, 5), "resnet18_8x3x64x64": (5, 1)}  # (rounds, warmup rounds)


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


def forward_runner(model: nn.Module, rows: Tensor, chunk: int) -> Callable[[], None]:
    """All ``rows`` through the model, ``chunk`` at a time, under inference mode."""

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, rows.shape[0], chunk):
                model(rows[start: start + chunk])

    return run


def captured_rows(model: nn.Module, call: Callable[[], object]) -> Tensor:
    """Every row that went through ``model`` during ``call()``, in order (a forward pre-hook copies them)."""
    seen: list[Tensor] = []
    handle = model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    try:
        call()
    finally:
        handle.remove()
    return torch.cat(seen)


@dataclass(frozen=True)
class Case:
    """A metric call and its floors on one setting; each sends ``rows`` rows through the model."""

    metric: Callable[[], MetricResult]
    floors: dict[str, Callable[[], None]]
    rows: int
    chunk: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def run_floors(self) -> None:
        for name, floor in self.floors.items():
            start = time.perf_counter()
            floor()
            self.times.setdefault(name, []).append(time.perf_counter() - start)


def make_case(setting_name: str) -> Case:
    model, x = model_and_inputs(setting_name)
    ctx = RunContext(device=x.device, seed=0, batch_size=256)
    with torch.no_grad():
        target = model(x).argmax(1)
    inputs = MetricInputs(model, x, target, input_x_gradient(model, x, target))
    compute = METRICS.get("deletion").compute

    def metric() -> MetricResult:
        return compute(inputs, ctx, **PARAMS)

    chunk, perturbed = ctx.rows_per_chunk(x[0].numel(), x.element_size()), captured_rows(model, metric)
    plain = x.repeat_interleave(STEPS, dim=0).contiguous()
    assert perturbed.shape == plain.shape and torch.equal(perturbed[::STEPS], x)  # k = 0 rows are x itself
    floors = {name: forward_runner(model, rows, chunk) for name, rows in
              (("floor", plain), ("floor_perturbed", perturbed))}
    return Case(metric, floors, plain.shape[0], chunk)


@pytest.mark.parametrize("setting_name", list(SETTINGS))
def test_deletion_vs_floor(benchmark: Any, setting_name: str, allocator: dict[str, int]) -> None:
    case, (rounds, warmup) = make_case(setting_name), SETTINGS[setting_name]
    result = benchmark.pedantic(case.metric, setup=case.run_floors, rounds=rounds, warmup_rounds=warmup)
    assert result.problems() == [] and result.forward_passes == case.rows
    if not benchmark.disabled:  # disabled under xdist or --benchmark-disable: nothing was timed
        metric_times = list(benchmark.stats.stats.data)
        floors = {name: times[warmup:] for name, times in case.times.items()}
        record(benchmark, setting_name, metric_times, floors, case.chunk, allocator)


def record(benchmark: Any, setting_name: str, metric_times: list[float], floors: dict[str, list[float]],
           chunk: int, allocator: dict[str, int]) -> None:
    """Medians; per floor the ratio of medians, of minima, and the median of per-round ratios."""
    metric = statistics.median(metric_times)
    info: dict[str, Any] = {"metric_median_s": metric, "chunk_rows": chunk, "allocator": allocator,
                            "threads": torch.get_num_threads(), **PARAMS}
    line = f"\n{setting_name}: metric {metric:.4f} s"
    for name, times in floors.items():
        floor, lowest = statistics.median(times), min(metric_times) / min(times)
        paired = statistics.median(m / f for m, f in zip(metric_times, times, strict=True))
        info |= {f"{name}_median_s": floor, f"ratio_{name}": metric / floor, f"ratio_{name}_min": lowest,
                 f"ratio_{name}_paired_median": paired}
        line += f"; {name} {floor:.4f} s, ratio {metric / floor:.3f} (min {lowest:.3f}, paired {paired:.3f})"
    benchmark.extra_info.update(info)
    print(f"{line}; {chunk} rows per batch, {torch.get_num_threads()} threads, allocator {allocator}")
