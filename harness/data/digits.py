"""The scikit-learn handwritten digits: 1,797 real 8x8 images of the digits 0-9, shipped with scikit-learn.

Source: ``sklearn.datasets.load_digits`` (the UCI "Optical Recognition of Handwritten Digits" test set),
available offline. Pixels are counts 0..16, scaled here to [0, 1].
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn import functional as F

from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

NUM_CLASSES = 10


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def load_digit_images(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float32 ``(N, 1, size, size)`` in [0, 1] (bilinear resize) and int64 labels."""
    if size < 1:
        raise ParamError(f"digit size must be at least 1, got {size}")
    images, labels = _raw_digits()
    x = torch.tensor(images).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x, torch.tensor(labels)


def build_digits(seed: int, *, size: int, test_fraction: float) -> DataBundle:
    """Stratified split (by ``seed``) of the digits, standardised with the training set's scalar mean/std.

    After standardisation 0 is the training mean, so a constant-0 masker means "the mean pixel value".
    """
    if not 0.0 < test_fraction < 1.0:
        raise ParamError(f"dataset digits: test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digit_images(size)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return DataBundle(
        x_train=x[train_idx].contiguous(), y_train=y[train_idx], x_test=x[test_idx].contiguous(),
        y_test=y[test_idx], num_classes=NUM_CLASSES,
    )


DATASETS.add(
    "digits",
    DatasetSpec(
        name="digits",
        build=build_digits,
        modality="image",
        defaults={"size": 8, "test_fraction": 0.2},
        description=(
            "scikit-learn load_digits: 1,797 real 8x8 handwritten digits (UCI optical digits), 10 classes; "
            "pixels /16 to [0, 1], optional bilinear resize to size x size, stratified split by seed, "
            "standardised with the training set's scalar mean and std. No ground-truth mask."
        ),
    ),
)
