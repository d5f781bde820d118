"""attribench's methods (GuidedBackprop ... LIME), pixel aggregation: contracts, captum references, hand checks."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import (
    Deconvolution,
    DeepLiftShap,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    KernelShap,
    LayerAttribution,
    LayerGradCam,
    Lime,
)
from torch import nn

import harness.methods  # registers the methods
import harness.models  # noqa: F401  (registers the models)
from harness.methods.attribench import ATTRIBENCH_METHODS, NEEDS_BACKGROUND, NEEDS_CONV2D, SEEDED
from harness.methods.sampling import PathDraws, draw_references
from harness.methods.superpixels import sample_seeds
from harness.models.training import build_model
from harness.segmentation import slic_segments
from harness.specs import METHODS, MODELS, Explainer, ParamError, RunContext

CPU = torch.device("cpu")
N, SHAPE, CLASSES = 4, (1, 16, 16), 10
TARGET = torch.tensor([3, 1, 4, 1])
BACKGROUND = torch.rand(50, *SHAPE, generator=torch.Generator().manual_seed(7))
NAMES = sorted(ATTRIBENCH_METHODS)
CHEAP: dict[str, dict[str, Any]] = {  # fewer draws where a test repeats a method many times
    "vargrad": {"nt_samples": 8}, "smoothgrad_sq": {"nt_samples": 8}, "deep_shap": {"n_baselines": 10},
    "expected_gradients": {"n_samples": 12, "n_baselines": 10}, "kernel_shap": {"n_samples": 40},
    "lime": {"n_samples": 40},
}
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Setting (forward, backward|backward) hooks:UserWarning"),
]


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return build_model(MODELS.get("small_cnn"), {"channels": [4, 8], "hidden": 16}, SHAPE, CLASSES, seed=0).eval()


@pytest.fixture(scope="module")
def sharp(cnn: nn.Module) -> nn.Module:
    """The CNN with its logits scaled by 100: removing superpixels of an untrained CNN barely moves its logits,
    and LIME's Lasso (alpha 0.01, in logit units) then zeroes every coefficient."""
    net = copy.deepcopy(cnn)
    with torch.no_grad():
        net[-1].weight.mul_(100.0)
        net[-1].bias.mul_(100.0)
    return net


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(N, *SHAPE, generator=torch.Generator().manual_seed(0))


def context(seed: int = 0, batch_size: int = 256, background: torch.Tensor | None = BACKGROUND) -> RunContext:
    return RunContext(device=CPU, seed=seed, batch_size=batch_size, background=background)


def explainer(name: str, model: nn.Module, seed: int = 0, batch_size: int = 256, **params: Any) -> Explainer:
    return METHODS.get(name).build(model, context(seed, batch_size), **params)


# ---- contracts ------------------------------------------------------------------------------------------


def test_registered_with_attribench_defaults() -> None:
    defaults = {name: dict(METHODS.get(name).defaults) for name in NAMES}
    assert defaults["vargrad"] == defaults["smoothgrad_sq"] == {
        "nt_samples": 50, "stdevs": 0.15, "abs": True, "pixel_aggregation": "none"}
    assert defaults["deep_shap"]["n_baselines"] == 100
    assert defaults["expected_gradients"] == {"n_samples": 100, "n_baselines": 100, "pixel_aggregation": "none"}
    for name in ("kernel_shap", "lime"):
        assert defaults[name] == {"n_samples": 300, "n_segments": 50, "compactness": 10.0, "slic_zero": True,
                                  "baseline": 0.0, "pixel_aggregation": "none", **({"alpha": 0.01} if name == "lime" else {})}
    assert defaults["gradcam"] == {"layer": "", "interpolate_mode": "bilinear", "relu": True,
                                   "pixel_aggregation": "none"}
    for name in METHODS.names():  # every method, old ones and random included, takes pixel_aggregation
        assert METHODS.get(name).defaults["pixel_aggregation"] == "none"


