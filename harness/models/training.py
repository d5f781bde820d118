"""Deterministic model construction and mini-batch training for the benchmark's classifiers.

Determinism: weights are initialised inside ``torch.random.fork_rng`` from ``seed`` (the global RNG is left
untouched) and batches are shuffled by a seeded CPU ``torch.Generator``, so on the CPU the same seed gives
bitwise-identical weights. Dropout masks are drawn from the global RNG of the training device, which
:func:`train_model` seeds from ``seed`` inside ``fork_rng`` too.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.specs import DataBundle, ModelSpec, ParamError, resolve_params

SCHEDULES = ("step", "cosine_restarts")
"""Learning-rate schedules (the ``schedule`` training setting), each stepped once per epoch."""
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 10, "lr": 1e-3, "batch_size": 64, "optimizer": "adam", "weight_decay": 0.0, "lr_gamma": 1.0,
    "schedule": "step", "restart_epochs": 30,
}
"""Training settings (a suite's ``[models.<key>.training]`` table) and their defaults.

``epochs``: passes over the shuffled training set; ``batch_size``: rows per step (>= the training set size
is full-batch training); ``optimizer`` (:data:`OPTIMIZERS`) with ``lr`` and ``weight_decay``.
``schedule`` (:data:`SCHEDULES`) sets the learning rate of each epoch:

* ``"step"`` (default): after every epoch the learning rate is multiplied by ``lr_gamma`` (PyTorch's
  ``StepLR(step_size=1, gamma=lr_gamma)``; ``lr_gamma`` 1.0 = constant, bitwise the same training as without
  a schedule). The loss-gradient study's MNIST recipe (arXiv 2207.07769, ``train_mnist.py``) is
  ``optimizer = "adadelta"``, ``lr = 1.0``, ``lr_gamma = 0.7``, ``epochs = 14``, ``batch_size = 64``.
* ``"cosine_restarts"``: SGDR (Loshchilov & Hutter 2017), PyTorch's ``CosineAnnealingWarmRestarts(T_0 =
  restart_epochs, T_mult = 1, eta_min = 0)`` stepped once per epoch, so epoch e (from 0) trains at
  ``lr / 2 * (1 + cos(pi * (e mod restart_epochs) / restart_epochs))``; ``lr_gamma`` must stay 1.0 (it is the
  other schedule). ChaosMining's vision and audio recipe (arXiv 2406.12150; ``examples/train_eval_vision.py``,
  ``train_eval_audio.py``): ``optimizer = "adamw"``, ``schedule = "cosine_restarts"``, ``restart_epochs =
  30``, ``epochs = 30``, ``batch_size = 128``; ``lr`` 1e-3 for images, 1e-4 in the audio script's example.

``restart_epochs`` (an int >= 1, T_0 in epochs) is used by ``"cosine_restarts"`` only. Deterministic: the
shuffling comes from a CPU generator seeded by the model's seed, and the schedule from the epoch count alone."""
TRAINING_CHOICES: dict[str, tuple[Any, ...]] = {
    "optimizer": ("adam", "adamw", "sgd", "adadelta"), "schedule": SCHEDULES,
}

OptimizerFactory = Callable[[Iterable[nn.Parameter], float, float], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd),
    "adadelta": lambda params, lr, wd: torch.optim.Adadelta(params, lr=lr, weight_decay=wd),
}
"""Optimizer name -> factory(parameters, lr, weight_decay). SGD uses momentum 0.9; Adadelta PyTorch's
defaults (rho 0.9, eps 1e-6), as the loss-gradient study's ``train_mnist.py``."""


@dataclass(frozen=True)
class TrainReport:
    """What training produced: the task's score on train and test (``score_name``: ``accuracy`` for
    classification, ``r2`` = coefficient of determination for regression), the test mean absolute error for
    regression (None otherwise), mean loss per epoch, wall time in seconds."""

    train_score: float
    test_score: float
    losses: list[float]
    seconds: float
    score_name: str = "accuracy"
    test_mae: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainReport:
        return cls(
            train_score=float(data["train_score"]), test_score=float(data["test_score"]),
            losses=[float(v) for v in data["losses"]], seconds=float(data["seconds"]),
            score_name=str(data.get("score_name", "accuracy")),
            test_mae=None if data.get("test_mae") is None else float(data["test_mae"]),
        )


def build_model(
    spec: ModelSpec, params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """Build ``spec`` with weights drawn from ``seed``, leaving the global CPU RNG state as it was."""
    resolved = resolve_params(f"model {spec.name}", params, spec.defaults, spec.choices)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(tuple(input_shape), num_classes, **resolved)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Fraction of ``x`` classified as ``y``, in batches of ``batch_size`` (does not change the model's mode)."""
    if len(y) == 0:
        return float("nan")
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size].to(device)).sum())
    return correct / len(y)


