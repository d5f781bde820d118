"""The torchvision backbones of ChaosMining and two CIFAR ResNets, all safe for captum's DeepLift.

ChaosMining (arXiv 2406.12150, §1.3 of the seed notes) trains torchvision alexnet, googlenet, densenet121,
resnet18, resnet50 and vgg13 with a ``Linear(1000, 10)`` head on top of the 1000-way output (its two Vision
Transformers, vit_b_16 and vit_l_32, are in :mod:`harness.models.vit` and share the surgery of :func:`assemble`
and the weight loading here). Here:

* **DeepLift safety.** captum's DeepLift hooks every non-linearity module, so each ReLU use must be its own
  non-inplace ``nn.ReLU`` instance. torchvision's ResNet blocks call one ``self.relu`` two or three times,
  GoogLeNet's ``BasicConv2d`` and DenseNet's last step call ``F.relu``, and every ReLU is ``inplace=True``.
  The models are therefore built from torchvision's own classes with small subclasses (one ReLU module per
  use) and every ``inplace`` flag cleared; parameter names, and so state dicts, are torchvision's. DeepLift's
  summation-to-delta then holds on the resnets, densenet121 and vgg13; on alexnet and googlenet DeepLift runs
  but is not exact: captum 0.9's MaxPool2d rule breaks it there (with average pooling instead it is exact).
* **Head** (``head``): ``"stack"`` (ChaosMining) adds ``Linear(1000, num_classes)`` after the 1000-way output;
  ``"replace"`` swaps the backbone's last ``Linear`` for one with ``num_classes`` outputs.
* **Input channels.** Inputs with C != 3 channels get a first convolution with C input channels whose weights
  come from the (random or pretrained) 3-channel one by timm's ``adapt_input_conv`` rule (C = 1: the sum over
  RGB, exactly the 3-channel net applied to the grey image repeated; otherwise RGB tiled, scaled by 3 / C).
* **Small inputs** (``small_input``). alexnet needs sides >= 63 px, vgg13 >= 32, densenet121 >= 29, googlenet
  >= 15 (resnets take any size). ``"resize"`` puts a bilinear upsampling of smaller sides to that minimum in
  front of the network; ``"error"`` raises at build time naming the minimum.
* **Weights** (``pretrained``): a path to a torchvision state dict of the 1000-way backbone (for example
  ``torch.save(torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict(), path)`` on a machine with
  network), loaded with ``torch.load(weights_only=True)`` before any change above. Nothing is downloaded.

``resnet8`` and ``resnet20`` are the CIFAR ResNets of He et al. 2016 (§4.2): a 3x3 stem, three stages of
basic blocks (n = 1 and 3) at strides 1, 2, 2, projection shortcuts (1x1 conv + BN, option B) where the shape
changes, global average pooling and a linear layer; any input size works. Their ``pretrained`` file is a
state dict of the whole model built for the same input channels and classes.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models as tvm
from torchvision.models.densenet import DenseNet
from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception, InceptionAux
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from harness.specs import MODELS, ModelSpec, ParamError

# ---- DeepLift-safe torchvision building blocks ---------------------------------------------------------


class _BasicBlock(BasicBlock):
    """torchvision's BasicBlock with a second ReLU module for the ReLU after the residual sum."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + identity)


