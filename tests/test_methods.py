"""Every registered attribution method passes the common contracts; references for the gradient methods."""
from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
import torch
from captum.attr import DeepLift, NoiseTunnel, Saliency
from torch import nn

import harness.methods  # registers the methods
import harness.models  # noqa: F401  (registers the models)
from harness.methods.attribench import NEEDS_CONV2D, SEEDED
from harness.methods.captum_adapter import CAPTUM_METHODS, SMOOTHING_PARAMS
from harness.methods.roar_methods import ROAR_METHODS
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


BACKGROUND = torch.randn(20, *SHAPE, generator=torch.Generator().manual_seed(3))
"""Training inputs for the methods with data-set baselines (deep_shap, expected_gradients)."""


def explainer(name: str, model: nn.Module, seed: int = 0, batch_size: int = 256, **params: object) -> Explainer:
    spec = METHODS.get(name)
    ctx = RunContext(device=CPU, seed=seed, batch_size=batch_size, background=BACKGROUND)
    return spec.build(model, ctx, **params)


def skip_unless_applicable(name: str, model: nn.Module) -> None:
    if name in NEEDS_CONV2D and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        pytest.skip(f"{name} needs a model with an nn.Conv2d (images)")


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
    skip_unless_applicable(name, model)
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
    skip_unless_applicable(name, model)
    x, target = inputs
    want = explainer(name, model, batch_size=1000)(x, target)
    for batch_size in (1, 7):
        got = explainer(name, model, batch_size=batch_size)(x, target)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_deterministic_for_a_seed(name: str, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    skip_unless_applicable(name, model)
    x, target = inputs
    mlp = model
    explain = explainer(name, mlp, seed=4)
    first = explain(x, target)
    assert torch.equal(first, explain(x, target)) and torch.equal(first, explainer(name, mlp, seed=4)(x, target))
    other = explainer(name, mlp, seed=5)(x, target)
    seeded = name in {"random", "smoothgrad"} | SEEDED | set(ROAR_METHODS) and bool(first.any())  # LIME's Lasso may zero everything
    assert torch.equal(first, other) == (not seeded), "only random methods use the seed"


@pytest.mark.parametrize("name", METHODS.names())
def test_unknown_parameter_is_rejected(name: str, mlp: nn.Module) -> None:
    with pytest.raises(ParamError, match="not_a_parameter"):
        explainer(name, mlp, not_a_parameter=1)


def test_table_rows_route_every_parameter() -> None:
    for method in CAPTUM_METHODS.values():
        consumed = set(method.call) | set(method.shape_params)
        consumed |= set(SMOOTHING_PARAMS) if method.smoothing else set()
        assert consumed == set(method.defaults), method.name
    costs = {name: m.rows_per_sample(m.defaults, SHAPE) for name, m in CAPTUM_METHODS.items()}
    assert costs == {
        "saliency": 1, "input_x_gradient": 1, "integrated_gradients": 25, "smoothgrad": 50, "deep_lift": 2,
        "feature_ablation": 1 + 4,  # four 4x4 patches of an 8x8 image, plus the unperturbed row
        "occlusion": 1 + 9,  # a 4-px window at 0, 2, 4 along each axis
    }


@pytest.mark.parametrize("name", sorted(CAPTUM_METHODS))
def test_rows_through_the_model_stay_within_the_budget_and_are_the_cost(
    name: str, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Rows reaching the first layer (after captum's own expansion, e.g. DeepLift's input+baseline): no
    forward exceeds the budget, and chunking adds none: N x rows_per_sample in all."""
    x, target = inputs
    rows: list[int] = []
    handle = next(iter(model.children())).register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        explainer(name, model, batch_size=7)(x, target)
    finally:
        handle.remove()
    method = CAPTUM_METHODS[name]
    assert rows and max(rows) <= 7
    assert sum(rows) == N * method.rows_per_sample(method.defaults, SHAPE)


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


# ---- perturbation methods (forward only) ----------------------------------------------------------------

Region = tuple[slice | int, ...]
"""Index of one feature group within a sample (the batch axis excluded)."""


def starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts: every stride while the window fits, then one more (cut at the end) if the last fell short."""
    out = list(range(0, size - window + 1, stride))
    return out + [out[-1] + stride] if out[-1] + window < size else out


def ablation_regions(shape: tuple[int, ...], patch: int, grid: int) -> list[Region]:
    if len(shape) < 3:  # tabular columns, sequence channels
        return [(i,) for i in range(shape[0])]
    if grid:
        cuts = [[i * (size // grid) for i in range(grid)] + [size] for size in shape[1:]]
        spans = [[slice(a, b) for a, b in pairwise(c)] for c in cuts]
    else:
        spans = [[slice(a, a + patch) for a in range(0, size, patch)] for size in shape[1:]]
    return [(slice(None), r, c) for r in spans[0] for c in spans[1]]


def occlusion_regions(shape: tuple[int, ...], window: int, stride: int) -> list[Region]:
    axes = shape if len(shape) == 1 else shape[1:]
    spans = [[slice(a, a + min(window, size)) for a in starts(size, min(window, size), stride)] for size in axes]
    lead: Region = () if len(shape) == 1 else (slice(None),)
    if len(spans) == 1:
        return [(*lead, s) for s in spans[0]]
    return [(*lead, r, c) for r in spans[0] for c in spans[1]]


def perturbation_reference(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, regions: list[Region], baseline: float
) -> torch.Tensor:
    """Plain loop: f(x) - f(x with one region at the baseline), averaged over the regions covering each input."""
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    with torch.inference_mode():
        clean = model(x)[torch.arange(len(x)), target]
        for region in regions:
            ablated = x.clone()
            ablated[(slice(None), *region)] = baseline
            diff = clean - model(ablated)[torch.arange(len(x)), target]
            covered = torch.zeros_like(x)
            covered[(slice(None), *region)] = 1.0
            total += diff.reshape(-1, *[1] * (x.ndim - 1)) * covered
            count += covered
    assert bool((count > 0).all()), "the regions cover every input"
    return total / count


PERTURBATION_CASES = [  # (method, model, sample shape, params, regions of the reference)
    ("feature_ablation", "small_cnn", SHAPE, {}, ablation_regions(SHAPE, 4, 0)),
    ("feature_ablation", "mlp", SHAPE, {"patch": 3, "baseline": 0.5}, ablation_regions(SHAPE, 3, 0)),
    ("feature_ablation", "small_cnn", SHAPE, {"grid": 3}, ablation_regions(SHAPE, 0, 3)),  # cells 2, 2, 4 wide
    ("feature_ablation", "mlp", (2, 6, 9), {"grid": 2, "baseline": -1.0}, ablation_regions((2, 6, 9), 0, 2)),
    ("feature_ablation", "mlp", (12,), {}, ablation_regions((12,), 0, 0)),
    ("feature_ablation", "mlp", (3, 10), {"baseline": 1.0}, ablation_regions((3, 10), 0, 0)),
    ("occlusion", "small_cnn", SHAPE, {}, occlusion_regions(SHAPE, 4, 2)),
    ("occlusion", "mlp", SHAPE, {"window": 3, "stride": 2, "baseline": -1.0}, occlusion_regions(SHAPE, 3, 2)),
    ("occlusion", "small_cnn", (2, 7, 9), {"window": 3, "stride": 3}, occlusion_regions((2, 7, 9), 3, 3)),
    ("occlusion", "mlp", (12,), {"window": 5, "stride": 3}, occlusion_regions((12,), 5, 3)),
    ("occlusion", "mlp", (3, 10), {"window": 4, "stride": 4, "baseline": 0.5}, occlusion_regions((3, 10), 4, 4)),
]


@pytest.mark.parametrize(
    ("name", "model_name", "shape", "params", "regions"), PERTURBATION_CASES,
    ids=[f"{case[0]}-{case[1]}-{'x'.join(map(str, case[2]))}-{i}" for i, case in enumerate(PERTURBATION_CASES)],
)
def test_perturbation_methods_match_a_plain_loop(
    name: str, model_name: str, shape: tuple[int, ...], params: dict[str, Any], regions: list[Region]
) -> None:
    """References for captum FeatureAblation / Occlusion, and budget independence to 1e-6 (budgets 1, 7, 1000)."""
    net = build_model(MODELS.get(model_name), {}, shape, CLASSES, seed=0).eval()
    x = torch.randn(N, *shape, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 1, 4, 1, 5])
    want = perturbation_reference(net, x, target, regions, float(params.get("baseline", 0.0)))
    outs = [explainer(name, net, batch_size=b, **params)(x, target) for b in (1, 7, 1000)]
    for out in outs:
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    assert float(want.abs().max()) > 1e-3, "the case is not trivial"


def test_feature_ablation_of_single_pixels_of_a_linear_model_is_w_times_x() -> None:
    """f = W x + b: ablating pixel i to baseline r changes logit t by W[t, i] (x_i - r)."""
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[9.0, 9.0, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0]]))
        linear.bias.fill_(7.0)
    net = nn.Sequential(nn.Flatten(), linear)
    x = torch.tensor([[[[1.0, 1.0], [2.0, -1.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([1])
    got = explainer("feature_ablation", net, patch=1)(x, target)
    torch.testing.assert_close(got, torch.tensor([[[[1.0, 2.0], [6.0, -4.0]]]]))
    got = explainer("feature_ablation", net, patch=1, baseline=0.5, batch_size=2)(x, target)
    torch.testing.assert_close(got, torch.tensor([[[[0.5, 1.0], [4.5, -6.0]]]]))


@pytest.mark.parametrize("name", ["feature_ablation", "occlusion"])
def test_perturbation_methods_need_no_gradients(name: str, mlp: nn.Module) -> None:
    x, target = torch.randn(2, *SHAPE), torch.tensor([0, 1])
    for p in mlp.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            out = explainer(name, mlp)(x, target)
    finally:
        for p in mlp.parameters():
            p.requires_grad_(True)
    assert out.shape == x.shape and float(out.abs().max()) > 0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("feature_ablation", {"patch": 0}), ("feature_ablation", {"grid": -1}),
        ("occlusion", {"window": 2, "stride": 3}), ("occlusion", {"stride": 0}),
    ],
)
def test_perturbation_parameters_out_of_range_are_rejected(name: str, params: dict[str, int], mlp: nn.Module) -> None:
    with pytest.raises(ParamError, match=next(iter(params))):
        explainer(name, mlp, **params)
