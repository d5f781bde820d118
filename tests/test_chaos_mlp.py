"""chaos_mlp: ChaosMining's MLP regressor (chaosmining/simulation/models.py), plain and residual."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness.data  # registers the datasets
import harness.models  # noqa: F401  (registers the models)
from harness.models.chaos_mlp import ResidualBlock, build_chaos_mlp
from harness.models.training import build_model, train_model
from harness.specs import DATASETS, MODELS, ParamError

CPU = torch.device("cpu")
LOG = logging.getLogger("tests.chaos_mlp")
pytestmark = pytest.mark.usefixtures("one_thread")


def linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_plain_model_is_the_papers_regressor() -> None:
    model = build_model(MODELS.get("chaos_mlp"), {}, (110,), 1, seed=0)
    assert linears(model) == [(110, 100), (100, 100), (100, 100), (100, 1)]
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, *[nn.Linear, nn.GELU] * 3, nn.Dropout, nn.Linear]
    out = model.eval()(torch.randn(6, 110))
    assert out.shape == (6, 1) and out.dtype == torch.float32


def test_plain_forward_matches_a_hand_written_pass() -> None:
    model = build_chaos_mlp((3, 4), 2, hidden=5, layers=2).eval()
    x = torch.randn(7, 3, 4)
    h = x.flatten(1)
    for layer in [m for m in model if isinstance(m, nn.Linear)][:-1]:
        h = F.gelu(h @ layer.weight.T + layer.bias)
    expected = h @ model[-1].weight.T + model[-1].bias
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_residual_variant_matches_the_seed_block() -> None:
    model = build_model(MODELS.get("chaos_mlp"), {"residual": True, "hidden": 8}, (6,), 1, seed=0).eval()
    blocks = [m for m in model if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2 and isinstance(model[1], nn.Linear) and linears(model)[0] == (6, 8)
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 4
    x = torch.randn(5, 6)
    h = model[1](x)
    for b in blocks:  # the seed's LinearResBlock, step by step
        out = F.gelu(F.layer_norm(b.linear1(h), (8,), b.norm1.weight, b.norm1.bias))
        h = F.gelu(F.layer_norm(b.linear2(out) + h, (8,), b.norm2.weight, b.norm2.bias))
    assert torch.allclose(model(x), model[-1](h), atol=1e-6) and model(x).shape == (5, 1)


@pytest.mark.parametrize("residual", [False, True])
def test_every_nonlinearity_is_its_own_module(residual: bool) -> None:
    model = build_chaos_mlp((10,), 1, layers=4, residual=residual)
    modules = [m for _, m in model.named_modules(remove_duplicate=False)]
    assert len(modules) == len({id(m) for m in modules})
    gelus = [m for m in modules if isinstance(m, nn.GELU)]
    assert len(gelus) == (6 if residual else 4) and not any(getattr(m, "inplace", False) for m in modules)


def test_residual_model_does_not_change_its_input() -> None:
    model = build_chaos_mlp((4,), 1, hidden=4, residual=True)
    x = torch.randn(3, 4, requires_grad=True)
    model(x).sum().backward()  # an in-place skip add would break autograd or the input
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("given", "shown"),
    [({"hidden": 0}, "hidden = 0"), ({"layers": 0}, "layers = 0"), ({"dropout": 1.0}, "dropout = 1.0"),
     ({"dropout": -0.1}, "dropout = -0.1")],
)
def test_bad_parameters_are_rejected(given: dict[str, float], shown: str) -> None:
    with pytest.raises(ParamError, match=shown):
        build_model(MODELS.get("chaos_mlp"), given, (4,), 1, seed=0)


def test_spec_defaults() -> None:
    spec = MODELS.get("chaos_mlp")
    assert spec.defaults == {"hidden": 100, "layers": 3, "dropout": 0.0, "residual": False}
    assert spec.modalities == {"tabular"}
    model = build_model(spec, {"dropout": 0.5}, (4,), 1, seed=0)
    assert next(m for m in model if isinstance(m, nn.Dropout)).p == 0.5


@pytest.mark.parametrize("residual", [False, True])
def test_full_batch_training_fits_a_symbolic_bundle(residual: bool) -> None:
    spec = DATASETS.get("symbolic")
    bundle = spec.build(0, **{**spec.defaults, "formula": 6, "n_samples": 1000, "n_noise": 10})
    model = build_model(MODELS.get("chaos_mlp"), {"residual": residual}, bundle.input_shape, 1, seed=0)
    with torch.inference_mode():
        before = float(F.mse_loss(model(bundle.x_train)[:, 0], bundle.y_train))
    report = train_model(model, bundle, {"epochs": 50, "batch_size": 10000, "lr": 1e-3}, 0, CPU, LOG)
    assert report.score_name == "r2" and len(report.losses) == 50 and not model.training
    assert report.losses[0] == pytest.approx(before, rel=1e-5), "epoch 1 is one full batch"
    assert report.losses[-1] < 0.5 * report.losses[0]
    again = build_model(MODELS.get("chaos_mlp"), {"residual": residual}, bundle.input_shape, 1, seed=0)
    repeat = train_model(again, bundle, {"epochs": 50, "batch_size": 10000, "lr": 1e-3}, 0, CPU, LOG)
    assert repeat.losses == report.losses, "deterministic per seed"
