"""Frozen spec objects for the four registries, and the context handed to every factory.

A spec is cheap metadata plus a lazy factory. Parameters are declared as ``defaults`` (whose types are the
accepted types) and optional ``choices``; :func:`resolve_params` checks user parameters against them so that
a suite fails before any work with a message naming the bad key and the valid choices.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from harness.registry import Registry

Params = Mapping[str, Any]


class ParamError(ValueError):
    """A parameter that is unknown, of the wrong type, or not one of its choices."""


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def resolve_params(
    where: str, given: Params, defaults: Params, choices: Mapping[str, tuple[Any, ...]] | None = None
) -> dict[str, Any]:
    """Merge ``given`` over ``defaults``; raise :class:`ParamError` naming ``where`` on any bad entry."""
    choices = choices or {}
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise ParamError(f"{where}: unknown parameter {key!r}; valid parameters: {valid}")
        default = defaults[key]
        if not _type_ok(value, default):
            raise ParamError(
                f"{where}: parameter {key!r} = {value!r} has type {type(value).__name__}, "
                f"expected {type(default).__name__} (default {default!r})"
            )
        if key in choices and value not in choices[key]:
            raise ParamError(
                f"{where}: parameter {key!r} = {value!r} is not valid; choices: "
                + ", ".join(repr(c) for c in choices[key])
            )
        out[key] = float(value) if isinstance(default, float) else value
    return out


def fractions_param(where: str, key: str, values: Any, *, include_one: bool = False) -> list[float]:
    """``values`` as floats if it is a non-empty list of fractions in (0, 1) (``include_one``: (0, 1]); else
    :class:`ParamError` naming ``where``, the parameter and the valid range."""
    high = "1]" if include_one else "1)"
    ok = isinstance(values, (list, tuple)) and len(values) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v and (v <= 1 if include_one else v < 1)
        for v in values)
    if not ok:
        raise ParamError(f"{where}: parameter {key!r} = {values!r} must be a non-empty list of fractions in (0, {high}")
    return [float(v) for v in values]


@dataclass(frozen=True)
class RunContext:
    """What every factory may use besides its own parameters: where, how big, which seed."""

    device: torch.device
    seed: int
    batch_size: int = 256
    """Most rows in one forward pass (the batch budget)."""
    memory_mb: int = 1024
    """Memory budget for one chunk of perturbed inputs, in MiB."""
    background: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """The case's training inputs (on the CPU), for methods with data-set baselines (DeepLiftShap,
    GradientShap) and metrics that sample the data distribution; draw from it with :meth:`generator`."""

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from (seed, offset) through numpy's SeedSequence, so (0, 1) and (1, 0) give
        unrelated streams; draw on the CPU and move the numbers, to get the same ones on every device."""
        state = np.random.SeedSequence([self.seed, offset]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state) % (2**63))

    def rows_per_chunk(self, row_numel: int, element_size: int = 4, copies: int = 4) -> int:
        """Rows that fit both the batch budget and the memory budget (``copies`` buffers per row)."""
        by_memory = (self.memory_mb * 2**20) // max(1, row_numel * element_size * copies)
        return max(1, min(self.batch_size, int(by_memory)))


TASKS: tuple[str, ...] = ("classification", "regression")
"""Supervised tasks: classification (integer labels, cross-entropy, accuracy, attribute a class) and
regression (float targets of shape (N,), ``num_classes`` = 1 output, MSE, R^2, attribute output 0)."""


