"""Recursive feature elimination, the loop shared by the selection metrics (:mod:`harness.metrics.selection`).

Definition: ChaosMining's RFEwNA (Shi et al., arXiv 2406.12150), after Guyon et al., "Gene selection for
cancer classification using support vector machines", Machine Learning 2002. Each round scores the selected
set S (one importance per feature and the error of a model trained on S), records it, then drops the
lowest-importance features, until ``keep`` remain.

Schedule (:func:`eliminate`, :func:`drop_count`). A round drops d = max(1, floor(``drop`` * |S|)) features
but never goes below ``keep``: d = min(d, |S| - keep). The final round, at |S| = keep, is evaluated too, so
the rounds are sets of sizes F > ... > keep (for F = 12, keep = 2, drop 0.5: 12, 6, 3, 2). ``drop`` = 0.5
halves the set (the seed's working notebook); 0.2 is its script's 20%. Ties in importance drop the lower
feature index first: a stable ascending sort, exactly scikit-learn's ``RFE`` (``np.argsort(...,
kind="stable")``); ChaosMining puts the relevant features first, so ties never favour them (a constant
attribution keeps the last ``keep`` features). With ``stop_on_worse`` (the seed's other criterion) the loop
also stops after the first round whose error exceeds the previous round's; that round stays in the curves
but the final selection is the round before it, the last that did not get worse.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.specs import DataBundle

Score = Callable[[Tensor], tuple[Tensor, float]]
"""``score(selected) -> (importance per selected feature (|S|,), error)`` for ascending feature indices."""

EPS = 1e-9
"""Added before flooring ``drop * |S|`` so that e.g. 0.29 * 100 drops 29, not 28."""


@dataclass(frozen=True)
class Round:
    """One elimination round: the selected feature indices (ascending, long, CPU), the error of the model
    trained on them, and the precision and recall of the selection against the relevant features."""

    selected: Tensor
    error: float
    precision: float
    recall: float

    @property
    def size(self) -> int:
        return int(self.selected.numel())


def drop_count(size: int, keep: int, drop: float) -> int:
    """Features one round removes from ``size``: max(1, floor(drop * size)), never leaving fewer than
    ``keep`` (0 once size == keep)."""
    return min(max(1, math.floor(drop * size + EPS)), size - keep)


def schedule(n_features: int, keep: int, drop: float) -> list[int]:
    """The set sizes of the rounds without early stopping: n_features, ..., keep (strictly decreasing)."""
    _check_schedule(n_features, keep, drop)
    sizes = [n_features]
    while sizes[-1] > keep:
        sizes.append(sizes[-1] - drop_count(sizes[-1], keep, drop))
    return sizes


def _check_schedule(n_features: int, keep: int, drop: float) -> None:
    if n_features < 1:
        raise ValueError(f"eliminate: needs at least one feature, got {n_features}")
    if not 1 <= keep <= n_features:
        raise ValueError(f"eliminate: keep = {keep} must lie in [1, {n_features}] (the number of features)")
    if not 0.0 < drop <= 1.0:
        raise ValueError(f"eliminate: drop = {drop!r} must lie in (0, 1]")


def eliminate(
    n_features: int, relevant: Tensor, score: Score, keep: int, drop: float, stop_on_worse: bool = False,
) -> list[Round]:
    """Recursive feature elimination (see the module docstring for the schedule, ties and stopping).

    ``relevant`` is bool (n_features,) with at least one True. Returns every evaluated round in order; with
    ``stop_on_worse`` the last one may be a round whose error rose (see :func:`final_index`)."""
    _check_schedule(n_features, keep, drop)
    relevant = torch.as_tensor(relevant).cpu()
    if relevant.dtype != torch.bool or relevant.shape != (n_features,):
        raise ValueError(
            f"eliminate: relevant must be bool of shape ({n_features},), got {relevant.dtype} "
            f"{list(relevant.shape)}"
        )
    n_relevant = int(relevant.sum())
    if n_relevant == 0:
        raise ValueError("eliminate: relevant marks no feature")
    selected = torch.arange(n_features)
    rounds: list[Round] = []
    while True:
        importance, error = score(selected.clone())
        importance = _checked_importance(importance, selected.numel(), len(rounds))
        error = float(error)
        if not math.isfinite(error):
            raise ValueError(
                f"eliminate: round {len(rounds)} ({selected.numel()} features) has error {error}"
            )
        hits = int(relevant[selected].sum())
        rounds.append(Round(selected, error, hits / selected.numel(), hits / n_relevant))
        size = selected.numel()
        if size == keep:
            break
        if stop_on_worse and len(rounds) > 1 and rounds[-1].error > rounds[-2].error:
            break
        order = torch.argsort(importance, stable=True)  # ascending; ties: the lower index first
        kept = torch.ones(size, dtype=torch.bool)
        kept[order[:drop_count(size, keep, drop)]] = False
        selected = selected[kept]
    return rounds


def _checked_importance(importance: Any, size: int, index: int) -> Tensor:
    importance = torch.as_tensor(importance).detach().cpu()
    if importance.shape != (size,):
        raise ValueError(
            f"eliminate: round {index}: importance has shape {list(importance.shape)}, expected [{size}] "
            "(one per selected feature)"
        )
    importance = importance.double()
    if not bool(torch.isfinite(importance).all()):
        raise ValueError(f"eliminate: round {index}: importance has non-finite values")
    return importance


def final_index(rounds: Sequence[Round], stop_on_worse: bool) -> int:
    """The round whose selection is the result: the last, or with ``stop_on_worse`` the one before a last
    round whose error rose."""
    last = len(rounds) - 1
    if stop_on_worse and last > 0 and rounds[last].error > rounds[last - 1].error:
        return last - 1
    return last


def select_columns(bundle: DataBundle, indices: Sequence[int] | Tensor) -> DataBundle:
    """The tabular ``bundle`` restricted to the columns ``indices`` (in that order): x_train, x_test and a
    per-column mask_test are indexed, labels and task kept; truth_test is dropped (it belongs to the full
    input)."""
    index = torch.as_tensor(indices, dtype=torch.long).cpu().reshape(-1)
    if bundle.x_train.ndim != 2 or bundle.x_test.ndim != 2:
        raise ValueError(
            f"select_columns: needs tabular (N, F) data, got x_train {list(bundle.x_train.shape)}"
        )
    n_features = bundle.x_train.shape[1]
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= n_features:
        raise ValueError(f"select_columns: indices must be non-empty and lie in [0, {n_features})")
    if index.unique().numel() != index.numel():
        raise ValueError("select_columns: indices repeat a column")
    mask = bundle.mask_test
    if mask is not None and mask.ndim == 2 and mask.shape[1] == n_features:
        mask = mask[:, index.to(mask.device)]
    return DataBundle(
        x_train=bundle.x_train[:, index.to(bundle.x_train.device)], y_train=bundle.y_train,
        x_test=bundle.x_test[:, index.to(bundle.x_test.device)], y_test=bundle.y_test,
        num_classes=bundle.num_classes, mask_test=mask, task=bundle.task,
    )


def relevant_features(name: str, mask: Tensor | None, n_features: int) -> Tensor:
    """bool (F,) on the CPU: the columns ``mask`` (N, F) marks, which must be the same in every row."""
    if mask is None:
        raise ValueError(f"{name}: needs inputs.mask (the ground-truth relevant features); none was given")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: inputs.mask must be a bool tensor, got {mask.dtype}")
    if mask.ndim != 2 or mask.shape[1] != n_features or mask.shape[0] == 0:
        raise ValueError(
            f"{name}: inputs.mask must be (N, {n_features}) with N >= 1 (one column per feature), "
            f"got {list(mask.shape)}"
        )
    marked, everywhere = mask.any(0).cpu(), mask.all(0).cpu()
    differ = (marked != everywhere).nonzero()[:, 0]
    if differ.numel():
        raise ValueError(
            f"{name}: inputs.mask must mark the same features in every row; column(s) "
            f"{differ[:10].tolist()} are marked in some rows only"
        )
    if not bool(marked.any()):
        raise ValueError(f"{name}: inputs.mask marks no relevant feature")
    return marked
