"""Infidelity: how well ``<I, attr>`` predicts the output drop ``f(x) - f(x - I)`` for random perturbations I.

Definition (Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS 2019; attribench:
Gevaert et al., Machine Learning 2024, ``attribench/functional/metrics/infidelity``), per sample, over
``n_perturbations`` draws of I (attribench: 1000):

    d = <I, attr>,   delta = f(x) - f(x - I)   (f: target logit, or target softmax probability),
    beta = E[d * delta] / E[d^2]   (0 when E[d^2] = 0, e.g. an all-zero attribution),
    infidelity (normalized) = E[(beta * d - delta)^2]       (attribench; captum ``normalize=True``),
    infidelity (raw)        = E[(d - delta)^2]              (Yeh's original; captum's default).

Lower is better; both are >= 0. Perturbations (``perturbation``):

- ``noisy_baseline``: I = x - eps, eps ~ N(0, sigma^2) i.i.d. per value, so ``x - I`` is a noisy zero baseline
  (attribench ``NoisyBaselinePerturbationGenerator``, sigma 0.2).
- ``gaussian``: I = eps ~ N(0, sigma^2) (attribench ``GaussianPerturbationGenerator``).
- ``square``: I = x * m, m = 1 on a ``square_size`` x ``square_size`` square (all channels), so ``x - I`` is x
  with the square set to 0 (attribench ``SquarePerturbationGenerator``, side 5). Images only. The square's
  top-left corner is uniform over all ``(H - s + 1) * (W - s + 1)`` positions, drawn per sample and
  perturbation.
  attribench draws one corner per perturbation for the whole batch (results then depend on the batch) from
  ``integers(0, W - s)``, which never reaches the last row / column; both are fixed here.

``activation`` (default ``logits``, as Yeh and captum; attribench reports both) and ``normalize`` (default
true) pick the primary output ``infidelity``; all four combinations are output too, with ``beta``.

Random numbers come from per-sample CPU streams (:mod:`harness.metrics.rows`): the same seed gives the same
perturbations on every device and for every chunking. ``forward_passes`` = N (the unperturbed inputs) +
N * ``n_perturbations``.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from harness.metrics.perturbation import row_blocks
from harness.metrics.rows import SampleStreams, check_inputs, original_outputs, row_samples, target_outputs
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

PERTURBATIONS: tuple[str, ...] = ("noisy_baseline", "gaussian", "square")
DEFAULTS = MappingProxyType({
    "perturbation": "noisy_baseline", "n_perturbations": 1000, "sigma": 0.2, "square_size": 5,
    "activation": "logits", "normalize": True,
})
CHOICES = MappingProxyType({"perturbation": PERTURBATIONS, "activation": ("logits", "softmax")})
REFERENCE = (
    "Yeh et al., On the (in)fidelity and sensitivity of explanations, NeurIPS 2019; Gevaert et al., "
    "Evaluating feature attribution methods in the image domain, Machine Learning 2024 (attribench)"
)
OFFSET = 0x1AF1
"""``ctx.generator`` offset of the perturbation streams."""


class Perturbations:
    """The perturbations I of rows ``start:stop`` (sample-major, ``n_perturbations`` per sample), on x's
    device."""

    def __init__(self, x: Tensor, ctx: RunContext, p: dict[str, Any]):
        self.x, self.kind, self.sigma, self.side = x, p["perturbation"], p["sigma"], p["square_size"]
        self.per_sample = p["n_perturbations"]
        if self.kind == "square":
            if x.ndim != 4:
                raise ValueError(f"infidelity: the square perturbation needs images (N, C, H, W), got shape "
                                 f"{list(x.shape)}")
            if self.side > min(x.shape[2:]):
                raise ValueError(f"infidelity: square_size {self.side} exceeds the image size "
                                 f"{x.shape[2]} x {x.shape[3]}")
            h, w = x.shape[2] - self.side + 1, x.shape[3] - self.side + 1

            def corners(sample: int, g: torch.Generator, k: int) -> Tensor:
                top = torch.randint(0, h, (k,), generator=g)
                return torch.stack([top, torch.randint(0, w, (k,), generator=g)], 1)

            self.streams = SampleStreams(ctx, OFFSET, x.shape[0], self.per_sample, 2, corners)
        else:
            shape, dtype = x.shape[1:], x.dtype
            self.streams = SampleStreams(
                ctx, OFFSET, x.shape[0], self.per_sample, math.prod(x.shape[1:]),
                lambda sample, g, k: torch.randn((k, *shape), generator=g, dtype=dtype),
            )

    def rows(self, start: int, stop: int, x_rows: Tensor | None = None) -> Tensor:
        """I for rows ``start:stop``; ``x_rows`` (the rows' unperturbed inputs) is computed if not given."""
        drawn = self.streams.take(start, stop).to(self.x.device)
        if self.kind == "gaussian":
            return drawn * self.sigma
        if x_rows is None:
            x_rows = self.x.index_select(0, row_samples(start, stop, self.per_sample, self.x.device))
        if self.kind == "noisy_baseline":
            return x_rows - drawn * self.sigma
        return x_rows * self._squares(drawn)

    def write(self, start: int, stop: int, shift: Tensor, rows: Tensor) -> None:
        """I into ``shift[:count]`` and x - I into ``rows[:count]`` (count = stop - start), the same float
        operations as :meth:`rows`, with each sample's x broadcast over its rows instead of gathered."""
        drawn = self.streams.take(start, stop).to(self.x.device)
        offset, shape = 0, self.x.shape[1:]
        for b0, b1, s0, s1 in row_blocks(start, stop, self.per_sample):
            count = (b1 - b0) * (s1 - s0)
            x = self.x.narrow(0, b0, b1 - b0)[:, None]
            block = (b1 - b0, s1 - s0, *shape)
            out = shift.narrow(0, offset, count).view(block)
            draws = drawn.narrow(0, offset, count)
            if self.kind == "square":
                square = self._squares(draws)
                torch.mul(x, square.view(*block[:2], *square.shape[1:]), out=out)
            else:
                torch.mul(draws.view(block), self.sigma, out=out)
                if self.kind == "noisy_baseline":
                    torch.sub(x, out, out=out)
            torch.sub(x, out, out=rows.narrow(0, offset, count).view(block))
            offset += count

    def _squares(self, corners: Tensor) -> Tensor:
        """(rows, 1, H, W) masks of the squares with top-left ``corners`` (rows, 2), in x's dtype."""
        height = torch.arange(self.x.shape[2], device=self.x.device)
        width = torch.arange(self.x.shape[3], device=self.x.device)
        top, left = corners[:, :1], corners[:, 1:]
        in_rows = (height >= top) & (height < top + self.side)
        in_cols = (width >= left) & (width < left + self.side)
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(self.x.dtype)


def draw_perturbations(x: Tensor, ctx: RunContext, **params: Any) -> Tensor:
    """All perturbations I the metric uses for ``x`` with ``params``, (N, n_perturbations, *x.shape[1:])."""
    p = _resolve(params)
    rows = Perturbations(x, ctx, p).rows(0, x.shape[0] * p["n_perturbations"])
    return rows.reshape(x.shape[0], p["n_perturbations"], *x.shape[1:])


def infidelity_scores(d: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(normalized infidelity, raw infidelity, beta) per row of ``d`` and ``delta`` (N, P), in float64."""
    d, delta = d.double(), delta.double()
    energy = (d * d).mean(1)
    beta = torch.where(energy > 0, (d * delta).mean(1) / energy.clamp_min(torch.finfo(d.dtype).tiny), 0.0)
    normalized = ((beta[:, None] * d - delta) ** 2).mean(1)
    return normalized, ((d - delta) ** 2).mean(1), beta


def infidelity(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Infidelity of the stored attributions (module docstring), both activations, normalized and raw."""
    p = _resolve(params)
    x, attr = inputs.x, inputs.attributions
    check_inputs("infidelity", x, inputs.target, attr)
    perturbations = Perturbations(x, ctx, p)
    flat_attr = attr.flatten(1).to(x.dtype)
    dots: list[Tensor] = [x.new_empty(0, dtype=torch.float64)]
    buffers: list[Tensor] = []

    def build(start: int, stop: int) -> Tensor:
        count = stop - start
        if not buffers:  # the first chunk is the largest
            buffers.extend(x.new_empty((count, *x.shape[1:])) for _ in range(2))
        shift, rows = (buffer[:count] for buffer in buffers)
        perturbations.write(start, stop, shift, rows)
        products, offset = shift.flatten(1), 0  # I is not needed once x - I is written: multiply in place
        for b0, b1, s0, s1 in row_blocks(start, stop, p["n_perturbations"]):
            part = products.narrow(0, offset, (b1 - b0) * (s1 - s0)).view(b1 - b0, s1 - s0, -1)
            torch.mul(part, flat_attr[b0:b1, None], out=part)
            dots.append(part.sum(-1, dtype=torch.float64).flatten())
            offset += (b1 - b0) * (s1 - s0)
        return rows

    perturbed = target_outputs(inputs.model, x, inputs.target, p["n_perturbations"], build, ctx)
    original = original_outputs(inputs.model, x, inputs.target, ctx)
    d = torch.cat(dots).reshape(x.shape[0], p["n_perturbations"]).clone()
    outputs, betas = {}, {}
    for activation, before, after in (("logits", original.logits, perturbed.logits),
                                      ("softmax", original.softmax, perturbed.softmax)):
        normalized, raw, betas[activation] = infidelity_scores(d, before.double() - after.double())
        outputs[f"normalized_{activation}"], outputs[f"raw_{activation}"] = normalized, raw
    primary = f"{'normalized' if p['normalize'] else 'raw'}_{p['activation']}"
    outputs = {"infidelity": outputs[primary].clone(), **outputs, "beta": betas[p["activation"]]}
    bounds: dict[str, tuple[float | None, float | None]] = {key: (0.0, None) for key in outputs}
    bounds["beta"] = (None, None)
    return MetricResult(
        outputs=outputs, primary="infidelity", higher_is_better=False, bounds=bounds,
        forward_passes=perturbed.forward_passes + original.forward_passes,
        info={"perturbation": p["perturbation"], "n_perturbations": p["n_perturbations"],
              "activation": p["activation"], "normalize": p["normalize"], "primary_is": primary},
    )


def _resolve(params: dict[str, Any]) -> dict[str, Any]:
    p = resolve_params("infidelity", params, DEFAULTS, CHOICES)
    for key, low in (("n_perturbations", 1), ("square_size", 1)):
        if p[key] < low:
            raise ParamError(f"infidelity: parameter {key!r} = {p[key]!r} must be at least {low}")
    if not p["sigma"] > 0:
        raise ParamError(f"infidelity: parameter 'sigma' = {p['sigma']!r} must be positive")
    return p


METRICS.add("infidelity", MetricSpec(
    name="infidelity", family="faithfulness", compute=infidelity, modalities=frozenset({"image", "tabular"}),
    defaults=DEFAULTS, choices=CHOICES, reference=REFERENCE,
    description="Mean squared error between <I, attr> (optimally scaled) and f(x) - f(x - I) over random I",
))