class _Bottleneck(Bottleneck):
    """torchvision's Bottleneck with one ReLU module for each of its three ReLUs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.relu2, self.relu_out = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu_out(self.bn3(self.conv3(out)) + identity)


class _BasicConv2d(BasicConv2d):
    """GoogLeNet's conv -> BN -> ReLU with the ReLU as a module instead of ``F.relu(inplace=True)``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class _DenseNet(DenseNet):
    """torchvision's DenseNet with its final ``F.relu`` as a module."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.relu_out(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


TORCHVISION: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "alexnet": (tvm.alexnet, 63),
    "densenet121": (partial(_DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64), 29),
    "googlenet": (
        partial(GoogLeNet, aux_logits=False, transform_input=False, init_weights=True,
                blocks=[_BasicConv2d, Inception, InceptionAux]),
        15,
    ),
    "resnet18": (partial(ResNet, _BasicBlock, [2, 2, 2, 2]), 1),
    "resnet50": (partial(ResNet, _Bottleneck, [3, 4, 6, 3]), 1),
    "vgg13": (tvm.vgg13, 32),
    "vgg16": (tvm.vgg16, 32),
}
"""Name -> (factory of the 1000-way torchvision network, smallest input side it runs at)."""


# ---- surgery shared by the torchvision backbones ------------------------------------------------------


class UpsampleToMin(nn.Module):
    """Bilinear upsampling of any input side below ``min_size`` to ``min_size`` (larger inputs pass as they are)."""

    def __init__(self, min_size: int) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if min(height, width) >= self.min_size:
            return x
        size = (max(height, self.min_size), max(width, self.min_size))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def clear_inplace(model: nn.Module) -> None:
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False


def replace_module(
    model: nn.Module, kind: type[nn.Module], make: Callable[[nn.Module], nn.Module], last: bool
) -> None:
    """Swap the first (or ``last``) submodule of type ``kind`` for ``make(old)``."""
    names = [name for name, module in model.named_modules() if isinstance(module, kind)]
    parent_name, _, child = names[-1 if last else 0].rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, child, make(getattr(parent, child)))


def adapt_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """timm's ``adapt_input_conv``: 3-channel conv weights for ``channels`` inputs (sum for 1; tiled and
    scaled by 3 / channels otherwise, so a constant image gives the same response)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(channels / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def input_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``channels`` inputs, its weights adapted by :func:`adapt_weight`."""
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(adapt_weight(conv.weight, channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def weights_file(path: str, name: str) -> Path:
    """The existing file ``path`` names, or a FileNotFoundError saying what to put there; never downloads."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"model {name}: pretrained weights file {str(file)!r} does not exist. Put a state dict of {name} "
            f"there; for the torchvision backbones, on a machine with network: torch.save(torchvision.models."
            f"{name}(weights='DEFAULT').state_dict(), {str(file)!r}). Nothing is downloaded at run time; "
            "pretrained='' builds randomly initialised weights."
        )
    return file


StateDict = dict[str, torch.Tensor]


