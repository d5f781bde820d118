"""The Random baseline of attribench (Gevaert et al. 2024): attributions drawn from U[-1, 1] per element.

Every method is compared with it; a method that does not beat Random on a metric carries no information
for that metric. Like every method it takes ``pixel_aggregation`` (:mod:`harness.methods.aggregation`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.methods import aggregation
from harness.specs import METHODS, Explainer, MethodSpec, RunContext, resolve_params

DEFAULTS: dict[str, Any] = {aggregation.PARAMETER: "none"}
CHOICES: dict[str, tuple[Any, ...]] = {aggregation.PARAMETER: aggregation.AGGREGATIONS}


def build_random(model: nn.Module, ctx: RunContext, /, **params: Any) -> Explainer:
    """``explain(x, target)`` -> U[-1, 1] noise of x's shape, drawn on the CPU from ``ctx.generator()``.

    Drawing on the CPU gives the same numbers on every device; each call starts from the same seed.
    """
    mode = resolve_params("method random", params, DEFAULTS, CHOICES)[aggregation.PARAMETER]

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=ctx.generator(), dtype=torch.float32) * 2.0 - 1.0
        return aggregation.aggregate(noise, mode).to(x.device)

    return explain


METHODS.add(
    "random",
    MethodSpec(
        name="random",
        build=build_random,
        defaults=dict(DEFAULTS),
        choices=dict(CHOICES),
        description="Random baseline (attribench): U[-1, 1] per input element, seeded by the run's seed.",
    ),
)
