"""Methods that attribute many rows per sample and average them: noise draws, baseline pairs, path points.

A :class:`Sampler` expands a chunk of n samples into n * k rows (plus per-row ``attribute()`` keywords) for
the adapter to attribute under the batch budget, and reduces the k attributions of each sample to one.
All randomness comes from one CPU generator per explain call (``RunContext.generator()``), consumed sample by
sample in order, so the result does not depend on the chunking or the device; captum's own samplers draw
from the global torch / numpy RNGs per call, which would tie the result to the chunking.

* :class:`NoiseDraws`: captum NoiseTunnel semantics (SmoothGrad, Smilkov et al. 2017; SmoothGrad-squared and
  VarGrad, Adebayo et al. 2018): k draws of x + N(0, stdevs^2), reduced by mean, mean of squares or variance.
* :class:`BaselinePairs`: captum DeepLiftShap (Lundberg & Lee 2017): DeepLift of x against each of the R
  data-set references as its baseline, averaged (DeepLiftShap expands inputs and baselines exactly so).
* :class:`PathDraws`: captum GradientShap with ``stdevs`` 0, i.e. Expected Gradients (Erion et al. 2021):
  k draws of a reference b (uniform over the R references, with replacement, as captum's
  ``np.random.choice``) and alpha ~ U[0, 1]; mean of (x - b) * grad f(b + alpha (x - b)).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from harness.specs import RunContext

Params = Mapping[str, Any]
REFERENCE_OFFSET = 1
"""``RunContext.generator`` offset of the reference draw (the per-sample draws use offset 0)."""

NT_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "smoothgrad": lambda a: a.mean(dim=1),
    "smoothgrad_sq": lambda a: (a * a).mean(dim=1),
    "vargrad": lambda a: a.var(dim=1, correction=0),
}
"""captum ``NoiseTunnel`` ``nt_type`` -> reduction over the draw axis (dim 1) of per-draw attributions."""


@dataclass(frozen=True)
class Expansion:
    """A chunk of n samples as n * k rows (sample-major) and how to fold their attributions back."""

    inputs: torch.Tensor
    reduce: Callable[[torch.Tensor], torch.Tensor]
    """(n * k, *shape) attributions -> (n, *shape)."""
    row_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-row ``attribute()`` keywords (first axis n * k), chunked along with the rows."""


class Sampler(Protocol):
    def count(self, params: Params, references: torch.Tensor | None) -> int:
        """Rows k per sample."""
        ...

    def expand(
        self, x: torch.Tensor, generator: torch.Generator, params: Params, references: torch.Tensor | None
    ) -> Expansion:
        """Expand the chunk ``x`` (on the model's device), drawing from ``generator`` sample by sample."""
        ...


def _folded(n: int, k: int, reduce: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda attributions: reduce(attributions.unflatten(0, (n, k)))


@dataclass(frozen=True)
class NoiseDraws:
    """k = ``nt_samples`` draws of x + ``stdevs`` * N(0, 1), reduced by ``nt_type`` (fixed, or the parameter)."""

    nt_type: str | None = None

    def count(self, params: Params, references: torch.Tensor | None) -> int:
        return int(params["nt_samples"])

    def expand(
        self, x: torch.Tensor, generator: torch.Generator, params: Params, references: torch.Tensor | None
    ) -> Expansion:
        k, stdevs = int(params["nt_samples"]), float(params["stdevs"])
        noise = torch.stack([torch.randn((k, *x.shape[1:]), generator=generator) for _ in x])
        noisy = (x.unsqueeze(1) + stdevs * noise.to(x.device)).flatten(0, 1)
        return Expansion(noisy, _folded(len(x), k, NT_REDUCTIONS[self.nt_type or params["nt_type"]]))


@dataclass(frozen=True)
class BaselinePairs:
    """Each sample paired with every reference as its baseline (keyword ``baselines``); mean over references."""

    parameter: str = "n_baselines"

    def count(self, params: Params, references: torch.Tensor | None) -> int:
        return len(references) if references is not None else int(params[self.parameter])

    def expand(
        self, x: torch.Tensor, generator: torch.Generator, params: Params, references: torch.Tensor | None
    ) -> Expansion:
        assert references is not None
        k = len(references)
        rows = x.repeat_interleave(k, dim=0)
        baselines = references.repeat(len(x), *[1] * (x.ndim - 1))
        return Expansion(rows, _folded(len(x), k, lambda a: a.mean(dim=1)), {"baselines": baselines})


@dataclass(frozen=True)
class PathDraws:
    """k = ``n_samples`` points b + alpha (x - b) per sample; mean of (x - b) * (gradient at the point)."""

    def count(self, params: Params, references: torch.Tensor | None) -> int:
        return int(params["n_samples"])

    def draws(self, n: int, k: int, r: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, k) reference indices and (n, k) alphas, drawn per sample in order (indices, then alphas)."""
        index, alpha = [], []
        for _ in range(n):
            index.append(torch.randint(r, (k,), generator=generator))
            alpha.append(torch.rand(k, generator=generator))
        return torch.stack(index), torch.stack(alpha)

    def expand(
        self, x: torch.Tensor, generator: torch.Generator, params: Params, references: torch.Tensor | None
    ) -> Expansion:
        assert references is not None
        n, k = len(x), int(params["n_samples"])
        index, alpha = self.draws(n, k, len(references), generator)
        base = references[index.flatten().to(references.device)]  # (n * k, *shape)
        scale = alpha.flatten().to(x.device).reshape(-1, *[1] * (x.ndim - 1))
        delta = x.repeat_interleave(k, dim=0) - base
        return Expansion(base + scale * delta, lambda a: (a * delta).unflatten(0, (n, k)).mean(dim=1))


def draw_references(ctx: RunContext, n: int, where: str) -> torch.Tensor:
    """``min(n, len(background))`` rows of ``ctx.background`` without replacement (as attribench's shuffled
    DataLoader), drawn from ``ctx.generator(REFERENCE_OFFSET)``; float32 on the CPU."""
    if ctx.background is None:
        raise ValueError(
            f"{where}: needs data-set baselines drawn from the case's training inputs (RunContext.background), "
            "but the run context has none; build the method with RunContext(background=x_train)"
        )
    if len(ctx.background) == 0:
        raise ValueError(f"{where}: RunContext.background is empty; it needs at least one training input")
    index = torch.randperm(len(ctx.background), generator=ctx.generator(REFERENCE_OFFSET))[:n]
    return ctx.background[index].detach().float().cpu()
