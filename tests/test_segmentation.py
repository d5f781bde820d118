"""SLIC segments (contiguous per-image labels) and segment means against a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.segmentation import segment_means, slic_segments


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Colour blobs (SLIC on pure pixel noise fragments every cluster and connectivity merges them into one)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)


def test_labels_are_contiguous_per_image_and_deterministic() -> None:
    x = smooth_images(3, 0)
    seg = slic_segments(x, n_segments=20)
    assert seg.shape == (3, 1, 32, 32) and seg.dtype == torch.int64
    for labels in seg:
        ids = labels.unique()
        assert ids.tolist() == list(range(len(ids))) and 5 <= len(ids) <= 40
    assert torch.equal(seg, slic_segments(x, n_segments=20))
    assert slic_segments(torch.zeros(1, 1, 8, 8), n_segments=4).shape == (1, 1, 8, 8)  # a constant image


def test_segment_means_match_a_loop() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    seg = slic_segments(x, n_segments=10)
    got = segment_means(x, seg)
    for i in range(2):
        pixel = x[i].mean(0).numpy()
        for s in range(got.shape[1]):
            where = seg[i, 0].numpy() == s
            if where.any():
                assert got[i, s].item() == pytest.approx(float(pixel[where].mean()), rel=1e-5)
            else:
                assert np.isnan(got[i, s].item())


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        slic_segments(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="n_segments must be at least 1, got 0"):
        slic_segments(torch.rand(1, 1, 8, 8), n_segments=0)
