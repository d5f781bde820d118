"""IROF / IIOF: remove (IROF) or reveal (IIOF) SLIC segments, most relevant first, batched over samples x
steps.

Definition (attribench: Gevaert et al., "Evaluating feature attribution methods in the image domain",
Machine Learning 2024, arXiv 2202.12270, ``attribench/functional/metrics/_irof.py``; after Rieger and Hansen,
"IROF: a low resource evaluation metric for explanation methods", arXiv 2003.08747, 2020):

1. Segments: SLIC per image (:func:`harness.segmentation.slic_segments`; attribench: 100 segments,
   ``slic_zero``); image i has S_i segments.
2. Segment score: the mean over the segment of the channel-mean signed attribution (attribench sorts the
   signed segment means, as Quantus' IROF does). MoRF takes the highest first, LeRF the lowest; equal scores
   go to the lower segment id first (a stable sort), so results are deterministic.
3. Steps: ``t_s`` in ``linspace(0, 1, steps)``, ``k_is = floor(t_s * S_i)`` segments (attribench:
   ``int(S_i * t)``, 100 steps).
4. IROF replaces every pixel (all channels) of the first ``k`` ranked segments by the masker's baseline; IIOF
   starts from the fully masked input and reveals them. The IROF curve runs from f(x) to f(baseline), IIOF's
   back.
5. Outputs: the target's logit and softmax curves (N, steps); ``auc_logits`` / ``auc_softmax`` = mean over
   the steps (attribench's AUC, as deletion); ``auc`` = the one ``activation`` picks (primary; lower is better
   for IROF MoRF and IIOF LeRF, higher for IROF LeRF and IIOF MoRF). Rieger and Hansen's score, on the softmax
   curve divided by the original input's probability p(x) (the curve's first point for IROF, last for IIOF):
   IROF ``aoc_normalised = 1 - trapz(p_s / p(x))``, IIOF ``auc_normalised = trapz(p_s / p(x))``, trapezoids
   over t in [0, 1] (older attrbench's ``irof`` / ``iiof``, which step one segment at a time, i.e.
   ``steps = S_i + 1``); higher is better for both in MoRF order. ``segments``: S_i.

Segments become rank groups of the shared pixel core: every pixel of the segment at rank r scores -r, and k
segments are the first c_ik pixels (c_ik = the sizes of the top k segments summed), so
:func:`~harness.metrics.perturbation.perturbation_curve` builds and runs the rows. A sample with
S_i < steps - 1 repeats some k; each distinct k is evaluated once (samples are grouped by their number of
distinct k and the curve is expanded back), so ``forward_passes`` = sum_i min(steps, S_i + 1), the number of
distinct perturbed inputs, and no value changes.

Deviations from attribench, and why:

- attribench's ``mask_top(t)`` masks ``sorted[-int(S * t):]``, which for 0 < S * t < 1 is ``sorted[-0:]``:
  every segment (with S < 99 the second point of its 100-step curve is the fully masked image). Here
  ``k = 0`` masks nothing, the evident intent.
- SLIC runs on each image min-max scaled to [0, 1] (see :mod:`harness.segmentation`); attribench runs it on
  the normalised input as is.
- Equal segment scores are ordered by segment id; attribench uses an unstable ``argsort``.
- IIOF: attribench 2024 has no IIOF (its IROF has MoRF / LeRF only); older attrbench's ``iiof`` reveals one
  segment per step. IIOF here is IROF's grid in insertion, as insertion mirrors deletion.
- An underflowed p(x) = 0 is taken as the smallest normal float32, so the normalised scores stay finite.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.metrics.maskers import MASKERS, masked_baseline
from harness.metrics.perturbation import Curves, perturbation_curve, top_order
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

DEFAULTS = MappingProxyType({
    "order": "morf", "masker": "constant", "steps": 100, "activation": "softmax", "mask_value": 0.0,
    "n_segments": 100, "compactness": 10.0, "slic_zero": True,
})
CHOICES = MappingProxyType({
    "order": ("morf", "lerf"), "masker": MASKERS, "activation": ("softmax", "logits"),
    "slic_zero": (True, False),
})
REFERENCE = (
    "Gevaert et al., Evaluating feature attribution methods in the image domain, Machine Learning 2024 "
    "(attribench); Rieger and Hansen, IROF: a low resource evaluation metric for explanation methods, "
    "arXiv 2003.08747 (2020)"
)


def irof(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Target output as SLIC segments are removed, most relevant first (see the module docstring)."""
    return _compute("irof", inputs, ctx, params, insert=False)


