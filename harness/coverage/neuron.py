"""Neuron-level coverage criteria: NC, KMNC, NBC, SNAC and TKNC (seed-systems.md §3.2).

Each reads layer traces (:mod:`harness.coverage.base`: one row per input, one column per neuron, a
convolution's channels averaged over space) and keeps one flag per neuron (KMNC: per neuron and section) that
a test input can raise; coverage is the share of flags raised, so state merges exactly by OR.

* ``nc`` (Pei et al., "DeepXplore: Automated whitebox testing of deep learning systems", SOSP 2017): each
  input's activations are min-max scaled across their layer, ``(a - min_layer) / (max_layer - min_layer)``
  (0 for a layer whose activations are all equal: the seed divides by zero, giving NaN, never covered); a
  neuron is covered once its scaled activation exceeds ``threshold`` (strictly).
* ``kmnc``, ``nbc``, ``snac``, ``tknc`` (Ma et al., "DeepGauge: Multi-granularity testing criteria for deep
  learning systems", ASE 2018); ``[low, high]`` is each neuron's range over the training traces.

  - ``kmnc``: ``[low, high]`` split into ``k`` equal sections; an activation ``a`` in the range hits section
    ``min(floor((a - low) / (high - low) * k), k - 1)`` (half-open sections, the last closed). Coverage =
    hit (neuron, section) cells / (neurons * k). A neuron with ``high == low`` has no sections to hit (as in
    the seed). The seed's ``ceil`` indexing drops ``a == low``; DeepGauge's definition counts it.
  - ``nbc``: (share of neurons ever ``< low`` + share ever ``> high``) / 2; ``snac``: the upper share only.
  - ``tknc``: share of neurons ever among the ``k`` largest activations of their layer for some input.

Top-k ties are broken deterministically: among equal activations the lower neuron index ranks first (a
stable descending sort; ``torch.topk`` leaves ties unspecified). A layer with fewer than ``k`` neurons has
all of them in its top-k. ``compute()`` gives ``coverage``, ``ratio`` (= coverage: these are already
ratios) and ``inputs`` (|D|, test inputs seen and merged).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Self

import torch
from torch import Tensor

from harness.coverage.base import CRITERIA, Criterion, CriterionSpec, Traces, check_traces
from harness.specs import ParamError, resolve_params

DEEPXPLORE = "Pei et al., DeepXplore: Automated whitebox testing of deep learning systems, SOSP 2017"
DEEPGAUGE = ("Ma et al., DeepGauge: Multi-granularity testing criteria for deep learning systems, ASE 2018; "
             "baselines of github Yuanyuan-Yuan/NeuraL-Coverage and JoshuaQSH/Wisdom")


class LayerCriterion:
    """What every criterion of this module and :mod:`harness.coverage.pattern` shares: the traced layers
    (name -> neurons, in build order), the device, |D|, and the build / update / empty / merge plumbing.
    Subclasses implement ``_fit`` (optional), ``_reset``, ``_update``, ``_merge`` and ``_coverage``."""

    name = "layer"
    params: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.layers: dict[str, int] = {}
        self.device = torch.device("cpu")
        self.inputs = 0
        self.built = False

    def build(self, train: Traces, labels: Tensor) -> None:
        """Record the layers (and, for range criteria, each neuron's training range); labels are unused."""
        check_traces(self.name, train)
        if not train:
            raise ValueError(f"{self.name}: build needs the traces of at least one layer")
        self.layers = {layer: int(values.shape[1]) for layer, values in train.items()}
        self.device = next(iter(train.values())).device
        self._fit(train)
        self.built = True
        self.inputs = 0
        self._reset()

    def update(self, traces: Traces, labels: Tensor) -> None:
        """Add one batch of test traces (labels are unused)."""
        values = self._ordered(traces)
        if values[0].shape[0]:
            self._update(values)
            self.inputs += int(values[0].shape[0])

    def empty(self) -> Self:
        """A copy sharing the built state (never modified after ``build``) with no test state."""
        if not self.built:
            raise RuntimeError(f"{self.name}: call build() before empty()")
        fresh = copy.copy(self)
        fresh.inputs = 0
        fresh._reset()
        return fresh

    def merge(self, other: Criterion) -> None:
        """Absorb ``other``'s test state; ``other`` must be this criterion built on the same layers."""
        checked = self.mergeable(other)
        self._merge(checked)
        self.inputs += checked.inputs

    def mergeable(self, other: Criterion) -> Any:
        """``other`` if it is this criterion with the same parameters and layers, else ValueError."""
        if not (type(other) is type(self) and isinstance(other, LayerCriterion) and other.name == self.name
                and other.layers == self.layers and other.settings() == self.settings()):
            raise ValueError(f"{self.name}: can only merge a {self.name} criterion with the same parameters "
                             f"{self.settings()} built on the same layers")
        return other

    def settings(self) -> dict[str, Any]:
        """The criterion's parameters (names in ``params``)."""
        return {key: getattr(self, key) for key in self.params}

    def compute(self) -> dict[str, float]:
        """``coverage``, ``ratio`` (the seed's normalisation; else the coverage) and ``inputs`` (|D|)."""
        coverage = self._coverage()
        return {"coverage": coverage, "ratio": self._ratio(coverage), "inputs": self.inputs}

    def _ordered(self, traces: Traces) -> list[Tensor]:
        if not self.built:
            raise RuntimeError(f"{self.name}: call build() before update()")
        check_traces(self.name, traces, self.layers)
        values = [traces[layer] for layer in self.layers]
        if len({v.shape[0] for v in values}) != 1:
            raise ValueError(f"{self.name}: layers hold different numbers of inputs "
                             f"{[v.shape[0] for v in values]}")
        if values[0].device != self.device:
            raise ValueError(f"{self.name}: traces on {values[0].device}, criterion built on {self.device}")
        return values

    def _fit(self, train: Traces) -> None:
        """Fit built state from the training traces (none by default)."""

    def _reset(self) -> None:
        raise NotImplementedError

    def _update(self, values: list[Tensor]) -> None:
        raise NotImplementedError

    def _merge(self, other: Any) -> None:
        raise NotImplementedError

    def _coverage(self) -> float:
        raise NotImplementedError

    def _ratio(self, coverage: float) -> float:
        return coverage


class FlagCriterion(LayerCriterion):
    """Coverage = mean over ``parts`` of (raised flags / flags), flags per layer of shape ``_shape(n)``."""

    parts: tuple[str, ...] = ("covered",)

    def _shape(self, neurons: int) -> tuple[int, ...]:
        return (neurons,)

    def _reset(self) -> None:
        self.flags = {part: {layer: torch.zeros(self._shape(n), dtype=torch.bool, device=self.device)
                             for layer, n in self.layers.items()} for part in self.parts}

    def _update(self, values: list[Tensor]) -> None:
        for layer, v in zip(self.layers, values, strict=True):
            for part, hit in self._hits(layer, v).items():
                self.flags[part][layer] |= hit

    def _hits(self, layer: str, values: Tensor) -> dict[str, Tensor]:
        """The flags one batch raises in one layer, per part."""
        raise NotImplementedError

    def _merge(self, other: FlagCriterion) -> None:
        for part in self.parts:
            for layer in self.layers:
                self.flags[part][layer] |= other.flags[part][layer]

    def _coverage(self) -> float:
        shares = []
        for part in self.parts:
            raised = sum(int(flags.sum()) for flags in self.flags[part].values())
            total = sum(flags.numel() for flags in self.flags[part].values())
            shares.append(raised / total if total else 0.0)
        return sum(shares) / len(shares)


class NeuronCoverage(FlagCriterion):
    """NC (DeepXplore): share of neurons whose per-input layer-scaled activation ever exceeds ``threshold``."""

    name = "nc"
    params = ("threshold",)

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def _hits(self, layer: str, values: Tensor) -> dict[str, Tensor]:
        low = values.min(dim=1, keepdim=True).values
        span = values.max(dim=1, keepdim=True).values - low
        scaled = torch.where(span > 0, (values - low) / span.clamp_min(torch.finfo(values.dtype).tiny), 0.0)
        return {"covered": (scaled > self.threshold).any(dim=0)}


class RangeCriterion(FlagCriterion):
    """A criterion over each neuron's training range ``[low, high]``."""

    def _fit(self, train: Traces) -> None:
        empty = [layer for layer, values in train.items() if values.shape[0] == 0]
        if empty:
            raise ValueError(f"{self.name}: build needs at least one training input; layers {empty} have none")
        self.low = {layer: values.min(dim=0).values for layer, values in train.items()}
        self.high = {layer: values.max(dim=0).values for layer, values in train.items()}


class MultisectionCoverage(RangeCriterion):
    """KMNC (DeepGauge): share of (neuron, section) cells hit, ``k`` sections of each training range."""

    name = "kmnc"
    params = ("k",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def _shape(self, neurons: int) -> tuple[int, ...]:
        return (neurons, self.k)

    def _hits(self, layer: str, values: Tensor) -> dict[str, Tensor]:
        low, high = self.low[layer], self.high[layer]
        width = high - low
        inside = (values >= low) & (values <= high) & (width > 0)
        section = ((values - low) / torch.where(width > 0, width, 1.0) * self.k).floor().clamp(0, self.k - 1)
        cell = torch.arange(values.shape[1], device=values.device) * self.k + section.long()
        hit = torch.zeros(values.shape[1] * self.k, dtype=torch.bool, device=values.device)
        hit[cell[inside]] = True
        return {"covered": hit.view(values.shape[1], self.k)}


class BoundaryCoverage(RangeCriterion):
    """NBC (both bounds) and SNAC (``upper_only``) of DeepGauge: shares of neurons ever outside their
    training range, averaged over the two sides."""

    def __init__(self, upper_only: bool) -> None:
        super().__init__()
        self.name = "snac" if upper_only else "nbc"
        self.parts = ("upper",) if upper_only else ("lower", "upper")

    def _hits(self, layer: str, values: Tensor) -> dict[str, Tensor]:
        hits = {"upper": (values > self.high[layer]).any(dim=0)}
        if "lower" in self.parts:
            hits["lower"] = (values < self.low[layer]).any(dim=0)
        return hits


def top_k_indices(values: Tensor, k: int) -> Tensor:
    """(N, min(k, neurons)) indices of each row's ``k`` largest values, largest first; ties go to the lower
    index (stable sort), so the result is deterministic on every device (DeepGauge's top-k neurons)."""
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return order[:, :min(k, values.shape[1])]


class TopKCoverage(FlagCriterion):
    """TKNC (DeepGauge): share of neurons ever among the top ``k`` of their layer."""

    name = "tknc"
    params = ("k",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def _hits(self, layer: str, values: Tensor) -> dict[str, Tensor]:
        hit = torch.zeros(values.shape[1], dtype=torch.bool, device=values.device)
        hit[top_k_indices(values, self.k).flatten()] = True
        return {"covered": hit}


def resolved(name: str, params: Mapping[str, Any], spec_defaults: Mapping[str, Any],
             checks: Mapping[str, tuple[Callable[[Any], bool], str]]) -> dict[str, Any]:
    """``params`` merged over the defaults (:func:`harness.specs.resolve_params`), then each value checked:
    ``checks[key] = (ok, valid)`` raises :class:`ParamError` naming the value and ``valid`` when not ok."""
    where = f"coverage criterion {name}"
    p = resolve_params(where, dict(params), spec_defaults)
    for key, (ok, valid) in checks.items():
        if not ok(p[key]):
            raise ParamError(f"{where}: parameter {key!r} = {p[key]!r} is not valid; valid: {valid}")
    return p


POSITIVE_K = (lambda k: k >= 1, "an integer k >= 1")


def register(name: str, make: Callable[..., Criterion], defaults: Mapping[str, Any], description: str,
             reference: str) -> None:
    """Add a criterion of these modules to :data:`CRITERIA` (factory ``make(**params)``)."""
    CRITERIA.add(name, CriterionSpec(name=name, make=make, defaults=dict(defaults), description=description,
                                     reference=reference))


NC_DEFAULTS = {"threshold": 0.5}
K_DEFAULTS = {"k": 1000}
TOP_DEFAULTS = {"k": 10}

register("nc", lambda **p: NeuronCoverage(**resolved("nc", p, NC_DEFAULTS, {
    "threshold": (lambda t: 0.0 <= t <= 1.0, "0 <= threshold <= 1 (scaled activations lie in [0, 1])")})),
    NC_DEFAULTS, "NC: share of neurons whose layer-scaled activation exceeds the threshold", DEEPXPLORE)
register("kmnc", lambda **p: MultisectionCoverage(**resolved("kmnc", p, K_DEFAULTS, {"k": POSITIVE_K})),
         K_DEFAULTS, "KMNC: share of the k sections of each neuron's training range hit", DEEPGAUGE)
register("nbc", lambda **p: BoundaryCoverage(upper_only=False, **resolved("nbc", p, {}, {})), {},
         "NBC: mean share of neurons ever below / above their training range", DEEPGAUGE)
register("snac", lambda **p: BoundaryCoverage(upper_only=True, **resolved("snac", p, {}, {})), {},
         "SNAC: share of neurons ever above their training range", DEEPGAUGE)
register("tknc", lambda **p: TopKCoverage(**resolved("tknc", p, TOP_DEFAULTS, {"k": POSITIVE_K})),
         TOP_DEFAULTS, "TKNC: share of neurons ever among the top k of their layer", DEEPGAUGE)