@dataclass(frozen=True)
class DataBundle:
    """A data set as tensors.

    ``mask_test`` marks ground-truth relevant inputs if known; ``truth_test`` maps a ground-truth kind
    (e.g. ``"derivative"``) to the true attribution of every test input, of ``x_test``'s shape, for data sets
    whose generating function is known (ChaosMining symbolic data)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    """Classes, or model outputs (1) for regression."""
    mask_test: torch.Tensor | None = None
    task: str = "classification"
    truth_test: Mapping[str, torch.Tensor] = field(default_factory=dict)
    groups_test: torch.Tensor | None = None
    """Recording (song, file) of every test sample, for data sets whose test samples are consecutive frames
    of longer recordings (the singing-voice task): samples of a group are contiguous and in time order, so
    frame-level predictions can be median-filtered within a recording."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"data bundle task {self.task!r} is not one of {', '.join(TASKS)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def arrays(self) -> dict[str, torch.Tensor]:
        out = {
            "x_train": self.x_train, "y_train": self.y_train, "x_test": self.x_test, "y_test": self.y_test,
            "num_classes": torch.tensor(self.num_classes), "task": torch.tensor(TASKS.index(self.task)),
        }
        if self.mask_test is not None:
            out["mask_test"] = self.mask_test
        for kind, values in self.truth_test.items():
            out[f"truth_{kind}"] = values
        if self.groups_test is not None:
            out["groups_test"] = self.groups_test
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, torch.Tensor]) -> DataBundle:
        task = TASKS[int(arrays["task"])] if "task" in arrays else "classification"
        truths = {k[len("truth_"):]: v for k, v in arrays.items() if k.startswith("truth_")}
        return cls(
            x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"],
            y_test=arrays["y_test"], num_classes=int(arrays["num_classes"]), mask_test=arrays.get("mask_test"),
            task=task, truth_test=truths, groups_test=arrays.get("groups_test"),
        )


class Explainer(Protocol):
    """``explain(x, target) -> attributions`` of the same shape as ``x``."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class MetricInputs:
    """Everything a metric may read. Metrics must not change any of it."""

    model: nn.Module
    x: torch.Tensor
    target: torch.Tensor
    attributions: torch.Tensor
    mask: torch.Tensor | None = None
    explain: Explainer | None = None
    truth: torch.Tensor | None = None
    """The true attribution of ``x`` of the kind the case's method estimates (``MethodSpec.truth``), for
    metrics with ``needs_truth``."""
    data: DataBundle | None = None
    """The case's whole data set, for metrics with ``needs_training`` (they retrain models on altered data)."""
    fit: Callable[..., nn.Module] | None = None
    """``fit(bundle, identity, repeat=0)`` trains a fresh model of the case's architecture and training recipe
    on ``bundle`` and returns it in eval mode on the device; ``identity`` is plain data naming what the bundle
    is (how it was derived from ``data``) and keys the on-disk cache, so a rerun or resumed run reuses it.
    ``repeat`` r > 0 trains from another seed (initial weights and batch order) derived from (seed, r)."""
    explainer: Callable[[nn.Module], Explainer] | None = None
    """``explainer(model)``: the case's attribution method built for another model (metrics with
    ``needs_training`` or ``needs_explain``, e.g. parameter randomisation)."""
    artifact: Callable[[Mapping[str, Any], Callable[[], Mapping[str, torch.Tensor]]], dict[str, torch.Tensor]] | None = None
    """``artifact(identity, make)``: tensors derived from the case's trained model (e.g. Impact Coverage's
    adversarial patches), made once by ``make()`` and cached on disk under the hash of (model spec,
    ``identity``); ``identity`` is plain data naming everything else that made them (metric, parameters)."""
    method: Mapping[str, Any] | None = None
    """The case's attribution method as plain data (name, parameters, version), or None for a case without
    one: part of the cache identity of anything a metric derives from the method's attributions."""
    store: Callable[[Mapping[str, Any], Callable[[Path], None]], Path] | None = None
    """``store(identity, write)``: a cached folder of files derived from the case's trained model, written once
    by ``write(folder)`` (e.g. an HDF5 file of attributions of the whole data set, written chunk by chunk and
    read back chunk by chunk, never all in memory), keyed like ``artifact``; returns the folder."""


