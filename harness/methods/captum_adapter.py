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

Rows with a ``sampler`` (the SmoothGrad family, DeepLiftShap, GradientShap; :mod:`harness.methods.sampling`)
expand each sample into k rows drawn from the run's seed and reduce their attributions; rows with
``references`` draw data-set baselines from ``RunContext.background`` once per explainer; rows with
``segments`` (KernelShap, Lime; :mod:`harness.methods.superpixels`) attribute sample by sample. A ``factory``
builds algorithms that need more than the model (GradCAM's layer) and ``finish`` maps their output to x's
shape. Every method also takes ``pixel_aggregation`` (:mod:`harness.methods.aggregation`), applied last.

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

from harness.methods import aggregation, feature_masks, superpixels
from harness.methods.feature_masks import Perturbations, Shape
from harness.methods.sampling import NT_REDUCTIONS, NoiseDraws, Sampler, draw_references
from harness.specs import METHODS, Explainer, MethodSpec, RunContext, resolve_params

Params = Mapping[str, Any]


IMAGE_ONLY = frozenset({"gradcam", "guided_gradcam"})
"""Methods on a 2-D convolution layer: images and models with the ``conv2d`` trait only."""


def _one_row(params: Params) -> int:
    return 1


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
    factory: Callable[[nn.Module, Params], Attribution] | None = None
    """Builds the algorithm instead of ``algorithm(model)`` (e.g. on the layer GradCAM attributes through)."""
    finish: Callable[[torch.Tensor, torch.Tensor, Params], torch.Tensor] | None = None
    """``finish(attributions, inputs, params)`` per call: captum's output -> the inputs' shape (upsampling)."""
    sampler: Sampler | None = None
    """Expands each sample into k rows and reduces their attributions (``smoothing`` implies NoiseDraws)."""
    references: str = ""
    """Parameter giving how many ``RunContext.background`` rows to draw as data-set baselines (the sampler's)."""
    segments: Callable[[Params, torch.Tensor], torch.Tensor] | None = None
    """Surrogate methods: per-sample feature groups of the inputs; one seeded captum call per sample
    (:func:`harness.methods.superpixels.attribute_per_sample`), ``n_samples`` forward rows each."""
    own_params: tuple[str, ...] = ()
    """Parameters consumed by ``factory`` / ``finish`` / ``sampler`` / ``segments`` (not ``attribute()``)."""

    @property
    def expansion(self) -> Sampler | None:
        """The sampler, if any: ``sampler``, or captum NoiseTunnel draws for ``smoothing`` rows."""
        return self.sampler if self.sampler is not None else (NoiseDraws() if self.smoothing else None)

    @property
    def forward_only(self) -> bool:
        return self.perturb is not None or self.segments is not None

    def rows_per_sample(self, params: Params, shape: Shape) -> int:
        """Model rows pushed through the model per attributed sample of shape ``shape``: the method's cost
        (with ``references``, the nominal count; the explainer uses at most the background's rows)."""
        if self.perturb is not None:
            return self.perturb(params, shape).count + 1
        if self.segments is not None:
            return int(params["n_samples"])
        sampler = self.expansion
        return self.rows(params) * (sampler.count(params, None) if sampler is not None else 1)


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

    def __init__(
        self, method: CaptumMethod, model: nn.Module, ctx: RunContext, params: Params, pixel_aggregation: str = "none"
    ) -> None:
        self.method, self.model, self.ctx, self.params = method, model, ctx, dict(params)
        self.pixel_aggregation = pixel_aggregation
        self.algorithm = method.factory(model, self.params) if method.factory else method.algorithm(model)
        self.kwargs = {**method.fixed, **{kw: self.params[p] for p, kw in method.call.items()}}
        self.device = _model_device(model, ctx.device)
        self.references: torch.Tensor | None = None
        if method.references:
            where = f"method {method.name}"
            self.references = draw_references(ctx, int(self.params[method.references]), where).to(self.device)

    def __call__(self, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        targets = _per_sample_targets(target, len(x))
        rows = self.ctx.rows_per_chunk(math.prod(x.shape[1:]))
        grad_mode = torch.no_grad() if self.method.forward_only else torch.enable_grad()
        with _eval_mode(self.model), grad_mode:
            if self.method.segments is not None:
                out = self._segmented(x, targets, rows)
            elif self.method.expansion is not None:
                out = self._expanded(x, targets, rows, self.method.expansion)
            else:
                out = self._attribute(x, targets, rows)
        return aggregation.aggregate(out, self.pixel_aggregation).to(x.device)

    def _attribute(
        self, x: torch.Tensor, targets: torch.Tensor, rows: int, row_kwargs: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Attribute in chunks of samples that cost at most ``rows`` model rows per forward pass; ``row_kwargs``
        (per-row ``attribute()`` keywords, e.g. DeepLiftShap's baselines) are chunked along with ``x``."""
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
        parts = []
        for start in range(0, len(x), per_call):
            chunk = slice(start, start + per_call)
            extra = {k: v[chunk] for k, v in (row_kwargs or {}).items()}
            parts.append(self._call(x[chunk], targets[chunk], {**kwargs, **extra}))
        return torch.cat(parts)

    def _call(self, x: torch.Tensor, targets: torch.Tensor, kwargs: Params) -> torch.Tensor:
        inputs = x.detach().to(device=self.device, dtype=torch.float32, copy=True)
        inputs.requires_grad_(not self.method.forward_only)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting (forward, backward|backward) hooks")
            out = self.algorithm.attribute(inputs, target=targets.to(self.device), **kwargs)
        if self.method.finish is not None:
            out = self.method.finish(out, inputs, self.params)
        return out.detach().float()

    def _expanded(self, x: torch.Tensor, targets: torch.Tensor, rows: int, sampler: Sampler) -> torch.Tensor:
        """Sampler methods: chunks of samples expanded to k rows each, attributed, reduced per sample.

        Draws come per sample, in order, from one ``ctx.generator()`` on the CPU (captum's NoiseTunnel and
        GradientShap draw one block per call from the global RNGs, which would tie the result to the chunking
        and the device); the same seed gives the same draws for every chunk size and device.
        """
        if self.references is not None and self.references.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"method {self.method.name}: the background's samples have shape "
                f"{list(self.references.shape[1:])}, the inputs' {list(x.shape[1:])}"
            )
        k = sampler.count(self.params, self.references)
        generator, per_chunk = self.ctx.generator(), max(1, rows // k)
        parts = []
        for start in range(0, len(x), per_chunk):
            chunk = x[start : start + per_chunk].detach().to(device=self.device, dtype=torch.float32)
            expansion = sampler.expand(chunk, generator, self.params, self.references)
            chunk_targets = targets[start : start + per_chunk].repeat_interleave(k)
            attributions = self._attribute(expansion.inputs, chunk_targets, rows, expansion.row_kwargs)
            parts.append(expansion.reduce(attributions))
        return torch.cat(parts)

    def _segmented(self, x: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        """Surrogate methods: one seeded captum call per sample with its own feature groups."""
        assert self.method.segments is not None
        inputs = x.detach().to(device=self.device, dtype=torch.float32)
        groups = self.method.segments(self.params, inputs).to(self.device)
        seeds = superpixels.sample_seeds(self.ctx, len(x))
        return superpixels.attribute_per_sample(
            self.algorithm, inputs, targets.to(self.device), groups, seeds, self.kwargs, rows
        )


def build_captum(entry: CaptumMethod, model: nn.Module, ctx: RunContext, /, **params: Any) -> Explainer:
    """``MethodSpec.build`` for a table row (bound with ``partial``): check the parameters, return the explainer.

    Positional-only, so that a parameter may be called ``method`` (IG's quadrature rule) or ``model``.
    """
    resolved = resolve_params(f"method {entry.name}", params, spec_defaults(entry), spec_choices(entry))
    pixel_aggregation = resolved.pop(aggregation.PARAMETER)
    if entry.check is not None:
        entry.check(resolved)
    return CaptumExplainer(entry, model, ctx, resolved, pixel_aggregation)


def spec_defaults(entry: CaptumMethod) -> dict[str, Any]:
    """The row's parameters plus ``pixel_aggregation`` (every method has it)."""
    return {**entry.defaults, aggregation.PARAMETER: "none"}


def spec_choices(entry: CaptumMethod) -> dict[str, tuple[Any, ...]]:
    return {**entry.choices, aggregation.PARAMETER: aggregation.AGGREGATIONS}


def register(table: Mapping[str, CaptumMethod]) -> None:
    """Register every row of ``table`` as a :class:`MethodSpec` built by :func:`build_captum`."""
    for entry in table.values():
        METHODS.add(
            entry.name,
            MethodSpec(
                name=entry.name, build=partial(build_captum, entry), defaults=spec_defaults(entry),
                choices=spec_choices(entry), description=entry.description, truth=entry.truth,
                modalities=frozenset({"image"}) if entry.name in IMAGE_ONLY else frozenset({"image", "tabular", "audio"}),
                needs=frozenset({"conv2d"}) if entry.name in IMAGE_ONLY else frozenset(),
            ),
        )


register(CAPTUM_METHODS)
