"""Loss-gradient attributions (Subramanian et al., "Anomalous behaviour of loss-gradient based interpretability
methods", ICLR 2021 RobustML workshop, arXiv 2207.07769; github VinodS7/investigate-gradients; §5 of the seed
notes).

The attribution is built from the gradient of the LOSS with the target label (the cases pass the TRUE label),
not of a logit: g = d L(f(x), y) / dx with L the cross-entropy of the model's logits. The seed's models use
NLL on log-softmax (= cross-entropy on logits) or BCE on a sigmoid unit z; the harness's sigmoid models output
the two logits (0, z) (:mod:`harness.models.mnist_cnn`), whose cross-entropy is that BCE exactly, so one
definition covers the 10-class, 2-class softmax and sigmoid models. ``variant`` picks the ranking:

=====================  ============  =====================  ============
``abs_grad``  |g|      ``grad_orig`` g                      ``grad_inp``  g * x
``abs_grad_inp`` |g*x| ``grad_abs_inp`` g * |x|             ``abs_grad_abs_inp`` |g| * |x|
``input``     x        ``abs_input`` |x|
=====================  ============  =====================  ============

Each sample's loss depends on its own input only (eval mode), so the gradient of the summed loss of a chunk is
every sample's own gradient, and the result does not depend on the chunking.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.methods import aggregation
from harness.specs import METHODS, Explainer, MethodSpec, RunContext, resolve_params

Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

VARIANTS: dict[str, Rule] = {
    "abs_grad": lambda g, x: g.abs(),
    "grad_orig": lambda g, x: g,
    "grad_inp": lambda g, x: g * x,
    "abs_grad_inp": lambda g, x: (g * x).abs(),
    "grad_abs_inp": lambda g, x: g * x.abs(),
    "abs_grad_abs_inp": lambda g, x: g.abs() * x.abs(),
    "input": lambda g, x: x,
    "abs_input": lambda g, x: x.abs(),
}
"""``variant`` -> attribution from (loss gradient g, input x), as in the seed's rankings."""
INPUT_ONLY = frozenset({"input", "abs_input"})
"""Variants that need no gradient (no forward pass either)."""
DEFAULTS: dict[str, Any] = {"variant": "abs_grad", aggregation.PARAMETER: "none"}
CHOICES: dict[str, tuple[Any, ...]] = {
    "variant": tuple(VARIANTS), aggregation.PARAMETER: aggregation.AGGREGATIONS,
}


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else fallback


def loss_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d CE(model(x)_i, target_i) / d x_i for every sample i (Subramanian et al. 2022, arXiv 2207.07769):
    one forward and one backward, float32 on x's device; the model's mode and parameter gradients are
    untouched."""
    inputs = x.detach().float().requires_grad_()
    with torch.enable_grad():
        logits = model(inputs)
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(
                "method loss_gradient: needs classification logits (N, classes >= 2); got model outputs of "
                f"shape {list(logits.shape)} (a one-unit sigmoid model must output the two logits (0, z))"
            )
        loss = F.cross_entropy(logits.float(), target.to(logits.device, torch.long), reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs)
    return grad


def build_loss_gradient(model: nn.Module, ctx: RunContext, /, **params: Any) -> Explainer:
    """``explain(x, target)`` -> ``VARIANTS[variant](g, x)`` with g the cross-entropy loss gradient at the
    target labels, in eval mode, in chunks of ``ctx.rows_per_chunk`` rows (one forward + backward each); detached
    float32 of x's shape on x's device."""
    resolved = resolve_params("method loss_gradient", params, DEFAULTS, CHOICES)
    variant, mode = resolved["variant"], resolved[aggregation.PARAMETER]
    rule = VARIANTS[variant]
    device = _model_device(model, ctx.device)

    def attribute(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(device=device, dtype=torch.float32)
        if variant in INPUT_ONLY:
            return rule(x, x)
        return rule(loss_gradient(model, x, target), x)

    def explain(x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        targets = torch.as_tensor(target, dtype=torch.long)
        targets = targets.expand(len(x)) if targets.ndim == 0 else targets
        if len(x) == 0:
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        rows = ctx.rows_per_chunk(math.prod(x.shape[1:]))
        was_training = model.training
        model.eval()
        try:
            parts = [attribute(x[i : i + rows], targets[i : i + rows]) for i in range(0, len(x), rows)]
            out = torch.cat(parts)
        finally:
            model.train(was_training)
        return aggregation.aggregate(out.detach(), mode).to(x.device)

    return explain


METHODS.add(
    "loss_gradient",
    MethodSpec(
        name="loss_gradient", build=build_loss_gradient, defaults=dict(DEFAULTS), choices=dict(CHOICES),
        description=(
            "Loss-gradient attributions (Subramanian et al., arXiv 2207.07769): g = d CE(f(x), y) / dx, the "
            "gradient of the cross-entropy of the logits with the target (the TRUE label in the cases; "
            "equals the seed's BCE for the (0, z) sigmoid models), then variant: abs_grad |g|, grad_orig g, "
            "grad_inp g*x, abs_grad_inp |g*x|, grad_abs_inp g*|x|, abs_grad_abs_inp |g|*|x|, input x, "
            "abs_input |x|."
        ),
    ),
)
