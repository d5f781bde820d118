"""loss_gradient (Subramanian et al., arXiv 2207.07769): every variant against per-sample torch.autograd, the
sigmoid-pair model against BCE-with-logits, a linear softmax model by hand, batch invariance, the contract."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import harness.methods  # noqa: F401  (registers the methods)
from harness.methods.loss_gradient import VARIANTS, loss_gradient
from harness.specs import METHODS, Explainer, ParamError, RunContext

CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=25, deadline=None)
pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE_VARIANTS = {
    "abs_grad": lambda g, x: g.abs(), "grad_orig": lambda g, x: g, "grad_inp": lambda g, x: g * x,
    "abs_grad_inp": lambda g, x: (g * x).abs(), "grad_abs_inp": lambda g, x: g * x.abs(),
    "abs_grad_abs_inp": lambda g, x: g.abs() * x.abs(), "input": lambda g, x: x, "abs_input": lambda g, x: x.abs(),
}
"""The seed's rankings, written out again (independently of the module's table)."""


class SigmoidPair(nn.Module):
    """z (n, 1) -> logits (0, z): the harness's form of a one-unit sigmoid model."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


def image_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)
    ).eval()


def audio_model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv1d(1, 3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 12, 2)).eval()


def tabular_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 1), SigmoidPair()).eval()


CASES = {  # model, input shape, classes: 10-class softmax image, 2-class softmax audio, sigmoid tabular
    "image": (image_model, (2, 6, 6), 10), "audio": (audio_model, (1, 16), 2), "tabular": (tabular_model, (7,), 2),
}


def explainer(model: nn.Module, batch_size: int = 256, memory_mb: int = 1024, **params: Any) -> Explainer:
    ctx = RunContext(device=CPU, seed=0, batch_size=batch_size, memory_mb=memory_mb)
    return METHODS.get("loss_gradient").build(model, ctx, **params)


def data(kind: str, n: int = 6) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    build, shape, classes = CASES[kind]
    generator = torch.Generator().manual_seed(5)
    return build(), torch.randn(n, *shape, generator=generator), torch.randint(classes, (n,), generator=generator)


def autograd_loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent reference: one sample at a time, d cross_entropy(model(x_i), y_i) / d x_i by autograd."""
    grads = []
    for sample, label in zip(x, y, strict=True):
        point = sample.unsqueeze(0).clone().requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(model(point), label.reshape(1)), point)
        grads.append(grad[0])
    return torch.stack(grads)


@pytest.mark.parametrize("variant", sorted(REFERENCE_VARIANTS))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_variant_matches_autograd(kind: str, variant: str) -> None:
    model, x, y = data(kind)
    want = REFERENCE_VARIANTS[variant](autograd_loss_gradient(model, x, y), x)
    got = explainer(model, batch_size=4, variant=variant)(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert got.shape == x.shape and got.dtype == torch.float32 and not got.requires_grad


def test_the_variant_table_is_the_seed_list() -> None:
    assert set(VARIANTS) == set(REFERENCE_VARIANTS)
    spec = METHODS.get("loss_gradient")
    assert spec.defaults == {"variant": "abs_grad", "pixel_aggregation": "none"} and spec.version == 1
    assert "2207.07769" in spec.description and spec.modalities == frozenset({"image", "audio", "tabular"})


def test_sigmoid_pair_gradient_is_the_bce_with_logits_gradient() -> None:
    """For logits (0, z), cross-entropy = BCE-with-logits of z, so g = (sigmoid(z) - y) dz/dx: against autograd
    of the one-unit model's BCE, and in closed form for a linear unit z = w.x + b."""
    torch.manual_seed(4)
    unit = nn.Linear(7, 1)
    model = nn.Sequential(unit, SigmoidPair()).eval()
    x, y = torch.randn(8, 7), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    got = explainer(model, variant="grad_orig")(x, y)
    point = x.clone().requires_grad_()
    bce = F.binary_cross_entropy_with_logits(unit(point).squeeze(1), y.float(), reduction="sum")
    (want,) = torch.autograd.grad(bce, point)
    torch.testing.assert_close(got, want)
    with torch.no_grad():
        closed = (torch.sigmoid(unit(x)) - y.unsqueeze(1).float()) * unit.weight
    torch.testing.assert_close(got, closed)


