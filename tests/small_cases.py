"""Tiny random-weight models with inputs, targets and attributions, shared by the metric tests."""
from __future__ import annotations

import torch
from torch import Tensor, nn

import harness.models  # noqa: F401  (registers the models)
from harness.models.training import build_model
from harness.specs import MODELS

Case = tuple[nn.Module, Tensor, Tensor, Tensor]


def make_case(kind: str, n: int = 2, seed: int = 0) -> Case:
    """(model, x, target, attributions): a small CNN on (C, 16, 16) images (``cnn``: C = 1, ``cnn3``: C = 3)
    or an MLP on 10 tabular features (``mlp``); x in [-0.5, 1.5), random targets and attributions."""
    if kind in ("cnn", "cnn3"):
        channels = 3 if kind == "cnn3" else 1
        widths = {"channels": [4, 8], "hidden": 16}
        model = build_model(MODELS.get("small_cnn"), widths, (channels, 16, 16), 10, seed)
        shape, classes = (n, channels, 16, 16), 10
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
        shape, classes = (n, 10), 3
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 2 - 0.5
    return model.eval(), x, torch.randint(0, classes, (n,), generator=g), torch.randn(shape, generator=g)
