"""A multilayer perceptron on flattened inputs, for images and tabular data.

Every ReLU is its own module instance and nothing is in place, as captum's DeepLift requires (it hooks each
non-linearity module once; see the captum ``DeepLift`` documentation).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from harness.specs import MODELS, ModelSpec, ParamError


def build_mlp(input_shape: tuple[int, ...], num_classes: int, *, hidden: Sequence[int]) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per width in ``hidden`` -> Linear(num_classes)."""
    if any(int(width) < 1 for width in hidden):
        raise ParamError(f"model mlp: hidden widths must be positive, got {list(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for out in hidden:
        layers += [nn.Linear(width, int(out)), nn.ReLU()]
        width = int(out)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


MODELS.add(
    "mlp",
    ModelSpec(
        name="mlp",
        build=build_mlp,
        modalities=frozenset({"image", "tabular"}),
        defaults={"hidden": [128, 64]},
        description="MLP: Flatten, then Linear+ReLU per hidden width, then a linear classifier head.",
    ),
)
