"""Data sets, trained models and attributions for cases: built once, cached on disk, memoised in memory.

The fixtures hand a :class:`Workspace` to every case. Each artefact is keyed by the hash of everything that
made it (see :mod:`harness.cache`), so cases sharing a data set, a model or a method's attributions reuse
them, across cases, workers and runs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.cache import Cache, load_json, load_tensors, save_json, save_tensors
from harness.cases import Case
from harness.specs import DATASETS, METHODS, MODELS, DataBundle, RunContext

log = logging.getLogger("harness")

MODEL_FORMAT = 2
"""Layout of a cached model entry (weights.pt + report.json); part of its key, so entries written in an older
layout (format 1: report.json with train_accuracy / test_accuracy) are never read, but rebuilt."""


@dataclass(frozen=True)
class TrainedModel:
    module: nn.Module
    key: str
    train_score: float
    test_score: float
    seconds: float
    score_name: str = "accuracy"
    """``accuracy`` (classification) or ``r2`` (regression)."""
    test_mae: float | None = None


@dataclass(frozen=True)
class Attributions:
    values: torch.Tensor
    """Attributions of ``x``, on the workspace device."""
    x: torch.Tensor
    target: torch.Tensor
    label: torch.Tensor
    sample_index: torch.Tensor
    mask: torch.Tensor | None
    seconds: float
    """Wall time it took to compute them (when they were first computed)."""
    truth: torch.Tensor | None = None
    """The data set's true attribution of the kind the method estimates, if it has one."""


