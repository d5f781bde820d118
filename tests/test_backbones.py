"""The ChaosMining torchvision backbones and the CIFAR ResNets: shapes, sizes, weights, DeepLift."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from captum.attr import DeepLift
from torch import nn

import harness.models  # noqa: F401  (registers the models)
from harness.models.backbones import CIFAR, TORCHVISION, UpsampleToMin, adapt_weight
from harness.models.training import build_model
from harness.specs import MODELS, ParamError

NAMES = sorted([*TORCHVISION, *CIFAR])
SHAPES = [(3, 32, 32), (3, 64, 64), (1, 32, 32)]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
]


def build(name: str, shape: tuple[int, ...], classes: int = 10, seed: int = 0, **params: object) -> nn.Module:
    return build_model(MODELS.get(name), params, shape, classes, seed).eval()


def relu_calls(model: nn.Module, x: torch.Tensor) -> list[int]:
    """How often each registered ReLU module runs in one forward pass."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    counts = [0] * len(relus)
    handles = [m.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, m in enumerate(relus)]
    with torch.inference_mode():
        model(x)
    for handle in handles:
        handle.remove()
    return counts


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_maps_to_class_logits(name: str, shape: tuple[int, ...]) -> None:
    model = build(name, shape, classes=7)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    calls = relu_calls(model, x)
    assert calls and set(calls) == {1}, "every ReLU module runs exactly once (one module per use)"
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    below_min = name in TORCHVISION and min(shape[1:]) < TORCHVISION[name][1]
    assert isinstance(getattr(model, "resize", None), UpsampleToMin) == below_min


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_minimum_input_side_is_exact(name: str) -> None:
    """The table's minimum runs and one pixel less does not (shape inference only, on the meta device)."""
    factory, min_size = TORCHVISION[name]
    with torch.device("meta"):
        model = factory().eval()
        assert model(torch.zeros(1, 3, min_size, min_size)).shape == (1, 1000)
        if min_size > 1:
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 3, min_size - 1, min_size - 1))
    if min_size > 1:
        with pytest.raises(ParamError, match=f"minimum side of {min_size} px"):
            build(name, (3, min_size - 1, min_size), small_input="error")


def test_alexnet_runs_natively_at_64_px() -> None:
    model = build("alexnet", (3, 64, 64), small_input="error")
    assert not hasattr(model, "resize") and model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_heads() -> None:
    stacked = build("resnet18", (3, 16, 16), classes=4)
    assert stacked.backbone.fc.out_features == 1000 and stacked.head.in_features == 1000
    assert stacked.head.out_features == 4
    replaced = build("resnet18", (3, 16, 16), classes=4, head="replace")
    assert not hasattr(replaced, "head") and replaced.backbone.fc.out_features == 4


def test_one_channel_equals_the_rgb_net_on_repeated_grey(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pt"
    torch.save(build("resnet18", (3, 32, 32), seed=1).backbone.state_dict(), weights)
    rgb, grey = (build("resnet18", (c, 32, 32), pretrained=str(weights)).backbone for c in (3, 1))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)
    two = adapt_weight(torch.ones(4, 3, 1, 1), 2)
    assert two.shape == (4, 2, 1, 1) and torch.allclose(two.sum(1), torch.full((4, 1), 3.0))


@pytest.mark.parametrize("name", NAMES)
def test_missing_pretrained_file_is_a_clear_error(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist.*Nothing is downloaded"):
        build(name, (3, 32, 32), pretrained=str(missing))


@pytest.mark.parametrize(("name", "part"), [("resnet18", "backbone"), ("resnet8", "")])
def test_pretrained_state_dict_loads(name: str, part: str, tmp_path: Path) -> None:
    source = build(name, (3, 16, 16), classes=5, seed=1).get_submodule(part)
    weights = tmp_path / "weights.pt"
    torch.save(source.state_dict(), weights)
    loaded = build(name, (3, 16, 16), classes=5, seed=2, pretrained=str(weights)).get_submodule(part)
    expected = source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    torch.save({"not": torch.zeros(1)}, weights)
    with pytest.raises(ParamError, match="not a state dict"):
        build(name, (3, 16, 16), classes=5, pretrained=str(weights))


def test_build_leaves_the_global_seed_alone() -> None:
    seed = torch.initial_seed()
    MODELS.get("resnet8").build((3, 8, 8), 10, pretrained="")
    assert torch.initial_seed() == seed


@pytest.mark.parametrize(
    ("name", "shape"),
    [("resnet8", (3, 16, 16)), ("resnet20", (1, 16, 16)), ("resnet18", (3, 32, 32)), ("densenet121", (3, 32, 32))],
)
def test_deeplift_sums_to_the_output_difference(name: str, shape: tuple[int, ...]) -> None:
    """DeepLIFT's summation-to-delta (Shrikumar et al. 2017) holds: every non-linearity is its own module."""
    model = build(name, shape, classes=5, seed=1).double()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 3])
    attr = DeepLift(model).attribute(x, baselines=0.0, target=target)
    with torch.inference_mode():
        diff = (model(x) - model(torch.zeros_like(x)))[torch.arange(2), target]
    assert torch.allclose(attr.flatten(1).sum(1), diff, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(set(TORCHVISION) - {"resnet18", "densenet121"}))
def test_deeplift_runs_on_the_torchvision_backbones(name: str) -> None:
    shape = (3, 32, 32)
    model = build(name, shape, classes=5)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    attr = DeepLift(model).attribute(x, baselines=0.0, target=torch.tensor([1, 2]))
    assert attr.shape == x.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0
