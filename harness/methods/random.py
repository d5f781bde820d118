"""The Random baseline of attribench (Gevaert et al. 2024): attributions drawn from U[-1, 1] per element.

Every method is compared with it; a method that does not beat Random on a metric carries no information
for that metric.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.specs import METHODS, Explainer, MethodSpec, RunContext, resolve_params


def build_random(model: nn.Module, ctx: RunContext, /, **params: Any) -> Explainer:
    """``explain(x, target)`` -> U[-1, 1] noise of x's shape, drawn on the CPU from ``ctx.generator()``.

    Drawing on the CPU gives the same numbers on every device; each call starts from the same seed.
    The method has no parameters; any given one is rejected.
    """
    resolve_params("method random", params, {})

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=ctx.generator(), dtype=torch.float32) * 2.0 - 1.0
        return noise.to(x.device)

    return explain


METHODS.add(
    "random",
    MethodSpec(
        name="random",
        build=build_random,
        description="Random baseline (attribench): U[-1, 1] per input element, seeded by the run's seed.",
    ),
)
