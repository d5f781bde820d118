"""The singing-voice detection CNN of the loss-gradient study (Subramanian et al., arXiv 2207.07769; the seed's
``src/model.py``, ``CNNModel(model_type='CNN')``, after Schlüter & Grill, ISMIR 2015).

The seed, for (N, 1, 115 frames, 80 bands) excerpts: Conv(64, 3x3) -> Conv(32, 3x3) -> MaxPool(3) ->
Conv(128, 3x3) -> Conv(64, 3x3) -> MaxPool(3) -> Flatten (64 x 11 x 7) -> Dropout -> FC 256 -> Dropout ->
FC 64 -> Dropout -> FC 1 -> sigmoid, with leaky ReLU (slope 0.01, PyTorch's default) after every conv and
FC but the last, unpadded convolutions, dropout p = 0.5 (``nn.Dropout()``) before each of the three FCs,
orthogonal weights and zero biases, trained with BCE. Here every activation is its own module and nothing is
in place (captum's DeepLift hooks each non-linearity; ``LeakyReLU`` and ``MaxPool2d`` have DeepLift rules).

Output: this project's classifiers return class logits. The seed's sigmoid unit z becomes the two logits
(0, z) (:class:`~harness.models.mnist_cnn.SigmoidPair`, shared with the study's MNIST CNN):
softmax((0, z))[1] = sigmoid(z), cross-entropy on (0, z) equals BCE on sigmoid(z) exactly, and argmax /
captum targets work unchanged; the input gradient of the class-1 logit is that of z. ``head``: ``auto``
(default) is this sigmoid head for 2 classes and a plain ``Linear(64, num_classes)`` otherwise; ``sigmoid``
insists on 2 classes; ``softmax`` is the seed's ``CNNTwoClass`` (two free logits) for 2 classes.

Inputs smaller than 25 along a side (the least that two valid 3x3 convs, a 3x pool, two more convs and
another 3x pool leave at least 1 of) are zero-padded symmetrically up to 25 first; at the seed's 115 x 80
nothing is padded. ``channels`` (4 conv widths) and ``hidden`` (2 FC widths) scale the model; tests use a
tiny one.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from harness.models.mnist_cnn import SigmoidPair
from harness.specs import MODELS, ModelSpec, ParamError

HEADS = ("auto", "sigmoid", "softmax")
MIN_SIDE = 25
"""Smallest side the conv stack takes: 25 -> 21 -> 7 -> 3 -> 1."""


def _side(size: int) -> int:
    """Length of one side after conv, conv, pool 3, conv, conv, pool 3 (valid convolutions)."""
    return ((size - 4) // 3 - 4) // 3


def _orthogonal(model: nn.Module) -> None:
    """The seed's initialisation: orthogonal weights, zero biases, for every conv and linear layer."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_spectrogram_cnn(
    input_shape: tuple[int, ...], num_classes: int, *, channels: Sequence[int], hidden: Sequence[int],
    dropout: float, head: str,
) -> nn.Sequential:
    """The seed's CNN for (C, H, W) inputs (see the module docstring)."""
    where = "model spectrogram_cnn"
    if len(input_shape) != 3:
        raise ParamError(f"{where}: needs (C, H, W) inputs, e.g. (1, 115, 80); got input_shape "
                         f"{tuple(input_shape)}")
    if len(channels) != 4 or len(hidden) != 2 or min([*channels, *hidden]) < 1:
        raise ParamError(f"{where}: channels needs 4 positive conv widths and hidden 2 positive FC widths; "
                         f"got channels={list(channels)}, hidden={list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ParamError(f"{where}: dropout = {dropout} must be in [0, 1)")
    if head not in HEADS:
        raise ParamError(f"{where}: parameter 'head' = {head!r} is not valid; choices: "
                         + ", ".join(repr(h) for h in HEADS))
    if head == "sigmoid" and num_classes != 2:
        raise ParamError(f"{where}: head 'sigmoid' needs 2 classes, got num_classes={num_classes}; use head "
                         "'auto' or 'softmax'")
    in_ch, height, width = input_shape
    layers: list[nn.Module] = []
    if min(height, width) < MIN_SIDE:
        pad_h, pad_w = max(0, MIN_SIDE - height), max(0, MIN_SIDE - width)
        layers.append(nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))
        height, width = max(height, MIN_SIDE), max(width, MIN_SIDE)
    c1, c2, c3, c4 = (int(c) for c in channels)
    layers += [
        nn.Conv2d(in_ch, c1, 3), nn.LeakyReLU(0.01), nn.Conv2d(c1, c2, 3), nn.LeakyReLU(0.01),
        nn.MaxPool2d(3),
        nn.Conv2d(c2, c3, 3), nn.LeakyReLU(0.01), nn.Conv2d(c3, c4, 3), nn.LeakyReLU(0.01),
        nn.MaxPool2d(3),
        nn.Flatten(),
    ]
    h1, h2 = (int(h) for h in hidden)
    layers += [
        nn.Dropout(dropout), nn.Linear(c4 * _side(height) * _side(width), h1), nn.LeakyReLU(0.01),
        nn.Dropout(dropout), nn.Linear(h1, h2), nn.LeakyReLU(0.01), nn.Dropout(dropout),
    ]
    binary = num_classes == 2 and head in ("auto", "sigmoid")
    layers += [nn.Linear(h2, 1), SigmoidPair()] if binary else [nn.Linear(h2, num_classes)]
    model = nn.Sequential(*layers)
    _orthogonal(model)
    return model


MODELS.add(
    "spectrogram_cnn",
    ModelSpec(
        name="spectrogram_cnn",
        build=build_spectrogram_cnn,
        modalities=frozenset({"image"}),
        traits=frozenset({"conv2d"}),
        defaults={"channels": [64, 32, 128, 64], "hidden": [256, 64], "dropout": 0.5, "head": "auto"},
        choices={"head": HEADS},
        description=(
            "Singing-voice CNN of arXiv 2207.07769 (Schlüter & Grill 2015): Conv 64, Conv 32 (3x3, valid), "
            "MaxPool 3, Conv 128, Conv 64, MaxPool 3, Dropout-FC 256, Dropout-FC 64, Dropout-FC 1, leaky "
            "ReLU 0.01 after all but the last, orthogonal init; the sigmoid unit z is returned as the 2 "
            "logits (0, z) (softmax = sigmoid, cross-entropy = BCE). head auto/sigmoid/softmax; inputs below "
            "25 per side are zero-padded to 25."
        ),
    ),
)
