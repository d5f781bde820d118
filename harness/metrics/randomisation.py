"""Sanity checks: parameter randomisation and random logit. Does the attribution depend on the model's
parameters, and on the class it explains? A high similarity fails the check: lower is better for both.

Parameter randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018; Quantus ``MPRT``;
attribench ``parameter_randomization``). The model's *layers* are its modules that hold parameters or buffers
of their own and have ``reset_parameters()`` (``_reset_parameters()`` for torch's ``MultiheadAttention``),
numbered 1..L in module order. Layer l is re-initialised by calling that method on a CPU copy of it under
``torch.manual_seed(s_l)``, s_l the l-th draw of ``ctx.generator(OFFSET)``, and loading the copy's state: the
same fresh weights in either order and on every device. ``layer_order``:

* ``"cascading"`` (Quantus ``layer_order="top_down"``): step k = 1..L re-initialises layers L, ..., L-k+1 (one
  more at each step, from the output); primary = step L, the fully re-initialised model (Quantus
  ``return_last_correlation``; attribench's only step). ``skip_layers`` computes step L alone.
* ``"independent"``: step k re-initialises layer L-k+1 alone; primary = the mean over the L steps (Quantus
  ``return_average_correlation``, which also averages in its similarity of the un-randomised model).

Score of sample i at step k: sim(T(a_i), T(b_i)), a the stored attribution, b the case's method
(``inputs.explainer``) on step k's model, for the same target, over all N samples in one call (stochastic
methods draw the same noise as for ``a``); sim and T (|.| if ``abs``, max-normalised if ``normalize``) as in
:mod:`harness.metrics.similarity`. Quantus defaults to ``abs = True``; attribench and the default here
compare signed maps (Adebayo et al. report both). Outputs ``layers`` (N, steps), columns in step order, the
layer of each in ``info``. Parameters of modules without a reset method stay trained (counted in
``info["kept_parameters"]``); Quantus also skips ``MultiheadAttention``'s input projection, and reseeds with
the one seed ``seed + 1`` before every layer, so its same-shaped layers get equal weights.

Random logit (Sixt, Granz, Landgraf, "When explanations lie: why many modified BP attributions fail", ICML
2020; Quantus ``RandomLogit``): sim(T(a_i), T(b_i)), b = ``inputs.explain`` for a class c' drawn uniformly
from the C - 1 classes other than the target c: c' = (c + k) mod C, k uniform on 1..C-1 from
``ctx.generator(OFFSET + 1)`` (Quantus: the same distribution from ``np.random.seed(seed)`` per batch).
Defaults as Quantus: ``ssim``, ``abs = False``, ``normalize = True`` (Quantus divides the whole batch by one
maximum; here each map by its own). C is the width of one forward row of ``inputs.model``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from harness.metrics.perturbation import eval_mode
from harness.metrics.rows import check_inputs, check_logits
from harness.metrics.similarity import SIMILARITIES, SSIM_WINDOW, Similarity
from harness.specs import (
    METRICS,
    Explainer,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

LAYER_ORDERS: tuple[str, ...] = ("cascading", "independent")
RANDOMISATION_DEFAULTS = MappingProxyType({
    "layer_order": "cascading", "similarity": "spearman", "abs": False, "normalize": True,
    "skip_layers": False,
})
RANDOMISATION_CHOICES = MappingProxyType({"layer_order": LAYER_ORDERS, "similarity": SIMILARITIES})
LOGIT_DEFAULTS = MappingProxyType({"similarity": "ssim", "abs": False, "normalize": True})
LOGIT_CHOICES = MappingProxyType({"similarity": SIMILARITIES})
OFFSET = 0x5A17
"""``ctx.generator`` offset of the layer seeds; ``OFFSET + 1``: the random classes."""


# --- parameter randomisation -----------------------------------------------------------------------------


def _reset_method(module: nn.Module) -> Any:
    for name in ("reset_parameters", "_reset_parameters"):
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in module order: modules with their own parameters or buffers and a reset method."""
    return [
        (name, module) for name, module in model.named_modules()
        if _reset_method(module) is not None
        and (next(module.parameters(recurse=False), None) is not None
             or next(module.buffers(recurse=False), None) is not None)
    ]


def layer_seeds(ctx: RunContext, count: int) -> list[int]:
    """The seed of each layer, in module order."""
    return [int(s) for s in torch.randint(0, 2**62, (count,), generator=ctx.generator(OFFSET)).tolist()]


def reinitialise(layer: nn.Module, seed: int) -> None:
    """Reset ``layer`` in place to what its reset method draws on the CPU under ``torch.manual_seed(seed)``;
    the global random state is left as it was."""
    fresh = copy.deepcopy(layer).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _reset_method(fresh)()
    layer.load_state_dict(fresh.state_dict())


def randomised_models(
    model: nn.Module, ctx: RunContext, p: dict[str, Any]
) -> Iterator[tuple[str, nn.Module]]:
    """(layer name, model of the step) for every step (module docstring); the model is one copy of ``model``
    changed in place from step to step. ``model`` itself is never changed."""
    work = copy.deepcopy(model)
    found = layers(work)
    if not found:
        raise ValueError("parameter_randomisation: the model has no layer with parameters and "
                         "reset_parameters(); nothing to randomise")
    seeds = layer_seeds(ctx, len(found))
    steps = list(zip(found, seeds))[::-1]
    for k, ((name, layer), seed) in enumerate(steps):
        kept = {key: value.clone() for key, value in layer.state_dict().items()}
        reinitialise(layer, seed)
        if not (p["skip_layers"] and k < len(steps) - 1):
            yield name, work
        if p["layer_order"] == "independent":
            layer.load_state_dict(kept)


