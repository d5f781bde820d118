"""LeRF / MoRF pixel perturbation without retraining: how much does the predicted class's probability move?

Definition (Samek, Binder, Montavon, Lapuschkin & Müller, "Evaluating the visualization of what a deep neural
network has learned", IEEE TNNLS 2017, as the ROAR port's ``pixel_perturbation_analysis``; github
saurabheights/ROAR; seed-systems.md §4):

1. The class c = argmax f(x) the model originally predicts, and its softmax probability p(x).
2. Pixels ranked by one score each (``max_abs``: the largest |a| over channels, as the port; ``mean``: the
   channel mean of the signed attribution); ties keep index order. MoRF removes the top ``floor(f · P)``
   pixels (all channels), LeRF the bottom ones, for every fraction f (default 1, 2, ..., 10%).
3. Removed pixels take the per-channel mean of the training images (0 in normalised space).
4. Score per fraction: ``|p(x) − p(x̃)| / p(x) × 100``, the relative change of the predicted class's
   probability in percent; ``mean_change`` averages it over the fractions (primary).

A sensible ranking moves the prediction much under MoRF and little under LeRF: MoRF higher is better, LeRF
lower is better. The rows are built and run by :func:`harness.metrics.perturbation.perturbation_curve`
(batched, chunked under the budgets).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

from harness.metrics.minimal_subset import predicted_class
from harness.metrics.perturbation import perturbation_curve, pixel_scores
from harness.metrics.roar import channel_mean
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    RunContext,
    fractions_param,
    resolve_params,
)

DEFAULTS = MappingProxyType({
    "order": "morf", "fractions": [0.01 * k for k in range(1, 11)], "pixel_aggregation": "max_abs",
})
CHOICES = MappingProxyType({"order": ("morf", "lerf"), "pixel_aggregation": ("max_abs", "mean")})


def _resolve(params: dict[str, Any]) -> dict[str, Any]:
    p = resolve_params("metric pixel_perturbation", params, DEFAULTS, CHOICES)
    p["fractions"] = fractions_param("metric pixel_perturbation", "fractions", p["fractions"], include_one=True)
    return p


def pixel_perturbation(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """LeRF / MoRF relative change of the predicted class's probability (module docstring)."""
    p = _resolve(dict(params))
    if inputs.data is None:
        raise ValueError("pixel_perturbation: needs inputs.data (the training images' per-channel mean)")
    x = inputs.x
    if x.ndim != 4:
        raise ValueError(f"pixel_perturbation: needs images (N, C, H, W), got shape {list(x.shape)}")
    pixels = math.prod(x.shape[2:])
    fill = channel_mean(inputs.data.x_train).to(x.device, x.dtype)
    baseline = fill.view(1, -1, 1, 1).expand_as(x).contiguous()
    scores = pixel_scores(inputs.attributions, p["pixel_aggregation"])
    if p["order"] == "lerf":
        scores = -scores
    counts = [0] + [math.floor(f * pixels + 1e-9) for f in p["fractions"]]
    target = predicted_class(inputs.model, x, ctx)
    curves = perturbation_curve(inputs.model, x, target, scores, baseline, counts, insert=False, ctx=ctx)
    original = curves.softmax[:, :1].double()
    change = ((original - curves.softmax[:, 1:].double()).abs() / original.clamp_min(1e-12)) * 100.0
    return MetricResult(
        outputs={"relative_change": change, "mean_change": change.mean(dim=1),
                 "probability": curves.softmax[:, 1:].double(), "original_probability": original[:, 0]},
        primary="mean_change", higher_is_better=p["order"] == "morf",
        bounds={"relative_change": (0.0, None), "mean_change": (0.0, None), "probability": (0.0, 1.0),
                "original_probability": (0.0, 1.0)},
        forward_passes=curves.forward_passes,
        info={"fractions": p["fractions"], "order": p["order"], "counts": counts[1:], "predicted": target.tolist()},
    )


METRICS.add("pixel_perturbation", MetricSpec(
    name="pixel_perturbation", family="roar", compute=pixel_perturbation, modalities=frozenset({"image"}),
    reference="Samek et al., Evaluating the visualization of what a deep neural network has learned, IEEE TNNLS "
              "2017; ROAR port (github saurabheights/ROAR) LeRF/MoRF",
    needs_data=True, defaults=dict(DEFAULTS), choices=dict(CHOICES),
    description=("LeRF / MoRF without retraining: remove the bottom / top fraction of pixels (1..10%) to the "
                 "per-channel training mean; relative change |p(x) - p(x~)| / p(x) x 100 of the originally "
                 "predicted class's probability. MoRF higher is better, LeRF lower."),
))
