"""A small convolutional network for small images (8x8 up to 64x64), in the spirit of attribench's MNIST CNN.

attribench (Gevaert et al. 2024) trains a small CNN on MNIST/FashionMNIST. Every ReLU is its own module
instance and nothing is in place, as captum's DeepLift requires; MaxPool2d has its own DeepLift rule.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from harness.specs import MODELS, ModelSpec, ParamError


def _conv_blocks(in_channels: int, height: int, width: int, channels: Sequence[int]) -> tuple[list[nn.Module], int]:
    """Conv(3x3, same) -> ReLU -> MaxPool(2) per entry; pooling stops once it would shrink a side below 1."""
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(in_channels, int(out), kernel_size=3, padding=1), nn.ReLU()]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = int(out)
    return layers, in_channels * height * width


def build_small_cnn(
    input_shape: tuple[int, ...], num_classes: int, *, channels: Sequence[int], hidden: int
) -> nn.Sequential:
    """[Conv -> ReLU -> MaxPool] per ``channels`` -> Flatten -> Linear(hidden) -> ReLU -> Linear(num_classes)."""
    if len(input_shape) != 3:
        raise ParamError(f"model small_cnn: needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    if hidden < 1 or any(int(c) < 1 for c in channels):
        raise ParamError(f"model small_cnn: widths must be positive, got channels={channels}, hidden={hidden}")
    blocks, flat = _conv_blocks(*input_shape, channels)
    return nn.Sequential(
        *blocks, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


MODELS.add(
    "small_cnn",
    ModelSpec(
        name="small_cnn",
        build=build_small_cnn,
        modalities=frozenset({"image"}),
        traits=frozenset({"conv2d"}),
        defaults={"channels": [16, 32], "hidden": 64},
        description=(
            "Small CNN: per channels entry Conv2d(3x3, padding 1) -> ReLU -> MaxPool2d(2) (pooling stops at "
            "1 pixel), then Flatten -> Linear(hidden) -> ReLU -> Linear(num_classes)."
        ),
    ),
)
