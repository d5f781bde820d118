"""The MNIST CNN of the loss-gradient study (Subramanian et al., arXiv 2207.07769; §5 of the seed notes).

github VinodS7/investigate-gradients, ``src/train_mnist.py`` (class ``Net``, PyTorch's MNIST example):
Conv(C -> 32, 3x3) -> ReLU -> Conv(32 -> 64, 3x3) -> ReLU -> MaxPool 2 -> Dropout .25 -> Flatten ->
Linear(64 * 12 * 12 = 9216 for 28x28 inputs -> 128) -> ReLU -> Dropout .5 -> Linear(128 -> out).

* **Head** (``head``). ``"softmax"``: ``out`` = ``num_classes`` logits (the seed's log-softmax + NLL is the
  harness's cross-entropy on logits). ``"sigmoid"`` (the seed's one-unit binary model; needs
  ``num_classes == 2``): ``Linear(128, 1)`` gives z and :class:`SigmoidPair` returns the two logits (0, z).
  Then softmax(0, z)[1] = e^z / (1 + e^z) = sigmoid(z), so cross-entropy(0, z; y) = -log sigmoid(z) for
  y = 1 and -log(1 - sigmoid(z)) for y = 0: the seed's BCE of sigmoid(z), with the same gradients; argmax
  (ties to class 0) = (z > 0) = the seed's ``round(sigmoid(z))``. The model keeps the harness's contract
  (``num_classes`` logits) and every method and metric works unchanged.
* **Widths** (``channels``, ``hidden``): one 3x3 Conv -> ReLU per ``channels`` entry (the seed: [32, 64]),
  ``hidden`` units (128); smoke suites shrink them.
* **Any input size**: the flattened size is computed from ``input_shape``. Convolutions are unpadded (valid)
  as in the seed, except that an axis shorter than 3 px gets padding 1 there (its side is kept); the pool is
  left out when a side is below 2 px. 28x28 inputs never need either.

Every ReLU is its own module, nothing is in place (captum's DeepLift hooks each non-linearity), and the model
is an ``nn.Sequential`` whose last ``Conv2d`` is GradCAM's layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.specs import MODELS, ModelSpec, ParamError

HEADS = ("softmax", "sigmoid")
DROPOUT = (0.25, 0.5)
"""The seed's dropout rates: after the pool, and after the hidden layer."""


class SigmoidPair(nn.Module):
    """One logit z of shape (n, 1) -> the two-class logits (0, z) of shape (n, 2).

    softmax over (0, z) is (1 - sigmoid(z), sigmoid(z)), so cross-entropy on these logits equals
    ``binary_cross_entropy_with_logits(z, y)``: the seed's sigmoid head (arXiv 2207.07769) as two logits."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _features(
    in_channels: int, height: int, width: int, channels: Sequence[int]
) -> tuple[list[nn.Module], int]:
    """[Conv(3x3, valid; padding 1 on an axis under 3 px) -> ReLU] per entry, then MaxPool 2 (when both sides
    are >= 2 px); returns the layers and the flattened size of their output."""
    layers: list[nn.Module] = []
    for out in channels:
        pad = (int(height < 3), int(width < 3))
        layers += [nn.Conv2d(in_channels, int(out), kernel_size=3, padding=pad), nn.ReLU()]
        height, width, in_channels = height - 2 + 2 * pad[0], width - 2 + 2 * pad[1], int(out)
    if min(height, width) >= 2:
        layers.append(nn.MaxPool2d(2))
        height, width = height // 2, width // 2
    return layers, in_channels * height * width


def build_mnist_cnn(
    input_shape: tuple[int, ...], num_classes: int, *, channels: Sequence[int], hidden: int, head: str
) -> nn.Sequential:
    """The loss-gradient study's MNIST CNN (arXiv 2207.07769, ``train_mnist.py`` ``Net``) for ``input_shape``
    = (C, H, W), with ``num_classes`` logits (``head`` ``"sigmoid"``: the two logits (0, z), see the module
    docstring)."""
    where = "model mnist_cnn"
    if len(input_shape) != 3:
        raise ParamError(f"{where}: needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    if not channels or hidden < 1 or any(int(c) < 1 for c in channels):
        raise ParamError(f"{where}: widths must be positive and channels non-empty, got channels="
                         f"{list(channels)}, hidden={hidden}")
    if head not in HEADS:
        raise ParamError(f"{where}: head {head!r} is not valid; choices: {', '.join(map(repr, HEADS))}")
    if head == "sigmoid" and num_classes != 2:
        raise ParamError(f"{where}: head 'sigmoid' needs num_classes == 2 (one logit z, outputs (0, z)), got "
                         f"num_classes {num_classes}; use head 'softmax' or a 2-class data set "
                         "(e.g. mnist with classes [0, 1])")
    features, flat = _features(*input_shape, channels)
    out: list[nn.Module] = (
        [nn.Linear(hidden, num_classes)] if head == "softmax" else [nn.Linear(hidden, 1), SigmoidPair()]
    )
    return nn.Sequential(
        *features, nn.Dropout(DROPOUT[0]), nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
        nn.Dropout(DROPOUT[1]), *out,
    )


MODELS.add(
    "mnist_cnn",
    ModelSpec(
        name="mnist_cnn",
        build=build_mnist_cnn,
        modalities=frozenset({"image"}),
        traits=frozenset({"conv2d"}),
        defaults={"channels": [32, 64], "hidden": 128, "head": "softmax"},
        choices={"head": HEADS},
        description=(
            "Loss-gradient study's MNIST CNN (arXiv 2207.07769): per channels entry Conv2d(3x3, valid) -> "
            "ReLU, MaxPool2d(2) -> Dropout(0.25) -> Flatten -> Linear(hidden) -> ReLU -> Dropout(0.5) -> "
            "Linear. "
            "head softmax: num_classes logits; sigmoid (num_classes 2): Linear(hidden, 1) = z, logits (0, z) "
            "so softmax = sigmoid(z) and cross-entropy = the seed's BCE. Train with the seed's recipe: "
            "optimizer adadelta, lr 1.0, lr_gamma 0.7, 14 epochs, batch 64."
        ),
    ),
)