def load_pretrained(
    model: nn.Module, file: Path, name: str, adapt: Callable[[StateDict], StateDict] | None = None
) -> None:
    """Load the state dict in ``file`` into ``model`` (strict, ``weights_only``), first passed through ``adapt``
    if given (which may raise KeyError, ValueError or TypeError on a foreign state dict)."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(adapt(state) if adapt is not None else state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise ParamError(f"model {name}: {str(file)!r} is not a state dict of this model: {err}") from err


def check_image_shape(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ParamError(f"model {name}: needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")


def build_torchvision(
    input_shape: tuple[int, ...], num_classes: int, *, name: str, pretrained: str, head: str, small_input: str,
) -> nn.Sequential:
    """``[UpsampleToMin] -> backbone -> [Linear(1000, num_classes)]``; see the module docstring."""
    check_image_shape(name, input_shape)
    factory, min_size = TORCHVISION[name]
    channels, height, width = input_shape
    if min(height, width) < min_size and small_input == "error":
        raise ParamError(
            f"model {name}: input {height}x{width} is below its minimum side of {min_size} px; use inputs of "
            f"at least {min_size}x{min_size} or small_input='resize'"
        )
    file = weights_file(pretrained, name) if pretrained else None
    backbone = factory()
    if file is not None:
        load_pretrained(backbone, file, name)
    resize = UpsampleToMin(min_size) if min(height, width) < min_size else None
    return assemble(backbone, channels, num_classes, head=head, resize=resize)


def assemble(
    backbone: nn.Module, channels: int, num_classes: int, *, head: str, resize: nn.Module | None
) -> nn.Sequential:
    """``[resize] -> backbone -> [Linear(1000, num_classes)]`` after the surgery every torchvision backbone gets:
    in-place flags cleared, the first ``nn.Conv2d`` adapted to ``channels`` inputs, the head (module docstring)."""
    clear_inplace(backbone)
    if channels != 3:
        replace_module(backbone, nn.Conv2d, lambda conv: input_conv(conv, channels), last=False)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if resize is not None:
        layers["resize"] = resize
    if head == "replace":
        replace_module(backbone, nn.Linear, lambda fc: nn.Linear(fc.in_features, num_classes), last=True)
    layers["backbone"] = backbone
    if head == "stack":
        layers["head"] = nn.Linear(1000, num_classes)
    return nn.Sequential(layers)


# ---- CIFAR ResNets (He et al. 2016, §4.2) --------------------------------------------------------------


class CifarBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, -> ReLU (each ReLU its own module)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3 -> BN -> ReLU, ``blocks`` CifarBlocks per width (strides 1, 2, 2), global mean, Linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        previous = widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(CifarBlock(previous, width, stride))
                previous = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


CIFAR: dict[str, tuple[tuple[int, ...], int]] = {"resnet8": ((64, 128, 256), 1), "resnet20": ((16, 32, 64), 3)}
"""Name -> (stage widths, blocks per stage): 6 * blocks + 2 weighted layers."""


def build_cifar_resnet(input_shape: tuple[int, ...], num_classes: int, *, name: str, pretrained: str) -> CifarResNet:
    check_image_shape(name, input_shape)
    file = weights_file(pretrained, name) if pretrained else None
    widths, blocks = CIFAR[name]
    model = CifarResNet(input_shape[0], num_classes, widths, blocks)
    if file is not None:
        load_pretrained(model, file, name)
    return model


# ---- registration ---------------------------------------------------------------------------------------


_NO_VIT_RULE = (
    "GELU is not among captum 0.9's DeepLift non-linearities, and the softmax and query-key products of "
    "nn.MultiheadAttention are functional calls DeepLift cannot hook, so all get plain gradients"
)
INEXACT_DEEPLIFT: dict[str, str] = {
    "alexnet": "captum 0.9's MaxPool2d rule breaks summation-to-delta",
    "googlenet": "captum 0.9's MaxPool2d rule breaks summation-to-delta",
    "vit_b_16": _NO_VIT_RULE,
    "vit_l_32": _NO_VIT_RULE,
}
"""Backbones on which DeepLift runs but summation-to-delta fails (checked in float64) -> why."""


def deeplift_caveat(name: str) -> str:
    """The sentence a model description ends with when DeepLift is inexact on it, else ""."""
    return f" DeepLift runs but is inexact here ({INEXACT_DEEPLIFT[name]})." if name in INEXACT_DEEPLIFT else ""


def _register_torchvision(name: str) -> None:
    min_size = TORCHVISION[name][1]
    MODELS.add(name, ModelSpec(
        name=name,
        build=partial(build_torchvision, name=name),
        modalities=frozenset({"image"}),
        traits=frozenset({"conv2d"}),
        defaults={"pretrained": "", "head": "stack", "small_input": "resize"},
        choices={"head": ("stack", "replace"), "small_input": ("resize", "error")},
        description=(
            f"torchvision {name} as in ChaosMining (arXiv 2406.12150), DeepLift-safe (one non-inplace ReLU "
            "module per use, torchvision parameter names); head 'stack' = Linear(1000, num_classes) on the "
            "1000-way output (the paper), 'replace' = new last Linear; C != 3 input channels adapt the first "
            f"conv (timm rule); minimum input side {min_size} px (small_input 'resize' upsamples smaller inputs, "
            "'error' refuses them); pretrained = path to a cached torchvision state dict (never downloaded)."
            + deeplift_caveat(name)
        ),
    ))


def _register_cifar(name: str) -> None:
    widths, blocks = CIFAR[name]
    MODELS.add(name, ModelSpec(
        name=name,
        build=partial(build_cifar_resnet, name=name),
        modalities=frozenset({"image"}),
        traits=frozenset({"conv2d"}),
        defaults={"pretrained": ""},
        description=(
            f"CIFAR ResNet-{6 * blocks + 2} (He et al. 2016, §4.2): 3x3 stem, {blocks} basic block(s) per stage "
            f"at widths {'/'.join(map(str, widths))} and strides 1/2/2, 1x1-conv projection shortcuts, global "
            "average pooling, Linear; any input size; DeepLift-safe; pretrained = path to a state dict of the "
            "whole model (never downloaded)."
        ),
    ))


for _name in TORCHVISION:
    _register_torchvision(_name)
for _name in CIFAR:
    _register_cifar(_name)
