"""Mask-based localisation: does the attribution point at the inputs known to carry the signal?

Units and scores. An image x (N, C, H, W) has H*W pixels, each scored by collapsing its channels with
``pixel_aggregation``: ``mean`` (signed channel mean; it ranks, and splits mass, exactly as the channel
sum, i.e. as Quantus on a summed map with its default ``abs=False``), ``sum_abs`` (sum_c |a_c|: Quantus's
documented ``Saliency(abs=True).sum(axis=1)``, CLEVR-XAI's "l1-norm") or ``max_abs`` (max_c |a_c|,
CLEVR-XAI's "max-norm"). Tabular x (N, F) has F units and sequences x (N, C, T) have C*T units: every
element is its own unit (``mean`` keeps its sign, the others take |a|). ``inputs.mask`` is bool with x's
number of dimensions and batch size, every other dimension equal to x's or 1 (images (N, 1, H, W), audio
(N, C, 1) for whole channels); it is broadcast to x, and a pixel is relevant if any of its channels is. A
sample without a relevant unit is an error naming it (Quantus returns NaN there). Top-k selections take
units by decreasing score, equal scores by the lower flat index (``perturbation.top_order``), so every
result is deterministic.

Metrics (per sample, in [0, 1], higher is better, no forward passes; M = relevant units, P = all units):

* ``pointing_game`` (Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018; Quantus
  PointingGame): 1 if the top-scoring unit (ties: the lower index) lies within Euclidean distance
  ``radius`` pixels of a relevant pixel, else 0 (``radius`` > 0 for images only; Zhang et al. allow 15 px
  at 224 px). Quantus counts a hit when *any* tied maximum is relevant, so a constant map always hits.
* ``relevance_mass`` (Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 2022; Quantus
  RelevanceMassAccuracy): sum of the scores on M / their sum over P, on non-negative scores: the positive
  part of ``mean`` (CLEVR-XAI's "sum,pos" pooling), ``sum_abs`` and ``max_abs`` as they are. Quantus
  (``abs=False``) divides signed sums, which leave [0, 1] once a score is negative; the two agree on
  non-negative scores. A sample without positive mass gets |M| / P, the value of a constant map.
* ``relevance_rank`` (Arras et al. 2022; Quantus RelevanceRankAccuracy): |top-|M| units ∩ M| / |M|.
* ``top_k_relevant`` (ChaosMining top-k score): of the |M| units with the largest |attribution|, the
  fraction that are relevant. It *is* ``relevance_rank`` on absolute scores and is computed by it, with
  ``pixel_aggregation`` ``sum_abs`` (ranks as the channel mean of |a|) or ``max_abs``.
* ``top_k_intersection`` (Theiner et al., "Interpretable semantic photo geolocation", WACV 2022; Quantus
  TopKIntersection): |top-k units ∩ M| / k for ``k`` units, or when ``k`` = 0 for
  k = max(1, floor(``k_fraction`` * P)). Quantus's default k = 1000 is 2% of a 224 x 224 image and more
  than a small image has; ``k_fraction`` = 0.05 gives 12-51 pixels on 16-32 px canvases, fewer than the
  object pixels of the shipped suites (a perfect map scores 1 only while k <= |M|).
* ``attribution_auc`` (Fawcett, "An introduction to ROC analysis", PRL 2006; Quantus AUC): ROC AUC of the
  scores as a classifier of M: exactly Mann-Whitney U / (|M| (P - |M|)) with tied scores at their average
  rank (as sklearn's roc_curve + auc, which Quantus calls). A mask marking every unit is an error.
* ``channel_relevance`` (ChaosMining channel-relevance ratio; audio x (N, C, T)): m_c = mean_t |a[c, t]|,
  ratio = m_fg / sum_c m_c, fg the one channel the mask marks anywhere in time (exactly one per sample,
  else an error). It equals ``relevance_mass`` with ``sum_abs`` and a whole-channel mask, and so gives an
  all-zero attribution 1 / C.

ChaosMining: Shi et al., arXiv 2406.12150. ``box_iou`` lives in :mod:`harness.metrics.box_iou`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor

from harness.metrics.perturbation import pixel_ranks, top_order
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

AGGREGATIONS = ("mean", "sum_abs", "max_abs")
ALL_MODALITIES = frozenset({"image", "tabular", "audio"})


class Units(NamedTuple):
    """Unit scores (N, P), relevant units (N, P) bool, the units' grid: (H, W), (F,) or (C, T)."""

    scores: Tensor
    mask: Tensor
    grid: tuple[int, ...]


