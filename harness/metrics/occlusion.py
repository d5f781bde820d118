"""Occlusion by a ranking, without retraining, averaged over independently trained models: the protocol of the
loss-gradient study.

Definition (Subramanian, Gururani, Benetos & Sandler, "Anomalous behaviour in loss-gradient based
interpretability methods", ICLR 2021 RobustML workshop, arXiv 2207.07769; github
VinodS7/investigate-gradients ``experiments_mnist.py`` / ``ROAR_predict.py``; seed-systems.md §5):

1. Each of ``models`` R models (replica 0: the case's model; replica r > 0: the same architecture and recipe
   trained on the same data from seed r, through ``fit``) attributes the test inputs for their TRUE label with
   the case's method (the study's methods are :mod:`harness.methods.loss_gradient`; ``random`` is its control).
2. The ranking is flattened per pixel (the channel mean of the signed attribution; the study's inputs have one
   channel, where this is the value itself). ``order`` positive occludes the k most positive first (the seed's
   ``--ROAR 1``), negative the k most negative first (``--ROAR 0``); ties keep index order.
3. The k = ``floor(f · P)`` occluded pixels (every channel) take the ``replacement``: ``mean`` = the per-channel
   training mean (0 in normalised space), ``dataset_min`` = the training minimum, ``image_min`` / ``image_max``
   = the image's own minimum / maximum, ``custom`` = ``value``. [bug] the seed's ``image_min`` is 3 × the
   minimum; this is the intended true minimum.
4. Score of each occluded test set: accuracy, or for a binary task whose test samples are frames of
   recordings (``DataBundle.groups_test``; the singing-voice task) the AUROC of p(class 1) after a median
   filter of ``median_window`` samples within each recording (:mod:`harness.metrics.frames`).

Outputs (first axis: model replica): ``score`` (R, K), ``clean_score`` (R,) un-occluded, ``change`` (R,) = mean
over k of score − clean (primary; lower is better: occluding what a method calls important should hurt; the
study's anomaly is a positive change), ``loss`` (R, K) and ``clean_loss`` (R,), the mean cross-entropy with the
true label (the first-order argument: ΔL ≈ Σ g_i (r_i − x_i)).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from harness.metrics.perturbation import eval_mode, pixel_ranks, pixel_scores
from harness.metrics.roar import UNALTERED, channel_mean
from harness.specs import (
    METRICS,
    DataBundle,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    fractions_param,
    resolve_params,
)

REPLACEMENTS = ("mean", "dataset_min", "image_min", "image_max", "custom")
DEFAULTS = MappingProxyType({
    "order": "positive", "replacement": "mean", "value": 0.0, "fractions": [0.1, 0.3, 0.5, 0.7, 0.9],
    "models": 1, "samples": 0, "score": "auto", "median_window": 1,
})
CHOICES = MappingProxyType({
    "order": ("positive", "negative"), "replacement": REPLACEMENTS, "score": ("auto", "accuracy", "auroc"),
})


def _resolve(params: dict[str, Any]) -> dict[str, Any]:
    where = "metric loss_gradient_occlusion"
    p = resolve_params(where, params, DEFAULTS, CHOICES)
    p["fractions"] = fractions_param(where, "fractions", p["fractions"], include_one=True)
    for key, low in (("models", 1), ("samples", 0), ("median_window", 1)):
        if p[key] < low:
            raise ParamError(f"{where}: parameter {key!r} = {p[key]!r} must be at least {low}")
    return p


def replacement_values(x: Tensor, data: DataBundle, replacement: str, value: float) -> Tensor:
    """(N, C, 1...) or broadcastable values the occluded inputs take (module docstring, step 3)."""
    n, channels, extra = x.shape[0], x.shape[1], [1] * (x.ndim - 2)
    if replacement == "mean":
        return channel_mean(data.x_train).to(x).view(1, channels, *extra)
    if replacement == "dataset_min":
        return data.x_train.min().to(x).view(1, 1, *extra)
    if replacement == "custom":
        return torch.full((1, 1, *extra), value, dtype=x.dtype, device=x.device)
    flat = x.flatten(1)
    per_image = flat.amin(dim=1) if replacement == "image_min" else flat.amax(dim=1)
    return per_image.view(n, 1, *extra)


def occluded(x: Tensor, rank: Tensor, count: int, fill: Tensor) -> Tensor:
    """``x`` with the pixels of rank < ``count`` (every channel) set to ``fill``."""
    mask = (rank < count).view(x.shape[0], 1, *x.shape[2:])
    return torch.where(mask, fill.expand_as(x), x)


def logits_of(model: nn.Module, x: Tensor, ctx: RunContext) -> Tensor:
    rows = ctx.rows_per_chunk(x[0].numel())
    with eval_mode(model), torch.inference_mode():
        return torch.cat([model(chunk) for chunk in x.split(rows)]).clone()


def score_of(logits: Tensor, y: Tensor, kind: str, groups: Tensor | None, window: int) -> float:
    """Accuracy, or the AUROC of p(class 1) median-filtered within recordings."""
    if kind == "accuracy":
        return float((logits.argmax(dim=1) == y).double().mean())
    from harness.metrics.frames import auroc, median_filter

    positive = logits.double().softmax(dim=1)[:, 1]
    if groups is not None and window > 1:
        positive = median_filter(positive, groups.to(positive.device), window)
    return float(auroc(positive, y))


def occlusion(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Occlusion accuracy / AUROC curves by the case's ranking, over model replicas (module docstring)."""
    p = _resolve(dict(params))
    data = inputs.data
    if data is None or inputs.fit is None or inputs.explainer is None:
        raise ValueError("loss_gradient_occlusion: needs inputs.data, fit and explainer (a needs_training metric)")
    n = len(data.x_test) if p["samples"] == 0 else min(p["samples"], len(data.x_test))
    x, y = data.x_test[:n].to(ctx.device), data.y_test[:n].to(ctx.device)
    groups = data.groups_test[:n] if data.groups_test is not None else None
    kind = p["score"]
    if kind == "auto":
        kind = "auroc" if groups is not None and data.num_classes == 2 else "accuracy"
    if kind == "auroc" and data.num_classes != 2:
        raise ParamError(f"loss_gradient_occlusion: score 'auroc' needs a binary task, the data set has "
                         f"{data.num_classes} classes; choices: accuracy, auto")
    pixels = math.prod(x.shape[2:]) if x.ndim > 2 else x.shape[1]
    counts = [math.floor(f * pixels + 1e-9) for f in p["fractions"]]
    fill = replacement_values(x, data, p["replacement"], p["value"])
    models, k = p["models"], len(counts)
    score, loss = torch.zeros(models, k, dtype=torch.float64), torch.zeros(models, k, dtype=torch.float64)
    clean, clean_loss = torch.zeros(models, dtype=torch.float64), torch.zeros(models, dtype=torch.float64)
    rows = 0
    for replica in range(models):
        model = inputs.model if replica == 0 else inputs.fit(data, dict(UNALTERED), replica)
        values = inputs.explainer(model)(x, y)
        scores = pixel_scores(values, "mean")
        rank = pixel_ranks(scores if p["order"] == "positive" else -scores)
        for j, count in enumerate([0, *counts]):
            logits = logits_of(model, occluded(x, rank, count, fill) if count else x, ctx)
            rows += len(x)
            value = score_of(logits, y, kind, groups, p["median_window"])
            mean_loss = float(F.cross_entropy(logits.double(), y))
            if j == 0:
                clean[replica], clean_loss[replica] = value, mean_loss
            else:
                score[replica, j - 1], loss[replica, j - 1] = value, mean_loss
    unit, positive = (0.0, 1.0), (0.0, None)
    return MetricResult(
        outputs={"score": score, "clean_score": clean, "change": score.mean(dim=1) - clean, "loss": loss,
                 "clean_loss": clean_loss},
        primary="change", higher_is_better=False,
        bounds={"score": unit, "clean_score": unit, "change": (-1.0, 1.0), "loss": positive,
                "clean_loss": positive},
        forward_passes=rows,
        info={"fractions": p["fractions"], "order": p["order"], "replacement": p["replacement"],
              "score_name": kind, "models": models, "counts": counts, "samples": n},
    )


METRICS.add("loss_gradient_occlusion", MetricSpec(
    name="loss_gradient_occlusion", family="loss_gradient", compute=occlusion,
    modalities=frozenset({"image", "audio"}),
    reference="Subramanian et al., Anomalous behaviour in loss-gradient based interpretability methods, ICLR 2021 "
              "RobustML workshop (arXiv 2207.07769); github VinodS7/investigate-gradients",
    needs_training=True, per_sample=False, defaults=dict(DEFAULTS), choices=dict(CHOICES),
    description=("Occlude the k = f * P pixels ranked most positive (order positive) or most negative (negative) "
                 "by the case's method, attributing the TRUE label, with replacement mean | dataset_min | "
                 "image_min | image_max | custom (value); accuracy (or median-filtered frame AUROC for recordings) "
                 "per fraction, over `models` independently trained models. change = mean(score) - clean; a "
                 "positive change is the study's anomaly."),
))
