"""Figures for the report: example attribution maps per data set × model, the true region outlined."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

Maps = Mapping[str, np.ndarray]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the bounding box of a 2-D mask; None when it is empty."""
    rows, cols = np.nonzero(mask > 0.5)
    if rows.size == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def example_grid(examples: Mapping[str, Maps], methods: Sequence[str], out: Path, title: str) -> Path | None:
    """One row per method (the first row: the inputs), one column per example sample; each attribution map
    scaled to its own maximum, the ground-truth box drawn in green where the data set has one."""
    rows = [m for m in methods if m in examples]
    if not rows:
        return None
    first = examples[rows[0]]
    count = first["input"].shape[0]
    fig, axes = plt.subplots(len(rows) + 1, count, figsize=(1.8 * count + 1.2, 1.8 * (len(rows) + 1)),
                             squeeze=False)
    for col in range(count):
        _panel(axes[0][col], first["input"][col], first.get("mask"), col, cmap="gray")
    axes[0][0].set_ylabel("input", rotation=0, ha="right", va="center")
    for row, method in enumerate(rows, start=1):
        maps = examples[method]
        for col in range(count):
            _panel(axes[row][col], maps["attribution"][col], maps.get("mask"), col, cmap="inferno")
        axes[row][0].set_ylabel(method, rotation=0, ha="right", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _panel(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None, index: int, cmap: str) -> None:
    wide = image.shape[1] > 2 * image.shape[0]  # sequences (channels x time) and tabular strips
    ax.imshow(image, cmap=cmap, interpolation="nearest", aspect="auto" if wide else "equal")
    ax.set_xticks([])
    ax.set_yticks([])
    box = mask_box(mask[index]) if mask is not None else None
    if box is not None:
        top, left, height, width = box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False, edgecolor="lime", lw=1.2))
