"""Minimal subset deletion / insertion: how few top-attributed pixels decide the model's prediction.

Definition (attribench: Gevaert et al., "Evaluating feature attribution methods in the image domain",
Machine Learning 2024, arXiv 2202.12270, ``attribench/functional/metrics/minimal_subset``):

1. Pixel scores and ranking as deletion: the channel mean of the signed attribution (``mean``, attribench) or
   ``max_c |a_c|`` (``max_abs``), highest first, ties to the lower pixel index.
2. Grid: ``k_j = floor(j * P / steps)`` for j = 0..steps, P pixels; each distinct k is tried once, ascending.
3. The original class c = argmax f(x): the model's prediction (as attribench), not the attributed target.
4. Deletion: the smallest k whose top k pixels (all channels) replaced by the masker's baseline give
   ``argmax != c``; P if none does. Insertion: the smallest k whose top k pixels of x, in the fully masked
   input, give ``argmax == c``; P if none below P does. ``argmax`` is torch's (the first of equal maxima).
   Deletion never evaluates k = 0 (x itself: the prediction is c) nor k = P (a flip there reports P, as no
   flip does); insertion never evaluates k = P (x itself).
5. Outputs: ``fraction`` = k / P in [0, 1] (primary, lower is better), ``count`` = k, ``found`` = 1 where a
   k below P met the criterion.

Batched early exit: all samples walk the grid together; each wave sends the next w grid points of every
sample not yet decided through the shared core (:func:`perturbation_curve`, with a model wrapper whose output
is the one-hot argmax, so the target "logit" says whether the predicted class is c), then drops the samples
that hit. w = min(s, chunk // undecided), at least 1, after s grid points (chunk = ``ctx.rows_per_chunk``):
a wave never adds more rows per sample than the sample has used so far (a doubling search) nor more than a
chunk in all. The rows needed are N (for c) plus, per sample, the grid points up to its first hit
(``info["rows_needed"]``, the floor); a sample that hits inside a wave wastes the rest of it, so the rows
sent are at most twice the floor, and exactly the floor at ``batch_size`` = 1. Values do not depend on w.

Deviations from attribench, and why:

- Grid: attribench steps by ``d = int(P / steps)`` pixels from 0 (k = 0, d, ..., (steps - 1) d), so the top
  ``P - (steps - 1) d`` pixels are never tried (91 of 784 at 100 steps) and a flip there reports P; here the
  grid spans 0..P evenly. attribench also evaluates deletion's k = 0 (never a flip) and needs
  ``2 <= steps <= P``; here ``steps >= 1`` and a grid with repeated k (small P) tries each k once.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.metrics.maskers import MASKERS, masked_baseline
from harness.metrics.perturbation import as_pixels, eval_mode, perturbation_curve, pixel_scores, step_counts
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
    "masker": "constant", "steps": 100, "pixel_aggregation": "mean", "mask_value": 0.0,
})
CHOICES = MappingProxyType({"masker": MASKERS, "pixel_aggregation": ("mean", "max_abs")})
REFERENCE = (
    "Gevaert et al., Evaluating feature attribution methods in the image domain, Machine Learning 2024 "
    "(attribench)"
)


def minimal_subset_deletion(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Fewest top pixels whose masking changes the prediction (see the module docstring)."""
    return _compute("minimal_subset_deletion", inputs, ctx, params, insert=False)


def minimal_subset_insertion(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Fewest top pixels that, alone in the masked input, restore the prediction (module docstring)."""
    return _compute("minimal_subset_insertion", inputs, ctx, params, insert=True)


class IsPredicted(nn.Module):
    """``model`` with the one-hot of its argmax as output: class c's "logit" is 1 exactly where c is the
    predicted class."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = _logits(self.model, x)
        return F.one_hot(out.argmax(dim=1), out.shape[1]).to(out.dtype)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return (rows, classes), got {list(out.shape)} for {x.shape[0]} rows"
        )
    return out


