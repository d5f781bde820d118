"""ChaosMining's MLP regressor for the symbolic data (arXiv 2406.12150), plain and residual.

From ``chaosmining/simulation/models.py`` of github geshijoker/ChaosMining, with sizes = [hidden] * layers as
``examples/train_eval_simulation.py`` builds them:

* ``MLPRegressor`` (``residual=False``, the one the paper trains): Flatten -> ``layers`` x (Linear(hidden) ->
  GELU) -> Dropout(dropout) -> Linear(num_classes).
* ``MLPResRegressor`` (``residual=True``): Flatten -> Linear(in, hidden) (no activation) -> ``layers - 1`` x
  :class:`ResidualBlock` -> Dropout(dropout) -> Linear(num_classes), where a block is
  h -> GELU(LayerNorm(Linear(GELU(LayerNorm(Linear(h))))) + h)), i.e. post-norm with the skip added before the
  second LayerNorm. With ``layers = 1`` it has no block and is linear.

The seed's output is one unit (regression); here it is ``num_classes`` (1 for a regression bundle). Every GELU
is its own module instance and nothing is in place (the seed's block adds the skip in place), as captum's
DeepLift hooks each non-linearity module once. Note that captum's DeepLift has no rule for GELU or LayerNorm
(``SUPPORTED_NON_LINEAR`` lists ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, Softmax and max pooling): it
passes plain gradients through them, as it did on the seed's models.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from harness.specs import MODELS, ModelSpec, ParamError


class ResidualBlock(nn.Module):
    """ChaosMining's ``LinearResBlock``: GELU(LayerNorm(Linear(GELU(LayerNorm(Linear(h)))) + h))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.act1 = nn.GELU()
        self.linear2 = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.act2 = nn.GELU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.linear2(self.act1(self.norm1(self.linear1(h))))
        return self.act2(self.norm2(out + h))


def build_chaos_mlp(
    input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 100, layers: int = 3,
    dropout: float = 0.0, residual: bool = False,
) -> nn.Sequential:
    """ChaosMining's ``MLPRegressor`` (or ``MLPResRegressor`` when ``residual``) of width ``hidden``."""
    for name, value in (("hidden", hidden), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParamError(f"model chaos_mlp: {name} = {value!r} is not valid; need a positive integer")
    if not 0.0 <= dropout < 1.0:
        raise ParamError(f"model chaos_mlp: dropout = {dropout!r} is not valid; need 0 <= dropout < 1")
    width = math.prod(input_shape)
    modules: list[nn.Module] = [nn.Flatten()]
    if residual:
        modules.append(nn.Linear(width, hidden))
        modules += [ResidualBlock(hidden) for _ in range(layers - 1)]
    else:
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
    modules += [nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*modules)


MODELS.add(
    "chaos_mlp",
    ModelSpec(
        name="chaos_mlp",
        build=build_chaos_mlp,
        modalities=frozenset({"tabular"}),
        defaults={"hidden": 100, "layers": 3, "dropout": 0.0, "residual": False},
        description=(
            "ChaosMining MLP regressor (arXiv 2406.12150): Flatten, layers x (Linear(hidden) + GELU), "
            "Dropout, Linear(num_classes); residual = the seed's MLPResRegressor: Linear(hidden), then "
            "layers - 1 post-norm residual blocks GELU(LayerNorm(Linear(GELU(LayerNorm(Linear(h)))) + h)). "
            "Train full batch, MSE, Adam lr 1e-3, 1000 epochs."
        ),
    ),
)
