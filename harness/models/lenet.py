"""LeNet-5, the small model of DeepImportance's experiments (Gerasimou et al., ICSE 2020; seed-systems.md §3.3).

The seed's port (github JoshuaQSH/Wisdom, ``models_info/train_from_scratch/models/lenet.py``, after LeCun et
al. 1998) for 32x32 inputs (MNIST resized to 32, CIFAR-10): Conv(C -> 6, 5x5) -> ReLU -> MaxPool 2 ->
Conv(6 -> 16, 5x5) -> ReLU -> MaxPool 2 -> Flatten -> Linear(16 * 5 * 5 -> 120) -> ReLU -> Linear(120 -> 84)
-> ReLU -> Linear(84 -> classes).

* **Names** follow the seed's attributes (``conv1``, ``conv2``, ``fc1``, ``fc2``, ``fc3``), so the coverage
  layers (:func:`harness.coverage.base.coverage_layers`: conv1, conv2, fc1, fc2) read as in the seed's logs.
* **Widths** (``channels``, ``hidden``): the seed's [6, 16] and [120, 84]; smoke suites may shrink them.
* **Any input size**: the flattened size is computed from ``input_shape`` (28x28 gives 16 * 4 * 4). Inputs of
  at least 16 px take exactly the seed's layers; on a smaller side a convolution that would not fit gets
  padding 2 on that axis (its side is kept) and a pool is left out while a side is below 2 px, so the model
  still builds for the tiny shapes of the registry-wide tests.

Every ReLU is its own module and nothing is in place (captum's DeepLift hooks each non-linearity); the last
``Conv2d`` (``conv2``) is GradCAM's layer.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from harness.specs import MODELS, ModelSpec, ParamError

KERNEL = 5


def _features(
    in_channels: int, height: int, width: int, channels: Sequence[int]
) -> tuple[list[tuple[str, nn.Module]], int]:
    """[Conv(5x5, valid; padding 2 on an axis under 5 px) -> ReLU -> MaxPool 2 (when both sides are >= 2 px)]
    per entry of ``channels``; returns the named layers and the flattened size of their output."""
    layers: list[tuple[str, nn.Module]] = []
    for i, out in enumerate(channels, start=1):
        pad = (2 * int(height < KERNEL), 2 * int(width < KERNEL))
        layers += [(f"conv{i}", nn.Conv2d(in_channels, int(out), KERNEL, padding=pad)), (f"relu{i}", nn.ReLU())]
        height, width = height + 2 * pad[0] - KERNEL + 1, width + 2 * pad[1] - KERNEL + 1
        if min(height, width) >= 2:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
            height, width = height // 2, width // 2
        in_channels = int(out)
    return layers, in_channels * height * width


def build_lenet(
    input_shape: tuple[int, ...], num_classes: int, *, channels: Sequence[int], hidden: Sequence[int]
) -> nn.Sequential:
    """LeNet-5 as the seed's (module docstring) for ``input_shape`` = (C, H, W), ``num_classes`` logits."""
    where = "model lenet"
    if len(input_shape) != 3:
        raise ParamError(f"{where}: needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    if not channels or any(int(c) < 1 for c in channels) or any(int(h) < 1 for h in hidden):
        raise ParamError(f"{where}: widths must be positive and channels non-empty, got channels="
                         f"{list(channels)}, hidden={list(hidden)}")
    layers, width = _features(*input_shape, channels)
    layers.append(("flatten", nn.Flatten()))
    relu = len(channels)
    for i, size in enumerate(hidden, start=1):
        relu += 1
        layers += [(f"fc{i}", nn.Linear(width, int(size))), (f"relu{relu}", nn.ReLU())]
        width = int(size)
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


MODELS.add(
    "lenet",
    ModelSpec(
        name="lenet",
        build=build_lenet,
        modalities=frozenset({"image"}),
        traits=frozenset({"conv2d"}),
        defaults={"channels": [6, 16], "hidden": [120, 84]},
        description=(
            "LeNet-5 of DeepImportance's experiments (seed JoshuaQSH/Wisdom): per channels entry "
            "Conv2d(5x5, valid) -> ReLU -> MaxPool2d(2), then Flatten -> per hidden entry Linear -> ReLU -> "
            "Linear(num_classes); 1- or 3-channel 32x32 inputs (MNIST resized to 32, CIFAR-10), any size "
            "(flattened size computed; padding 2 on a side under 5 px)."
        ),
    ),
)