def test_table_rows_route_every_parameter_and_costs() -> None:
    for method in ATTRIBENCH_METHODS.values():
        assert set(method.call) | set(method.shape_params) | set(method.own_params) == set(method.defaults)
    costs = {name: m.rows_per_sample(m.defaults, SHAPE) for name, m in ATTRIBENCH_METHODS.items()}
    assert costs == {
        "guided_backprop": 1, "deconvolution": 1, "gradcam": 1, "guided_gradcam": 2, "vargrad": 50,
        "smoothgrad_sq": 50, "deep_shap": 200, "expected_gradients": 100, "kernel_shap": 300, "lime": 300,
    }


@pytest.mark.parametrize("name", NAMES + ["random"])
def test_output_contract(name: str, cnn: nn.Module, sharp: nn.Module, x: torch.Tensor) -> None:
    cnn = sharp if name == "lime" else cnn
    torch_state, numpy_state, x_before = torch.get_rng_state(), np.random.get_state(), x.clone()
    cnn.train()
    try:
        out = explainer(name, cnn)(x, TARGET)
        assert cnn.training, "the model's mode is restored"
    finally:
        cnn.eval()
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert not out.requires_grad and torch.isfinite(out).all() and float(out.abs().max()) > 0
    assert torch.equal(x, x_before) and not x.requires_grad
    assert torch.equal(torch.get_rng_state(), torch_state), "the global torch RNG is untouched"
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))
    assert all(p.grad is None for p in cnn.parameters())
    assert torch.equal(explainer(name, cnn)(x[:0], TARGET[:0]), torch.zeros(0, *SHAPE))


@pytest.mark.parametrize("name", NAMES)
def test_independent_of_the_batch_budget(name: str, cnn: nn.Module, sharp: nn.Module, x: torch.Tensor) -> None:
    cnn = sharp if name == "lime" else cnn
    params = CHEAP.get(name, {})
    want = explainer(name, cnn, batch_size=1000, **params)(x, TARGET)
    for batch_size in (1, 7):
        got = explainer(name, cnn, batch_size=batch_size, **params)(x, TARGET)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert float(want.abs().max()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_rows_through_the_model_stay_within_the_budget_and_are_the_cost(
    name: str, cnn: nn.Module, x: torch.Tensor
) -> None:
    params = CHEAP.get(name, {})
    rows: list[int] = []
    handle = cnn[0].register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        explainer(name, cnn, batch_size=7, **params)(x, TARGET)
    finally:
        handle.remove()
    method = ATTRIBENCH_METHODS[name]
    assert rows and max(rows) <= 7
    assert sum(rows) == N * method.rows_per_sample({**method.defaults, **params}, SHAPE)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name: str, cnn: nn.Module, sharp: nn.Module, x: torch.Tensor) -> None:
    cnn = sharp if name == "lime" else cnn
    params = CHEAP.get(name, {})
    explain = explainer(name, cnn, seed=4, **params)
    first = explain(x, TARGET)
    assert torch.equal(first, explain(x, TARGET))
    assert torch.equal(first, explainer(name, cnn, seed=4, **params)(x, TARGET))
    other = explainer(name, cnn, seed=5, **params)(x, TARGET)
    assert torch.equal(first, other) == (name not in SEEDED), "only the sampling methods use the seed"


# ---- references: captum's own classes on the same inputs ----------------------------------------------


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_()


@pytest.mark.parametrize(("name", "algorithm"), [("guided_backprop", GuidedBackprop), ("deconvolution", Deconvolution)])
def test_backprop_rules_match_captum(name: str, algorithm: type, cnn: nn.Module, x: torch.Tensor) -> None:
    want = algorithm(cnn).attribute(_grad_input(x), target=TARGET).detach()
    torch.testing.assert_close(explainer(name, cnn, batch_size=3)(x, TARGET), want)


