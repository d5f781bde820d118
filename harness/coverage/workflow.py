"""What every coverage workflow shares: traces of the case's model, built criteria, sharded coverage.

The model's traces (:func:`harness.coverage.base.layer_traces`) of up to ``train_samples`` training inputs
build each criterion once; a set of test inputs is then covered by feeding it in ``shards`` shards, each to
its own ``empty()`` copy, and merging them (the streaming path a large or distributed test set takes).
Class-conditional criteria (surprise adequacy) get the model's predictions as labels. IDC (importance-driven
coverage) is built on the important neurons of a layer attribution aggregated over the training inputs
(:mod:`harness.coverage.relevance`), cached per trained model through ``MetricInputs.artifact``. The
surprise criteria's bucket ranges ``[lower, upper)`` reach the metrics as flat ``lsc_lower``, ``lsc_upper``,
... params (:data:`SURPRISE_BOUNDS`), as IDC's settings do as ``idc_*``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from harness.coverage.base import CRITERIA, Criterion, Traces, coverage_layers, layer_traces, split
from harness.metrics.minimal_subset import predicted_class
from harness.metrics.perturbation import eval_mode
from harness.specs import DataBundle, MetricInputs, ParamError, RunContext, resolve_params

IDC_DEFAULTS: Mapping[str, Any] = {
    "attributor": "layer_conductance", "m": 5, "layer_index": 1, "scope": "layer", "k": 2, "silhouette": False,
    "voters": ["layer_conductance", "layer_activation", "layer_gradient_x_activation"],
}
"""DeepImportance's defaults (seed-systems.md §3.1): LayerConductance, top 5 neurons of layer index 1, k 2;
attributor ``voting`` combines the ``voters`` (:func:`harness.coverage.relevance.voting`)."""
VOTE_OFFSET = 0xC0F5
SURPRISE = ("lsc", "dsc", "mdsc")
"""The surprise-adequacy criteria (:mod:`harness.coverage.surprise`)."""
SURPRISE_BOUNDS: Mapping[str, float] = MappingProxyType({
    f"{name}_{bound}": float(CRITERIA.get(name).defaults[bound]) for name in SURPRISE for bound in ("lower", "upper")
})
"""Flat metric params ``<criterion>_lower`` / ``<criterion>_upper`` with the criteria's defaults (lower 0; upper
LSC 2000, DSC 2.0, MDSC 100): the range ``[lower, upper)`` their coverage buckets cover."""


@dataclass
class Built:
    """A built criterion and what building it cost."""

    name: str
    criterion: Criterion
    build_seconds: float


def unwrap(model: nn.Module) -> nn.Module:
    """The network itself, without the harness's row-counting wrapper (``RowCounter`` keeps it as ``inner``),
    so layer names are the network's own (``conv2``, not ``inner.conv2``) as suites name them."""
    inner = getattr(model, "inner", None)
    return inner if isinstance(inner, nn.Module) else model


def subset(x: Tensor, count: int) -> Tensor:
    """The first ``count`` rows (0: all)."""
    return x if count <= 0 else x[:count]


def traces_of(model: nn.Module, x: Tensor, ctx: RunContext) -> Traces:
    model = unwrap(model)
    with eval_mode(model):
        return layer_traces(model, x, coverage_layers(model), ctx.rows_per_chunk(x[0].numel()))


def criterion_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    spec = CRITERIA.get(name)
    return resolve_params(f"coverage criterion {name}", params, spec.defaults, spec.choices)


