"""Learning-rate schedules of training: ``step`` (StepLR, the default, unchanged) and ``cosine_restarts``
(CosineAnnealingWarmRestarts stepped once per epoch, ChaosMining's vision and audio recipe)."""
from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch
from torch import nn

import harness.models  # noqa: F401  (registers the models)
from harness.models import training
from harness.models.training import SCHEDULES, TRAINING_CHOICES, TRAINING_DEFAULTS, build_model, train_model
from harness.specs import MODELS, DataBundle, ParamError

CPU = torch.device("cpu")
LOG = logging.getLogger("tests.training_schedule")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> DataBundle:
    """40 random training rows of 6 features in 3 classes (and 12 test rows): a few milliseconds per epoch."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(52, 6, generator=gen)
    y = torch.randint(0, 3, (52,), generator=gen)
    return DataBundle(x[:40], y[:40], x[40:], y[40:], 3)


def mlp(bundle: DataBundle, seed: int = 1) -> nn.Module:
    return build_model(MODELS.get("mlp"), {"hidden": [8]}, bundle.input_shape, bundle.num_classes, seed)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trained(bundle: DataBundle, settings: dict[str, Any], seed: int = 7) -> nn.Module:
    model = mlp(bundle)
    train_model(model, bundle, settings, seed, CPU, LOG)
    return model


def epoch_lrs(monkeypatch: pytest.MonkeyPatch, bundle: DataBundle, settings: dict[str, Any]) -> list[float]:
    """The learning rate the optimizer holds while each epoch runs (recorded by wrapping ``_epoch``)."""
    seen: list[float] = []
    run_epoch = training._epoch

    def recording(model: nn.Module, optimizer: torch.optim.Optimizer, *args: Any) -> tuple[float, float]:
        seen.append(float(optimizer.param_groups[0]["lr"]))
        return run_epoch(model, optimizer, *args)

    monkeypatch.setattr(training, "_epoch", recording)
    train_model(mlp(bundle), bundle, settings, 3, CPU, LOG)
    return seen


def test_settings_and_choices() -> None:
    assert TRAINING_DEFAULTS["schedule"] == "step" and TRAINING_DEFAULTS["restart_epochs"] == 30
    assert TRAINING_CHOICES["schedule"] == SCHEDULES == ("step", "cosine_restarts")


@pytest.mark.parametrize(("lr", "epochs", "restart"), [(0.01, 7, 3), (0.2, 5, 1), (1e-3, 4, 30)])
def test_cosine_restarts_follows_sgdr(monkeypatch: pytest.MonkeyPatch, tiny: DataBundle, lr: float, epochs: int,
                                      restart: int) -> None:
    """Epoch e (from 0) trains at lr / 2 * (1 + cos(pi * (e mod T0) / T0)): a cosine from lr towards 0, back to
    lr every T0 epochs (T0 = 1: lr throughout; T0 > epochs: one unfinished half cosine)."""
    settings = {"epochs": epochs, "lr": lr, "optimizer": "adamw", "schedule": "cosine_restarts",
                "restart_epochs": restart, "batch_size": 16}
    expected = [lr / 2 * (1 + math.cos(math.pi * (e % restart) / restart)) for e in range(epochs)]
    assert epoch_lrs(monkeypatch, tiny, settings) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_cosine_restarts_lr_is_logged(tiny: DataBundle, caplog: pytest.LogCaptureFixture) -> None:
    settings = {"epochs": 5, "lr": 0.01, "schedule": "cosine_restarts", "restart_epochs": 4}
    with caplog.at_level(logging.INFO, logger=LOG.name):
        train_model(mlp(tiny), tiny, settings, 0, CPU, LOG)
    logged = [r.getMessage().split(" lr ")[1].split()[0] for r in caplog.records if r.name == LOG.name]
    assert logged == ["0.01", "0.008536", "0.005", "0.001464", "0.01"]  # %.4g of 0.01 * (1 + cos(pi e / 4)) / 2


def test_step_lr_gamma_is_unchanged(monkeypatch: pytest.MonkeyPatch, tiny: DataBundle) -> None:
    settings = {"epochs": 4, "lr": 0.5, "optimizer": "sgd", "lr_gamma": 0.5, "restart_epochs": 2}
    assert epoch_lrs(monkeypatch, tiny, settings) == [0.5, 0.25, 0.125, 0.0625]


def test_default_is_the_explicit_step_schedule_bitwise(tiny: DataBundle) -> None:
    """No schedule named = schedule "step" (restart_epochs ignored there): bitwise the same weights; the
    cosine schedule trains differently from the same seed."""
    base = {"epochs": 3, "optimizer": "adamw", "batch_size": 16}
    default = trained(tiny, base)
    assert states_equal(default, trained(tiny, {**base, "schedule": "step"}))
    assert states_equal(default, trained(tiny, {**base, "schedule": "step", "restart_epochs": 2}))
    assert not states_equal(default, trained(tiny, {**base, "schedule": "cosine_restarts", "restart_epochs": 2}))


def test_cosine_restarts_is_deterministic(tiny: DataBundle) -> None:
    settings = {"epochs": 3, "optimizer": "adamw", "schedule": "cosine_restarts", "restart_epochs": 2,
                "batch_size": 16}
    assert states_equal(trained(tiny, settings), trained(tiny, settings))
    assert not states_equal(trained(tiny, settings, seed=7), trained(tiny, settings, seed=8))


@pytest.mark.parametrize(("settings", "message"), [
    ({"schedule": "cosine"}, r"parameter 'schedule' = 'cosine' is not valid; choices: 'step', 'cosine_restarts'"),
    ({"schedule": "cosine_restarts", "restart_epochs": 0}, r"restart_epochs = 0 must be an integer >= 1"),
    ({"restart_epochs": -3}, r"restart_epochs = -3 must be an integer >= 1"),
    ({"schedule": "cosine_restarts", "restart_epochs": 2.5},
     r"parameter 'restart_epochs' = 2.5 has type float, expected int"),
    ({"schedule": "cosine_restarts", "restart_epochs": True},
     r"parameter 'restart_epochs' = True has type bool, expected int"),
    ({"schedule": "cosine_restarts", "lr_gamma": 0.7},
     r"lr_gamma = 0.7 with schedule = 'cosine_restarts': these are two learning-rate schedules"),
])
def test_bad_schedule_settings_are_named(tiny: DataBundle, settings: dict[str, Any], message: str) -> None:
    model = mlp(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ParamError, match=message):
        train_model(model, tiny, {"epochs": 1, **settings}, 0, CPU, LOG)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any step


def test_resolve_training_names_where() -> None:
    with pytest.raises(ParamError, match=r"^suite.toml \[models.cnn\] training: restart_epochs = 0"):
        training.resolve_training({"restart_epochs": 0}, "suite.toml [models.cnn] training")
    cfg = training.resolve_training({"schedule": "cosine_restarts", "lr_gamma": 1})
    assert cfg == {**TRAINING_DEFAULTS, "schedule": "cosine_restarts", "lr_gamma": 1.0}