def units(name: str, inputs: MetricInputs, aggregation: str) -> Units:
    """Validate the inputs and score every unit (see the module docstring)."""
    x, attr = inputs.x, inputs.attributions
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name}: inputs must be tabular (N, F), sequences (N, C, T) or images (N, C, H, W); "
            f"got shape {list(x.shape)}"
        )
    if attr.shape != x.shape:
        raise ValueError(f"{name}: attributions shape {list(attr.shape)} differs from input {list(x.shape)}")
    if not attr.is_floating_point() or not bool(torch.isfinite(attr).all()):
        raise ValueError(f"{name}: attributions must be finite floating point values ({attr.dtype})")
    mask = broadcast_mask(name, inputs.mask, x)
    flat = mask.any(1).flatten(1) if x.ndim == 4 else mask.flatten(1)
    empty = (~flat.any(1)).nonzero()[:, 0]
    if empty.numel():
        raise ValueError(f"{name}: inputs.mask marks no relevant input in sample(s) {empty[:10].tolist()}")
    grid = tuple(x.shape[2:]) if x.ndim == 4 else tuple(x.shape[1:])
    return Units(aggregate(attr, aggregation), flat, grid)


def broadcast_mask(name: str, mask: Tensor | None, x: Tensor) -> Tensor:
    """``mask`` checked (bool; x's dims and batch; other dims equal or 1), expanded to x's shape, device."""
    if mask is None:
        raise ValueError(f"{name}: needs inputs.mask (the ground-truth relevant inputs); none was given")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: inputs.mask must be a bool tensor, got {mask.dtype}")
    fits = mask.ndim == x.ndim and mask.shape[0] == x.shape[0] and all(
        m in (1, s) for m, s in zip(mask.shape[1:], x.shape[1:], strict=True)
    )
    if not fits:
        raise ValueError(
            f"{name}: inputs.mask shape {list(mask.shape)} does not fit inputs {list(x.shape)}: it needs the "
            "same number of dimensions and samples, every other dimension equal to the input's or 1"
        )
    return mask.to(x.device).expand(x.shape)


def aggregate(attr: Tensor, aggregation: str) -> Tensor:
    """(N, P) unit scores: images collapse channels; tabular and sequence elements are one-channel units."""
    n = attr.shape[0]
    groups = attr.reshape(n, attr.shape[1], -1) if attr.ndim == 4 else attr.reshape(n, 1, -1)
    if aggregation == "mean":
        return groups.mean(1)
    if aggregation == "sum_abs":
        return groups.abs().sum(1)
    if aggregation == "max_abs":
        return groups.abs().amax(1)
    raise ValueError(f"unknown pixel_aggregation {aggregation!r}; choices: {', '.join(AGGREGATIONS)}")


def ratio(num: Tensor, den: Tensor, scores: Tensor) -> Tensor:
    """``num / den`` in the scores' float type (at least float32), clamped to [0, 1] against rounding."""
    dtype = torch.promote_types(scores.dtype, torch.float32)
    return (num.to(dtype) / den.to(dtype)).clamp(0.0, 1.0)


def result(key: str, values: Tensor, **info: Any) -> MetricResult:
    return MetricResult(
        outputs={key: values}, primary=key, higher_is_better=True, bounds={key: (0.0, 1.0)}, info=info
    )