@pytest.mark.parametrize(("layer", "index"), [("", 3), ("0", 0)])
def test_gradcam_matches_captum_on_the_last_conv_upsampled(
    layer: str, index: int, cnn: nn.Module, x: torch.Tensor
) -> None:
    maps = LayerGradCam(cnn, cnn[index]).attribute(_grad_input(x), target=TARGET, relu_attributions=True)
    want = LayerAttribution.interpolate(maps.detach(), SHAPE[1:], interpolate_mode="bilinear").expand(-1, 1, -1, -1)
    got = explainer("gradcam", cnn, batch_size=3, layer=layer)(x, TARGET)
    torch.testing.assert_close(got, want)
    assert float(got.min()) >= 0.0 and float(got.max()) > 0.0


def test_guided_gradcam_matches_captum(cnn: nn.Module, x: torch.Tensor) -> None:
    want = GuidedGradCam(cnn, cnn[3]).attribute(_grad_input(x), target=TARGET, interpolate_mode="bilinear")
    torch.testing.assert_close(explainer("guided_gradcam", cnn, batch_size=3)(x, TARGET), want.detach())


def test_deep_shap_matches_captum_deep_lift_shap(cnn: nn.Module, x: torch.Tensor) -> None:
    references = draw_references(context(), 20, "test")
    want = DeepLiftShap(cnn).attribute(_grad_input(x), baselines=references, target=TARGET).detach()
    got = explainer("deep_shap", cnn, batch_size=7, n_baselines=20)(x, TARGET)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # all 50 background rows when fewer than n_baselines (100)
    everything = DeepLiftShap(cnn).attribute(_grad_input(x), baselines=BACKGROUND, target=TARGET).detach()
    torch.testing.assert_close(explainer("deep_shap", cnn)(x, TARGET), everything, rtol=1e-4, atol=1e-6)


def test_expected_gradients_matches_captum_gradient_shap_on_the_same_draws(
    cnn: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """captum draws reference indices (np.random.choice) and alphas (np.random.uniform), sample-major; feed it
    the draws the explainer makes from the run's seed."""
    k, r = 12, 10
    references = draw_references(context(), r, "test")
    index, alpha = PathDraws().draws(N, k, r, context().generator())
    monkeypatch.setattr(np.random, "choice", lambda *_: index.flatten().numpy())
    monkeypatch.setattr(np.random, "uniform", lambda *_: alpha.flatten().double().numpy())
    want = GradientShap(cnn).attribute(_grad_input(x), baselines=references, target=TARGET, n_samples=k, stdevs=0.0)
    monkeypatch.undo()
    got = explainer("expected_gradients", cnn, batch_size=5, n_samples=k, n_baselines=r)(x, TARGET)
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)


def _captum_per_sample(
    algorithm: KernelShap | Lime, x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, seed: int, **kw: Any
) -> torch.Tensor:
    seeds, parts = sample_seeds(context(seed), len(x)), []
    for i in range(len(x)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[i]))
            parts.append(algorithm.attribute(x[i : i + 1], target=target[i : i + 1], feature_mask=masks[i : i + 1],
                                             baselines=0.0, perturbations_per_eval=3, **kw))
    return torch.cat(parts)


@pytest.mark.parametrize(("name", "algorithm"), [("kernel_shap", KernelShap), ("lime", Lime)])
def test_surrogates_match_captum_per_sample_on_slic_superpixels(
    name: str, algorithm: type, sharp: nn.Module, x: torch.Tensor
) -> None:
    cnn = sharp
    masks = slic_segments(x, 12, 10.0, True)
    want = _captum_per_sample(algorithm(cnn), x, TARGET, masks, seed=3, n_samples=60)
    got = METHODS.get(name).build(cnn, context(3, batch_size=7), n_samples=60, n_segments=12)(x, TARGET)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got.flatten(1).abs().amax(1) > 0).all()
    for i in range(N):  # constant on every superpixel
        for segment in masks[i, 0].unique():
            values = got[i, 0][masks[i, 0] == segment]
            assert torch.equal(values, values[:1].expand_as(values))


