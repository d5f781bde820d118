"""Frame-level evaluation of singing-voice detection (the seed's ``src/eval.py``, after Schlüter & Grill
2015; Subramanian et al., arXiv 2207.07769, §5 of the seed notes): median-filtered per-frame scores, AUROC, and
precision / recall / F1 / accuracy at a threshold.

The seed smooths each file's network outputs with ``scipy.ndimage.median_filter(pred, 56, mode='nearest')``
(56 frames = 0.8 s at 70 fps) and treats all files as one long file when counting. Here the test samples are
excerpts every ``test_hop`` frames, so the seed's window is ``round(56 / test_hop)`` samples
(:func:`median_window`; at least 1), and the filter runs within each recording (``DataBundle.groups_test``).

These are plain batched functions on the inputs' device, not registered metrics; a metric that scores the
singing-voice task (e.g. occlusion AUROC) calls them.
"""
from __future__ import annotations

import torch
from torch import Tensor

SEED_WINDOW = 56
"""The seed's median-filter length in frames (0.8 s at 70 fps)."""
THRESHOLDS = (1e-5, 1e-4, 1e-3, *[i / 100 for i in range(1, 100)], 1 - 1e-3, 1 - 1e-4, 1 - 1e-5)
"""The thresholds the seed tries on the validation set (``eval.evaluate``)."""


def median_window(test_hop: int, frames: int = SEED_WINDOW) -> int:
    """Samples in the seed's ``frames``-frame median window when consecutive samples are ``test_hop`` frames
    apart: ``max(1, round(frames / test_hop))``."""
    if test_hop < 1:
        raise ValueError(f"test_hop must be at least 1, got {test_hop}")
    return max(1, round(frames / test_hop))


def _group_bounds(groups: Tensor) -> tuple[Tensor, Tensor]:
    """First and last index of each sample's group; groups must be contiguous runs."""
    _, counts = torch.unique_consecutive(groups, return_counts=True)
    if len(counts) != len(torch.unique(groups)):
        raise ValueError("groups must be contiguous: every recording's samples in one run")
    ends = torch.cumsum(counts, 0)
    first = torch.repeat_interleave(ends - counts, counts)
    return first, torch.repeat_interleave(ends - 1, counts)


def median_filter(scores: Tensor, groups: Tensor, frames: int) -> Tensor:
    """Running median of ``frames`` consecutive samples within each group, as
    ``scipy.ndimage.median_filter(s, frames, mode='nearest')`` on each group's scores (the seed's smoothing):
    the window of sample i covers i - frames // 2 ... i - frames // 2 + frames - 1, indices beyond the
    group's ends repeat its first / last value, and the result is the element of rank frames // 2 of the
    sorted window (for an even window the upper of the two middle values, as scipy).

    ``scores``: (..., N), filtered along the last axis; ``groups``: (N,) recording ids, each in one contiguous
    run, samples in time order."""
    if frames < 1:
        raise ValueError(f"median filter length must be at least 1, got {frames}")
    if scores.shape[-1] != len(groups):
        raise ValueError(f"scores have {scores.shape[-1]} samples along the last axis, groups {len(groups)}")
    if frames == 1 or len(groups) == 0:
        return scores.clone()
    first, last = (b.to(scores.device) for b in _group_bounds(groups.to(scores.device)))
    offsets = torch.arange(frames, device=scores.device) - frames // 2
    at = torch.arange(len(groups), device=scores.device)[:, None] + offsets  # (N, frames)
    at = torch.minimum(torch.maximum(at, first[:, None]), last[:, None])
    windows = scores[..., at]  # (..., N, frames)
    return windows.sort(dim=-1).values[..., frames // 2]


def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve as the Mann-Whitney statistic (Hanley & McNeil 1982):
    (sum of the positives' ranks - P (P + 1) / 2) / (P N), ranks over all samples with ties given their
    average rank, so a tie between a positive and a negative counts 1/2; equals
    ``sklearn.metrics.roc_auc_score``.

    ``scores``: (..., M), one AUROC per leading index; ``labels``: (M,) 0/1 or bool. Raises ValueError when
    only one class is present (as scikit-learn). float64."""
    positive = labels.to(device=scores.device).bool()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    values = scores.double()
    ordered = values.sort(dim=-1).values.contiguous()
    below = torch.searchsorted(ordered, values.contiguous(), right=False)
    upto = torch.searchsorted(ordered, values.contiguous(), right=True)
    ranks = (below + upto + 1).double() / 2  # average 1-based rank of each value's tie group
    rank_sum = (ranks * positive).sum(dim=-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def threshold_scores(scores: Tensor, labels: Tensor, threshold: float) -> dict[str, Tensor]:
    """Precision, recall, F1, specificity and accuracy of predicting voice where ``scores > threshold``
    (the seed's ``eval.evaluate``, all samples counted as one long file); a ratio whose numerator is 0 is 0
    (the seed's ``savediv``). ``scores``: (..., M); ``labels``: (M,) 0/1 or bool; float64 outputs of shape
    (...)."""
    truth = labels.to(device=scores.device).bool()
    predicted = scores > threshold
    tp = (predicted & truth).sum(dim=-1).double()
    fp = (predicted & ~truth).sum(dim=-1).double()
    fn = (~predicted & truth).sum(dim=-1).double()
    tn = (~predicted & ~truth).sum(dim=-1).double()

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(num > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "precision": precision, "recall": recall, "f1": ratio(2 * precision * recall, precision + recall),
        "specificity": ratio(tn, tn + fp), "accuracy": (tp + tn) / len(truth),
    }


def best_threshold(scores: Tensor, labels: Tensor, thresholds: tuple[float, ...] = THRESHOLDS) -> float:
    """The threshold of ``thresholds`` with the highest accuracy on (validation) ``scores`` (1-D), the first
    on ties, as the seed's ``eval.evaluate`` with ``threshold=None``."""
    grid = torch.tensor(thresholds, dtype=torch.float64, device=scores.device)
    correct = (scores.double()[None, :] > grid[:, None]) == labels.to(scores.device).bool()[None, :]
    return float(grid[int(correct.double().mean(dim=1).argmax())])
