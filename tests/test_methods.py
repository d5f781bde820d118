"""Every registered attribution method passes the common contracts; references for the gradient methods."""
from __future__ import annotations

import pytest
import torch
from captum.attr import DeepLift, NoiseTunnel, Saliency
from torch import nn

import harness.methods  # registers the methods
import harness.models  # noqa: F401  (registers the models)
from harness.methods.captum_adapter import CAPTUM_METHODS, SMOOTHING_PARAMS
from harness.models.training import build_model
from harness.specs import METHODS, MODELS, Explainer, ParamError, RunContext

CPU = torch.device("cpu")
N, SHAPE, CLASSES = 5, (1, 8, 8), 10
pytestmark = pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread


@pytest.fixture(scope="module", params=["mlp", "small_cnn"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    return build_model(MODELS.get(request.param), {}, SHAPE, CLASSES, seed=0).eval()


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return build_model(MODELS.get("mlp"), {}, SHAPE, CLASSES, seed=0).eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs; sample 1 equals the zero baseline in its top half (captum's DeepLift fallback path)."""
    x = torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0))
    x[1, :, :4] = 0.0
    return x, torch.tensor([3, 1, 4, 1, 5])


def explainer(name: str, model: nn.Module, seed: int = 0, batch_size: int = 256, **params: object) -> Explainer:
    spec = METHODS.get(name)
    return spec.build(model, RunContext(device=CPU, seed=seed, batch_size=batch_size), **params)


def logit_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Independent reference: d logit[target] / d x by autograd."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[torch.arange(len(x)), target].sum(), x)
    return grad


# ---- contracts for every registered method --------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS.names())
def test_spec_metadata(name: str) -> None:
    spec = METHODS.get(name)
    assert spec.name == name and spec.description
    assert set(spec.choices) <= set(spec.defaults)
    for key, options in spec.choices.items():
        assert spec.defaults[key] in options


@pytest.mark.parametrize("name", METHODS.names())
def test_output_contract(name: str, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    rng_state, x_before = torch.get_rng_state(), x.clone()
    model.train()
    try:
        out = explainer(name, model)(x, target)
        assert model.training, "the model's mode is restored"
    finally:
        model.eval()
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert not out.requires_grad and torch.isfinite(out).all()
    assert torch.equal(x, x_before) and not x.requires_grad
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG is untouched"
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(explainer(name, model)(x[:0], target[:0]), torch.zeros(0, *SHAPE))


@pytest.mark.parametrize("name", METHODS.names())
def test_independent_of_the_batch_budget(
    name: str, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, target = inputs
    want = explainer(name, model, batch_size=1000)(x, target)
    for batch_size in (1, 7):
        got = explainer(name, model, batch_size=batch_size)(x, target)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_deterministic_for_a_seed(name: str, mlp: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    explain = explainer(name, mlp, seed=4)
    first = explain(x, target)
    assert torch.equal(first, explain(x, target)) and torch.equal(first, explainer(name, mlp, seed=4)(x, target))
    other = explainer(name, mlp, seed=5)(x, target)
    assert torch.equal(first, other) == (name not in {"random", "smoothgrad"}), "only random methods use the seed"


@pytest.mark.parametrize("name", METHODS.names())
def test_unknown_parameter_is_rejected(name: str, mlp: nn.Module) -> None:
    with pytest.raises(ParamError, match="not_a_parameter"):
        explainer(name, mlp, not_a_parameter=1)


@pytest.mark.parametrize("name", sorted(CAPTUM_METHODS))
def test_forward_passes_stay_within_the_budget(
    name: str, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Rows reaching the first layer (after captum's own expansion, e.g. DeepLift's input+baseline)."""
    x, target = inputs
    rows: list[int] = []
    handle = next(iter(model.children())).register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        explainer(name, model, batch_size=7)(x, target)
    finally:
        handle.remove()
    assert rows and max(rows) <= 7


def test_table_rows_route_every_parameter() -> None:
    for method in CAPTUM_METHODS.values():
        consumed = set(method.call) | (set(SMOOTHING_PARAMS) if method.smoothing else set())
        assert consumed == set(method.defaults), method.name
    costs = {name: m.rows_per_sample(m.defaults) for name, m in CAPTUM_METHODS.items()}
    assert costs == {
        "saliency": 1, "input_x_gradient": 1, "integrated_gradients": 25, "smoothgrad": 50, "deep_lift": 2,
    }


# ---- references -----------------------------------------------------------------------------------------


def test_random_is_uniform_on_minus_one_one(mlp: nn.Module) -> None:
    x = torch.zeros(64, *SHAPE)
    out = explainer("random", mlp)(x, torch.zeros(64, dtype=torch.long))
    assert -1.0 <= float(out.min()) < -0.95 and 0.95 < float(out.max()) <= 1.0
    assert abs(float(out.mean())) < 0.03 and abs(float(out.var()) - 1 / 3) < 0.02


def test_saliency_is_the_absolute_logit_gradient(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    grad = logit_gradient(model, x, target)
    torch.testing.assert_close(explainer("saliency", model)(x, target), grad.abs())
    torch.testing.assert_close(explainer("saliency", model, abs=False)(x, target), grad)


def test_input_x_gradient(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    torch.testing.assert_close(explainer("input_x_gradient", model)(x, target), x * logit_gradient(model, x, target))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_completeness(
    method: str, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Sum of IG attributions -> f(x) - f(baseline) as the number of steps grows (Sundararajan et al. 2017)."""
    x, target = inputs
    attr = explainer("integrated_gradients", model, n_steps=300, method=method)(x, target)
    with torch.inference_mode():
        diff = (model(x) - model(torch.zeros_like(x)))[torch.arange(N), target]
    torch.testing.assert_close(attr.flatten(1).sum(1), diff, rtol=0.02, atol=2e-3)


def test_integrated_gradients_baseline_parameter(mlp: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    at_baseline = explainer("integrated_gradients", mlp, baseline=0.5)(torch.full_like(x, 0.5), target)
    assert float(at_baseline.abs().max()) == 0.0


def test_smoothgrad_matches_its_definition(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Mean over draws of |grad logit| at x + N(0, stdevs^2); noise drawn per sample, in order, from the seed."""
    x, target = inputs
    ctx = RunContext(device=CPU, seed=9)
    generator = ctx.generator()
    noise = torch.stack([torch.randn((8, *SHAPE), generator=generator) for _ in range(N)])
    noisy = (x.unsqueeze(1) + 0.3 * noise).flatten(0, 1)
    grads = logit_gradient(model, noisy, target.repeat_interleave(8)).unflatten(0, (N, 8))
    got = METHODS.get("smoothgrad").build(model, ctx, nt_samples=8, stdevs=0.3)(x, target)
    torch.testing.assert_close(got, grads.abs().mean(dim=1))
    vargrad = METHODS.get("smoothgrad").build(model, ctx, nt_samples=8, stdevs=0.3, nt_type="vargrad")(x, target)
    torch.testing.assert_close(vargrad, grads.abs().var(dim=1, correction=0))


def test_smoothgrad_without_noise_is_saliency(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    smooth = explainer("smoothgrad", model, nt_samples=3, stdevs=0.0, nt_type="smoothgrad_sq", abs=False)
    torch.testing.assert_close(smooth(x, target), explainer("saliency", model, abs=False)(x, target) ** 2)


def test_smoothgrad_agrees_with_captum_noise_tunnel_in_expectation(mlp: nn.Module) -> None:
    x, target = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1)), torch.tensor([2, 7])
    ours = explainer("smoothgrad", mlp, nt_samples=400, stdevs=0.5, batch_size=1000)(x, target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = NoiseTunnel(Saliency(mlp)).attribute(
            x, target=target, nt_type="smoothgrad", nt_samples=400, stdevs=0.5
        )
    scale = float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) < 0.15 * scale


def test_deep_lift_matches_captum_unchunked(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    want = DeepLift(model).attribute(x.clone().requires_grad_(), baselines=0.0, target=target).detach()
    torch.testing.assert_close(explainer("deep_lift", model, batch_size=3)(x, target), want)


def test_deep_lift_sums_to_the_output_difference(mlp: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, target = inputs
    attr = explainer("deep_lift", mlp)(x, target)
    with torch.inference_mode():
        diff = (mlp(x) - mlp(torch.zeros_like(x)))[torch.arange(N), target]
    torch.testing.assert_close(attr.flatten(1).sum(1), diff, rtol=1e-4, atol=1e-5)


def test_scalar_target_means_every_sample(mlp: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = inputs
    explain = explainer("saliency", mlp)
    torch.testing.assert_close(explain(x, torch.tensor(2)), explain(x, torch.full((N,), 2)))


def test_bad_choice_is_rejected(mlp: nn.Module) -> None:
    with pytest.raises(ParamError, match="choices"):
        explainer("integrated_gradients", mlp, method="simpson")