@dataclass(frozen=True)
class MetricResult:
    """Per-sample outputs of one metric on one case.

    ``outputs`` maps a name to a tensor whose first dimension is the sample; ``bounds`` gives the valid closed
    range of each output (``None`` for unbounded, but still finite); ``primary`` names the score the report
    ranks by, in the direction ``higher_is_better``.
    """

    outputs: dict[str, torch.Tensor]
    primary: str
    higher_is_better: bool
    bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    forward_passes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Human-readable reasons this result is invalid (empty when it is fine)."""
        found: list[str] = []
        if self.primary not in self.outputs:
            found.append(f"primary output {self.primary!r} missing; outputs: {sorted(self.outputs)}")
        for name, value in self.outputs.items():
            value = value.detach().float()
            bad = ~torch.isfinite(value)
            if bad.any():
                found.append(f"{name}: {int(bad.sum())} of {value.numel()} values are not finite")
                continue
            lo, hi = self.bounds.get(name, (None, None))
            tol = 1e-5
            if lo is not None and value.numel() and float(value.min()) < lo - tol:
                found.append(f"{name}: minimum {float(value.min()):.6g} below the lower bound {lo}")
            if hi is not None and value.numel() and float(value.max()) > hi + tol:
                found.append(f"{name}: maximum {float(value.max()):.6g} above the upper bound {hi}")
        return found


@dataclass(frozen=True)
class Spec:
    """What every registered spec has: a name, and parameters declared by their defaults and choices."""

    name: str
    _: KW_ONLY
    defaults: Params = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    description: str = ""
    version: int = 1
    """Bump when the factory changes, so cached artefacts made by the old one are rebuilt."""


@dataclass(frozen=True)
class DatasetSpec(Spec):
    build: Callable[..., DataBundle]
    """``build(seed: int, **params) -> DataBundle`` with every parameter resolved (runs on the CPU; the
    result is cached on disk)."""
    modality: str
    has_mask: bool = False
    """Whether the bundle carries ``mask_test`` (ground truth for localisation metrics)."""
    task: str = "classification"
    truths: frozenset[str] = frozenset()
    """Ground-truth attribution kinds the bundle carries in ``truth_test``."""


@dataclass(frozen=True)
class ModelSpec(Spec):
    build: Callable[..., nn.Module]
    """``build(input_shape: tuple[int, ...], num_classes: int, **params) -> nn.Module``."""
    modalities: frozenset[str]
    traits: frozenset[str] = frozenset()
    """Structural facts methods may need, e.g. ``"conv2d"`` (convolutional feature maps, an ``nn.Conv2d`` GradCAM can
    use; a ViT's patch embedding does not count)."""


@dataclass(frozen=True)
class MethodSpec(Spec):
    build: Callable[..., Explainer]
    """``build(model, ctx: RunContext, **params) -> explain`` with internal batching under the budget."""
    modalities: frozenset[str] = frozenset({"image", "tabular", "audio"})
    """Input kinds the method applies to (GradCAM: images)."""
    needs: frozenset[str] = frozenset()
    """Model traits the method requires (``ModelSpec.traits``); cases with other models are not generated."""
    truth: str = ""
    """The ground-truth kind this method estimates (``"derivative"``, ``"ablation"``, ``"path_integral"``),
    or empty; metrics with ``needs_truth`` run only where the data set carries that kind."""


@dataclass(frozen=True)
class MetricSpec(Spec):
    family: str
    compute: Callable[..., MetricResult]
    """``compute(inputs: MetricInputs, ctx: RunContext, **params) -> MetricResult``."""
    modalities: frozenset[str]
    reference: str = ""
    needs_mask: bool = False
    needs_explain: bool = False
    needs_truth: bool = False
    needs_training: bool = False
    """The metric retrains models (``MetricInputs.data``, ``fit``, ``explainer``)."""
    needs_data: bool = False
    """The metric reads the case's whole data set (``MetricInputs.data``), e.g. to train adversarial patches;
    every metric gets ``MetricInputs.artifact``."""
    per_sample: bool = True
    """Outputs are per test sample, computed from the stored attributions. False: the outputs' first
    dimension is something else (a repeat), and the metric gets the test split without stored attributions
    (``attributions`` empty); it attributes through ``explainer`` itself if it needs to."""
    tasks: frozenset[str] = frozenset({"classification"})
    uses_method: bool = True
    """False for a baseline that ranks inputs without an attribution method (e.g. scikit-learn RFE): it gets
    one case per (data set, model) with the method part of the id ``none``."""


DATASETS: Registry[DatasetSpec] = Registry("dataset")
MODELS: Registry[ModelSpec] = Registry("model")
METHODS: Registry[MethodSpec] = Registry("method")
METRICS: Registry[MetricSpec] = Registry("metric")

FAMILIES: tuple[str, ...] = (
    "faithfulness", "localization", "selection", "robustness", "roar", "loss_gradient", "coverage", "sanity",
)
"""Metric families; each is a pytest marker and a test module ``cases/test_<family>.py``."""