def iiof(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Target output as SLIC segments are revealed in the masked input (see the module docstring)."""
    return _compute("iiof", inputs, ctx, params, insert=True)


def segment_curve(
    model: nn.Module, x: Tensor, target: Tensor, attributions: Tensor, segments: Tensor, baseline: Tensor,
    steps: int, *, order: str, insert: bool, ctx: RunContext,
) -> tuple[Curves, Tensor]:
    """Curves (N, steps) for removing (or revealing) the top ``floor(t_s * S_i)`` segments of ``segments``
    (N, 1, H, W; ids contiguous from 0 per image), and S_i (N,). Steps 1-3 of the module docstring."""
    if attributions.numel() and not bool(torch.isfinite(attributions).all()):
        raise ValueError("attribution scores contain NaN or infinite values")
    n = x.shape[0]
    if n == 0:
        empty = x.new_empty((0, steps))
        return Curves(empty, empty.clone(), 0), torch.zeros(0, dtype=torch.long, device=x.device)
    scores, cumulative, count = _segment_ranking(attributions, segments, order)
    ts = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=x.device)
    k_segments = (ts * count[:, None] + 1e-9).floor().long().clamp(max=count[:, None])  # as step_counts
    ks = cumulative.gather(1, k_segments)  # pixels of the top k segments
    return _distinct_curve(model, x, target, scores, baseline, ks, insert=insert, ctx=ctx), count


def _segment_ranking(attributions: Tensor, segments: Tensor, order: str) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel scores -rank(segment) (N, P); pixels in the top k segments, k = 0..S_max (N, S_max + 1); S_i."""
    n = attributions.shape[0]
    ids = segments.reshape(n, -1)
    means = segment_means(attributions, segments)  # (N, S_max), NaN for ids an image lacks
    absent = torch.isnan(means)
    key = (means if order == "morf" else -means).masked_fill(absent, -math.inf)  # absent ids rank last
    ranked = top_order(key, key.shape[1])  # segment ids, first removed first; ties to the lower id
    positions = torch.arange(key.shape[1], device=key.device).expand(n, -1)
    rank = torch.empty_like(ranked).scatter_(1, ranked, positions)
    sizes = torch.zeros_like(ranked).scatter_add_(1, ids, torch.ones_like(ids))
    cumulative = F.pad(sizes.gather(1, ranked).cumsum(1), (1, 0))
    scores = -rank.gather(1, ids).float()  # exact: ranks are far below 2**24
    return scores, cumulative, (~absent).sum(1)


def _distinct_curve(
    model: nn.Module, x: Tensor, target: Tensor, scores: Tensor, baseline: Tensor, ks: Tensor, *,
    insert: bool, ctx: RunContext,
) -> Curves:
    """:func:`perturbation_curve` for per-sample non-decreasing ``ks`` (N, S), each distinct k evaluated once.

    Sample i's distinct k fill slots 0..w_i-1; samples of equal w_i go through the core together (its rows
    must be a rectangle), and each step reads its slot back."""
    n = ks.shape[0]
    new = torch.ones_like(ks, dtype=torch.bool)
    new[:, 1:] = ks[:, 1:] != ks[:, :-1]
    slot = new.long().cumsum(1) - 1
    width = slot[:, -1] + 1
    distinct = torch.zeros_like(ks).scatter_(1, slot, ks)
    logits = probs = None
    rows = 0
    for w in torch.unique(width).tolist():
        index = (width == w).nonzero()[:, 0]
        part = perturbation_curve(
            model, x[index], target[index], scores[index], baseline[index], distinct[index, :w],
            insert=insert, ctx=ctx,
        )
        if logits is None or probs is None:
            logits, probs = part.logits.new_zeros((n, ks.shape[1])), part.softmax.new_zeros((n, ks.shape[1]))
        logits[index, :w], probs[index, :w] = part.logits, part.softmax
        rows += part.forward_passes
    assert logits is not None and probs is not None
    return Curves(logits.gather(1, slot), probs.gather(1, slot), rows)


def _compute(
    name: str, inputs: MetricInputs, ctx: RunContext, params: dict[str, Any], *, insert: bool
) -> MetricResult:
    p = _resolve(name, params)
    x = inputs.x
    if inputs.attributions.shape != x.shape:
        raise ValueError(
            f"{name}: attributions shape {list(inputs.attributions.shape)} differs from input {list(x.shape)}"
        )
    segments = slic_segments(x, p["n_segments"], p["compactness"], p["slic_zero"])
    baseline = masked_baseline(x, p["masker"], ctx.generator(), value=p["mask_value"])
    curves, count = segment_curve(
        inputs.model, x, inputs.target, inputs.attributions, segments, baseline, p["steps"], order=p["order"],
        insert=insert, ctx=ctx,
    )
    return _result(curves, count, p, insert=insert)


def _resolve(name: str, params: dict[str, Any]) -> dict[str, Any]:
    p = resolve_params(name, params, DEFAULTS, CHOICES)
    if p["steps"] < 2:
        raise ParamError(f"{name}: parameter 'steps' = {p['steps']!r} must be at least 2 (t = 0 and t = 1)")
    if p["n_segments"] < 1:
        raise ParamError(f"{name}: parameter 'n_segments' = {p['n_segments']!r} must be at least 1")
    if not p["compactness"] > 0:
        raise ParamError(f"{name}: parameter 'compactness' = {p['compactness']!r} must be positive")
    return p


def normalised_area(softmax: Tensor, *, insert: bool) -> Tensor:
    """Rieger and Hansen: ``1 - trapz(p_s / p(x))`` (deletion) or ``trapz(p_s / p(x))`` (insertion) over
    t in [0, 1]; p(x) is the first point of a deletion curve and the last of an insertion curve."""
    p = softmax.double()
    original = (p[:, -1:] if insert else p[:, :1]).clamp_min(torch.finfo(torch.float32).tiny)
    area = torch.trapezoid(p / original, dx=1.0 / (p.shape[1] - 1), dim=1)
    return (area if insert else 1.0 - area).to(softmax.dtype)


def _result(curves: Curves, count: Tensor, p: dict[str, Any], *, insert: bool) -> MetricResult:
    auc_softmax, auc_logits = curves.softmax.mean(dim=1), curves.logits.mean(dim=1)
    softmax = p["activation"] == "softmax"
    prob_bounds, logit_bounds = (0.0, 1.0), (None, None)
    area = "auc_normalised" if insert else "aoc_normalised"
    return MetricResult(
        outputs={
            "auc": auc_softmax if softmax else auc_logits,
            "auc_softmax": auc_softmax, "auc_logits": auc_logits,
            "curve_softmax": curves.softmax, "curve_logits": curves.logits,
            area: normalised_area(curves.softmax, insert=insert), "segments": count,
        },
        primary="auc",
        higher_is_better=(p["order"] == "morf") == insert,
        bounds={
            "auc": prob_bounds if softmax else logit_bounds, "auc_softmax": prob_bounds,
            "auc_logits": logit_bounds, "curve_softmax": prob_bounds, "curve_logits": logit_bounds,
            area: (0.0, None) if insert else (None, 1.0), "segments": (1.0, None),
        },
        forward_passes=curves.forward_passes,
        info={
            "steps": p["steps"], "order": p["order"], "masker": p["masker"], "activation": p["activation"],
            "n_segments": p["n_segments"], "slic_zero": p["slic_zero"],
        },
    )


def _register(name: str, compute: Any, description: str) -> None:
    METRICS.add(name, MetricSpec(
        name=name, family="faithfulness", compute=compute, modalities=frozenset({"image"}),
        defaults=DEFAULTS, choices=CHOICES, description=description, reference=REFERENCE,
    ))


_register("irof", irof, "Target output as the most (MoRF) / least (LeRF) relevant SLIC segments are masked")
_register("iiof", iiof,
          "Target output as the most / least relevant SLIC segments are revealed in the masked input")
