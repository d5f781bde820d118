"""The ROAR study's methods: the noise family against a plain captum loop, row accounting; Sobel vs scipy."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop, IntegratedGradients, Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch import nn

import harness.methods  # registers the methods
import harness.models  # noqa: F401  (registers the models)
from harness.methods.roar_methods import ROAR_METHODS, sobel_magnitude
from harness.models.training import build_model
from harness.specs import METHODS, MODELS, Explainer, ParamError, RunContext

CPU = torch.device("cpu")
N, SHAPE, CLASSES = 3, (2, 10, 10), 10
TARGET = torch.tensor([3, 1, 4])
CHEAP = {"nt_samples": 4, "stdevs": 0.3}
"""Fewer draws (and IG steps) than the defaults where a test repeats a method."""
NAMES = sorted(ROAR_METHODS)
PROPERTIES = settings(max_examples=20, deadline=None)
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Setting (forward, backward|backward) hooks:UserWarning"),
]


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    spec = MODELS.get("small_cnn")
    return build_model(spec, {"channels": [4, 8], "hidden": 16}, SHAPE, CLASSES, seed=0).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0))


def cheap(name: str) -> dict[str, Any]:
    return {**CHEAP, "n_steps": 5} if name.endswith("_ig") else dict(CHEAP)


def explainer(name: str, model: nn.Module, seed: int = 0, batch_size: int = 256, **params: Any) -> Explainer:
    return METHODS.get(name).build(model, RunContext(device=CPU, seed=seed, batch_size=batch_size), **params)


# ---- noise family -----------------------------------------------------------------------------------------


BASES = {"gradient": Saliency, "ig": IntegratedGradients, "guided_backprop": GuidedBackprop}
LOOP_REDUCTIONS = {
    "smoothgrad": lambda a: a.mean(dim=0),
    "sg_sq": lambda a: (a * a).mean(dim=0),
    "vargrad": lambda a: ((a - a.mean(dim=0)) ** 2).mean(dim=0),
}


def split(name: str) -> tuple[str, str]:
    """``vargrad_guided_backprop`` -> (``vargrad``, ``guided_backprop``)."""
    prefix = next(p for p in LOOP_REDUCTIONS if name.startswith(p + "_"))
    return prefix, name[len(prefix) + 1 :]


def plain_loop(
    name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, seed: int, **params: Any
) -> torch.Tensor:
    """Independent reference: draws as NoiseDraws makes them (per sample, in order, from ctx.generator()),
    each noisy copy attributed alone by captum, reduced over the copies by a hand-written mean / square /
    variance (correction 0)."""
    prefix, base = split(name)
    k, stdevs = params["nt_samples"], params["stdevs"]
    generator = RunContext(device=CPU, seed=seed).generator()
    algorithm = BASES[base](model)
    keywords: dict[str, Any] = {"abs": False} if base == "gradient" else {}
    if base == "ig":
        keywords = {"n_steps": params["n_steps"], "method": "gausslegendre", "baselines": 0.0}
    out = []
    for sample, label in zip(x, target, strict=True):
        noise = torch.randn((k, *sample.shape), generator=generator)
        per_draw = [
            algorithm.attribute((sample + stdevs * noise[j]).unsqueeze(0).requires_grad_(), target=int(label),
                                **keywords).detach()[0]
            for j in range(k)
        ]
        out.append(LOOP_REDUCTIONS[prefix](torch.stack(per_draw)))
    return torch.stack(out)


def test_registered_names_and_hooker_defaults() -> None:
    assert NAMES == sorted([
        "sg_sq_gradient", "vargrad_gradient", "smoothgrad_ig", "sg_sq_ig", "vargrad_ig",
        "smoothgrad_guided_backprop", "sg_sq_guided_backprop", "vargrad_guided_backprop",
    ])
    for name in NAMES:
        defaults = dict(METHODS.get(name).defaults)
        ig = {"n_steps": 25, "method": "gausslegendre", "baseline": 0.0} if name.endswith("_ig") else {}
        assert defaults == {"nt_samples": 15, "stdevs": 0.15, "pixel_aggregation": "none", **ig}, name
        assert METHODS.get(name).description


def test_rows_route_every_parameter_and_costs() -> None:
    for method in ROAR_METHODS.values():
        assert set(method.call) | set(method.own_params) == set(method.defaults), method.name
    costs = {name: m.rows_per_sample(m.defaults, SHAPE) for name, m in ROAR_METHODS.items()}
    assert costs == {name: 15 * 25 if name.endswith("_ig") else 15 for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_matches_a_plain_captum_loop(name: str, cnn: nn.Module, x: torch.Tensor) -> None:
    params = cheap(name)
    want = plain_loop(name, cnn, x, TARGET, seed=11, **params)
    got = explainer(name, cnn, seed=11, batch_size=7, **params)(x, TARGET)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert float(got.abs().max()) > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch_size", [1, 7, 13, 40])
def test_rows_through_the_model_stay_within_the_budget_and_are_the_cost(
    name: str, batch_size: int, cnn: nn.Module, x: torch.Tensor
) -> None:
    """The sampler's k copies times IG's internal steps: no forward exceeds the budget, none is added."""
    params = cheap(name)
    rows: list[int] = []
    handle = cnn[0].register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        out = explainer(name, cnn, batch_size=batch_size, **params)(x, TARGET)
    finally:
        handle.remove()
    method = ROAR_METHODS[name]
    assert max(rows) <= batch_size
    assert sum(rows) == N * method.rows_per_sample({**method.defaults, **params}, SHAPE)
    want = explainer(name, cnn, batch_size=1000, **params)(x, TARGET)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_without_noise_reduces_to_the_base_method(name: str, cnn: nn.Module, x: torch.Tensor) -> None:
    """stdevs 0: every draw is x, so SmoothGrad = the base, SG-SQ = its square, VarGrad = 0."""
    prefix, base = split(name)
    params = {**cheap(name), "stdevs": 0.0}
    plain = {"gradient": ("saliency", {"abs": False}), "ig": ("integrated_gradients", {"n_steps": 5}),
             "guided_backprop": ("guided_backprop", {})}[base]
    single = explainer(plain[0], cnn, **plain[1])(x, TARGET)
    want = {"smoothgrad": single, "sg_sq": single**2, "vargrad": torch.zeros_like(single)}[prefix]
    torch.testing.assert_close(explainer(name, cnn, **params)(x, TARGET), want, rtol=1e-4, atol=1e-6)


@PROPERTIES
@given(seed=st.integers(0, 2**16), stdevs=st.floats(0.0, 2.0))
def test_squares_and_variances_are_non_negative(seed: int, stdevs: float) -> None:
    """SG-SQ >= VarGrad >= 0 (mean of squares = variance + squared mean); for a linear model (constant
    gradient w) VarGrad is 0 and SG-SQ is w^2 whatever the noise."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    x, target = torch.randn(2, 2, 4), torch.tensor([0, 2])
    params = {"nt_samples": 3, "stdevs": stdevs}
    sq = explainer("sg_sq_gradient", model, seed=seed, **params)(x, target)
    var = explainer("vargrad_gradient", model, seed=seed, **params)(x, target)
    assert float(var.min()) >= 0.0 and bool((sq >= var - 1e-6).all())
    torch.testing.assert_close(var, torch.zeros_like(var), rtol=0, atol=1e-6)
    weight = model[1].weight.detach()[target].reshape(2, 2, 4)
    torch.testing.assert_close(sq, weight**2)