@PROPERTIES
@given(seed=st.integers(0, 2**16), classes=st.integers(2, 10))
def test_linear_softmax_gradient_by_hand(seed: int, classes: int) -> None:
    """Logits W x + b: d CE / dx = W^T (softmax(Wx + b) - onehot(y))."""
    torch.manual_seed(seed)
    layer = nn.Linear(5, classes)
    x, y = torch.randn(4, 5), torch.randint(classes, (4,))
    got = explainer(layer, variant="grad_orig")(x, y)
    with torch.no_grad():
        want = (torch.softmax(layer(x), dim=1) - F.one_hot(y, classes).float()) @ layer.weight
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@PROPERTIES
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 10.0))
def test_variant_relations(seed: int, scale: float) -> None:
    """|g x| = |g| |x| >= 0, grad_inp = g x, grad_abs_inp = g |x|, input is x itself; every row depends only
    on its own sample (a permuted batch gives permuted rows)."""
    torch.manual_seed(seed)
    model, x = image_model(), scale * torch.randn(5, 2, 6, 6)
    y = torch.randint(10, (5,))
    out = {v: explainer(model, variant=v)(x, y) for v in VARIANTS}
    g = out["grad_orig"]
    torch.testing.assert_close(out["abs_grad_inp"], out["abs_grad_abs_inp"])
    assert all(float(out[v].min()) >= 0 for v in ("abs_grad", "abs_grad_inp", "abs_grad_abs_inp", "abs_input"))
    torch.testing.assert_close(out["grad_inp"], g * x)
    torch.testing.assert_close(out["grad_abs_inp"], g * x.abs())
    assert torch.equal(out["input"], x) and torch.equal(out["abs_input"], x.abs())
    order = torch.randperm(5)
    torch.testing.assert_close(explainer(model, variant="grad_orig")(x[order], y[order]), g[order])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_independent_of_the_batch_budget(kind: str) -> None:
    model, x, y = data(kind, n=11)
    want = explainer(model, batch_size=1000, variant="grad_inp")(x, y)
    for batch_size in (1, 3, 7):
        torch.testing.assert_close(explainer(model, batch_size=batch_size, variant="grad_inp")(x, y), want)
    torch.testing.assert_close(explainer(model, memory_mb=0, variant="grad_inp")(x, y), want)  # one row a chunk


def test_rows_per_forward_stay_within_the_budget() -> None:
    model, x, y = data("image", n=11)
    rows: list[int] = []
    handle = model[0].register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        explainer(model, batch_size=4)(x, y)
        assert rows == [4, 4, 3]
        rows.clear()
        explainer(model, batch_size=4, variant="abs_input")(x, y)
        assert rows == [], "input variants need no forward pass"
    finally:
        handle.remove()


def test_eval_mode_restored_mode_and_untouched_model() -> None:
    """Dropout is off while attributing (the result is deterministic and equals eval-mode autograd); the
    model's mode, parameter gradients, the inputs and the global RNG are as before."""
    model, x, y = data("image")
    model.train()
    rng, before = torch.get_rng_state(), x.clone()
    try:
        got = explainer(model)(x, y)
        assert model.training
    finally:
        model.eval()
    torch.testing.assert_close(got, autograd_loss_gradient(model, x, y).abs())
    assert torch.equal(x, before) and not x.requires_grad and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_scalar_target_and_empty_batch() -> None:
    model, x, _ = data("image")
    explain = explainer(model)
    torch.testing.assert_close(explain(x, torch.tensor(2)), explain(x, torch.full((len(x),), 2)))
    assert torch.equal(explain(x[:0], torch.zeros(0, dtype=torch.long)), torch.zeros(0, 2, 6, 6))


def test_bad_parameters_and_models_are_rejected() -> None:
    model, x, y = data("tabular")
    with pytest.raises(ParamError, match="'grad_x_input'.*choices: 'abs_grad', 'grad_orig'"):
        explainer(model, variant="grad_x_input")
    with pytest.raises(ParamError, match="not_a_parameter"):
        explainer(model, not_a_parameter=1)
    with pytest.raises(ValueError, match=r"two logits \(0, z\)"):
        loss_gradient(nn.Linear(7, 1), x, y)
