"""Neuron relevance from captum layer attributions, important-neuron selection, neuron zeroing and voting.

DeepImportance (Gerasimou et al., "Importance-Driven Deep Learning System Testing", ICSE 2020) ranks the
neurons of a layer by their relevance to the label over the training set (LRP in the original); its PyTorch
port (github JoshuaQSH/Wisdom, ``src/attribution.py``) offers the captum layer methods of
:data:`LAYER_ATTRIBUTORS`. The relevance of neuron j of layer L is (seed-systems.md §3.1)

    R_j = 1/N * sum_{x in train} sum_{space} A_L(x, y)[j, ...]

with A_L the layer attribution of the input's label y (LayerActivation has no target), signed, a convolution
channel summed over its H x W positions. Baselines are 0 as in the port; the Shap methods get a reference
distribution of two zero rows by default (the port passes ``zeros_like(batch)``: every reference 0, which is
DeepLift from 0 for DeepLiftShap), or the caller's ``baselines`` tensor (e.g. training rows).

Voting (the port's ``prepare_data.py``, ``identify_optimal_method`` / ``weighted_top_neurons`` /
``voting_neurons``; seed-systems.md §3.3) combines attributors: per vote (the whole set, or each chunk of
``vote_size`` inputs), every attributor a names its top-m neurons with relevances R_a; zeroing them raises
the mean cross-entropy by g_a; weight w_a = max(g_a, 0) / sum_b max(g_b, 0) (uniform when no gain is
positive; the port divides the raw gains, which breaks on negative or zero gains). Each neuron n of the
union gets S(n) = sum_a w_a * R_a(n) over the attributors naming it (``combine="score"``, the port's
scheme) or S(n) = sum_a w_a * (m - r_a(n)) with r_a its 0-based rank (``combine="borda"``, scale-free:
attributors' relevances differ in scale by orders of magnitude). A vote ranks the top-m neurons by S (the
port keeps 10); the neuron at rank r of a vote of length L earns L - r points; the combined top-m are those
with the most points over all votes. Every tie goes to the earlier attributor, then the better rank, then layer order.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from captum.attr import (
    InternalInfluence,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerDeepLiftShap,
    LayerFeatureAblation,
    LayerGradCam,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LayerLRP,
)
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import Tensor, nn
from torch.nn import functional as F

from harness.coverage.base import coverage_layers
from harness.metrics.perturbation import eval_mode
from harness.specs import ParamError, resolve_params

Neuron = tuple[str, int]
"""(layer name, neuron index): a channel of a convolution or a unit of a Linear layer."""
Params = Mapping[str, Any]

DEFAULT_ATTRIBUTOR = "layer_conductance"
DEFAULT_M = 5
DEFAULT_LAYER_INDEX = 1
"""DeepImportance's defaults (seed-systems.md §3.1): LayerConductance, top 5 neurons of coverage layer 1."""
MODEL_SCOPE = "model"
COMBINATIONS = ("score", "borda")
PATH_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")
LRP_PASS_THROUGH = (nn.Flatten, nn.Unflatten, nn.Identity)
"""Reshaping modules captum's LRP has no rule for; they pass relevance on unchanged under the epsilon rule."""


@dataclass(frozen=True)
class LayerAttributor:
    """One table row: a captum layer attribution, built as ``algorithm(model, layer)``."""

    name: str
    algorithm: type
    description: str
    targeted: bool = True
    defaults: Params = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    baselines: str = ""
    """``"input"``: one input baseline (``baselines``, default 0); ``"references"``: a reference distribution
    (default two zero rows); empty: none."""
    rows: str = ""
    """Parameter giving the model rows per input in one ``attribute()`` call (path steps, samples)."""
    fixed: Params = field(default_factory=dict)
    stochastic: bool = False
    """Draws from the global numpy / torch RNGs, seeded here from the caller's generator per call."""