def test_vargrad_is_of_the_signed_gradient() -> None:
    """logit 0 = |x| = relu(x) + relu(-x), so the gradient at a draw is its sign s in {-1, 1}: Hooker's
    VarGrad (signed) is 1 - mean(s)^2 > 0, SG-SQ is 1, while attribench's VarGrad of |grad| = 1 is 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]])), model[1].bias.zero_()
        model[3].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]])), model[3].bias.zero_()
    x, target, k = torch.zeros(1, 1, 1), torch.tensor([0]), 16
    signs = torch.randn((k, 1, 1), generator=RunContext(device=CPU, seed=3).generator()).sign()
    signed = explainer("vargrad_gradient", model, seed=3, nt_samples=k, stdevs=1.0)(x, target)
    torch.testing.assert_close(signed.flatten(), 1 - signs.mean().reshape(1) ** 2)
    assert float(signed) > 0.5
    sq = explainer("sg_sq_gradient", model, seed=3, nt_samples=k, stdevs=1.0)(x, target)
    torch.testing.assert_close(sq, torch.ones_like(sq))
    magnitude = explainer("vargrad", model, seed=3, nt_samples=k, stdevs=1.0)(x, target)
    torch.testing.assert_close(magnitude, torch.zeros_like(magnitude))


# ---- Sobel ------------------------------------------------------------------------------------------------


SCIPY_MODES = {"replicate": "nearest", "zeros": "constant"}


def scipy_sobel(x: torch.Tensor, padding: str) -> torch.Tensor:
    """Independent reference: per image and channel hypot of scipy.ndimage.sobel along H and W, summed over
    channels, broadcast back."""
    out = np.zeros(x.shape, dtype=np.float64)
    mode = SCIPY_MODES[padding]
    for i, image in enumerate(x.double().numpy()):
        out[i] = sum(np.hypot(ndimage.sobel(plane, 0, mode=mode), ndimage.sobel(plane, 1, mode=mode)) for plane in image)
    return torch.from_numpy(out).float()


@pytest.mark.parametrize("padding", ["replicate", "zeros"])
@pytest.mark.parametrize("shape", [(3, 9, 7), (1, 5, 5), (2, 3, 12)])
def test_sobel_matches_scipy(padding: str, shape: tuple[int, ...], cnn: nn.Module) -> None:
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2))
    got = explainer("sobel", cnn, batch_size=3, padding=padding)(x, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(got, scipy_sobel(x, padding), rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32 and got.shape == x.shape and not got.requires_grad


def test_sobel_of_a_vertical_step_edge_by_hand() -> None:
    """Columns 0, 1 are 0 and columns 2..4 are 1. Replicate padding: gx = (1 + 2 + 1) * (1 - 0) = 4 at columns
    1 and 2, 0 elsewhere, and gy = 0 (rows are constant), so the map is 4 on those columns. Zero padding adds
    the frame: the top-left pixel still sees only zeros (0), while the top-right one (value 1, zeros right of
    and above it) has gx = -(2 * 1 + 1 * 1) = -3 and gy = (1 + 2 * 1 + 0) - 0 = 3, so 3 sqrt 2."""
    x = torch.zeros(1, 1, 5, 5)
    x[..., 2:] = 1.0
    want = torch.zeros(5, 5)
    want[:, 1:3] = 4.0
    torch.testing.assert_close(sobel_magnitude(x)[0, 0], want)
    zeros = sobel_magnitude(x, "zeros")[0, 0]
    assert float(zeros[0, 0]) == 0.0
    torch.testing.assert_close(zeros[0, 4], torch.tensor(3.0 * 2**0.5))


def test_sobel_sums_channels_and_broadcasts() -> None:
    """Channels m, 2m and a constant (no edges) give 3 m on every channel."""
    single = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    x = torch.cat([single, 2 * single, torch.full_like(single, 5.0)], dim=1)
    got = sobel_magnitude(x)
    torch.testing.assert_close(got, (3 * sobel_magnitude(single)).expand(-1, 3, -1, -1))


@PROPERTIES
@given(seed=st.integers(0, 2**16), shift=st.floats(-5, 5), scale=st.floats(-4, 4))
def test_sobel_is_shift_invariant_and_scale_equivariant(seed: int, shift: float, scale: float) -> None:
    """Replicate padding: adding a constant changes nothing; scaling by a scales the map by |a|; non-negative,
    equal over a pixel's channels."""
    x = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(seed))
    base = sobel_magnitude(x)
    assert float(base.min()) >= 0 and bool((base == base[:, :1]).all())
    torch.testing.assert_close(sobel_magnitude(x + shift), base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sobel_magnitude(scale * x), abs(scale) * base, rtol=1e-4, atol=1e-4)


def test_sobel_is_independent_of_the_chunking_and_checks_its_inputs(cnn: nn.Module) -> None:
    x = torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    target = torch.zeros(9, dtype=torch.long)
    want = explainer("sobel", cnn, batch_size=1000)(x, target)
    torch.testing.assert_close(explainer("sobel", cnn, batch_size=2)(x, target), want)
    assert torch.equal(explainer("sobel", cnn)(x[:0], target[:0]), torch.zeros(0, 3, 8, 8))
    assert METHODS.get("sobel").modalities == frozenset({"image"})
    with pytest.raises(ParamError, match="'reflect'.*choices: 'replicate', 'zeros'"):
        explainer("sobel", cnn, padding="reflect")
    with pytest.raises(ValueError, match=r"needs images \(N, C, H, W\)"):
        explainer("sobel", cnn)(torch.zeros(2, 5), target[:2])
