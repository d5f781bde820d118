"""Deletion and insertion curves (MoRF / LeRF), batched over samples x steps.

Definition (attribench: Gevaert et al., "Evaluating feature attribution methods in the image domain",
Machine Learning 2024, arXiv 2202.12270; after Petsiuk et al., "RISE: Randomized input sampling for
explanation of black-box models", BMVC 2018):

1. Pixel scores: a (C, H, W) attribution becomes one score per pixel, the channel mean of the signed
   attribution (``mean``, attribench) or ``max_c |a_c|`` (``max_abs``). A tabular (N, F) input has F pixels of
   one channel each.
2. Ranking: pixels sorted by score, highest first for MoRF and lowest first for LeRF; ties go to the lower
   pixel index first (a stable sort), so results are deterministic.
3. Steps: ``k_s = floor(t_s * P)`` for ``t_s`` in ``linspace(0, max_fraction, steps)``, P pixels
   (attribench: ``max_fraction = 0.15``, 100 steps; Petsiuk's deletion: ``max_fraction = 1``).
4. Deletion replaces the first ``k_s`` ranked pixels (all channels) by the masker's baseline; insertion
   starts from the fully masked input and restores the first ``k_s`` ranked pixels of the original.
5. Curve: the target's logit and softmax probability after each step; AUC = mean of the curve over the
   steps (attribench's definition; no trapezoid).

Higher is better for deletion LeRF and insertion MoRF, lower for deletion MoRF and insertion LeRF.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

from harness.metrics.maskers import MASKERS, masked_baseline
from harness.metrics.perturbation import Curves, perturbation_curve, pixel_scores, step_counts
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
    "order": "morf", "masker": "constant", "steps": 100, "max_fraction": 0.15, "activation": "softmax",
    "pixel_aggregation": "mean", "mask_value": 0.0,
})
CHOICES = MappingProxyType({
    "order": ("morf", "lerf"), "masker": MASKERS, "activation": ("softmax", "logits"),
    "pixel_aggregation": ("mean", "max_abs"),
})
REFERENCE = (
    "Gevaert et al., Evaluating feature attribution methods in the image domain, Machine Learning 2024 "
    "(attribench); Petsiuk et al., RISE, BMVC 2018"
)


def deletion(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Deletion curve and AUC: remove ranked pixels from the input (see the module docstring)."""
    return _compute("deletion", inputs, ctx, params, insert=False)


def insertion(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Insertion curve and AUC: reveal ranked pixels in the fully masked input (see the module docstring)."""
    return _compute("insertion", inputs, ctx, params, insert=True)


def _compute(
    name: str, inputs: MetricInputs, ctx: RunContext, params: dict[str, Any], *, insert: bool
) -> MetricResult:
    p = _resolve(name, params)
    x = inputs.x
    if inputs.attributions.shape != x.shape:
        raise ValueError(
            f"{name}: attributions shape {list(inputs.attributions.shape)} differs from input {list(x.shape)}"
        )
    scores = pixel_scores(inputs.attributions, p["pixel_aggregation"])
    scores = scores if p["order"] == "morf" else -scores  # stable: ties stay in index order either way
    ks = step_counts(scores.shape[1], p["steps"], p["max_fraction"])
    baseline = masked_baseline(x, p["masker"], ctx.generator(), value=p["mask_value"])
    curves = perturbation_curve(inputs.model, x, inputs.target, scores, baseline, ks, insert=insert, ctx=ctx)
    return _result(curves, p, ks, higher_is_better=(p["order"] == "morf") == insert)


def _resolve(name: str, params: dict[str, Any]) -> dict[str, Any]:
    p = resolve_params(name, params, DEFAULTS, CHOICES)
    if p["steps"] < 1:
        raise ParamError(f"{name}: parameter 'steps' = {p['steps']!r} must be at least 1")
    if not 0.0 <= p["max_fraction"] <= 1.0:
        raise ParamError(f"{name}: parameter 'max_fraction' = {p['max_fraction']!r} must lie in [0, 1]")
    return p


def _result(curves: Curves, p: dict[str, Any], ks: list[int], *, higher_is_better: bool) -> MetricResult:
    auc_softmax, auc_logits = curves.softmax.mean(dim=1), curves.logits.mean(dim=1)
    softmax = p["activation"] == "softmax"
    prob_bounds, logit_bounds = (0.0, 1.0), (None, None)
    return MetricResult(
        outputs={
            "auc": auc_softmax if softmax else auc_logits,
            "auc_softmax": auc_softmax, "auc_logits": auc_logits,
            "curve_softmax": curves.softmax, "curve_logits": curves.logits,
        },
        primary="auc",
        higher_is_better=higher_is_better,
        bounds={
            "auc": prob_bounds if softmax else logit_bounds, "auc_softmax": prob_bounds,
            "auc_logits": logit_bounds, "curve_softmax": prob_bounds, "curve_logits": logit_bounds,
        },
        forward_passes=curves.forward_passes,
        info={"k": ks, "order": p["order"], "masker": p["masker"], "activation": p["activation"]},
    )


def _register(name: str, compute: Any, description: str) -> None:
    METRICS.add(name, MetricSpec(
        name=name, family="faithfulness", compute=compute, modalities=frozenset({"image", "tabular"}),
        defaults=DEFAULTS, choices=CHOICES, description=description, reference=REFERENCE,
    ))


_register("deletion", deletion, "Target output as the top (MoRF) / bottom (LeRF) pixels are masked")
_register("insertion", insertion, "Target output as the top / bottom pixels are revealed in the masked input")