@torch.inference_mode()
def regression_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(R^2, mean absolute error) of output 0 against ``y``, in batches (does not change the model's mode).

    R^2 = 1 - sum (y - p)^2 / sum (y - mean y)^2 (scikit-learn ``r2_score``); NaN for fewer than 2 rows."""
    if len(y) < 2:
        return float("nan"), float("nan")
    pred = torch.cat([model(x[s : s + batch_size].to(device))[:, 0].double().cpu()
                      for s in range(0, len(y), batch_size)])
    truth = y.double().cpu()
    residual = float(((truth - pred) ** 2).sum())
    total = float(((truth - truth.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else float("nan")
    return r2, float((truth - pred).abs().mean())


def _loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer labels, MSE of output 0 for float targets (regression)."""
    if y.is_floating_point():
        return F.mse_loss(output[:, 0], y)
    return F.cross_entropy(output, y)


def _epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    batch_size: int, generator: torch.Generator,
) -> tuple[float, float]:
    """One pass over shuffled mini-batches; returns (mean loss per sample, training-batch accuracy; NaN for
    regression)."""
    order = torch.randperm(len(y), generator=generator).to(x.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        batch = order[start : start + batch_size]
        logits = model(x[batch])
        loss = _loss(logits, y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(batch)
        if not y.is_floating_point():
            correct += int((logits.detach().argmax(dim=1) == y[batch]).sum())
    return total_loss / len(y), correct / len(y) if not y.is_floating_point() else float("nan")


@contextmanager
def seeded_dropout(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global RNG that dropout draws from on ``device`` (the CPU's, or that CUDA device's) and seed
    it from ``seed`` (through numpy's SeedSequence, so not the shuffling stream); restored on exit."""
    state = np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0]
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(int(state) % 2**63)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(state) % 2**63)
        yield


def resolve_training(settings: dict[str, Any], where: str = "training") -> dict[str, Any]:
    """``settings`` over :data:`TRAINING_DEFAULTS`, checked: unknown keys, wrong types and names outside
    :data:`TRAINING_CHOICES` (via :func:`~harness.specs.resolve_params`), ``lr_gamma`` <= 0, ``restart_epochs``
    < 1, and ``lr_gamma`` != 1 together with ``schedule = "cosine_restarts"`` raise :class:`ParamError`."""
    cfg = resolve_params(where, settings, TRAINING_DEFAULTS, TRAINING_CHOICES)
    if not cfg["lr_gamma"] > 0.0:
        raise ParamError(f"{where}: lr_gamma = {cfg['lr_gamma']!r} must be > 0 "
                         "(1.0 = constant learning rate)")
    if cfg["restart_epochs"] < 1:
        raise ParamError(f"{where}: restart_epochs = {cfg['restart_epochs']!r} must be an integer >= 1 "
                         "(the epochs of one cosine_restarts cycle, T_0)")
    if cfg["schedule"] == "cosine_restarts" and cfg["lr_gamma"] != 1.0:
        raise ParamError(f"{where}: lr_gamma = {cfg['lr_gamma']!r} with schedule = 'cosine_restarts': these are two "
                         "learning-rate schedules; use one (schedule = 'step' with lr_gamma, or cosine_restarts "
                         "with lr_gamma = 1.0)")
    return cfg


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: dict[str, Any]) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of ``cfg["schedule"]`` (settings from :func:`resolve_training`), to step once per epoch."""
    if cfg["schedule"] == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cfg["restart_epochs"])
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg["lr_gamma"])


def train_model(
    model: nn.Module, bundle: DataBundle, settings: dict[str, Any], seed: int, device: torch.device,
    log: logging.Logger,
) -> TrainReport:
    """Mini-batch training with the chosen optimizer (cross-entropy, or MSE for a regression bundle);
    returns the report and leaves ``model`` in eval mode. ``batch_size`` at least the training set size is
    full-batch training (ChaosMining's symbolic recipe).

    ``settings`` is checked by :func:`resolve_training` (missing keys take :data:`TRAINING_DEFAULTS`). The
    learning rate of each epoch follows ``schedule``: with ``"step"`` epoch e (from 1) trains at ``lr *
    lr_gamma ** (e - 1)`` (``StepLR(step_size=1)``, the loss-gradient study's schedule), with
    ``"cosine_restarts"`` at ``CosineAnnealingWarmRestarts(T_0=restart_epochs)``'s rate (ChaosMining's); the
    scheduler steps after every epoch. Dropout is seeded by :func:`seeded_dropout`. One INFO line per epoch,
    with the epoch's learning rate, goes to ``log``.
    """
    cfg = resolve_training(settings)
    model.to(device).train()
    x, y = bundle.x_train.to(device), bundle.y_train.to(device)
    optimizer = OPTIMIZERS[cfg["optimizer"]](model.parameters(), cfg["lr"], cfg["weight_decay"])
    schedule = lr_schedule(optimizer, cfg)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    with seeded_dropout(seed, device):
        for epoch in range(1, cfg["epochs"] + 1):
            lr = float(optimizer.param_groups[0]["lr"])
            loss, batch_acc = _epoch(model, optimizer, x, y, cfg["batch_size"], generator)
            schedule.step()
            losses.append(loss)
            elapsed = time.perf_counter() - start
            if bundle.task == "classification":
                log.info("epoch %d/%d loss %.4f train-batch accuracy %.3f lr %.4g elapsed %.1fs",
                         epoch, cfg["epochs"], loss, batch_acc, lr, elapsed)
            elif epoch == cfg["epochs"] or epoch % 50 == 0:  # full-batch regression runs ~1000 short epochs
                log.info("epoch %d/%d MSE %.5f lr %.4g elapsed %.1fs",
                         epoch, cfg["epochs"], loss, lr, elapsed)
    model.eval()
    seconds = time.perf_counter() - start
    if bundle.task == "regression":
        train_r2, _ = regression_scores(model, bundle.x_train, bundle.y_train, cfg["batch_size"], device)
        test_r2, test_mae = regression_scores(model, bundle.x_test, bundle.y_test, cfg["batch_size"], device)
        return TrainReport(train_score=train_r2, test_score=test_r2, losses=losses, seconds=seconds,
                           score_name="r2", test_mae=test_mae)
    return TrainReport(
        train_score=accuracy(model, bundle.x_train, bundle.y_train, cfg["batch_size"], device),
        test_score=accuracy(model, bundle.x_test, bundle.y_test, cfg["batch_size"], device),
        losses=losses, seconds=seconds,
    )
