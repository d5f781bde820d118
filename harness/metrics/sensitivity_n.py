"""Sensitivity-n and Seg-Sensitivity-n: does the attribution of a random subset predict the output drop?

Definition (Ancona et al., "Towards better understanding of gradient-based attribution methods for deep neural
networks", ICLR 2018; attribench: Gevaert et al., Machine Learning 2024,
``attribench/functional/metrics/sensitivity_n``), per sample:

1. Units: the P pixels (tabular: features) of the input, each with the pixel score of the attribution (channel
   mean, or ``max_c |a_c|``); Seg-Sensitivity-n: the S SLIC segments of the image (``n_segments`` = 100,
   ``slic_zero``; :func:`harness.segmentation.slic_segments`), each with the mean attribution over its pixels.
2. Subset sizes: ``n_t = floor(t * U)`` for ``t`` in ``linspace(min_fraction, max_fraction, steps)``
   (attribench: 0.1, 0.5, 10), U the number of units (pixels, or this image's segments).
3. For every size, ``subsets`` (attribench: 100) uniform random subsets S of exactly n units; the input with
   S replaced by the masker's fully masked input (every channel of a pixel; all pixels of a segment).
4. Per size, the Pearson correlation over the subsets between ``sum_{i in S} score_i`` and
   ``f(x) - f(x masked on S)`` (target logit or softmax): the exact row-wise formula in float64, **0 when
   either side is constant** (seed-systems.md §2 [bug]: the original mixes n-1 and n denominators).
5. Score: the mean over the sizes. Higher is better; in [-1, 1].

``activation`` (default ``logits``) picks the output f of the primary score and of ``correlations`` /
``repeats``; the scores of both activations are output as ``sensitivity_n_logits`` / ``_softmax``.
``repeats`` > 1 repeats steps 3-5 with fresh subsets (the SNR study): ``repeats`` gives each repeat's score
(N, repeats), ``correlations`` the per-size correlations averaged over repeats (N, steps), and the score the
mean over repeats. Attribution sums are taken in float64, so equal subset sums (a constant attribution) are
equal exactly and correlate 0.

Deviations from attribench: Seg-Sensitivity-n takes ``n_t = floor(t * S_i)`` of each image's own segment count
S_i (attribench: ``floor(t * 100)`` for every image, which fails on images with fewer segments); subsets are
drawn per sample from per-sample streams (:mod:`harness.metrics.rows`), so results do not depend on the
batch, chunking or device.

``forward_passes`` = N + N * repeats * steps * subsets.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from harness.metrics.maskers import MASKERS, masked_baseline
from harness.metrics.perturbation import as_pixels, pixel_scores, row_blocks
from harness.metrics.rows import SampleStreams, check_inputs, original_outputs, row_samples, target_outputs
from harness.segmentation import segment_means, slic_segments
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

COMMON = {
    "steps": 10, "min_fraction": 0.1, "max_fraction": 0.5, "subsets": 100, "repeats": 1,
    "masker": "constant", "mask_value": 0.0, "activation": "logits",
}
DEFAULTS = MappingProxyType({**COMMON, "pixel_aggregation": "mean"})
SEG_DEFAULTS = MappingProxyType({**COMMON, "n_segments": 100, "compactness": 10.0, "slic_zero": True})
CHOICES = MappingProxyType({
    "masker": MASKERS, "activation": ("logits", "softmax"), "pixel_aggregation": ("mean", "max_abs"),
})
REFERENCE = (
    "Ancona et al., Towards better understanding of gradient-based attribution methods for deep neural "
    "networks, ICLR 2018; Gevaert et al., Evaluating feature attribution methods in the image domain, "
    "Machine Learning 2024 (attribench)"
)
OFFSET = 0x5E45
"""``ctx.generator`` offset of the subset streams (the random masker uses offset 0, as deletion does)."""


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last dimension, in float64; 0 where ``a`` or ``b`` is constant."""
    a, b = a.double(), b.double()
    constant = (a == a[..., :1]).all(-1) | (b == b[..., :1]).all(-1)
    ac, bc = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    denominator = ((ac * ac).sum(-1) * (bc * bc).sum(-1)).sqrt()
    r = (ac * bc).sum(-1) / torch.where(constant, 1.0, denominator)
    return torch.where(constant | (denominator == 0), 0.0, r).clamp(-1.0, 1.0)


