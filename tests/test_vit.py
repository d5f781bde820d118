"""ChaosMining's ViTs (vit_b_16, vit_l_32): shapes, resizing, heads, torchvision state dicts, errors, DeepLift.

Real builds use small ``image_size`` (vit_b_16: 86M parameters, about 1 s; vit_l_32: 306M, about 4 s, built
once); full-size checks run on the meta device.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from captum.attr import DeepLift
from torch import nn
from torch.nn import functional as F
from torchvision import models as tvm

import harness.models  # noqa: F401  (registers the models)
from harness.models.backbones import INEXACT_DEEPLIFT
from harness.models.training import build_model
from harness.models.vit import VIT, ResizeTo
from harness.specs import MODELS, ParamError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
]
TORCHVISION_BUILDERS = {"vit_b_16": tvm.vit_b_16, "vit_l_32": tvm.vit_l_32}


def build(name: str, shape: tuple[int, ...], classes: int = 10, seed: int = 0, **params: object) -> nn.Module:
    return build_model(MODELS.get(name), params, shape, classes, seed).eval()


def torchvision_vit_b_16(seed: int, image_size: int) -> nn.Module:
    """torchvision's own vit_b_16, its zero-initialised ``heads.head`` drawn at random so outputs vary."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tvm.vit_b_16(weights=None, image_size=image_size).eval()
        nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def sample(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("name", "image_size", "shape"),
    [
        ("vit_b_16", 32, (3, 32, 32)),  # native: 2x2 patches
        ("vit_b_16", 32, (1, 32, 32)),  # one channel
        ("vit_b_16", 32, (3, 48, 40)),  # resized down, non-square
        ("vit_b_16", 48, (2, 20, 20)),  # resized up, two channels
        ("vit_l_32", 32, (1, 64, 64)),  # the one real vit_l_32 build: resized down, one channel
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_builds_and_maps_to_class_logits(name: str, image_size: int, shape: tuple[int, ...]) -> None:
    model = build(name, shape, classes=7, head="replace", image_size=image_size)
    x = sample(3, *shape)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1]), "the logits depend on the input"
    needs_resize = shape[1:] != (image_size, image_size)
    assert isinstance(getattr(model, "resize", None), ResizeTo) == needs_resize
    assert model.backbone.conv_proj.in_channels == shape[0]
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_resize_to_is_an_exact_bilinear_resize() -> None:
    resize = ResizeTo(8)
    x = sample(2, 3, 8, 8)
    assert resize(x) is x
    for side in ((4, 4), (16, 12), (8, 5)):
        y = sample(2, 3, *side)
        expected = F.interpolate(y, size=(8, 8), mode="bilinear", align_corners=False)
        assert resize(y).shape == (2, 3, 8, 8) and torch.equal(resize(y), expected)
    constant = torch.full((1, 1, 5, 3), 0.25)
    assert torch.allclose(resize(constant), torch.full((1, 1, 8, 8), 0.25))


def test_heads_stack_and_replace_hit_heads_head() -> None:
    stacked = build("vit_b_16", (3, 32, 32), classes=4, image_size=32)
    assert stacked.backbone.heads.head.out_features == 1000 and stacked.head.in_features == 1000
    assert stacked.head.out_features == 4
    replaced = build("vit_b_16", (3, 32, 32), classes=4, image_size=32, head="replace")
    assert not hasattr(replaced, "head")
    assert (replaced.backbone.heads.head.in_features, replaced.backbone.heads.head.out_features) == (768, 4)
    # every other Linear (attention out_proj, MLP) keeps its torchvision shape
    others = {k: v.shape for k, v in replaced.backbone.state_dict().items() if not k.startswith("heads.")}
    assert others == {k: v.shape for k, v in stacked.backbone.state_dict().items() if not k.startswith("heads.")}


@pytest.mark.parametrize("name", sorted(VIT))
def test_state_dict_is_torchvisions(name: str) -> None:
    """Keys and shapes equal torchvision's own builder's, at 224 and at a small image_size (meta device)."""
    patch = VIT[name].patch_size
    for image_size in (224, 2 * patch):
        with torch.device("meta"):
            ours = build(name, (3, image_size, image_size), head="stack", image_size=image_size).backbone
            reference = TORCHVISION_BUILDERS[name](weights=None, image_size=image_size)
        expected = {k: v.shape for k, v in reference.state_dict().items()}
        assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    names = [n for n, m in ours.named_modules() if isinstance(m, nn.Linear)]
    assert names[-1] == "heads.head", "head='replace' swaps the last Linear in module order"


def test_pretrained_round_trip(tmp_path: Path) -> None:
    """A torchvision-built vit_b_16's state dict loads through ``pretrained``; outputs are torchvision's."""
    source = torchvision_vit_b_16(seed=3, image_size=32)
    weights = tmp_path / "vit_b_16.pt"
    torch.save(source.state_dict(), weights)
    loaded = build("vit_b_16", (3, 32, 32), classes=5, image_size=32, pretrained=str(weights))
    expected = source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.backbone.state_dict().items())
    x = sample(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded.backbone(x), source(x), atol=1e-6, rtol=1e-5)
    torch.save({"not": torch.zeros(1)}, weights)
    with pytest.raises(ParamError, match="not a state dict"):
        build("vit_b_16", (3, 32, 32), image_size=32, pretrained=str(weights))


