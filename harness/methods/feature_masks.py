"""Feature groupings for the perturbation methods (captum FeatureAblation, Occlusion), from a sample's shape.

A sample's shape is ``x.shape[1:]``: ``(F,)`` tabular (one feature per column), ``(C, T)`` sequences and
audio (one feature per channel, as ChaosMining ablates audio), ``(C, H, W)`` images (square pixel patches,
all channels of a patch together; ChaosMining ablates a 7x7 grid of 32-px patches at 224 px). Each helper
returns the ``attribute()`` keywords for captum and the number of perturbed copies of one sample, so the
adapter can bound its forward passes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from harness.specs import ParamError

Shape = tuple[int, ...]
Params = Mapping[str, Any]


class Perturbations(NamedTuple):
    """What one perturbation method needs for one sample shape."""

    count: int
    """Perturbed copies of one sample (features ablated, or window positions): the forward rows per sample,
    besides the one unperturbed row."""
    kwargs: dict[str, Any]
    """captum ``attribute()`` keywords (``feature_mask``; ``sliding_window_shapes`` and ``strides``)."""


def _layout(shape: Shape, method: str) -> int:
    if not 1 <= len(shape) <= 3 or min(shape, default=0) < 1:
        raise ValueError(
            f"method {method}: inputs must be (N, F), (N, C, T) or (N, C, H, W) with no empty axis; got a "
            f"sample shape {shape}"
        )
    return len(shape)


def axis_cells(size: int, patch: int, grid: int = 0) -> torch.Tensor:
    """Cell index of each of ``size`` positions along one axis.

    ``grid`` 0: cells of ``patch`` positions (the last one narrower when ``patch`` does not divide ``size``).
    ``grid`` > 0: ``grid`` cells of ``size // grid`` positions, the last one absorbing the remainder.
    """
    index = torch.arange(size)
    if grid == 0:
        return index // patch
    if grid > size:
        raise ValueError(f"a grid of {grid} cells does not fit an axis of {size} positions")
    return (index // (size // grid)).clamp(max=grid - 1)


def check_ablation(params: Params) -> None:
    if params["patch"] < 1 or params["grid"] < 0:
        raise ParamError(
            f"method feature_ablation: need patch >= 1 and grid >= 0, got patch={params['patch']}, "
            f"grid={params['grid']}"
        )


def ablation_mask(shape: Shape, patch: int, grid: int = 0) -> torch.Tensor:
    """``(1, *shape)`` feature ids ``0..F-1`` (row-major over the patches): columns, channels, or patches."""
    ndim = _layout(shape, "feature_ablation")
    if ndim == 1:
        ids = torch.arange(shape[0])
    elif ndim == 2:
        ids = torch.arange(shape[0]).unsqueeze(1).expand(shape)
    else:
        rows, cols = axis_cells(shape[1], patch, grid), axis_cells(shape[2], patch, grid)
        ids = (rows.unsqueeze(1) * (int(cols[-1]) + 1) + cols.unsqueeze(0)).expand(shape)
    return ids.unsqueeze(0).contiguous()


def ablation(params: Params, shape: Shape) -> Perturbations:
    """captum FeatureAblation keywords: the mask of :func:`ablation_mask`, one copy per feature."""
    mask = ablation_mask(shape, params["patch"], params["grid"])
    return Perturbations(int(mask.max()) + 1, {"feature_mask": mask})


def check_occlusion(params: Params) -> None:
    if not 1 <= params["stride"] <= params["window"]:
        raise ParamError(
            f"method occlusion: need 1 <= stride <= window (every pixel covered), got window="
            f"{params['window']}, stride={params['stride']}"
        )


def occlusion(params: Params, shape: Shape) -> Perturbations:
    """captum Occlusion keywords: a ``window``-wide window (clipped to the axis) moved by ``stride`` over the
    trailing axes, all channels together (features for tabular, time for sequences, H and W for images).

    Positions per axis are captum's ``ceil((size - window) / stride) + 1``; the last window may run past the
    end, where captum truncates it, so every position is covered.
    """
    ndim = _layout(shape, "occlusion")
    slide = shape if ndim == 1 else shape[1:]
    windows = tuple(min(params["window"], size) for size in slide)
    counts = [math.ceil((size - w) / params["stride"]) + 1 for size, w in zip(slide, windows)]
    lead = () if ndim == 1 else (shape[0],)
    kwargs = {
        "sliding_window_shapes": lead + windows,
        "strides": (1,) * len(lead) + (params["stride"],) * len(slide),
    }
    return Perturbations(math.prod(counts), kwargs)