def subset_sizes(units: Tensor, p: dict[str, Any]) -> Tensor:
    """(N, steps) long: ``floor(t * U_i)`` for every fraction ``t`` (a 1e-9 slack keeps exact products)."""
    fractions = torch.linspace(p["min_fraction"], p["max_fraction"], p["steps"], dtype=torch.float64)
    return (fractions[None, :] * units.double()[:, None].cpu() + 1e-9).floor().long().to(units.device)


class Subsets:
    """Unit weights of rows ``start:stop`` (row = ((sample * repeats + repeat) * steps + step) * subsets +
    subset): a uniform random subset of ``sizes[sample, step]`` of the sample's ``units`` units, the first
    ``n`` entries of a random permutation (``torch.randperm`` per row, on the CPU; about as fast as drawing
    one random key per unit, and it needs no sort). Units past a sample's own count are never chosen.
    ``offset``: the ``ctx.generator`` offset of the streams (another metric drawing its own subsets)."""

    def __init__(self, units: Tensor, width: int, p: dict[str, Any], ctx: RunContext, offset: int = OFFSET):
        self.units, self.sizes, self.width = units, subset_sizes(units, p), width
        self.steps, self.subsets = p["steps"], p["subsets"]
        self.per_sample = p["repeats"] * self.steps * self.subsets
        counts = units.tolist()
        self.streams = SampleStreams(
            ctx, offset, units.shape[0], self.per_sample, width,
            lambda sample, g, k: _permutations(counts[sample], width, g, k),
        )

    def fill_weights(self, start: int, stop: int, out: Tensor) -> Tensor:
        """The chosen units of every row as 0 / 1 in ``out[:rows]`` (rows, width; any dtype); returns it."""
        device = self.units.device
        order = self.streams.take(start, stop).to(device)
        rows = torch.arange(start, stop, device=device)
        n = self.sizes[rows // self.per_sample, rows // self.subsets % self.steps]
        first = torch.arange(self.width, device=device) < n[:, None]
        return out[: stop - start].zero_().scatter_(1, order, first.to(out.dtype))

    def weights(self, start: int, stop: int) -> Tensor:
        """(rows, width) bool: the chosen units of every row."""
        out = torch.empty((stop - start, self.width), dtype=torch.bool, device=self.units.device)
        return self.fill_weights(start, stop, out)

    def draw(self) -> Tensor:
        """All weights, (N, repeats * steps * subsets, width) bool."""
        total = self.units.shape[0] * self.per_sample
        return self.weights(0, total).reshape(self.units.shape[0], self.per_sample, self.width)


def _permutations(count: int, width: int, g: torch.Generator, k: int) -> Tensor:
    """``k`` rows (k, width) int64 (``scatter``'s index type; ``randperm`` draws the same numbers for every
    integer dtype): a random permutation of ``0..count-1``, then ``count..width-1``."""
    out = torch.arange(width).repeat(k, 1)
    for row in out:
        torch.randperm(count, generator=g, out=row[:count])
    return out


def draw_subsets(
    units: Tensor, width: int, ctx: RunContext, *, segmented: bool = False, **params: Any
) -> Tensor:
    """The subsets the metric draws for samples of ``units`` units with ``params``: (N, repeats * steps *
    subsets, width) bool, rows ordered (repeat, step, subset)."""
    name, defaults = ("seg_sensitivity_n", SEG_DEFAULTS) if segmented else ("sensitivity_n", DEFAULTS)
    return Subsets(units, width, _resolve(name, params, defaults), ctx).draw()


def subset_correlations(
    inputs: MetricInputs, ctx: RunContext, p: dict[str, Any], scores: Tensor, pixel_unit: Tensor | None,
    units: Tensor, offset: int = OFFSET,
) -> tuple[dict[str, Tensor], int]:
    """Per-size correlations (N, repeats, steps) for each activation, and the forward passes.

    ``scores`` (N, width) are the units' attribution scores, ``units`` (N,) how many units each sample has,
    ``pixel_unit`` (N, P) the unit of every pixel (``None``: the units are the pixels)."""
    x = inputs.x
    n = x.shape[0]
    subsets = Subsets(units, scores.shape[1], p, ctx, offset)
    fill = masked_baseline(x, p["masker"], ctx.generator(), value=p["mask_value"])
    rows = _SubsetRows(subsets, as_pixels(x), as_pixels(fill), scores, pixel_unit)

    def build(start: int, stop: int) -> Tensor:
        return rows.build(start, stop).view(stop - start, *x.shape[1:])

    masked = target_outputs(inputs.model, x, inputs.target, subsets.per_sample, build, ctx, copies=6)
    original = original_outputs(inputs.model, x, inputs.target, ctx)
    shape = (n, p["repeats"], p["steps"], p["subsets"])
    attribution_sums = torch.cat(rows.sums).reshape(shape).clone()
    correlations = {
        activation: pearson_rows(attribution_sums, (before.double() - after.double()).reshape(shape))
        for activation, before, after in (("logits", original.logits, masked.logits),
                                          ("softmax", original.softmax, masked.softmax))
    }
    return correlations, masked.forward_passes + original.forward_passes


class _SubsetRows:
    """Masked rows ``lerp(keep, fill, w)`` (w = 1 on the chosen units' pixels) and the rows' attribution sums
    ``sum_i w_i score_i``, written into buffers allocated for the first (largest) chunk and reused.

    Weights are 0 / 1 in the scores' dtype, so every product is exact, and summed in float64: float32 scores
    (and so equal subset sums of a constant map) add up exactly in any order. ``lerp`` with a 0 / 1 weight
    returns ``keep`` or ``fill`` exactly. Each sample's ``keep`` / ``fill`` / scores broadcast over its rows
    (:func:`row_blocks`), so nothing is gathered per row.
    """

    def __init__(
        self, subsets: Subsets, keep: Tensor, fill: Tensor, scores: Tensor, pixel_unit: Tensor | None
    ):
        self.subsets, self.keep, self.fill, self.pixel_unit = subsets, keep, fill, pixel_unit
        self.scores = scores if scores.is_floating_point() else scores.double()
        self.sums: list[Tensor] = [self.scores.new_empty(0, dtype=torch.float64)]
        self.buffers: tuple[Tensor, Tensor, Tensor] | None = None

    def build(self, start: int, stop: int) -> Tensor:
        count, per, (_, channels, pixels) = stop - start, self.subsets.per_sample, self.keep.shape
        unit_weight, pixel_weight, rows = self.buffers or self._allocate(count)
        units = self.subsets.fill_weights(start, stop, unit_weight)
        if self.pixel_unit is not None:
            index = self.pixel_unit.index_select(0, row_samples(start, stop, per, units.device))
            pixel_weight[:count, 0].copy_(units.gather(1, index))
        elif pixel_weight.data_ptr() != unit_weight.data_ptr():
            pixel_weight[:count, 0].copy_(units)
        offset = 0
        for b0, b1, s0, s1 in row_blocks(start, stop, per):
            nb, ns = b1 - b0, s1 - s0
            chosen = torch.mul(units.narrow(0, offset, nb * ns).view(nb, ns, -1), self.scores[b0:b1, None])
            self.sums.append(chosen.sum(-1, dtype=torch.float64).flatten())
            weight = pixel_weight.narrow(0, offset, nb * ns).view(nb, ns, 1, pixels)
            out = rows.narrow(0, offset, nb * ns).view(nb, ns, channels, pixels)
            torch.lerp(self.keep[b0:b1, None], self.fill[b0:b1, None], weight, out=out)
            offset += nb * ns
        return rows[:count]

    def _allocate(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """(unit weights (chunk, width), pixel weights (chunk, 1, P): the same memory where the units are the
        pixels and the dtypes agree, rows (chunk, C, P))."""
        width, (_, channels, pixels) = self.subsets.width, self.keep.shape
        unit_weight = self.scores.new_empty((count, width))
        if self.pixel_unit is None and self.scores.dtype == self.keep.dtype:
            pixel_weight = unit_weight.view(count, 1, width)
        else:
            pixel_weight = self.keep.new_empty((count, 1, pixels))
        self.buffers = (unit_weight, pixel_weight, self.keep.new_empty((count, channels, pixels)))
        return self.buffers


def sensitivity_n(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Sensitivity-n over random pixel subsets (module docstring)."""
    p = _resolve("sensitivity_n", params, DEFAULTS)
    check_inputs("sensitivity_n", inputs.x, inputs.target, inputs.attributions)
    scores = pixel_scores(inputs.attributions, p["pixel_aggregation"])
    units = torch.full((inputs.x.shape[0],), scores.shape[1], dtype=torch.long, device=inputs.x.device)
    correlations, passes = subset_correlations(inputs, ctx, p, scores, None, units)
    sizes = subset_sizes(torch.tensor([scores.shape[1]]), p)[0].tolist()
    return _result(correlations, passes, p, {"sizes": sizes})


def seg_sensitivity_n(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Seg-Sensitivity-n over random subsets of SLIC segments scored by mean attribution (module
    docstring)."""
    p = _resolve("seg_sensitivity_n", params, SEG_DEFAULTS)
    x = inputs.x
    check_inputs("seg_sensitivity_n", x, inputs.target, inputs.attributions)
    if x.ndim != 4:
        raise ValueError(f"seg_sensitivity_n: needs images (N, C, H, W), got shape {list(x.shape)}")
    segments = slic_segments(x, p["n_segments"], p["compactness"], p["slic_zero"])
    pixel_unit = segments.flatten(1)
    units = pixel_unit.amax(1) + 1
    scores = segment_means(inputs.attributions, segments).nan_to_num(0.0) if len(x) else x.new_zeros(0, 1)
    correlations, passes = subset_correlations(inputs, ctx, p, scores, pixel_unit, units)
    return _result(correlations, passes, p, {"segments": units.tolist()})


def _result(
    correlations: dict[str, Tensor], passes: int, p: dict[str, Any], info: dict[str, Any]
) -> MetricResult:
    chosen = correlations[p["activation"]]
    per_repeat = chosen.mean(2)
    outputs = {
        "sensitivity_n": per_repeat.mean(1),
        "sensitivity_n_logits": correlations["logits"].mean((1, 2)),
        "sensitivity_n_softmax": correlations["softmax"].mean((1, 2)),
        "correlations": chosen.mean(1),
        "repeats": per_repeat,
    }
    return MetricResult(
        outputs=outputs, primary="sensitivity_n", higher_is_better=True,
        bounds={key: (-1.0, 1.0) for key in outputs}, forward_passes=passes,
        info={**info, "masker": p["masker"], "activation": p["activation"], "repeats": p["repeats"]},
    )


def _resolve(name: str, params: dict[str, Any], defaults: MappingProxyType[str, Any]) -> dict[str, Any]:
    p = resolve_params(name, params, defaults, CHOICES)
    for key, low in (("steps", 1), ("subsets", 2), ("repeats", 1), ("n_segments", 1)):
        if key in p and p[key] < low:
            raise ParamError(f"{name}: parameter {key!r} = {p[key]!r} must be at least {low}")
    if not 0.0 <= p["min_fraction"] <= p["max_fraction"] <= 1.0:
        raise ParamError(f"{name}: parameters 'min_fraction' = {p['min_fraction']!r} and 'max_fraction' = "
                         f"{p['max_fraction']!r} must satisfy 0 <= min_fraction <= max_fraction <= 1")
    return p


METRICS.add("sensitivity_n", MetricSpec(
    name="sensitivity_n", family="faithfulness", compute=sensitivity_n,
    modalities=frozenset({"image", "tabular"}),
    defaults=DEFAULTS, choices=CHOICES, reference=REFERENCE,
    description="Pearson correlation of subset attribution sums with output drops, random pixel subsets",
))
METRICS.add("seg_sensitivity_n", MetricSpec(
    name="seg_sensitivity_n", family="faithfulness", compute=seg_sensitivity_n,
    modalities=frozenset({"image"}),
    defaults=SEG_DEFAULTS, choices={k: v for k, v in CHOICES.items() if k != "pixel_aggregation"},
    reference=REFERENCE,
    description="Sensitivity-n over random subsets of SLIC segments scored by their mean attribution",
))
