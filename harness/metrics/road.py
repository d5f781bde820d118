"""ROAD, Remove And Debias: the model's confidence as ranked pixels are removed and filled in by noisy linear
imputation, without retraining.

Definition (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022;
reference code github tleemann/road_evaluation ``road/road.py`` ``run_road``, ``road/imputed_dataset.py``):

1. Pixel scores: one score per pixel, the channel mean of the signed attribution (``mean``; the reference
   sums the channels and min-max normalises, which ranks the same) or ``max_c |a_c|`` (``max_abs``).
2. Ranking: highest score first for MoRF, lowest first for LeRF; ties go to the lower pixel index first (the
   reference breaks ties with a fixed 1e-4 Gaussian jitter instead).
3. For every fraction f (default 0.1, ..., 0.9 as in the paper) remove the first ``k = floor(f * P)`` ranked
   pixels of the P (all channels; at least one pixel stays) and fill them by noisy linear imputation
   (:mod:`harness.metrics.imputation`; ``noise`` = 0.01 as the reference).
4. Outputs per sample: ``probability`` (N, K), the softmax probability of the target class on each imputed
   image; ``correct`` (N, K), 1 where the model's argmax is the target; ``auc`` (N,), the mean of
   ``probability`` over the K fractions (primary). MoRF: lower is better; LeRF: higher is better.

Deviation: the reference's LeRF at percentage p removes all but the top ``int(p * P)`` pixels (it keeps a
fraction p); here LeRF at fraction f removes the ``floor(f * P)`` lowest-ranked pixels, as the MoRF curve
removes the highest, so both curves share the x axis "fraction removed". The reference's LeRF at p is this
LeRF at f = 1 - p (up to rounding). The class is the case's ``target`` for both outputs (the reference takes
the probability of the class predicted on the clean image and the accuracy against the label).

Noise: row (sample i, fraction k) draws its C * H * W normal values from sample i's own CPU stream
(:class:`harness.metrics.rows.SampleStreams`, offset 0): the same numbers under any batch or memory budget
and on any device (results then differ only by the model's and the solver's rounding). Imputed rows are built
a chunk at a time (``ctx.rows_per_chunk``, float64 solver buffers) and sent through the model under
``inference_mode``. ``forward_passes`` = N * K.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from harness.metrics.imputation import linear_imputation
from harness.metrics.perturbation import eval_mode, pixel_ranks, pixel_scores
from harness.metrics.rows import Draw, SampleStreams, check_inputs, check_logits
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    fractions_param,
    resolve_params,
)

DEFAULTS = MappingProxyType({
    "order": "morf", "fractions": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "noise": 0.01,
    "pixel_aggregation": "mean",
})
CHOICES = MappingProxyType({"order": ("morf", "lerf"), "pixel_aggregation": ("mean", "max_abs")})
REFERENCE = (
    "Rong et al., A Consistent and Efficient Evaluation Strategy for Attribution Methods, ICML 2022 (ROAD); "
    "github tleemann/road_evaluation"
)
SOLVER_COPIES = 16
"""Float64 buffers per row while imputing (values, mask, right-hand side, the CG vectors, padded copies)."""


def road(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Target probability and correctness after removing and imputing each fraction of the ranked pixels
    (module docstring: Rong et al. 2022)."""
    p = _resolve(params)
    x, target = inputs.x, inputs.target
    check_inputs("road", x, target, inputs.attributions)
    if x.ndim != 4:
        raise ValueError(f"road: expected images (N, C, H, W), got shape {list(x.shape)}")
    n, height, width = x.shape[0], x.shape[2], x.shape[3]
    scores = pixel_scores(inputs.attributions, p["pixel_aggregation"])
    scores = scores if p["order"] == "morf" else -scores  # stable ranking: ties stay in index order
    ks = removal_counts(height * width, p["fractions"])
    probability, correct = _evaluate(inputs, ctx, scores, ks, p["noise"])
    bounds = (0.0, 1.0)
    return MetricResult(
        outputs={"probability": probability, "correct": correct, "auc": probability.mean(dim=1)},
        primary="auc",
        higher_is_better=p["order"] == "lerf",
        bounds={"probability": bounds, "correct": bounds, "auc": bounds},
        forward_passes=n * len(ks),
        info={"fractions": list(p["fractions"]), "order": p["order"], "k": ks, "noise": p["noise"]},
    )


def removal_counts(num_pixels: int, fractions: list[float]) -> list[int]:
    """``k = floor(f * P)`` per fraction (a 1e-9 slack keeps exact products such as 0.3 * 10 from rounding
    down), at most ``P - 1`` so that every image keeps a known pixel to impute from."""
    return [min(max(0, num_pixels - 1), math.floor(f * num_pixels + 1e-9)) for f in fractions]


def _evaluate(
    inputs: MetricInputs, ctx: RunContext, scores: Tensor, ks: list[int], noise: float
) -> tuple[Tensor, Tensor]:
    """(N, K) target probabilities and 0/1 correctness over all (sample, fraction) rows, chunk by chunk."""
    model, x, target = inputs.model, inputs.x, inputs.target
    n, steps, shape = x.shape[0], len(ks), x.shape[1:]
    total, row_numel = n * steps, math.prod(shape)
    chunk = ctx.rows_per_chunk(row_numel, element_size=8, copies=SOLVER_COPIES)
    k = torch.tensor(ks, device=x.device)
    streams = SampleStreams(ctx, 0, n, steps, row_numel, _normal(shape)) if noise > 0 and total else None
    probs, hits = [x.new_empty(0)], [x.new_empty(0)]
    with eval_mode(model), torch.inference_mode():
        rank = pixel_ranks(scores, max(ks))  # (N, P): pixels past the deepest k all get max(ks)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            rows = torch.arange(start, stop, device=x.device)
            sample = rows // steps
            removed = (rank[sample] < k[rows % steps, None]).view(stop - start, *shape[1:])
            imputed = linear_imputation(x[sample], removed)
            if streams is not None:
                draws = streams.take(start, stop).to(device=x.device, dtype=x.dtype)
                imputed += (noise * draws) * removed[:, None].to(x.dtype)
            out = model(imputed)
            check_logits(out, stop - start, int(target[sample].max()))
            probs.append(out.softmax(dim=1).gather(1, target[sample, None])[:, 0])
            hits.append((out.argmax(dim=1) == target[sample]).to(probs[-1].dtype))
    return torch.cat(probs).reshape(n, steps).clone(), torch.cat(hits).reshape(n, steps).clone()


def _normal(shape: torch.Size) -> Draw:
    """Draw ``count`` rows of standard normal values of ``shape`` (float32, CPU) from a sample's stream."""

    def draw(sample: int, generator: torch.Generator, count: int) -> Tensor:
        return torch.randn((count, *shape), generator=generator)

    return draw


def _resolve(params: dict[str, Any]) -> dict[str, Any]:
    p = resolve_params("road", params, DEFAULTS, CHOICES)
    fractions = fractions_param("road", "fractions", p["fractions"])
    if not math.isfinite(p["noise"]) or p["noise"] < 0.0:
        raise ParamError(f"road: parameter 'noise' = {p['noise']!r} must be a finite number >= 0")
    return {**p, "fractions": fractions}


METRICS.add("road", MetricSpec(
    name="road", family="roar", compute=road, modalities=frozenset({"image"}), defaults=DEFAULTS,
    choices=CHOICES, reference=REFERENCE, per_sample=True,
    description="Target probability as the top (MoRF) / bottom (LeRF) pixels are removed and imputed",
))
