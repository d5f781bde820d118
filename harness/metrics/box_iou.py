"""Box IoU: does the box around the most attributed pixels match the ground-truth box? (images only)

Definition (ChaosMining, Shi et al., arXiv 2406.12150, vision data; github geshijoker/ChaosMining,
``examples/eval_vision_localization.py``), per sample of an image attribution a (C, H, W) and ground-truth
mask M:

1. Smooth each channel with a Gaussian of standard deviation ``sigma`` pixels (ChaosMining: 6, on 224 px
   images with 32 px objects; scale it with the image, e.g. ~0.5 on 16-32 px canvases). The filter is
   ``scipy.ndimage.gaussian_filter``'s, which ChaosMining calls: a separable kernel exp(-x^2 / 2 sigma^2),
   normalised to sum 1, truncated at radius ``int(4 * sigma + 0.5)``, with scipy's default ``mode="reflect"``
   border (the edge pixel repeated: d c b a | a b c d | d c b a), for any radius, even one wider than the
   image. ``sigma`` = 0 skips the smoothing.
2. Pixel score: the channel mean of |smoothed a|.
3. Keep the ``k`` highest-scoring pixels (ChaosMining: 32 * 32 = 1024, the object's size; here ``k`` = 0, the
   default, means |M| per sample), ties to the lower flat index (``perturbation.top_order``).
4. IoU of the bounding box of the kept pixels and the bounding box of M (channels collapsed with any),
   both inclusive pixel boxes: area = (r1 - r0 + 1) (c1 - c0 + 1). The original's box helper (``get_box`` in
   ``chaosmining/vision/contribs.py``) measures widths as r1 - r0, one pixel short, and reads the column
   maximum from the row coordinates; this follows the intended definition.

Output ``iou`` in [0, 1], 1 when the top-k box is the true box; higher is better. Smoothing rounds a box's
corners, so the top-|M| region of even a perfect (box-shaped) map bulges past the box's sides once sigma is a
sizeable fraction of the box: at ChaosMining's own scale (224 px, 32 px box, sigma 6) it scores 0.886.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.metrics.localization import result, units
from harness.metrics.perturbation import pixel_ranks
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

TRUNCATE = 4.0
"""Kernel radius in standard deviations, scipy.ndimage.gaussian_filter's default."""
DEFAULTS = MappingProxyType({"sigma": 6.0, "k": 0})
REFERENCE = "Shi et al., ChaosMining, arXiv 2406.12150: box-IoU localisation of vision attributions"


def box_iou(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """IoU of the box around the ``k`` top smoothed pixels with the ground-truth box (module docstring)."""
    p = resolve_params("metric box_iou", params, DEFAULTS)
    if p["sigma"] < 0:
        raise ParamError(f"metric box_iou: parameter 'sigma' = {p['sigma']!r} must be at least 0")
    if p["k"] < 0:
        raise ParamError(f"metric box_iou: parameter 'k' = {p['k']!r} must be at least 0")
    if inputs.x.ndim != 4:
        raise ValueError(f"box_iou: inputs must be images (N, C, H, W), got shape {list(inputs.x.shape)}")
    n, _, height, width = inputs.x.shape
    if p["k"] > height * width:
        raise ParamError(f"metric box_iou: parameter 'k' = {p['k']} exceeds the {height * width} pixels")
    u = units("box_iou", inputs, "mean")  # validates; its scores are replaced by the smoothed ones
    scores = gaussian_smooth(inputs.attributions, p["sigma"]).abs().mean(1).flatten(1)
    k = u.mask.sum(1) if p["k"] == 0 else torch.full((n,), p["k"], device=scores.device)
    kept = pixel_ranks(scores, int(k.max())) < k[:, None]
    iou = boxes_iou(bounding_box(kept.view(n, height, width)), bounding_box(u.mask.view(n, height, width)))
    dtype = torch.promote_types(scores.dtype, torch.float32)
    return result("iou", iou.to(dtype).clamp(0.0, 1.0), sigma=p["sigma"], truncate=TRUNCATE, mode="reflect")


def gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """scipy's 1-D Gaussian weights: radius int(TRUNCATE * sigma + 0.5), normalised to sum 1."""
    radius = int(TRUNCATE * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(device=device, dtype=dtype)


def reflect_index(size: int, radius: int, device: torch.device) -> Tensor:
    """Indices of a ``size`` axis padded by ``radius`` on each side in scipy's "reflect" mode, any radius."""
    index = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(index < size, index, 2 * size - 1 - index)


def gaussian_smooth(images: Tensor, sigma: float) -> Tensor:
    """Each channel of (N, C, H, W) filtered as by scipy.ndimage.gaussian_filter (mode "reflect")."""
    if sigma == 0:
        return images
    n, c, height, width = images.shape
    kernel = gaussian_kernel(sigma, images.dtype, images.device)
    radius = (kernel.numel() - 1) // 2
    flat = images.reshape(n * c, 1, height, width)
    rows, cols = reflect_index(height, radius, images.device), reflect_index(width, radius, images.device)
    flat = F.conv2d(flat.index_select(2, rows), kernel.view(1, 1, -1, 1))
    flat = F.conv2d(flat.index_select(3, cols), kernel.view(1, 1, 1, -1))
    return flat.view(n, c, height, width)


def bounding_box(selected: Tensor) -> Tensor:
    """Inclusive (r0, r1, c0, c1) per sample of a non-empty (N, H, W) bool selection, (N, 4) long."""
    rows, cols = selected.any(2).to(torch.uint8), selected.any(1).to(torch.uint8)
    height, width = rows.shape[1], cols.shape[1]
    first_row, last_row = rows.argmax(1), height - 1 - rows.flip(1).argmax(1)
    first_col, last_col = cols.argmax(1), width - 1 - cols.flip(1).argmax(1)
    return torch.stack([first_row, last_row, first_col, last_col], 1)


def boxes_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of inclusive pixel boxes (N, 4) = (r0, r1, c0, c1), as float."""
    inter_h = (torch.minimum(a[:, 1], b[:, 1]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp_min(0)
    inter_w = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 2], b[:, 2]) + 1).clamp_min(0)
    inter = inter_h * inter_w
    area_a = (a[:, 1] - a[:, 0] + 1) * (a[:, 3] - a[:, 2] + 1)
    area_b = (b[:, 1] - b[:, 0] + 1) * (b[:, 3] - b[:, 2] + 1)
    return inter / (area_a + area_b - inter)


METRICS.add("box_iou", MetricSpec(
    name="box_iou", family="localization", compute=box_iou, modalities=frozenset({"image"}),
    defaults=DEFAULTS,
    description="IoU of the box around the top smoothed pixels with the true box", reference=REFERENCE,
    needs_mask=True,
))