def test_pretrained_at_224_is_interpolated_to_image_size(tmp_path: Path) -> None:
    """A 224-px state dict (14x14 patch grid) loads at image_size 32 (2x2): torchvision's bicubic
    ``align_corners=True`` interpolation keeps the class token's entry and maps the grid's corners to the
    new grid's; every other parameter loads unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        state = tvm.vit_b_16(weights=None).state_dict()
    weights = tmp_path / "vit_b_16_224.pt"
    torch.save(state, weights)
    loaded = build("vit_b_16", (3, 32, 32), image_size=32, pretrained=str(weights)).backbone.state_dict()
    old = state["encoder.pos_embedding"]
    new = loaded["encoder.pos_embedding"]
    assert old.shape == (1, 1 + 14 * 14, 768) and new.shape == (1, 1 + 2 * 2, 768)
    assert torch.equal(new[:, 0], old[:, 0])
    grid = old[0, 1:].reshape(14, 14, 768)
    corners = torch.stack([grid[0, 0], grid[0, 13], grid[13, 0], grid[13, 13]])
    assert torch.allclose(new[0, 1:], corners, atol=1e-6)
    assert all(torch.equal(value, state[key]) for key, value in loaded.items() if key != "encoder.pos_embedding")


def test_one_channel_equals_the_rgb_net_on_repeated_grey(tmp_path: Path) -> None:
    weights = tmp_path / "vit.pt"
    torch.save(torchvision_vit_b_16(seed=1, image_size=32).state_dict(), weights)
    rgb, grey = (build("vit_b_16", (c, 32, 32), image_size=32, pretrained=str(weights)).backbone for c in (3, 1))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(VIT))
def test_missing_pretrained_file_is_a_clear_error(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist.*Nothing is downloaded"):
        build(name, (3, 32, 32), image_size=32, pretrained=str(missing))


@pytest.mark.parametrize(("name", "image_size"), [("vit_b_16", 30), ("vit_b_16", 0), ("vit_l_32", 48)])
def test_image_size_must_be_a_multiple_of_the_patch_size(name: str, image_size: int) -> None:
    patch = VIT[name].patch_size
    with pytest.raises(ParamError, match=f"'image_size' = {image_size} .*multiple of the patch size {patch}"):
        build(name, (3, 32, 32), image_size=image_size)


@pytest.mark.parametrize(
    ("shape", "hint"),
    [((3, 32, 48), "use 224x224 inputs, or small_input='resize'"),
     ((1, 64, 64), "use 224x224 inputs, image_size=64, or small_input='resize'")],
)
def test_small_input_error_names_the_size_needed(shape: tuple[int, ...], hint: str) -> None:
    side = "x".join(map(str, shape[1:]))
    with pytest.raises(ParamError, match=f"input {side} is not the 224x224 it needs.*{hint}"):
        build("vit_l_32", shape, small_input="error")


def test_small_input_error_accepts_the_exact_size() -> None:
    model = build("vit_b_16", (3, 32, 32), image_size=32, small_input="error")
    assert not hasattr(model, "resize") and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_same_seed_same_weights() -> None:
    first, again, other = (build("vit_b_16", (3, 32, 32), seed=s, image_size=32).state_dict() for s in (7, 7, 8))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["backbone.conv_proj.weight"], other["backbone.conv_proj.weight"])


def test_deeplift_runs_but_is_inexact() -> None:
    """Why the ViTs are in INEXACT_DEEPLIFT: summation-to-delta fails (float64), although DeepLift runs."""
    model = build("vit_b_16", (3, 32, 32), classes=5, seed=1, image_size=32, head="replace").double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 3])
    attr = DeepLift(model).attribute(x, baselines=0.0, target=target)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0
    with torch.inference_mode():
        diff = (model(x) - model(torch.zeros_like(x)))[torch.arange(2), target]
    assert not torch.allclose(attr.flatten(1).sum(1), diff, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(VIT))
def test_spec_traits_and_caveat(name: str) -> None:
    spec = MODELS.get(name)
    assert "conv2d" not in spec.traits, "GradCAM-style cases need a conv net"
    assert spec.defaults["image_size"] == 224 and name in INEXACT_DEEPLIFT
    assert "GELU" in spec.description and "MaxPool2d" not in spec.description
    assert "MaxPool2d" in MODELS.get("alexnet").description


def test_unknown_small_input_names_the_choices() -> None:
    with pytest.raises(ParamError, match="'small_input' = 'crop' is not valid; choices: 'resize', 'error'"):
        build("vit_b_16", (3, 32, 32), image_size=32, small_input="crop")
