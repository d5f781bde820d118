"""Real digits pasted on random-noise canvases: the ChaosMining vision data at small size.

ChaosMining (arXiv 2406.12150, §1.3 of the seed notes) pastes a 32x32 CIFAR-10 object on a 224x224 canvas
whose background is uniform random pixels ("RB"), at a fixed centre ("FP") or a random position ("RP");
the label is the object's class and the object's box is the ground truth for localisation. Here the object
is a scikit-learn ``load_digits`` digit resized to ``object_size`` and the canvas is ``canvas`` pixels wide,
so the benchmark runs on a CPU; the normalisation (mean 0.5, std 0.5) follows ChaosMining.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from harness.data.digits import NUM_CLASSES, load_digit_images
from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError


def _split_pools(labels: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, stratified halves of the digits: train objects and (unseen) test objects."""
    index = np.arange(len(labels))
    train_pool, test_pool = train_test_split(index, test_size=0.5, random_state=seed, stratify=labels.numpy())
    return train_pool, test_pool


def _corners(rng: np.random.Generator, n: int, canvas: int, size: int, position: str) -> torch.Tensor:
    """Top-left (row, col) of each object: centred (``fixed``) or uniform over valid positions (``random``)."""
    if position == "fixed":
        return torch.full((n, 2), (canvas - size) // 2, dtype=torch.int64)
    return torch.from_numpy(rng.integers(0, canvas - size + 1, size=(n, 2), dtype=np.int64))


def box_mask(corners: torch.Tensor, canvas: int, size: int) -> torch.Tensor:
    """Bool ``(N, 1, canvas, canvas)``: True inside each ``size`` x ``size`` box with top-left ``corners``."""
    grid = torch.arange(canvas)
    rows = (grid >= corners[:, :1]) & (grid < corners[:, :1] + size)
    cols = (grid >= corners[:, 1:]) & (grid < corners[:, 1:] + size)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def paste(objects: torch.Tensor, background: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Replace the background pixels under each object (vectorised; objects broadcast over channels)."""
    n, size = objects.shape[0], objects.shape[-1]
    offsets = torch.arange(size)
    rows = (corners[:, 0, None] + offsets)[:, :, None]  # (N, S, 1)
    cols = (corners[:, 1, None] + offsets)[:, None, :]  # (N, 1, S)
    out = background.permute(0, 2, 3, 1).clone()  # (N, H, W, C): advanced indices lead
    out[torch.arange(n)[:, None, None], rows, cols] = objects.permute(0, 2, 3, 1)
    return out.permute(0, 3, 1, 2).contiguous()


def _make_split(
    rng: np.random.Generator, pool: np.ndarray, n: int, digits: torch.Tensor, labels: torch.Tensor,
    canvas: int, channels: int, position: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chosen = torch.from_numpy(rng.choice(pool, size=n, replace=True))
    size = digits.shape[-1]
    background = torch.from_numpy(rng.random((n, channels, canvas, canvas), dtype=np.float32))
    corners = _corners(rng, n, canvas, size, position)
    x = paste(digits[chosen], background, corners)
    return (x - 0.5) / 0.5, labels[chosen], box_mask(corners, canvas, size)


def build_pasted_digits(
    seed: int, *, object_size: int, canvas: int, channels: int, position: str, n_train: int, n_test: int,
) -> DataBundle:
    """Pasted-digit images; everything (pools, sampling, noise, positions) is drawn from ``seed``."""
    if not 1 <= object_size <= canvas:
        raise ParamError(f"dataset pasted_digits: need 1 <= object_size <= canvas, got {object_size}, {canvas}")
    if n_train < 1 or n_test < 1:
        raise ParamError(f"dataset pasted_digits: n_train and n_test must be positive, got {n_train}, {n_test}")
    digits, labels = load_digit_images(object_size)
    train_pool, test_pool = _split_pools(labels, seed)
    rng = np.random.default_rng(seed)
    common = {"digits": digits, "labels": labels, "canvas": canvas, "channels": channels, "position": position}
    x_train, y_train, _ = _make_split(rng, train_pool, n_train, **common)
    x_test, y_test, mask_test = _make_split(rng, test_pool, n_test, **common)
    return DataBundle(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=NUM_CLASSES,
        mask_test=mask_test,
    )


DATASETS.add(
    "pasted_digits",
    DatasetSpec(
        name="pasted_digits",
        build=build_pasted_digits,
        modality="image",
        defaults={
            "object_size": 8, "canvas": 24, "channels": 1, "position": "fixed", "n_train": 2000, "n_test": 500,
        },
        choices={"channels": (1, 3), "position": ("fixed", "random")},
        has_mask=True,
        description=(
            "ChaosMining-style vision data (arXiv 2406.12150), small: a real scikit-learn load_digits digit "
            "(resized to object_size, values in [0, 1]) pasted over a U[0, 1] noise canvas (RB background), "
            "centred (fixed, FP) or at a uniform random position (random, RP); label = digit class. Train and "
            "test objects come from disjoint halves of load_digits. Normalised with mean 0.5, std 0.5. "
            "mask_test marks the pasted object's box."
        ),
    ),
)
