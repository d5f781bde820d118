"""ROAD's noisy linear imputation per image: xaiharness (batched Jacobi-preconditioned conjugate gradients in
torch, all images and channels at once) against Quantus 0.6 (``quantus.functions.perturb_func.
noisy_linear_imputation``: a ``lil_matrix`` system per image solved by ``scipy.sparse.linalg.spsolve``, the
reference code's method), on the CPU.

Workloads: 16 photos at 3 x 32 x 32 and one at 3 x 224 x 224 (scikit-image's bundled photos, centre-cropped
and resized), half of the pixels removed (all channels), ``noise`` = 0.01. Two masks: ``random`` (a uniformly
random ranking: scattered small holes, the easy case for an iterative solver) and ``blob`` (the pixels
nearest the image centre: one large hole, as a smooth attribution map gives under MoRF, the hard case).
Each case first checks, untimed, that the two tools agree with the noise off (max abs difference <= 1e-5;
recorded as ``max_abs_diff_vs_quantus``). Quantus is called once per image, as its API takes one image.

``extra_info`` records ``seconds_per_image`` (median round / images); pytest-benchmark groups the two tools
per workload and mask. Run with ``make benchmarks ARGS='-k road'``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import benchmark_times
from harness.metrics.imputation import linear_imputation, noisy_linear_imputation

WORKLOADS = {"16x3x32x32": (16, 32, 5), "1x3x224x224": (1, 224, 3)}
"""Name: (images, side, timed rounds)."""
MASKS = ("random", "blob")
FRACTION, NOISE = 0.5, 0.01
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel")


def photos(n: int, side: int) -> Tensor:
    """``n`` centre crops of scikit-image's photos at (3, side, side) in [0, 1] (flipped copies past 8)."""
    from skimage import data

    out = []
    for i in range(n):
        pixels = getattr(data, PHOTOS[i % 8])()[..., :3]
        image = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1) / 255
        top, left = ((s - min(image.shape[1:])) // 2 for s in image.shape[1:])
        crop = image[None, :, top: top + min(image.shape[1:]), left: left + min(image.shape[1:])]
        crop = F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop.flip(-1) if i >= 8 else crop)
    return torch.cat(out)


def removal_mask(n: int, side: int, kind: str) -> Tensor:
    """(n, side, side) bool: the first half of a random ranking, or of the pixels nearest the centre."""
    pixels, k = side * side, int(FRACTION * side * side)
    if kind == "random":
        order = torch.rand(n, pixels, generator=torch.Generator().manual_seed(0)).argsort(dim=1)
    else:
        yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        distance = ((yy - (side - 1) / 2) ** 2 + (xx - (side - 1) / 2) ** 2).flatten()
        order = distance.argsort(stable=True).expand(n, pixels)
    removed = torch.zeros(n, pixels, dtype=torch.bool).scatter_(1, order[:, :k], True)
    return removed.view(n, side, side)


def quantus_call(x: Tensor, removed: Tensor, noise: float) -> Callable[[], list[np.ndarray]]:
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    images = [image.numpy() for image in x]
    indices = [np.flatnonzero(mask.numpy()) for mask in removed]
    pairs = list(zip(images, indices, strict=True))
    return lambda: [quantus_imputation(image, idx, noise=noise) for image, idx in pairs]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("tool", ["xaiharness", "quantus"])
def test_road_imputation_speed(benchmark: Any, tool: str, workload: str, mask: str,
                               bench_rounds: int | None) -> None:
    pytest.importorskip("quantus")
    n, side, rounds = WORKLOADS[workload]
    x, removed = photos(n, side), removal_mask(n, side, mask)
    ours = linear_imputation(x, removed)
    theirs = np.stack(quantus_call(x, removed, 0.0)())
    difference = float(np.abs(ours.double().numpy() - theirs).max())
    assert difference <= 1e-5

    def xaiharness() -> Tensor:
        return noisy_linear_imputation(x, removed, NOISE, torch.Generator().manual_seed(0))

    call = xaiharness if tool == "xaiharness" else quantus_call(x, removed, NOISE)
    benchmark.group = f"road imputation {workload} {mask}"
    benchmark.pedantic(call, rounds=bench_rounds or rounds, warmup_rounds=0 if bench_rounds else 1)
    times = benchmark_times(benchmark)
    if times is None:
        return
    benchmark.extra_info.update({
        "seconds_per_image": float(np.median(times)) / n, "images": n, "removed_fraction": FRACTION,
        "noise": NOISE, "threads": torch.get_num_threads(), "max_abs_diff_vs_quantus": difference,
    })