class Workspace:
    def __init__(self, cache: Cache, device: torch.device) -> None:
        self.cache = cache
        self.device = device
        self._memo: dict[tuple[str, str], Any] = {}

    def _memoised(self, kind: str, key: str, make: Any) -> Any:
        if (kind, key) not in self._memo:
            self._memo[(kind, key)] = make()
        return self._memo[(kind, key)]

    def context(self, case: Case, offset: int = 0) -> RunContext:
        settings = case.suite.settings
        return RunContext(
            device=self.device, seed=case.seed + offset, batch_size=settings["batch_size"],
            memory_mb=settings["memory_mb"], background=self.dataset(case).x_train,
        )

    # -- data -------------------------------------------------------------------------------------------
    def dataset(self, case: Case) -> DataBundle:
        spec = case.dataset_spec()
        path = self.cache.entry("datasets", spec)
        return self._memoised("dataset", path.name, lambda: self._load_dataset(case, spec))

    def _load_dataset(self, case: Case, spec: dict[str, Any]) -> DataBundle:
        def build(tmp: Path) -> None:
            start = time.perf_counter()
            bundle = DATASETS.get(case.dataset.name).build(seed=case.seed, **case.dataset.params)
            save_tensors(tmp / "data.pt", bundle.arrays())
            log.info("built data set %s in %.1fs: %d train, %d test, input %s", case.dataset.key,
                     time.perf_counter() - start, len(bundle.y_train), len(bundle.y_test), bundle.input_shape)

        path = self.cache.get_or_build("datasets", spec, build)
        return DataBundle.from_arrays(load_tensors(path / "data.pt"))

    # -- models -----------------------------------------------------------------------------------------
    def model(self, case: Case) -> TrainedModel:
        spec = {**case.model_spec(), "format": MODEL_FORMAT}
        path = self.cache.entry("models", spec)
        return self._memoised("model", path.name, lambda: self._load_model(case, spec))

    def _load_model(self, case: Case, spec: dict[str, Any]) -> TrainedModel:
        from harness.models.training import build_model, train_model

        bundle = self.dataset(case)
        model_spec = MODELS.get(case.model.name)

        def fresh() -> nn.Module:
            return build_model(model_spec, dict(case.model.params), bundle.input_shape, bundle.num_classes,
                               case.seed)

        def build(tmp: Path) -> None:
            log.info("training %s on %s (%s)", case.model.key, case.dataset.key, dict(case.model.training))
            train_log = logging.getLogger(f"harness.train.{case.dataset.key}.{case.model.key}")
            module = fresh()
            with single_threaded(self.device):
                report = train_model(module, bundle, dict(case.model.training), case.seed, self.device, train_log)
            save_json(tmp / "report.json", report.to_dict())
            save_tensors(tmp / "weights.pt", module.state_dict())

        path = self.cache.get_or_build("models", spec, build)
        module = fresh()
        module.load_state_dict(load_tensors(path / "weights.pt"))
        module.to(self.device).eval()
        report = load_json(path / "report.json")
        return TrainedModel(module, path.name, report["train_score"], report["test_score"], report["seconds"],
                            report.get("score_name", "accuracy"), report.get("test_mae"))

    def fit(self, case: Case, bundle: DataBundle, identity: Any, repeat: int = 0) -> nn.Module:
        """A fresh model of the case's architecture and recipe trained on ``bundle`` (derived from the case's
        data set as ``identity`` says), cached on disk under the hash of (model spec, identity, repeat).
        ``repeat`` 0 trains from the case's seed, r > 0 from :func:`repeat_seed` (seed, r)."""
        from harness.models.training import build_model, train_model

        if repeat < 0:
            raise ValueError(f"fit: repeat must be at least 0, got {repeat}")
        spec = {"base": case.model_spec(), "derived": identity, "input_shape": list(bundle.input_shape),
                "format": MODEL_FORMAT, **({"repeat": repeat} if repeat else {})}
        model_spec = MODELS.get(case.model.name)
        seed = repeat_seed(case.seed, repeat)

        def fresh() -> nn.Module:
            return build_model(model_spec, dict(case.model.params), bundle.input_shape, bundle.num_classes, seed)

        def build(tmp: Path) -> None:
            train_log = logging.getLogger(f"harness.train.{case.dataset.key}.{case.model.key}.derived")
            module = fresh()
            with single_threaded(self.device):
                report = train_model(module, bundle, dict(case.model.training), seed, self.device, train_log)
            save_json(tmp / "report.json", report.to_dict())
            save_tensors(tmp / "weights.pt", module.state_dict())

        path = self.cache.get_or_build("derived_models", spec, build)
        module = fresh()
        module.load_state_dict(load_tensors(path / "weights.pt"))
        return module.to(self.device).eval()

    def artifact(
        self, case: Case, identity: Mapping[str, Any], make: Callable[[], Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Tensors derived from the case's trained model by ``make()`` (e.g. adversarial patches), cached on
        disk under the hash of (model spec, ``identity``) and loaded with ``weights_only``; on the device."""
        spec = {"model": case.model_spec(), "artifact": dict(identity), "format": MODEL_FORMAT}

        def build(tmp: Path) -> None:
            tensors = make()
            if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
                raise TypeError(f"artifact {identity}: make() must return a mapping of tensors, got "
                                f"{ {k: type(v).__name__ for k, v in tensors.items()} }")
            save_tensors(tmp / "tensors.pt", tensors)

        path = self.cache.get_or_build("model_artifacts", spec, build)
        return {k: v.to(self.device) for k, v in load_tensors(path / "tensors.pt").items()}

    def store(self, case: Case, identity: Mapping[str, Any], write: Callable[[Path], None]) -> Path:
        """A folder of files derived from the case's trained model, written once by ``write(folder)`` and
        cached under the hash of (model spec, ``identity``); returns the finished folder (read it, never
        change it)."""
        spec = {"model": case.model_spec(), "store": dict(identity), "format": MODEL_FORMAT}
        return self.cache.get_or_build("model_stores", spec, write)

    # -- attributions -----------------------------------------------------------------------------------
    def attributions(self, case: Case) -> Attributions:
        spec = case.attribution_spec()
        path = self.cache.entry("attributions", spec)
        return self._memoised("attributions", path.name, lambda: self._load_attributions(case, spec))

    def sample_index(self, case: Case, bundle: DataBundle, model: nn.Module) -> torch.Tensor:
        """The test samples a case scores: the first ``samples`` of the test split, or with the suite's
        ``correct_only`` (attribench's protocol) the first ``samples`` the model classifies correctly."""
        settings = case.suite.settings
        if not settings["correct_only"] or bundle.task != "classification":
            return torch.arange(min(settings["samples"], len(bundle.y_test)))
        predicted = predictions(model, bundle.x_test.to(self.device), self.context(case)).cpu()
        correct = (predicted == bundle.y_test).nonzero()[:, 0]
        if len(correct) == 0:
            raise ValueError(f"case {case.id}: correct_only is set but the model classifies no test sample "
                             "correctly")
        return correct[: settings["samples"]]

    def _load_attributions(self, case: Case, spec: dict[str, Any]) -> Attributions:
        bundle = self.dataset(case)
        model = self.model(case).module
        index = self.sample_index(case, bundle, model)
        n = len(index)
        x = bundle.x_test[index].to(self.device)
        label = bundle.y_test[index].to(self.device)

        def build(tmp: Path) -> None:
            if bundle.task == "regression":  # one output: attribute it
                target = torch.zeros(n, dtype=torch.long, device=self.device)
            elif case.suite.settings["target"] == "label":
                target = label
            else:
                target = predictions(model, x, self.context(case))
            explain = METHODS.get(case.method.name).build(model, self.context(case), **case.method.params)
            start = time.perf_counter()
            values = explain(x, target)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            if values.shape != x.shape:
                raise ValueError(f"method {case.method.key} returned shape {tuple(values.shape)} "
                                 f"for inputs of shape {tuple(x.shape)}")
            save_tensors(tmp / "attributions.pt", {"values": values, "target": target})
            save_json(tmp / "timing.json", {"seconds": seconds, "device": str(self.device)})

        path = self.cache.get_or_build("attributions", spec, build)
        stored = load_tensors(path / "attributions.pt")
        mask = bundle.mask_test[index].to(self.device) if bundle.mask_test is not None else None
        kind = METHODS.get(case.method.name).truth
        truth = bundle.truth_test[kind][index].to(self.device) if kind in bundle.truth_test else None
        return Attributions(
            values=stored["values"].to(self.device), x=x, target=stored["target"].to(self.device), label=label,
            sample_index=index, mask=mask, seconds=load_json(path / "timing.json")["seconds"],
            truth=truth,
        )


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of a retraining: ``seed`` itself for 0, else a 31-bit number drawn by
    numpy's SeedSequence from (seed, repeat), unrelated to the seeds of other repeats and runs."""
    if repeat == 0:
        return seed
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0] % (2**31))


@contextmanager
def single_threaded(device: torch.device) -> Iterator[None]:
    """Train on one CPU thread: the weight-gradient reductions of a multi-threaded CPU backward pass sum in
    an order that depends on the thread count, so without this a model trained under ``-n 2`` (one thread
    per worker) would differ in the last bits from one trained under ``-n 0``. Forward passes and input
    gradients were checked to be bitwise independent of the thread count, so only training is pinned."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()  # not inference_mode: the predictions become captum targets inside autograd
def predictions(model: nn.Module, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
    """The model's predicted class per input, in chunks under the batch budget."""
    rows = ctx.rows_per_chunk(x[0].numel())
    return torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(rows)])