_PATH = {"n_steps": 50, "method": "gausslegendre"}
LAYER_ATTRIBUTORS: dict[str, LayerAttributor] = {a.name: a for a in (
    LayerAttributor("layer_conductance", LayerConductance, "Conductance (Dhamdhere et al. 2018).",
                    defaults=_PATH, choices={"method": PATH_METHODS}, baselines="input", rows="n_steps"),
    LayerAttributor("layer_activation", LayerActivation, "The layer's activation (no target).", targeted=False),
    LayerAttributor("internal_influence", InternalInfluence, "Internal influence (Leino et al. 2018).",
                    defaults=_PATH, choices={"method": PATH_METHODS}, baselines="input", rows="n_steps"),
    LayerAttributor("layer_gradient_x_activation", LayerGradientXActivation, "Gradient times activation."),
    LayerAttributor("layer_gradcam", LayerGradCam, "GradCAM per channel (Selvaraju et al. 2017), unsummed.",
                    defaults={"relu_attributions": False}, fixed={"attr_dim_summation": False}),
    LayerAttributor("layer_deeplift", LayerDeepLift, "DeepLift (Shrikumar et al. 2017).", baselines="input"),
    LayerAttributor("layer_deeplift_shap", LayerDeepLiftShap, "DeepLiftShap (Lundberg & Lee 2017).",
                    baselines="references"),
    LayerAttributor("layer_gradient_shap", LayerGradientShap, "GradientShap (Lundberg & Lee 2017).",
                    defaults={"n_samples": 5, "stdevs": 0.0}, baselines="references", rows="n_samples",
                    stochastic=True),
    LayerAttributor("layer_integrated_gradients", LayerIntegratedGradients, "Integrated gradients to the layer.",
                    defaults=_PATH, choices={"method": PATH_METHODS}, baselines="input", rows="n_steps"),
    LayerAttributor("layer_feature_ablation", LayerFeatureAblation, "Ablating each layer unit to 0."),
    LayerAttributor("layer_lrp", LayerLRP, "LRP, epsilon rule (Bach et al. 2015)."),
)}


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        raise ValueError(f"unknown layer {layer!r}; the model's coverage layers: {coverage_layers(model)}")
    return modules[layer]


def check_lrp(model: nn.Module) -> None:
    """Raise ValueError naming the first leaf module captum's LayerLRP has no rule for (captum 0.9 ``lrp.py``)."""
    known = (*SUPPORTED_LAYERS_WITH_RULES, *SUPPORTED_NON_LINEAR_LAYERS, *LRP_PASS_THROUGH)
    for name, module in model.named_modules():
        if not list(module.children()) and not hasattr(module, "rule") and type(module) not in known:
            raise ValueError(
                f"layer_lrp: captum LayerLRP has no rule for layer {name!r} ({type(module).__name__}); supported: "
                + ", ".join(sorted(t.__name__ for t in known)) + "; set module.rule or pick another attributor"
            )