@pytest.mark.parametrize(("name", "algorithm"), [("kernel_shap", KernelShap), ("lime", Lime)])
def test_surrogates_on_tabular_data_use_one_feature_per_column(name: str, algorithm: type) -> None:
    mlp = build_model(MODELS.get("mlp"), {"hidden": [16]}, (12,), 3, seed=0).eval()
    x, target = torch.randn(3, 12, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2, 1])
    want = _captum_per_sample(algorithm(mlp), x, target, torch.arange(12).expand(3, 12), seed=0, n_samples=50)
    torch.testing.assert_close(explainer(name, mlp, n_samples=50)(x, target), want, rtol=1e-4, atol=1e-5)


def test_surrogates_on_sequences_use_one_feature_per_channel() -> None:
    mlp = build_model(MODELS.get("mlp"), {"hidden": [16]}, (3, 10), 3, seed=0).eval()
    x = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(1))
    out = explainer("lime", mlp, n_samples=40)(x, torch.tensor([0, 1]))
    assert torch.equal(out, out[:, :, :1].expand_as(out)) and float(out.abs().max()) > 0


# ---- hand checks ---------------------------------------------------------------------------------------


def test_kernel_shap_of_a_linear_model_is_w_times_x() -> None:
    """f = W x + b is linear in the coalition vector, so the weighted regression is exact: W[t, j] x_j."""
    linear = nn.Linear(6, 2)
    net = nn.Sequential(linear).eval()
    x, target = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 1])
    got = explainer("kernel_shap", net, n_samples=100)(x, target)
    torch.testing.assert_close(got, linear.weight.detach()[target] * x, rtol=1e-4, atol=1e-4)


def test_kernel_shap_with_one_superpixel_is_the_output_difference(cnn: nn.Module, x: torch.Tensor) -> None:
    got = explainer("kernel_shap", cnn, n_segments=1)(x, TARGET)
    with torch.inference_mode():
        diff = (cnn(x) - cnn(torch.zeros_like(x)))[torch.arange(N), TARGET]
    torch.testing.assert_close(got, diff.reshape(-1, 1, 1, 1).expand_as(x).contiguous())


def _known_cam_model() -> nn.Sequential:
    """Conv(1 -> 2, 2x2 stride 2, weights +1 / -1, no bias): A_0 = patch sums s, A_1 = -s (2 x 2 maps); then
    global average pool and Linear(2 -> 2, V, no bias). d logit_t / d A_c = V[t, c] / 4, so the GradCAM map
    of class t is ReLU(sum_c V[t, c] / 4 * A_c) = ReLU((V[t, 0] - V[t, 1]) s / 4)."""
    conv, head = nn.Conv2d(1, 2, 2, stride=2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)]))
        head.weight.copy_(torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def test_gradcam_by_hand() -> None:
    net = _known_cam_model()
    x = torch.tensor([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 0.0], [0.0, 0.0, 3.0, 3.0], [0.0, 4.0, 3.0, 3.0]])
    x = x.reshape(1, 1, 4, 4)
    sums = torch.tensor([[4.0, 4.0], [4.0, 12.0]])  # the 2 x 2 patch sums
    cam = (1.0 - 0.5) / 4 * sums  # class 0: V = (1, 0.5)
    up = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # bilinear 2 -> 4, half-pixel centres
    want = (up @ cam @ up.T).reshape(1, 1, 4, 4)
    torch.testing.assert_close(explainer("gradcam", net)(x, torch.tensor([0])), want)
    assert float(explainer("gradcam", net)(x, torch.tensor([1])).abs().max()) == 0.0  # ReLU of a negative map
    signed = explainer("gradcam", net, relu=False)(x, torch.tensor([1]))
    torch.testing.assert_close(signed, -want)
    nearest = explainer("gradcam", net, interpolate_mode="nearest")(x, torch.tensor([0]))
    torch.testing.assert_close(nearest, cam.repeat_interleave(2, 0).repeat_interleave(2, 1).reshape(1, 1, 4, 4))


