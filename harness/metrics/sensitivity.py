"""Max-Sensitivity and Avg-Sensitivity: how much the attribution moves under small uniform input noise.

Definition (Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS 2019; attribench:
Gevaert et al., Machine Learning 2024, ``attribench/functional/metrics/_max_sensitivity.py``), per sample,
over ``n_perturbations`` (attribench: 50) draws u ~ U[-r, r] i.i.d. per input value (r = ``radius``, 0.1):

    a_hat(z) = a(z) / ||a(z)||_inf   (``normalize``, attribench; an all-zero attribution stays 0),
    s(u) = ||a_hat(x + u) - a_hat(x)||_2,
    max_sensitivity = max_u s(u),   avg_sensitivity = mean_u s(u).

Lower is better. ``a(x)`` is the stored attribution (as attribench and Quantus; captum re-attributes x);
``a(x + u)`` comes from ``inputs.explain`` (the case's method) on batches of perturbed rows. The relative
versions divide by ``||a_hat(x)||_2`` (1 if it is 0): that is captum's ``sensitivity_max`` (``norm_ord =
"fro"``) and Quantus' Max/Avg-Sensitivity (Frobenius numerator and denominator), which do not normalise the
attribution: set ``normalize = false`` to match them exactly.

Both metrics compute all four outputs; they differ in the primary one. The model rows that ``explain`` runs
(its forward and backward passes, e.g. 25 per row for integrated gradients) are not counted in
``forward_passes`` (0: this metric runs no forward pass of its own); ``info["explained_rows"]`` = N *
``n_perturbations`` says how many rows were re-attributed. Noise comes from per-sample CPU streams
(:mod:`harness.metrics.rows`), so it does not depend on the device or chunking.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from harness.metrics.rows import SampleStreams, check_inputs, row_samples
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

DEFAULTS = MappingProxyType({"n_perturbations": 50, "radius": 0.1, "normalize": True})
REFERENCE = (
    "Yeh et al., On the (in)fidelity and sensitivity of explanations, NeurIPS 2019; Gevaert et al., "
    "Evaluating feature attribution methods in the image domain, Machine Learning 2024 (attribench)"
)
OFFSET = 0x3A85
"""``ctx.generator`` offset of the noise streams."""


def noise_streams(x: Tensor, ctx: RunContext, n_perturbations: int, radius: float) -> SampleStreams:
    """u ~ U[-radius, radius] of x's sample shape, ``n_perturbations`` rows per sample (CPU)."""
    shape, dtype = x.shape[1:], x.dtype
    return SampleStreams(
        ctx, OFFSET, x.shape[0], n_perturbations, math.prod(x.shape[1:]),
        lambda sample, g, k: torch.rand((k, *shape), generator=g, dtype=dtype) * (2 * radius) - radius,
    )


def draw_noise(x: Tensor, ctx: RunContext, **params: Any) -> Tensor:
    """All noise u the metrics add to ``x`` with ``params``: (N, n_perturbations, *x.shape[1:]), on x's
    device."""
    p = _resolve("max_sensitivity", params)
    rows = noise_streams(x, ctx, p["n_perturbations"], p["radius"]).take(0, x.shape[0] * p["n_perturbations"])
    return rows.reshape(x.shape[0], p["n_perturbations"], *x.shape[1:]).to(x.device)


def normalized(attributions: Tensor, normalize: bool) -> Tensor:
    """Flattened (N, D) attributions, divided by their max |a| per row if ``normalize`` (0 stays 0)."""
    flat = attributions.flatten(1)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    if not normalize:
        return flat
    scale = flat.abs().amax(1, keepdim=True)
    return flat / torch.where(scale > 0, scale, 1.0)


def sensitivities(inputs: MetricInputs, ctx: RunContext, p: dict[str, Any]) -> Tensor:
    """``||a_hat(x + u) - a_hat(x)||_2`` for every sample and perturbation, (N, n_perturbations)."""
    x, explain, per_sample = inputs.x, inputs.explain, p["n_perturbations"]
    if explain is None:
        raise ValueError("max/avg_sensitivity: needs inputs.explain to re-attribute perturbed inputs; "
                         "none was given")
    reference = normalized(inputs.attributions, p["normalize"])
    streams = noise_streams(x, ctx, per_sample, p["radius"])
    total = x.shape[0] * per_sample
    chunk = ctx.rows_per_chunk(math.prod(x.shape[1:]), x.element_size())
    out: list[Tensor] = [reference.new_empty(0)]
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        samples = row_samples(start, stop, per_sample, x.device)
        rows = x.index_select(0, samples) + streams.take(start, stop).to(x.device)
        moved = explain(rows, inputs.target[samples]).detach().to(x.device)
        if moved.shape != rows.shape:
            raise ValueError(f"max/avg_sensitivity: explain returned shape {list(moved.shape)} for inputs "
                             f"{list(rows.shape)}")
        moved = normalized(moved, p["normalize"]) - reference.index_select(0, samples)
        out.append(torch.linalg.vector_norm(moved, dim=1))
    return torch.cat(out).reshape(x.shape[0], per_sample)


def _compute(name: str, inputs: MetricInputs, ctx: RunContext, params: dict[str, Any]) -> MetricResult:
    p = _resolve(name, params)
    check_inputs(name, inputs.x, inputs.target, inputs.attributions)
    s = sensitivities(inputs, ctx, p)
    norm = torch.linalg.vector_norm(normalized(inputs.attributions, p["normalize"]), dim=1)
    relative = s / torch.where(norm > 0, norm, 1.0)[:, None]
    outputs = {
        "max_sensitivity": s.amax(1), "avg_sensitivity": s.mean(1),
        "max_relative": relative.amax(1), "avg_relative": relative.mean(1),
    }
    return MetricResult(
        outputs=outputs, primary=name, higher_is_better=False,
        bounds={key: (0.0, None) for key in outputs}, forward_passes=0,
        info={"explained_rows": s.numel(), "n_perturbations": p["n_perturbations"], "radius": p["radius"],
              "normalize": p["normalize"]},
    )


def max_sensitivity(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Max over perturbations of the attribution change (module docstring)."""
    return _compute("max_sensitivity", inputs, ctx, params)


def avg_sensitivity(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Mean over perturbations of the attribution change (module docstring)."""
    return _compute("avg_sensitivity", inputs, ctx, params)


def _resolve(name: str, params: dict[str, Any]) -> dict[str, Any]:
    p = resolve_params(name, params, DEFAULTS)
    if p["n_perturbations"] < 1:
        raise ParamError(f"{name}: parameter 'n_perturbations' = {p['n_perturbations']!r} must be at least 1")
    if not p["radius"] >= 0:
        raise ParamError(f"{name}: parameter 'radius' = {p['radius']!r} must be non-negative")
    return p


for _name, _compute_fn, _what in (("max_sensitivity", max_sensitivity, "Largest"),
                                  ("avg_sensitivity", avg_sensitivity, "Mean")):
    METRICS.add(_name, MetricSpec(
        name=_name, family="robustness", compute=_compute_fn, modalities=frozenset({"image", "tabular"}),
        defaults=DEFAULTS, reference=REFERENCE, needs_explain=True,
        description=f"{_what} L2 change of the max-normalised attribution under U[-r, r] input noise",
    ))
