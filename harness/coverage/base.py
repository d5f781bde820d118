"""The contract of every coverage criterion: streaming, mergeable state over layer traces.

DeepImportance (Gerasimou et al., "Importance-Driven Deep Learning System Testing", ICSE 2020; PyTorch port
github JoshuaQSH/Wisdom) and the baseline criteria it compares with (NeuraL-Coverage, github
Yuanyuan-Yuan/NeuraL-Coverage) all read *layer traces*: for every Linear / Conv2d layer but the last Linear,
the module's output per input, a convolution's channels averaged over space (one channel = one neuron), so a
layer's trace is an (N, neurons) tensor (seed-systems.md §3.2).

A criterion is built once from the training traces (``build``: ranges, clusters, KDEs), then fed test traces
batch by batch (``update``); two criteria built alike and fed two shards of a test set combine with
``merge`` into exactly the state one criterion fed both shards would hold, so coverage can be computed under
xdist or over a test set too large for memory. ``compute`` returns the coverage (key ``coverage``) and any
secondary figures (e.g. ``ratio`` normalised as the seed compares criteria).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from harness.registry import Registry
from harness.specs import Spec

Traces = dict[str, Tensor]
"""Layer name -> (N, neurons) float tensor of one batch of inputs."""


class Criterion(Protocol):
    """Streaming, mergeable coverage state (module docstring)."""

    name: str

    def build(self, train: Traces, labels: Tensor) -> None:
        """Fit what the criterion needs from the training traces (and labels, for class-conditional ones)."""
        ...

    def update(self, traces: Traces, labels: Tensor) -> None:
        """Add one batch of test traces (labels: the model's predictions or the true labels, as the caller
        decides; class-conditional criteria need them)."""
        ...

    def merge(self, other: Criterion) -> None:
        """Absorb ``other``'s test state (``other`` was built from the same training traces)."""
        ...

    def empty(self) -> Criterion:
        """A criterion with this one's built state and no test state (for a new shard)."""
        ...

    def compute(self) -> dict[str, float]:
        """``{"coverage": value, ...}`` over every test trace seen (and merged) so far."""
        ...


@dataclass(frozen=True)
class CriterionSpec(Spec):
    make: Callable[..., Criterion]
    """``make(**params) -> Criterion`` with every parameter resolved."""
    reference: str = ""


CRITERIA: Registry[CriterionSpec] = Registry("coverage criterion")


def coverage_layers(model: nn.Module) -> list[str]:
    """Names of the model's Linear and Conv2d modules in definition order, without the last Linear (the
    logits): the layers DeepImportance and the baseline criteria trace."""
    names = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    last_linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    return [name for name in names if name not in last_linear]


@torch.no_grad()
def layer_traces(model: nn.Module, x: Tensor, layers: list[str], batch_size: int = 256) -> Traces:
    """Each layer's output for every input of ``x``, (N, neurons): a convolution's (N, C, H, W) averaged over
    H, W; batched by ``batch_size``; float32 on x's device; the model's mode is left as it is."""
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the model's traceable layers: {coverage_layers(model)}")
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}

    def hook(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            out = output.detach().float()
            parts[name].append(out.flatten(2).mean(dim=2) if out.ndim > 2 else out)
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(values) if values else x.new_zeros((0, 0)) for name, values in parts.items()}


def split(traces: Traces, index: slice | Tensor) -> Traces:
    """The traces of a subset of the inputs (a shard or a batch)."""
    return {name: values[index] for name, values in traces.items()}


def check_traces(name: str, traces: Mapping[str, Tensor], layers: Mapping[str, int] | None = None) -> None:
    """Raise ValueError naming the criterion when a layer is missing or its neuron count differs from the
    one the criterion was built with (``layers``: layer -> neurons)."""
    for layer, values in traces.items():
        if values.ndim != 2:
            raise ValueError(f"{name}: traces of layer {layer!r} must be (N, neurons), got {list(values.shape)}")
    if layers is not None:
        missing = sorted(set(layers) - set(traces))
        if missing:
            raise ValueError(f"{name}: traces lack layers {missing}; got {sorted(traces)}")
        for layer, count in layers.items():
            if traces[layer].shape[1] != count:
                raise ValueError(f"{name}: layer {layer!r} has {traces[layer].shape[1]} neurons, built with {count}")
