"""Maskers against plain loop references (attribench's constant / random / blur baselines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.metrics.maskers import MASKERS, masked_baseline


def naive_box_mean(a: np.ndarray, side: int) -> np.ndarray:
    """Mean over the window [i - side // 2, i - side // 2 + side - 1] along each trailing axis, clipped."""
    spatial = a.shape[2:] if a.ndim > 2 else a.shape[1:]
    lead = a.shape[: a.ndim - len(spatial)]
    out = np.empty_like(a, dtype=np.float64)
    for lead_ix in np.ndindex(*lead):
        for pos in np.ndindex(*spatial):
            starts = [p - side // 2 for p in pos]
            window = tuple(slice(max(0, s), min(n, s + side)) for s, n in zip(starts, spatial, strict=True))
            out[lead_ix + pos] = a[lead_ix + window].mean()
    return out


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_constant_fills_value_and_keeps_input() -> None:
    x = torch.rand(2, 3, 5, 5)
    before = x.clone()
    out = masked_baseline(x, "constant", gen(), value=-0.5)
    assert torch.equal(out, torch.full_like(x, -0.5))
    assert torch.equal(x, before)


def test_random_is_standard_normal_from_cpu_generator() -> None:
    x = torch.rand(3, 2, 4, 4)
    out = masked_baseline(x, "random", gen(7))
    assert torch.equal(out, torch.randn(x.shape, generator=gen(7)))
    assert torch.equal(out, masked_baseline(x, "random", gen(7)))
    assert not torch.equal(out, masked_baseline(x, "random", gen(8)))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 7, 9), (2, 2, 12, 12), (3, 10), (2, 2, 11)])
@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.3, 1.0, 0.01])
def test_blur_matches_naive_box_mean(shape: tuple[int, ...], fraction: float) -> None:
    x = torch.randn(shape, generator=gen(1), dtype=torch.float64)
    side = max(1, round(shape[-1] * fraction))
    out = masked_baseline(x, "blur", gen(), blur_fraction=fraction)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), naive_box_mean(x.numpy(), side), atol=1e-12)


def test_blur_side_one_is_identity_and_float32_is_close() -> None:
    x = torch.rand(2, 3, 12, 12)
    assert torch.allclose(masked_baseline(x, "blur", gen(), blur_fraction=0.04), x)
    np.testing.assert_allclose(
        masked_baseline(x, "blur", gen()).numpy(), naive_box_mean(x.numpy(), 6), atol=1e-6
    )


def test_blur_of_constant_image_is_constant() -> None:
    x = torch.full((1, 2, 9, 9), 3.25)
    assert torch.allclose(masked_baseline(x, "blur", gen()), x)


@pytest.mark.parametrize("masker", MASKERS)
def test_same_dtype_and_device(masker: str) -> None:
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    out = masked_baseline(x, masker, gen())
    assert out.dtype == x.dtype and out.device == x.device and out.shape == x.shape


def test_unknown_masker_names_it_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'smudge'.*constant, random, blur"):
        masked_baseline(torch.rand(1, 4), "smudge", gen())


def test_bad_blur_fraction_and_shape() -> None:
    with pytest.raises(ValueError, match="1.5"):
        masked_baseline(torch.rand(1, 1, 4, 4), "blur", gen(), blur_fraction=1.5)
    with pytest.raises(ValueError, match=r"\[4\]"):
        masked_baseline(torch.rand(4), "constant", gen())