def pointing_game(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """1 if the top unit lies within ``radius`` of a relevant one (see the module docstring)."""
    p = _resolve("pointing_game", params)
    radius = p["radius"]
    if radius < 0:
        raise ParamError(f"metric pointing_game: parameter 'radius' = {radius!r} must be at least 0")
    u = units("pointing_game", inputs, p["pixel_aggregation"])
    top = top_order(u.scores, 1)  # (N, 1)
    if radius == 0:
        hit = u.mask.gather(1, top)[:, 0]
    elif inputs.x.ndim != 4:
        raise ParamError(f"metric pointing_game: parameter 'radius' = {radius!r} needs images (N, C, H, W)")
    else:
        height, width = u.grid
        pos = torch.arange(height * width, device=top.device)
        dist2 = (pos // width - top // width) ** 2 + (pos % width - top % width) ** 2  # (N, P)
        hit = (u.mask & (dist2 <= radius * radius)).any(1)
    return result("hit", hit.to(torch.promote_types(u.scores.dtype, torch.float32)), radius=radius)


def relevance_mass(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Share of the non-negative unit scores that lies on the relevant units (see the module docstring)."""
    p = _resolve("relevance_mass", params)
    u = units("relevance_mass", inputs, p["pixel_aggregation"])
    return result("mass", mass_share(u.scores.clamp_min(0.0), u.mask), aggregation=p["pixel_aggregation"])


def mass_share(scores: Tensor, mask: Tensor) -> Tensor:
    """sum(scores on mask) / sum(scores) per row of non-negative scores; |mask| / P where the sum is 0."""
    total = scores.sum(1)
    inside = (scores * mask).sum(1)
    constant = ratio(mask.sum(1), torch.full_like(total, mask.shape[1]), scores)
    return torch.where(total > 0, ratio(inside, total.where(total > 0, 1.0), scores), constant)


def relevance_rank(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Share of the |M| top units that are relevant (see the module docstring)."""
    return _rank("relevance_rank", "rank_accuracy", inputs, params)


def top_k_relevant(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """ChaosMining's top-k score: ``relevance_rank`` on |attribution| (see the module docstring)."""
    return _rank("top_k_relevant", "fraction", inputs, params)


def _rank(name: str, key: str, inputs: MetricInputs, params: Mapping[str, Any]) -> MetricResult:
    p = _resolve(name, params)
    u = units(name, inputs, p["pixel_aggregation"])
    k = u.mask.sum(1)  # (N,), at least 1
    rank = pixel_ranks(u.scores, int(k.max()))
    hits = (u.mask & (rank < k[:, None])).sum(1)
    return result(key, ratio(hits, k, u.scores), aggregation=p["pixel_aggregation"])


def top_k_intersection(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Share of the k top units that are relevant (see the module docstring)."""
    p = _resolve("top_k_intersection", params)
    if p["k"] < 0:
        raise ParamError(f"metric top_k_intersection: parameter 'k' = {p['k']!r} must be at least 0")
    if not 0.0 < p["k_fraction"] <= 1.0:
        raise ParamError(
            f"metric top_k_intersection: parameter 'k_fraction' = {p['k_fraction']!r} must lie in (0, 1]"
        )
    u = units("top_k_intersection", inputs, p["pixel_aggregation"])
    num_units = u.scores.shape[1]
    k = p["k"] or max(1, math.floor(p["k_fraction"] * num_units + 1e-9))
    if k > num_units:
        raise ParamError(f"metric top_k_intersection: parameter 'k' = {k} exceeds the {num_units} units")
    hits = u.mask.gather(1, top_order(u.scores, k)).sum(1)
    return result("intersection", ratio(hits, torch.full_like(hits, k), u.scores), k=k)


def attribution_auc(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """ROC AUC of the unit scores against the mask, ties at average rank (see the module docstring)."""
    p = _resolve("attribution_auc", params)
    u = units("attribution_auc", inputs, p["pixel_aggregation"])
    full = u.mask.all(1).nonzero()[:, 0]
    if full.numel():
        raise ValueError(
            f"attribution_auc: inputs.mask marks every input of sample(s) {full[:10].tolist()}: "
            "the AUC needs irrelevant inputs too"
        )
    return result("auc", mann_whitney_auc(u.scores, u.mask), aggregation=p["pixel_aggregation"])


def mann_whitney_auc(scores: Tensor, mask: Tensor) -> Tensor:
    """U / (n_pos n_neg) per row, exact in integers: twice every average rank is ``first + last + 2``."""
    n, num_units = scores.shape
    values, order = scores.sort(dim=1)
    pos = torch.arange(num_units, device=scores.device)
    change = values[:, 1:] != values[:, :-1]
    edge = torch.ones((n, 1), dtype=torch.bool, device=scores.device)
    starts, ends = torch.cat([edge, change], 1), torch.cat([change, edge], 1)
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos, num_units - 1).flip(1).cummin(1).values.flip(1)
    positive = mask.gather(1, order)
    n_pos = mask.sum(1)
    twice_u = ((first + last + 2) * positive).sum(1) - n_pos * (n_pos + 1)
    return ratio(twice_u, 2 * n_pos * (num_units - n_pos), scores)


def channel_relevance(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Share of the mean |attribution| per channel that falls on the relevant channel (module docstring)."""
    resolve_params("metric channel_relevance", params, {})
    x, attr = inputs.x, inputs.attributions
    if x.ndim != 3:
        raise ValueError(f"channel_relevance: inputs must be sequences (N, C, T), got shape {list(x.shape)}")
    if attr.shape != x.shape or not attr.is_floating_point() or not bool(torch.isfinite(attr).all()):
        raise ValueError(
            f"channel_relevance: attributions must be finite floating point values of the input's shape "
            f"{list(x.shape)}, got {attr.dtype} {list(attr.shape)}"
        )
    channels = broadcast_mask("channel_relevance", inputs.mask, x).any(2)  # (N, C)
    bad = (channels.sum(1) != 1).nonzero()[:, 0]
    if bad.numel():
        raise ValueError(
            f"channel_relevance: inputs.mask must mark exactly one channel per sample; sample(s) "
            f"{bad[:10].tolist()} mark {channels[bad[:10]].sum(1).tolist()}"
        )
    return result("ratio", mass_share(attr.abs().mean(2), channels))


DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({name: MappingProxyType(d) for name, d in {
    "pointing_game": {"pixel_aggregation": "mean", "radius": 0.0},
    "relevance_mass": {"pixel_aggregation": "mean"},
    "relevance_rank": {"pixel_aggregation": "mean"},
    "top_k_relevant": {"pixel_aggregation": "sum_abs"},
    "top_k_intersection": {"pixel_aggregation": "mean", "k": 0, "k_fraction": 0.05},
    "attribution_auc": {"pixel_aggregation": "mean"},
    "channel_relevance": {},
}.items()})
CHOICES: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    name: {"pixel_aggregation": ("sum_abs", "max_abs") if name == "top_k_relevant" else AGGREGATIONS}
    for name in DEFAULTS if name != "channel_relevance"
})


def _resolve(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return resolve_params(f"metric {name}", params, DEFAULTS[name], CHOICES.get(name))


ARRAS = "Arras, Osman, Samek, CLEVR-XAI, Information Fusion 2022 (Quantus {})"
CHAOS = "Shi et al., ChaosMining, arXiv 2406.12150: {}"
SPECS: tuple[tuple[str, Callable[..., MetricResult], frozenset[str], str, str], ...] = (
    ("pointing_game", pointing_game, ALL_MODALITIES, "Is the top-scoring pixel inside the ground truth?",
     "Zhang et al., Top-down neural attention by excitation backprop, IJCV 2018 (Quantus PointingGame)"),
    ("relevance_mass", relevance_mass, ALL_MODALITIES,
     "Share of positive attribution inside the ground truth", ARRAS.format("RelevanceMassAccuracy")),
    ("relevance_rank", relevance_rank, ALL_MODALITIES,
     "Share of the |mask| top pixels inside the ground truth", ARRAS.format("RelevanceRankAccuracy")),
    ("top_k_relevant", top_k_relevant, ALL_MODALITIES,
     "Share of the m top-|attribution| features that are relevant", CHAOS.format("top-k score")),
    ("top_k_intersection", top_k_intersection, ALL_MODALITIES, "Share of the k top pixels inside the truth",
     "Theiner et al., Interpretable semantic photo geolocation, WACV 2022 (Quantus TopKIntersection)"),
    ("attribution_auc", attribution_auc, ALL_MODALITIES, "ROC AUC of pixel scores against the ground truth",
     "Fawcett, An introduction to ROC analysis, Pattern Recognition Letters 2006 (Quantus AUC)"),
    ("channel_relevance", channel_relevance, frozenset({"audio"}),
     "Share of mean |attribution| on the true channel", CHAOS.format("channel-relevance ratio")),
)

for _name, _compute, _modalities, _description, _reference in SPECS:
    METRICS.add(_name, MetricSpec(
        name=_name, family="localization", compute=_compute, modalities=_modalities,
        defaults=DEFAULTS[_name], choices=CHOICES.get(_name, {}), description=_description,
        reference=_reference, needs_mask=True, tasks=frozenset({"classification", "regression"}),
    ))