def kept_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` that no layer's reset method re-initialises (modules without one)."""
    covered = {id(t) for _, layer in layers(model) for t in layer.parameters(recurse=False)}
    return sum(t.numel() for t in model.parameters() if id(t) not in covered)


def _attribute(explain: Explainer, x: Tensor, target: Tensor, name: str) -> Tensor:
    out = explain(x, target).detach().to(x.device)
    if out.shape != x.shape:
        raise ValueError(f"{name}: the method returned shape {list(out.shape)} for inputs {list(x.shape)}")
    return out


def parameter_randomisation(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Similarity of the attributions of the trained and the re-initialised model (module docstring)."""
    name = "parameter_randomisation"
    p = resolve_params(name, params, RANDOMISATION_DEFAULTS, RANDOMISATION_CHOICES)
    if p["skip_layers"] and p["layer_order"] != "cascading":
        raise ParamError(f"{name}: parameter 'skip_layers' = True needs layer_order 'cascading', got "
                         f"{p['layer_order']!r}")
    check_inputs(name, inputs.x, inputs.target, inputs.attributions)
    if inputs.explainer is None:
        raise ValueError(f"{name}: needs inputs.explainer to attribute with the randomised models; none was "
                         "given")
    _check_size(name, inputs.x, p)
    names, scores, compare = [], [], Similarity(inputs.attributions, p, ctx)
    for layer, model in randomised_models(inputs.model, ctx, p):
        names.append(layer)
        scores.append(compare(_attribute(inputs.explainer(model), inputs.x, inputs.target, name)))
    per_layer = torch.stack(scores, 1)
    primary = per_layer[:, -1] if p["layer_order"] == "cascading" else per_layer.mean(1)
    return MetricResult(
        outputs={name: primary, "layers": per_layer}, primary=name, higher_is_better=False,
        bounds={name: (-1.0, 1.0), "layers": (-1.0, 1.0)}, forward_passes=0,
        info={"layers": names, "explained_rows": per_layer.numel(),
              "kept_parameters": kept_parameters(inputs.model), **p},
    )


# --- random logit ----------------------------------------------------------------------------------------


def other_classes(target: Tensor, num_classes: int, ctx: RunContext) -> Tensor:
    """A class other than the target per sample, uniform over the other C - 1 (module docstring)."""
    shift = torch.randint(1, num_classes, target.shape, generator=ctx.generator(OFFSET + 1))
    return (target + shift.to(target.device)) % num_classes


def random_logit(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Similarity of the attributions for the target and for a random other class (module docstring)."""
    name = "random_logit"
    p = resolve_params(name, params, LOGIT_DEFAULTS, LOGIT_CHOICES)
    check_inputs(name, inputs.x, inputs.target, inputs.attributions)
    if inputs.explain is None:
        raise ValueError(f"{name}: needs inputs.explain to attribute other classes; none was given")
    _check_size(name, inputs.x, p)
    with eval_mode(inputs.model), torch.inference_mode():
        out = inputs.model(inputs.x[:1])
    check_logits(out, 1, int(inputs.target.max()) if len(inputs.target) else 0)
    num_classes = out.shape[1]
    if num_classes < 2:
        raise ValueError(f"{name}: the model has {num_classes} output; there is no other class to explain")
    other = other_classes(inputs.target, num_classes, ctx)
    moved = _attribute(inputs.explain, inputs.x, other, name)
    return MetricResult(
        outputs={name: Similarity(inputs.attributions, p, ctx)(moved)}, primary=name, higher_is_better=False,
        bounds={name: (-1.0, 1.0)}, forward_passes=1,
        info={"other_class": other.tolist(), "num_classes": num_classes, "explained_rows": len(other), **p},
    )


def _check_size(name: str, x: Tensor, p: dict[str, Any]) -> None:
    size = math.prod(x.shape[1:])
    if p["similarity"] == "ssim" and size < SSIM_WINDOW:
        raise ParamError(f"{name}: similarity 'ssim' needs at least {SSIM_WINDOW} values per sample (its "
                         f"window), the inputs have {size}; use 'spearman' or 'pearson'")


REFERENCE = (
    "Adebayo et al., Sanity checks for saliency maps, NeurIPS 2018; Sixt, Granz, Landgraf, When explanations "
    "lie, ICML 2020; Hedström et al., Quantus, JMLR 2023 (MPRT, RandomLogit)"
)
METRICS.add("parameter_randomisation", MetricSpec(
    name="parameter_randomisation", family="sanity", compute=parameter_randomisation,
    modalities=frozenset({"image", "tabular", "audio"}), tasks=frozenset({"classification", "regression"}),
    defaults=RANDOMISATION_DEFAULTS, choices=RANDOMISATION_CHOICES, reference=REFERENCE, needs_explain=True,
    description="Similarity of the attributions of the trained and the layer-wise re-initialised model",
))
METRICS.add("random_logit", MetricSpec(
    name="random_logit", family="sanity", compute=random_logit,
    modalities=frozenset({"image", "tabular", "audio"}),
    defaults=LOGIT_DEFAULTS, choices=LOGIT_CHOICES, reference=REFERENCE, needs_explain=True,
    description="Similarity of the attributions for the target class and a random other class",
))
