"""Pixel aggregation: one attribution per pixel from the per-channel attributions of a method.

attribench (Gevaert et al., "Evaluating feature attribution methods in the image domain", Machine Learning
2024; ``PixelAggregation`` in github arnegevaert/benchmark-general-imaging, scripts/attribution/
pixel_aggregation.py) reduces (N, C, H, W) attributions over the channel axis before ranking pixels:

* ``mean``: the channel mean (attribench's ``avg``);
* ``max_abs``: the value of the channel with the largest magnitude, SIGN KEPT (attribench gathers
  ``attrs[argmax |attrs|]`` over channels; it does not return ``max |attrs|``), so with one channel it is the
  identity.

The reduced map is broadcast back over the C channels, so an explainer still returns x's shape. The option
needs a channel axis, (N, C, ...) with at least one axis after it (images, and also sequences (N, C, T));
tabular (N, F) inputs have none and are refused.
"""
from __future__ import annotations

import torch

from harness.specs import ParamError

PARAMETER = "pixel_aggregation"
"""The method parameter (on every method) that selects the aggregation."""
AGGREGATIONS: tuple[str, ...] = ("none", "mean", "max_abs")
"""``none`` (the default) keeps per-channel attributions unchanged."""


def check(mode: str, where: str) -> None:
    """Raise :class:`ParamError` naming ``mode`` and the choices if it is not one of :data:`AGGREGATIONS`."""
    if mode not in AGGREGATIONS:
        raise ParamError(
            f"{where}: parameter {PARAMETER!r} = {mode!r} is not valid; choices: "
            + ", ".join(repr(c) for c in AGGREGATIONS)
        )


def aggregate(attributions: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce ``attributions`` (N, C, ...) over the channel axis by ``mode`` and broadcast back to (N, C, ...)."""
    if mode == "none" or attributions.shape[0] == 0:
        return attributions
    if attributions.ndim < 3:
        raise ValueError(
            f"{PARAMETER} {mode!r} reduces the channel axis of (N, C, H, W) images (or (N, C, T) sequences); "
            f"got attributions of shape {list(attributions.shape)} with no channel axis. Use "
            f"{PARAMETER} 'none' for tabular data."
        )
    if mode == "mean":
        reduced = attributions.mean(dim=1, keepdim=True)
    elif mode == "max_abs":
        index = attributions.abs().argmax(dim=1, keepdim=True)
        reduced = attributions.gather(1, index)
    else:
        check(mode, "aggregate")
        raise AssertionError("unreachable")
    return reduced.expand_as(attributions).contiguous()
