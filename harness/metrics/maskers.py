"""Maskers: what a removed pixel is replaced by in perturbation metrics.

``masked_baseline`` returns the *fully masked* version of each input; a metric that masks a subset of pixels
takes them from this baseline (``torch.where(mask, baseline, x)``), so the baseline is computed once per
batch, not once per perturbation.

The three maskers follow attribench (Gevaert et al., "Evaluating feature attribution methods in the image
domain", Machine Learning 2024, arXiv 2202.12270; ``attrbench/lib/masking``):

- ``constant``: every value replaced by ``value`` (attribench: 0).
- ``random``: i.i.d. N(0, 1) noise, drawn on the CPU from the caller's generator and then moved to the
  input's device, so a seed gives the same baseline on every device.
- ``blur``: a box filter of side ``s = max(1, round(W * blur_fraction))`` over the spatial axes (attribench:
  ``cv2.blur`` with ``s = W / 2``). The window of output ``i`` covers ``[i - s // 2, i - s // 2 + s - 1]``
  (cv2's centred anchor, also for even ``s``); where it sticks out of the input only the covered values are
  averaged (``count_include_pad=False``; cv2 reflects the border instead). Images (N, C, H, W) are blurred
  over H and W with an s x s box; signals (N, C, L) over L; tabular (N, F) over F.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

MASKERS: tuple[str, ...] = ("constant", "random", "blur")


def masked_baseline(
    x: Tensor, masker: str, generator: torch.Generator, *, value: float = 0.0, blur_fraction: float = 0.5
) -> Tensor:
    """The fully masked version of every input in ``x`` (N, ...), same shape, dtype and device.

    ``generator`` (a CPU generator) is used only by the ``random`` masker; ``value`` only by ``constant``;
    ``blur_fraction`` (the box side as a fraction of the width, in (0, 1]) only by ``blur``. ``x`` is not
    changed.
    """
    if masker not in _BUILDERS:
        raise ValueError(f"unknown masker {masker!r}; valid maskers: {', '.join(MASKERS)}")
    if x.ndim < 2:
        raise ValueError(f"masked_baseline needs a batch (N, ...) of 2+ dimensions, got {list(x.shape)}")
    return _BUILDERS[masker](x, generator, value, blur_fraction)


def _constant(x: Tensor, generator: torch.Generator, value: float, blur_fraction: float) -> Tensor:
    return torch.full_like(x, value)


def _random(x: Tensor, generator: torch.Generator, value: float, blur_fraction: float) -> Tensor:
    if generator.device.type != "cpu":
        raise ValueError(f"the random masker needs a CPU generator, got one on {generator.device}")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return noise.to(x.device)


def _blur(x: Tensor, generator: torch.Generator, value: float, blur_fraction: float) -> Tensor:
    if not 0.0 < blur_fraction <= 1.0:
        raise ValueError(f"blur_fraction = {blur_fraction!r} must lie in (0, 1]")
    side = max(1, round(x.shape[-1] * blur_fraction))
    spatial = range(2, x.ndim) if x.ndim > 2 else range(1, 2)
    out = x
    for dim in spatial:  # a box filter is separable, and so are its edge counts
        out = box_mean_1d(out, dim, side)
    return out


def box_mean_1d(x: Tensor, dim: int, side: int) -> Tensor:
    """Mean over the window ``[i - side // 2, i - side // 2 + side - 1]`` along ``dim``, clipped to the input.

    Zero padding plus a stride-1 ``avg_pool1d`` gives ``window_sum / side``; multiplying by ``side / count``
    (``count`` = values of the window inside the input) gives the mean of the covered values only.
    """
    length = x.shape[dim]
    left = side // 2
    moved = x.movedim(dim, -1)
    rows = moved.reshape(-1, 1, length)
    padded = F.pad(rows, (left, side - 1 - left))
    sums = F.avg_pool1d(padded, kernel_size=side, stride=1) * side
    start = torch.arange(length, device=x.device) - left
    count = (start + side).clamp(max=length) - start.clamp(min=0)
    return (sums / count.to(x.dtype)).reshape(moved.shape).movedim(-1, dim)


_BUILDERS: dict[str, Callable[[Tensor, torch.Generator, float, float], Tensor]] = {
    "constant": _constant,
    "random": _random,
    "blur": _blur,
}