def first_hits(
    model: nn.Module, x: Tensor, cls: Tensor, scores: Tensor, baseline: Tensor, ks: list[int], *,
    insert: bool, ctx: RunContext,
) -> tuple[Tensor, int, int]:
    """Per sample, the index into ascending distinct ``ks`` of the first k whose perturbed input is predicted
    as ``cls`` (insertion) or not (deletion), ``len(ks)`` if none; the rows sent through the model; the rows
    needed (each sample's grid points up to its first hit)."""
    n = x.shape[0]
    found = torch.full((n,), len(ks), dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    chunk = ctx.rows_per_chunk(as_pixels(x)[0].numel(), x.element_size())
    indicator, start, rows = IsPredicted(model), 0, 0
    while active.numel() and start < len(ks):
        width = min(len(ks) - start, max(1, min(start, chunk // active.numel())))
        curves = perturbation_curve(
            indicator, x[active], cls[active], scores[active], baseline[active], ks[start: start + width],
            insert=insert, ctx=ctx,
        )
        rows += curves.forward_passes
        predicted = curves.logits > 0.5
        hit = predicted if insert else ~predicted
        done = hit.any(dim=1)
        found[active[done]] = start + hit[done].long().argmax(dim=1)  # argmax: the first True
        active, start = active[~done], start + width
    needed = int(torch.where(found < len(ks), found + 1, len(ks)).sum())
    return found, rows, needed


def predicted_class(model: nn.Module, x: Tensor, ctx: RunContext) -> Tensor:
    """argmax f(x) (N,), a chunk of ``ctx.rows_per_chunk`` rows at a time, in eval mode."""
    chunk = ctx.rows_per_chunk(as_pixels(x)[0].numel(), x.element_size())
    with eval_mode(model), torch.inference_mode():
        parts = [_logits(model, x[s: s + chunk]).argmax(dim=1) for s in range(0, x.shape[0], chunk)]
    return torch.cat(parts).clone() if parts else torch.zeros(0, dtype=torch.long, device=x.device)


def _compute(
    name: str, inputs: MetricInputs, ctx: RunContext, params: dict[str, Any], *, insert: bool
) -> MetricResult:
    p = resolve_params(name, params, DEFAULTS, CHOICES)
    if p["steps"] < 1:
        raise ParamError(f"{name}: parameter 'steps' = {p['steps']!r} must be at least 1")
    x = inputs.x
    if inputs.attributions.shape != x.shape:
        raise ValueError(
            f"{name}: attributions shape {list(inputs.attributions.shape)} differs from input {list(x.shape)}"
        )
    if x.numel() and not bool(torch.isfinite(inputs.attributions).all()):
        raise ValueError("attribution scores contain NaN or infinite values")
    scores = pixel_scores(inputs.attributions, p["pixel_aggregation"])
    num_pixels = scores.shape[1]
    grid = sorted(set(step_counts(num_pixels, p["steps"] + 1, 1.0)))
    ks = [k for k in grid if (k > 0 or insert) and k < num_pixels]
    baseline = masked_baseline(x, p["masker"], ctx.generator(), value=p["mask_value"])
    cls = predicted_class(inputs.model, x, ctx)
    found, rows, needed = first_hits(inputs.model, x, cls, scores, baseline, ks, insert=insert, ctx=ctx)
    count = torch.tensor(ks + [num_pixels], dtype=torch.long, device=x.device)[found]
    return MetricResult(
        outputs={
            "fraction": count.float() / num_pixels, "count": count, "found": (found < len(ks)).float(),
        },
        primary="fraction",
        higher_is_better=False,
        bounds={"fraction": (0.0, 1.0), "count": (0.0, float(num_pixels)), "found": (0.0, 1.0)},
        forward_passes=x.shape[0] + rows,
        info={"k": ks, "rows_needed": x.shape[0] + needed, "masker": p["masker"], "steps": p["steps"]},
    )


def _register(name: str, compute: Any, description: str) -> None:
    METRICS.add(name, MetricSpec(
        name=name, family="faithfulness", compute=compute, modalities=frozenset({"image"}),
        defaults=DEFAULTS, choices=CHOICES, description=description, reference=REFERENCE,
    ))


_register(
    "minimal_subset_deletion", minimal_subset_deletion,
    "Fraction of top-attributed pixels whose masking first changes the prediction",
)
_register(
    "minimal_subset_insertion", minimal_subset_insertion,
    "Fraction of top-attributed pixels that, alone in the masked input, first restore the prediction",
)