@contextmanager
def _seeded(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed the global numpy and torch RNGs (captum's samplers) from ``generator``; restore them after."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _baselines(spec: LayerAttributor, value: float | Tensor, x: Tensor) -> float | Tensor:
    if spec.baselines == "references" and not isinstance(value, Tensor):
        return torch.full((2, *x.shape[1:]), float(value), dtype=x.dtype, device=x.device)
    return value.to(x.device, x.dtype) if isinstance(value, Tensor) else value


def neuron_relevance(
    model: nn.Module, layer: str, x: Tensor, y: Tensor, attributor: str = DEFAULT_ATTRIBUTOR,
    batch_size: int = 256, *, generator: torch.Generator | None = None, **kw: Any,
) -> Tensor:
    """R_j of every neuron of ``layer`` over the inputs ``x`` with labels ``y`` (module docstring; the port's
    ``get_relevance_scores_dataloader``): (neurons,) float32 on x's device. ``kw``: ``baselines`` (a float or
    a tensor of input rows) and the attributor's parameters (``LAYER_ATTRIBUTORS[...].defaults``). Each call
    pushes at most ``batch_size`` rows (down to one input per call); the model runs in eval mode."""
    if attributor not in LAYER_ATTRIBUTORS:
        raise ParamError(f"unknown layer attributor {attributor!r}; choices: {', '.join(LAYER_ATTRIBUTORS)}")
    spec = LAYER_ATTRIBUTORS[attributor]
    baselines = kw.pop("baselines", 0.0)
    params = resolve_params(f"layer attributor {attributor}", kw, spec.defaults, spec.choices)
    if attributor == "layer_lrp":
        check_lrp(model)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"neuron_relevance needs as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    base = _baselines(spec, baselines, x)
    rows = int(params[spec.rows]) + (attributor == "layer_conductance") if spec.rows else 1
    if attributor == "layer_deeplift_shap" and isinstance(base, Tensor):
        rows = len(base)  # every input against every reference
    chunk = max(1, batch_size // max(1, rows))
    algorithm = spec.algorithm(model, _module(model, layer))
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    total: Tensor | None = None
    with eval_mode(model):
        for start in range(0, len(x), chunk):
            xc, yc = x[start:start + chunk], y[start:start + chunk]
            call = {**params, **spec.fixed}
            if spec.targeted:
                call["target"] = yc
            if spec.baselines:
                call["baselines"] = base
            if attributor == "layer_lrp":
                for module in model.modules():
                    if isinstance(module, LRP_PASS_THROUGH) and not hasattr(module, "rule"):
                        module.rule = EpsilonRule()  # captum removes every rule after the call
            with _seeded(generator, x.device) if spec.stochastic else nullcontext():
                attr = algorithm.attribute(xc, **call).detach().float()
            part = (attr.flatten(2).sum(dim=2) if attr.ndim > 2 else attr).sum(dim=0)
            total = part if total is None else total + part
    assert total is not None
    return total / len(x)


def layer_relevance(
    model: nn.Module, x: Tensor, y: Tensor, attributor: str = DEFAULT_ATTRIBUTOR,
    layers: Sequence[str] | None = None, batch_size: int = 256, **kw: Any,
) -> dict[str, Tensor]:
    """:func:`neuron_relevance` of each layer (default: every :func:`coverage_layers` layer), in order."""
    names = list(layers) if layers is not None else coverage_layers(model)
    return {name: neuron_relevance(model, name, x, y, attributor, batch_size, **kw) for name in names}


def _ranked(relevance: Mapping[str, Tensor], m: int, scope: str) -> list[tuple[Neuron, float]]:
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ParamError(f"important neurons: m = {m!r} is not valid; choices: an integer >= 1")
    if scope != MODEL_SCOPE and scope not in relevance:
        raise ParamError(f"important neurons: scope {scope!r} is not valid; choices: "
                         + ", ".join(repr(s) for s in (MODEL_SCOPE, *relevance)))
    names = list(relevance) if scope == MODEL_SCOPE else [scope]
    owners = [(name, j) for name in names for j in range(len(relevance[name]))]
    scores = torch.cat([relevance[name].detach().double().cpu().reshape(-1) for name in names])
    if torch.isnan(scores).any():
        raise ValueError(f"important neurons: relevance of {names} holds NaN")
    order = torch.sort(scores, descending=True, stable=True).indices[:m]
    return [(owners[i], float(scores[i])) for i in order.tolist()]


def important_neurons(relevance: Mapping[str, Tensor], m: int = DEFAULT_M, scope: str = MODEL_SCOPE) -> list[Neuron]:
    """The m most relevant neurons, most relevant first: of one layer (``scope`` = its name) or over every
    layer of ``relevance`` (``scope="model"``; :func:`layer_relevance` gives the coverage layers). Fewer
    when there are fewer neurons; ties go to the earlier layer, then the lower index (DeepImportance,
    Gerasimou et al. 2020; the port's ``select_top_neurons``)."""
    return [neuron for neuron, _ in _ranked(relevance, m, scope)]


def select_neurons(
    model: nn.Module, x: Tensor, y: Tensor, attributor: str = DEFAULT_ATTRIBUTOR, m: int = DEFAULT_M,
    scope: int | str = DEFAULT_LAYER_INDEX, batch_size: int = 256, **kw: Any,
) -> list[Neuron]:
    """IDC's important neurons with DeepImportance's defaults: top-m of coverage layer ``scope`` (an index
    into :func:`coverage_layers` or a layer name) or model-wide (``"model"``)."""
    layers = coverage_layers(model)
    if isinstance(scope, int):
        if not -len(layers) <= scope < len(layers):
            raise ParamError(f"layer index {scope} is out of range; the coverage layers: {layers}")
        scope = layers[scope]
    relevance = layer_relevance(model, x, y, attributor, layers if scope == MODEL_SCOPE else [scope], batch_size, **kw)
    return important_neurons(relevance, m, scope)


@contextmanager
def zeroed(model: nn.Module, neurons: Sequence[Neuron]) -> Iterator[nn.Module]:
    """Zero the outputs of ``neurons`` (dim 1: a conv channel everywhere, a Linear unit) by forward hooks,
    for pruning (DeepImportance RQ1) and voting; the hooks go when the block ends."""
    by_layer: dict[str, list[int]] = {}
    for layer, index in neurons:
        by_layer.setdefault(layer, []).append(int(index))
    modules = {layer: _module(model, layer) for layer in by_layer}

    def hook(layer: str, indices: list[int]) -> Callable[[nn.Module, Any, Tensor], Tensor]:
        def zero(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            if max(indices) >= output.shape[1] or min(indices) < 0:
                raise IndexError(f"zeroed: layer {layer!r} has {output.shape[1]} neurons, asked for {indices}")
            return output.index_fill(1, torch.tensor(indices, device=output.device), 0.0)
        return zero

    handles = [modules[layer].register_forward_hook(hook(layer, idx)) for layer, idx in by_layer.items()]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def mean_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Mean cross-entropy of the model's logits on (x, y), batched."""
    total = sum(float(F.cross_entropy(model(x[s:s + batch_size]), y[s:s + batch_size], reduction="sum"))
                for s in range(0, len(x), batch_size))
    return total / max(1, len(x))


def combine_rankings(
    rankings: Mapping[str, Sequence[tuple[Neuron, float]]], gains: Mapping[str, float], m: int,
    combine: str = "score",
) -> list[Neuron]:
    """One vote: the top-m neurons by S(n) over the attributors' ranked (neuron, relevance) lists, weighted
    by their loss gains (module docstring; the port's ``weighted_top_neurons``)."""
    if combine not in COMBINATIONS:
        raise ParamError(f"voting: combine = {combine!r} is not valid; choices: {', '.join(COMBINATIONS)}")
    positive = {a: max(float(gains[a]), 0.0) for a in rankings}
    mass = sum(positive.values())
    weights = {a: (g / mass if mass > 0 else 1.0 / len(rankings)) for a, g in positive.items()}
    scores: dict[Neuron, float] = {}
    for a, ranked in rankings.items():
        for rank, (neuron, relevance) in enumerate(ranked):
            points = relevance if combine == "score" else float(m - rank)
            scores[neuron] = scores.get(neuron, 0.0) + weights[a] * points
    return [n for n, _ in sorted(scores.items(), key=lambda item: -item[1])[:m]]


def tally(votes: Sequence[Sequence[Neuron]], m: int) -> list[Neuron]:
    """The m neurons with the most rank points: L - r for rank r of a vote of length L (``voting_neurons``)."""
    points: dict[Neuron, int] = {}
    for vote in votes:
        for rank, neuron in enumerate(vote):
            points[neuron] = points.get(neuron, 0) + len(vote) - rank
    return [n for n, _ in sorted(points.items(), key=lambda item: -item[1])[:m]]


def voting(
    model: nn.Module, x: Tensor, y: Tensor, attributors: Sequence[str], m: int = DEFAULT_M,
    scope: str = MODEL_SCOPE, batch_size: int = 256, *, vote_size: int | None = None, combine: str = "score",
    generator: torch.Generator | None = None, attributor_params: Mapping[str, Params] | None = None,
) -> list[Neuron]:
    """DeepImportance's voting over several attributors (module docstring): one vote over all of (x, y), or
    one per chunk of ``vote_size`` inputs as the port (which votes per training batch); returns the combined
    top-m, most points first. ``scope``: a layer name or ``"model"`` (every coverage layer);
    ``attributor_params``: attributor name -> its keyword arguments of :func:`neuron_relevance`."""
    if len(x) == 0:
        raise ValueError("voting needs at least one input")
    if not attributors:
        raise ParamError(f"voting needs attributors; choices: {', '.join(sorted(LAYER_ATTRIBUTORS))}")
    if combine not in COMBINATIONS:
        raise ParamError(f"voting: combine = {combine!r} is not valid; choices: {', '.join(COMBINATIONS)}")
    layers = coverage_layers(model) if scope == MODEL_SCOPE else [scope]
    step = len(x) if vote_size is None else int(vote_size)
    if step < 1:
        raise ParamError(f"voting: vote_size = {vote_size!r} is not valid; choices: None or an integer >= 1")
    votes = []
    with eval_mode(model):
        for start in range(0, len(x), step):
            xv, yv = x[start:start + step], y[start:start + step]
            base = mean_loss(model, xv, yv, batch_size)
            rankings, gains = {}, {}
            for a in attributors:
                kw = dict((attributor_params or {}).get(a, {}))
                relevance = layer_relevance(model, xv, yv, a, layers, batch_size, generator=generator, **kw)
                rankings[a] = _ranked(relevance, m, scope)
                with zeroed(model, [n for n, _ in rankings[a]]):
                    gains[a] = mean_loss(model, xv, yv, batch_size) - base
            votes.append(combine_rankings(rankings, gains, m, combine))
    return tally(votes, m)
