"""Feature groupings of the perturbation methods, checked by hand (harness.methods.feature_masks)."""
from __future__ import annotations

import pytest
import torch

from harness.methods.feature_masks import ablation, ablation_mask, axis_cells, occlusion


def test_axis_cells_by_patch_and_by_grid() -> None:
    assert axis_cells(8, patch=3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]  # the last patch is narrower
    assert axis_cells(8, patch=4).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert axis_cells(8, patch=99, grid=3).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # the last cell absorbs 8 % 3
    assert axis_cells(5, patch=1, grid=5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="grid of 9"):
        axis_cells(8, patch=1, grid=9)


def test_chaosmining_grid_is_49_patches_of_32_pixels_over_all_channels() -> None:
    mask = ablation_mask((3, 224, 224), patch=4, grid=7)
    assert mask.shape == (1, 3, 224, 224) and mask.dtype == torch.long
    assert torch.equal(mask, ablation_mask((3, 224, 224), patch=32))
    assert torch.equal(mask[0, 0], mask[0, 2]), "all channels of a patch together"
    ids, counts = mask.unique(return_counts=True)
    assert ids.tolist() == list(range(49)) and set(counts.tolist()) == {3 * 32 * 32}
    assert int(mask[0, 0, 96, 96]) == 24 and int(mask[0, 0, 127, 127]) == 24, "the centre cell (FP position)"
    assert int(mask[0, 0, 0, 223]) == 6 and int(mask[0, 0, 223, 0]) == 42


def test_ablation_masks_for_tabular_sequences_and_small_images() -> None:
    assert ablation_mask((5,), patch=4).tolist() == [[0, 1, 2, 3, 4]]  # one feature per column
    assert ablation_mask((2, 3), patch=4).tolist() == [[[0, 0, 0], [1, 1, 1]]]  # one per channel
    rows = [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]]  # 2x2 patches, narrower at the edges
    assert ablation_mask((1, 3, 5), patch=2).tolist() == [[rows]]
    assert ablation({"patch": 4, "grid": 0}, (1, 8, 8)).count == 4
    assert ablation({"patch": 4, "grid": 7}, (3, 224, 224)).count == 49
    assert ablation({"patch": 4, "grid": 0}, (80, 115)).count == 80


def test_occlusion_windows_and_positions() -> None:
    plan = occlusion({"window": 4, "stride": 2}, (1, 8, 8))
    assert plan.count == 9 and plan.kwargs == {"sliding_window_shapes": (1, 4, 4), "strides": (1, 2, 2)}
    plan = occlusion({"window": 32, "stride": 32}, (3, 224, 224))
    assert plan.count == 49 and plan.kwargs["sliding_window_shapes"] == (3, 32, 32)
    assert occlusion({"window": 3, "stride": 2}, (1, 8, 8)).count == 16  # starts 0, 2, 4, 6 (the last cut)
    plan = occlusion({"window": 5, "stride": 3}, (12,))  # starts 0, 3, 6, 9
    assert plan.count == 4 and plan.kwargs == {"sliding_window_shapes": (5,), "strides": (3,)}
    plan = occlusion({"window": 4, "stride": 2}, (3,))  # the window is clipped to the axis
    assert plan.count == 1 and plan.kwargs["sliding_window_shapes"] == (3,)
    plan = occlusion({"window": 4, "stride": 4}, (2, 10))  # over time, both channels together
    assert plan.count == 3 and plan.kwargs == {"sliding_window_shapes": (2, 4), "strides": (1, 4)}


@pytest.mark.parametrize("shape", [(), (1, 2, 3, 4), (3, 0, 4)])
def test_unsupported_shapes_are_named(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="sample shape"):
        ablation_mask(shape, patch=2)
    with pytest.raises(ValueError, match="sample shape"):
        occlusion({"window": 2, "stride": 1}, shape)