def surprise_params(where: str, name: str, p: Mapping[str, Any], given: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Criterion ``name``'s params ``given`` with ``lower`` / ``upper`` from the metric params ``p``
    (``<name>_lower`` / ``<name>_upper``). A bound also in ``given`` wins over a flat one left at its default
    and must equal a flat one that is not; ``lower`` must be below ``upper``."""
    out = dict(given or {})
    for bound in ("lower", "upper"):
        key = f"{name}_{bound}"
        flat, default = p[key], SURPRISE_BOUNDS[key]
        if not math.isfinite(flat):
            raise ParamError(f"{where}: parameter {key!r} = {flat!r} must be finite")
        if bound in out and flat != default and out[bound] != flat:
            raise ParamError(f"{where}: parameter {key!r} = {flat!r} contradicts criterion_params {bound!r} = "
                             f"{out[bound]!r}; give one of them")
        out.setdefault(bound, flat)
    numbers = all(isinstance(out[b], (int, float)) and not isinstance(out[b], bool) for b in ("lower", "upper"))
    if numbers and not out["lower"] < out["upper"]:  # other types: the criterion names them
        raise ParamError(f"{where}: {name} bounds lower = {out['lower']!r} ({name}_lower) and upper = "
                         f"{out['upper']!r} ({name}_upper) give an empty range; lower must be below upper")
    return out


def idc_neurons(inputs: MetricInputs, ctx: RunContext, data: DataBundle, idc: Mapping[str, Any],
                train_samples: int) -> list[tuple[str, int]]:
    """The important neurons of DeepImportance: the layer attribution ``attributor`` of every traced layer in
    scope, aggregated over the training inputs for their labels (cached per model), top ``m``."""
    from harness.coverage.relevance import important_neurons, neuron_relevance

    model = unwrap(inputs.model)
    layers = coverage_layers(model)
    if idc["scope"] == "layer":
        if not 0 <= idc["layer_index"] < len(layers):
            raise ParamError(f"coverage: idc layer_index {idc['layer_index']} out of range; the model has "
                             f"{len(layers)} traced layers: {layers}")
        layers = [layers[idc["layer_index"]]]
    x, y = subset(data.x_train, train_samples).to(ctx.device), subset(data.y_train, train_samples).to(ctx.device)
    if idc["attributor"] == "voting":
        return voted_neurons(inputs, ctx, model, x, y, idc, layers, train_samples)

    def make() -> dict[str, Tensor]:
        return {layer: neuron_relevance(model, layer, x, y, idc["attributor"], ctx.batch_size) for layer in layers}

    identity = {"what": "layer_relevance", "attributor": idc["attributor"], "layers": layers,
                "train_samples": train_samples, "version": 1}
    relevance = inputs.artifact(identity, make) if inputs.artifact is not None else make()
    scope = "model" if idc["scope"] == "model" else layers[0]
    return [(str(layer), int(index)) for layer, index in important_neurons(relevance, idc["m"], scope)]


def voted_neurons(inputs: MetricInputs, ctx: RunContext, model: nn.Module, x: Tensor, y: Tensor,
                  idc: Mapping[str, Any], layers: list[str], train_samples: int) -> list[tuple[str, int]]:
    """DeepImportance's voting over ``idc["voters"]`` (weights: the loss increase when each one's neurons are
    zeroed), cached per model as (layer position, neuron) pairs."""
    from harness.coverage.relevance import voting

    scope = "model" if idc["scope"] == "model" else layers[0]

    def make() -> dict[str, Tensor]:
        chosen = voting(model, x, y, list(idc["voters"]), idc["m"], scope, ctx.batch_size,
                        generator=ctx.generator(VOTE_OFFSET))
        all_layers = coverage_layers(model)
        return {"layer": torch.tensor([all_layers.index(layer) for layer, _ in chosen], dtype=torch.long),
                "index": torch.tensor([int(i) for _, i in chosen], dtype=torch.long)}

    identity = {"what": "voting", "voters": list(idc["voters"]), "m": idc["m"], "scope": scope,
                "train_samples": train_samples, "seed": ctx.seed, "version": 1}
    picked = inputs.artifact(identity, make) if inputs.artifact is not None else make()
    all_layers = coverage_layers(model)
    return [(all_layers[int(a)], int(b)) for a, b in zip(picked["layer"].tolist(), picked["index"].tolist())]


def build_criteria(inputs: MetricInputs, ctx: RunContext, names: Sequence[str],
                   params: Mapping[str, Mapping[str, Any]], train_samples: int,
                   idc: Mapping[str, Any] | None = None) -> list[Built]:
    """Each named criterion built on the traces of the first ``train_samples`` training inputs (labels: the
    model's predictions)."""
    data = inputs.data
    if data is None:
        raise ValueError("coverage: needs inputs.data (the training inputs build the criteria)")
    x = subset(data.x_train, train_samples).to(ctx.device)
    train = traces_of(inputs.model, x, ctx)
    labels = predicted_class(inputs.model, x, ctx)
    built = []
    for name in names:
        given = dict(params.get(name, {}))
        if name == "idc":
            given.setdefault("k", (idc or IDC_DEFAULTS)["k"])
            given.setdefault("silhouette", (idc or IDC_DEFAULTS)["silhouette"])
            given["neurons"] = idc_neurons(inputs, ctx, data, {**IDC_DEFAULTS, **(idc or {})}, train_samples)
            given.setdefault("seed", ctx.seed)
            spec = CRITERIA.get(name)
            resolved = {**spec.defaults, **given}
        else:
            resolved = criterion_params(name, given)
        start = time.perf_counter()
        criterion = CRITERIA.get(name).make(**resolved)
        criterion.build(train, labels)
        built.append(Built(name, criterion, time.perf_counter() - start))
    return built


def covered(built: Built, traces: Traces, labels: Tensor, shards: int) -> dict[str, float]:
    """``compute()`` after feeding ``traces`` in ``shards`` contiguous shards to fresh copies, merged."""
    n = len(labels)
    bounds = [round(i * n / max(1, shards)) for i in range(max(1, shards) + 1)]
    parts = []
    for lo, hi in pairwise(bounds):
        part = built.criterion.empty()
        if hi > lo:
            part.update(split(traces, slice(lo, hi)), labels[lo:hi])
        parts.append(part)
    first = parts[0]
    for other in parts[1:]:
        first.merge(other)
    return first.compute()


def all_criteria(exclude: Sequence[str] = ()) -> list[str]:
    return [name for name in CRITERIA.names() if name not in exclude]
