"""One adapter for every captum attribution method, driven by a table (no per-method code paths).

Each row of :data:`CAPTUM_METHODS` says which captum class to build, which of our parameters go to its
``attribute`` call (and under which name), how many model rows one input row costs there, whether captum
batches those rows itself, and whether the method is averaged over Gaussian noise (the SmoothGrad family).
The adapter then chunks inputs so that no forward pass exceeds ``RunContext.batch_size`` rows (nor the memory
budget), attributes in eval mode on the model's device, and returns detached float32 attributions of x's
shape on x's device. Results do not depend on the chunking.

Perturbation rows (FeatureAblation, Occlusion) are forward-only: their ``perturb`` entry gives, for a sample
shape, captum's mask / window keywords and the number of perturbed copies P of a sample (see
:mod:`harness.methods.feature_masks`). captum evaluates a chunk of n samples once unperturbed and then
``perturbations_per_eval`` = p copies of each per forward, so n * p <= batch budget bounds every forward.

Hyperparameters follow attribench (Gevaert et al., "Evaluating feature attribution methods in the image
domain", Machine Learning 2024): IG 25 steps, SmoothGrad 50 samples with sigma 0.15, zero baselines.
Sources: captum 0.9 (``captum.attr``: Saliency, InputXGradient, IntegratedGradients, DeepLift, NoiseTunnel,
FeatureAblation, Occlusion).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from captum.attr import (
    Attribution,
    DeepLift,
    FeatureAblation,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
)
from torch import nn

from harness.methods import feature_masks
from harness.methods.feature_masks import Perturbations, Shape
from harness.specs import METHODS, Explainer, MethodSpec, RunContext, resolve_params

Params = Mapping[str, Any]


def _one_row(params: Params) -> int:
    return 1


NT_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "smoothgrad": lambda a: a.mean(dim=1),
    "smoothgrad_sq": lambda a: (a * a).mean(dim=1),
    "vargrad": lambda a: a.var(dim=1, correction=0),
}
"""captum ``NoiseTunnel`` ``nt_type`` -> reduction over the noise axis (dim 1) of per-draw attributions."""

SMOOTHING_PARAMS = ("nt_samples", "stdevs", "nt_type")
"""Parameters the adapter itself consumes for noise-averaged methods."""


@dataclass(frozen=True)
class CaptumMethod:
    """One table row: how to build and call a captum attribution algorithm."""

    name: str
    algorithm: type[Attribution]
    """Built as ``algorithm(model)``."""
    description: str
    defaults: Params = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    call: Mapping[str, str] = field(default_factory=dict)
    """Our parameter name -> ``attribute()`` keyword."""
    fixed: Params = field(default_factory=dict)
    """Constant ``attribute()`` keywords."""
    rows: Callable[[Params], int] = _one_row
    """Model rows (forward + backward) per input row in one ``attribute()`` call."""
    batch_kwarg: str | None = None
    """The ``attribute()`` keyword through which captum batches those rows itself (IG's internal batch)."""
    smoothing: bool = False
    """Average over ``nt_samples`` Gaussian draws of std ``stdevs`` (captum NoiseTunnel semantics)."""
    perturb: Callable[[Params, Shape], Perturbations] | None = None
    """Forward-only perturbation method: captum keywords and perturbed copies per sample, for a sample shape
    (``rows`` is then unused); captum batches the copies itself through ``perturbations_per_eval``."""
    shape_params: tuple[str, ...] = ()
    """Parameters consumed by ``perturb``."""
    check: Callable[[Params], None] | None = None
    """Raises :class:`ParamError` for resolved parameters that are out of range."""
    truth: str = ""
    """The analytic ground-truth kind the method estimates on data of a known function (``MethodSpec.truth``)."""

    def rows_per_sample(self, params: Params, shape: Shape) -> int:
        """Model rows pushed through the model per attributed sample of shape ``shape``: the method's cost."""
        if self.perturb is not None:
            return self.perturb(params, shape).count + 1
        return self.rows(params) * (int(params["nt_samples"]) if self.smoothing else 1)


IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")

CAPTUM_METHODS: dict[str, CaptumMethod] = {m.name: m for m in (
    CaptumMethod(
        "saliency", Saliency,
        "Gradient of the target logit w.r.t. the input (captum Saliency; Simonyan et al. 2014). abs=True "
        "(captum's default, attribench's Gradient) gives |grad|; abs=False gives the signed gradient.",
        defaults={"abs": True}, call={"abs": "abs"}, truth="derivative",
    ),
    CaptumMethod(
        "input_x_gradient", InputXGradient,
        "Input times gradient of the target logit (captum InputXGradient; Shrikumar et al. 2016).",
    ),
    CaptumMethod(
        "integrated_gradients", IntegratedGradients,
        "Integrated Gradients (captum; Sundararajan et al. 2017): path integral of gradients from a constant "
        "baseline (default 0) to x, n_steps 25 as in attribench, Gauss-Legendre quadrature by default.",
        defaults={"n_steps": 25, "method": "gausslegendre", "baseline": 0.0},
        choices={"method": IG_METHODS},
        call={"n_steps": "n_steps", "method": "method", "baseline": "baselines"},
        rows=lambda p: int(p["n_steps"]), batch_kwarg="internal_batch_size", truth="path_integral",
    ),
    CaptumMethod(
        "smoothgrad", Saliency,
        "SmoothGrad (Smilkov et al. 2017) as captum NoiseTunnel over Saliency: mean |grad| over nt_samples 50 "
        "draws of x + N(0, stdevs^2), stdevs 0.15 as in attribench. stdevs is ABSOLUTE (input units, as in "
        "captum), not a fraction of the input range as in the paper. Noise comes from the run's seed.",
        defaults={"nt_samples": 50, "stdevs": 0.15, "nt_type": "smoothgrad", "abs": True},
        choices={"nt_type": tuple(NT_REDUCTIONS)}, call={"abs": "abs"}, smoothing=True,
    ),
    CaptumMethod(
        "deep_lift", DeepLift,
        "DeepLIFT rescale rule (captum DeepLift; Shrikumar et al. 2017) against a constant baseline "
        "(default 0, as in attribench). Needs one ReLU module per use and no in-place ops.",
        defaults={"baseline": 0.0}, call={"baseline": "baselines"}, rows=lambda p: 2,
    ),
    CaptumMethod(
        "feature_ablation", FeatureAblation,
        "Feature ablation (captum FeatureAblation): f(x) - f(x with one feature group set to the baseline, "
        "default 0), forward passes only. Groups: patch x patch pixel patches, all channels together (grid > "
        "0: a grid x grid split of H and W instead, edge cells absorbing the remainder; ChaosMining ablates "
        "a 7x7 grid of 32-px patches at 224 px); one per column for (N, F), one per channel for (N, C, T).",
        defaults={"baseline": 0.0, "patch": 4, "grid": 0}, call={"baseline": "baselines"},
        perturb=feature_masks.ablation, shape_params=("patch", "grid"), check=feature_masks.check_ablation,
        truth="ablation",
    ),
    CaptumMethod(
        "occlusion", Occlusion,
        "Occlusion (captum Occlusion; Zeiler & Fergus 2014): a window x window patch, all channels together, "
        "slides over H and W by stride (over the features of (N, F), over time of (N, C, T)) and is set to "
        "the baseline (default 0); each pixel gets f(x) - f(occluded x) averaged over the windows covering "
        "it. Forward passes only.",
        defaults={"baseline": 0.0, "window": 4, "stride": 2}, call={"baseline": "baselines"},
        perturb=feature_masks.occlusion, shape_params=("window", "stride"),
        check=feature_masks.check_occlusion,
    ),
)}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else fallback


def _per_sample_targets(target: torch.Tensor | int, n: int) -> torch.Tensor:
    target = torch.as_tensor(target, dtype=torch.long)
    return target.expand(n) if target.ndim == 0 else target


class CaptumExplainer:
    """``explain(x, target)`` for one :class:`CaptumMethod`, model and run context."""

    def __init__(self, method: CaptumMethod, model: nn.Module, ctx: RunContext, params: Params) -> None:
        self.method, self.model, self.ctx, self.params = method, model, ctx, dict(params)
        self.algorithm = method.algorithm(model)
        self.kwargs = {**method.fixed, **{kw: self.params[p] for p, kw in method.call.items()}}
        self.device = _model_device(model, ctx.device)

    def __call__(self, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        targets = _per_sample_targets(target, len(x))
        rows = self.ctx.rows_per_chunk(math.prod(x.shape[1:]))
        attribute = self._smoothed if self.method.smoothing else self._attribute
        grad_mode = torch.no_grad() if self.method.perturb is not None else torch.enable_grad()
        with _eval_mode(self.model), grad_mode:
            return attribute(x, targets, rows).to(x.device)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        """Attribute in chunks of samples that cost at most ``rows`` model rows per forward pass."""
        kwargs = dict(self.kwargs)
        if self.method.batch_kwarg is not None:
            per_call, kwargs[self.method.batch_kwarg] = rows, rows
        elif self.method.perturb is not None:
            # Even chunks of n <= rows samples, then p = rows // n perturbed copies per forward: every forward
            # (n unperturbed rows, or n * p perturbed ones) fits the budget, and a large n keeps them full.
            plan = self.method.perturb(self.params, tuple(x.shape[1:]))
            kwargs.update({k: v.to(self.device) if torch.is_tensor(v) else v for k, v in plan.kwargs.items()})
            per_call = math.ceil(len(x) / math.ceil(len(x) / rows))
            kwargs["perturbations_per_eval"] = max(1, min(plan.count, rows // per_call))
        else:
            per_call = max(1, rows // self.method.rows(self.params))
        parts = [
            self._call(x[start : start + per_call], targets[start : start + per_call], kwargs)
            for start in range(0, len(x), per_call)
        ]
        return torch.cat(parts)

    def _call(self, x: torch.Tensor, targets: torch.Tensor, kwargs: Params) -> torch.Tensor:
        inputs = x.detach().to(device=self.device, dtype=torch.float32, copy=True)
        inputs.requires_grad_(self.method.perturb is None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            out = self.algorithm.attribute(inputs, target=targets.to(self.device), **kwargs)
        return out.detach().float()

    def _smoothed(self, x: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        """NoiseTunnel semantics with noise drawn per sample, in order, from ``ctx.generator()`` on the CPU.

        captum's NoiseTunnel draws one noise block per chunk from the global RNG, so its result would depend
        on the chunking and the device; drawing ``(nt_samples, *x.shape[1:])`` per sample from one seeded
        CPU generator gives the same noise for every chunk size and device.
        """
        nt, stdevs = int(self.params["nt_samples"]), float(self.params["stdevs"])
        reduce = NT_REDUCTIONS[self.params["nt_type"]]
        generator, per_chunk = self.ctx.generator(), max(1, rows // nt)
        parts = []
        for start in range(0, len(x), per_chunk):
            chunk = x[start : start + per_chunk].detach().to(device=self.device, dtype=torch.float32)
            noise = torch.stack([torch.randn((nt, *x.shape[1:]), generator=generator) for _ in chunk])
            noisy = (chunk.unsqueeze(1) + stdevs * noise.to(self.device)).flatten(0, 1)
            attr = self._attribute(noisy, targets[start : start + per_chunk].repeat_interleave(nt), rows)
            parts.append(reduce(attr.unflatten(0, (len(chunk), nt))))
        return torch.cat(parts)


def build_captum(entry: CaptumMethod, model: nn.Module, ctx: RunContext, /, **params: Any) -> Explainer:
    """``MethodSpec.build`` for a table row (bound with ``partial``): check the parameters, return the explainer.

    Positional-only, so that a parameter may be called ``method`` (IG's quadrature rule) or ``model``.
    """
    resolved = resolve_params(f"method {entry.name}", params, entry.defaults, entry.choices)
    if entry.check is not None:
        entry.check(resolved)
    return CaptumExplainer(entry, model, ctx, resolved)


for _method in CAPTUM_METHODS.values():
    METHODS.add(
        _method.name,
        MethodSpec(
            name=_method.name, build=partial(build_captum, _method), defaults=dict(_method.defaults),
            choices=dict(_method.choices), description=_method.description, truth=_method.truth,
        ),
    )