@pytest.mark.parametrize("name", ["saliency", "guided_backprop", "smoothgrad_sq", "random"])
def test_pixel_aggregation_by_hand(name: str) -> None:
    net = build_model(MODELS.get("small_cnn"), {"channels": [4], "hidden": 8}, (3, 8, 8), 5, seed=0).eval()
    x, target = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 4, 2])
    params: dict[str, Any] = {"abs": False} if name == "saliency" else CHEAP.get(name, {})
    raw = explainer(name, net, **params)(x, target)
    assert not torch.equal(raw[:, 0], raw[:, 1])
    mean = explainer(name, net, pixel_aggregation="mean", **params)(x, target)
    torch.testing.assert_close(mean, ((raw[:, 0] + raw[:, 1] + raw[:, 2]) / 3).unsqueeze(1).expand(-1, 3, -1, -1))
    by_hand = torch.empty(3, 8, 8)
    for i, h, w in np.ndindex(3, 8, 8):  # the signed value of the channel with the largest magnitude
        values = raw[i, :, h, w]
        by_hand[i, h, w] = values[int(values.abs().argmax())]
    max_abs = explainer(name, net, pixel_aggregation="max_abs", **params)(x, target)
    assert torch.equal(max_abs, by_hand.unsqueeze(1).expand(-1, 3, -1, -1))


def test_pixel_aggregation_needs_a_channel_axis() -> None:
    mlp = build_model(MODELS.get("mlp"), {"hidden": [8]}, (6,), 2, seed=0).eval()
    explain = explainer("saliency", mlp, pixel_aggregation="mean")
    with pytest.raises(ValueError, match="channel axis"):
        explain(torch.randn(2, 6), torch.tensor([0, 1]))


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "pattern"),
    [
        ("gradcam", {"interpolate_mode": "cubic"}, r"'cubic'.*choices: 'bilinear', 'nearest'"),
        ("guided_backprop", {"pixel_aggregation": "median"}, r"'median'.*choices: 'none', 'mean', 'max_abs'"),
        ("random", {"pixel_aggregation": "max"}, r"'max'.*choices: 'none', 'mean', 'max_abs'"),
        ("integrated_gradients", {"pixel_aggregation": "sum"}, r"'sum'.*choices"),
        ("kernel_shap", {"n_samples": 1}, r"kernel_shap: need n_samples >= 2"),
        ("lime", {"n_segments": 0}, r"lime: need n_samples >= 2, n_segments >= 1"),
        ("lime", {"alpha": -1.0}, r"lime: .*alpha=-1.0"),
        ("gradcam", {"layer": "body.0"}, r"'body.0' is not a module.*'0', '3'"),
    ],
)
def test_bad_parameters_are_rejected(name: str, params: dict[str, Any], pattern: str, cnn: nn.Module) -> None:
    with pytest.raises(ParamError, match=pattern):
        explainer(name, cnn, **params)


@pytest.mark.parametrize("name", sorted(NEEDS_BACKGROUND))
def test_data_set_baselines_need_the_background(name: str, cnn: nn.Module) -> None:
    with pytest.raises(ValueError, match=rf"method {name}: .*RunContext.background"):
        METHODS.get(name).build(cnn, context(background=None))


@pytest.mark.parametrize("name", sorted(NEEDS_CONV2D))
def test_gradcam_needs_a_conv_image_model(name: str) -> None:
    mlp = build_model(MODELS.get("mlp"), {}, SHAPE, CLASSES, seed=0)
    with pytest.raises(ValueError, match=rf"method {name}: the model \(Sequential\) has no nn.Conv2d.*image"):
        explainer(name, mlp)
