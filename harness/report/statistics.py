"""The statistics of attribench (Gevaert et al., "Evaluating feature attribution methods in the image domain",
Machine Learning 2024; seed-systems.md §2, "Baselines and statistics"), as pure functions on NumPy arrays.

Conventions: per-sample scores are *oriented* first (:func:`orient`: negated where lower is better), so that
larger is better everywhere below. NaNs are dropped: per pair for the paired test, per array for CLES,
listwise (whole samples) for the rank-based agreement and correlation, per column for the bootstrap.

* :func:`signed_rank_vs_baseline`: one-sided Wilcoxon signed-rank test of method − baseline, effect size the
  median difference; :func:`correct_pvalues`: Bonferroni or Benjamini-Hochberg over a family of tests.
* :func:`ranking_alpha`: Krippendorff's α (ordinal) of the per-sample rankings of the methods.
* :func:`spearman_matrix` / :func:`mean_spearman`: inter-metric Spearman correlation, averaged over methods.
* :func:`cles` / :func:`paired_cles`: common-language effect size (McGraw & Wong 1992).
* :func:`median_ci_widths`: bootstrap CI width of the median against the number of samples.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import krippendorff
import numpy as np
from scipy import stats

Correction = Literal["bonferroni", "bh"]


def orient(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Scores with larger = better: negated where lower is better."""
    values = np.asarray(values, dtype=np.float64)
    return values if higher_is_better else -values


@dataclass(frozen=True)
class SignedRank:
    n: int
    """Pairs used (both values finite)."""
    effect: float
    """Median of the oriented differences method − baseline: > 0 means better than the baseline."""
    pvalue: float
    """One-sided (method better than baseline), uncorrected; NaN when fewer than 2 pairs."""


def signed_rank_vs_baseline(method: np.ndarray, baseline: np.ndarray) -> SignedRank:
    """One-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, H1: the differences lie above 0) of the
    per-sample differences of two *oriented* score arrays of the same samples. Zero differences are dropped
    (Wilcoxon's convention); all differences zero gives p = 1 (no evidence of improvement)."""
    diff = np.asarray(method, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return SignedRank(int(diff.size), float(np.median(diff)) if diff.size else float("nan"), float("nan"))
    if not np.any(diff):
        return SignedRank(int(diff.size), 0.0, 1.0)
    pvalue = float(stats.wilcoxon(diff, alternative="greater").pvalue)
    return SignedRank(int(diff.size), float(np.median(diff)), pvalue)


def correct_pvalues(pvalues: np.ndarray, correction: Correction = "bonferroni") -> np.ndarray:
    """p-values adjusted for the family ``pvalues``: Bonferroni (min(1, m p)) or Benjamini-Hochberg
    (``scipy.stats.false_discovery_control``). NaNs stay NaN and do not count in the family size m."""
    pvalues = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(pvalues, np.nan)
    finite = np.isfinite(pvalues)
    if not finite.any():
        return out
    if correction == "bonferroni":
        out[finite] = np.minimum(1.0, pvalues[finite] * finite.sum())
    elif correction == "bh":
        out[finite] = stats.false_discovery_control(pvalues[finite], method="bh")
    else:
        raise ValueError(f"unknown correction {correction!r}: expected 'bonferroni' or 'bh'")
    return out


def complete_rows(values: np.ndarray) -> np.ndarray:
    """The rows (samples) of a 2-D array with every value finite."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.all(np.isfinite(values), axis=1)]


def ranking_alpha(values: np.ndarray) -> float:
    """Krippendorff's α (ordinal) of the per-sample rankings of methods: ``values`` is (samples, methods).

    As attribench: each sample ranks the methods by score (``scipy.stats.rankdata``, ties get their mean
    rank), then the samples are the coders and the methods the units of ``krippendorff.alpha`` with the
    ordinal metric. α = 1: every sample ranks the methods alike; α ≈ 0: no more agreement than chance. The
    direction of the scores does not matter (reversing every ranking leaves ordinal α unchanged). Samples with
    a NaN are dropped; NaN with fewer than 2 samples or methods, or when every score is tied.
    """
    values = complete_rows(values)
    if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] < 2:
        return float("nan")
    ranks = stats.rankdata(values, axis=1)
    if np.unique(ranks).size < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=ranks, level_of_measurement="ordinal"))


def spearman_matrix(values: np.ndarray) -> np.ndarray:
    """Spearman correlation between the columns (metrics) of ``values`` (samples, metrics), over the samples
    without a NaN (``scipy.stats.spearmanr``). A constant column has NaN correlations (undefined), except 1 on
    the diagonal; fewer than 3 samples gives all NaN off the diagonal."""
    values = complete_rows(values)
    k = values.shape[1]
    out = np.full((k, k), np.nan)
    varying = np.flatnonzero(np.ptp(values, axis=0) > 0) if values.shape[0] >= 3 else np.array([], dtype=int)
    if varying.size >= 2:
        rho = np.atleast_2d(stats.spearmanr(values[:, varying]).statistic)
        if rho.shape == (1, 1):  # two columns: spearmanr returns the scalar
            rho = np.array([[1.0, rho[0, 0]], [rho[0, 0], 1.0]])
        out[np.ix_(varying, varying)] = rho
    np.fill_diagonal(out, 1.0)
    return out


def mean_spearman(per_method: Sequence[np.ndarray]) -> np.ndarray:
    """Inter-metric correlation as attribench: :func:`spearman_matrix` of each method's (samples, metrics)
    array of oriented scores, averaged over the methods where it is defined (plain mean of ρ)."""
    matrices = np.stack([spearman_matrix(v) for v in per_method])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(matrices, axis=0)


def cles(x: np.ndarray, y: np.ndarray) -> float:
    """Common-language effect size P(X > Y) + ½ P(X = Y) over all pairs of a value of x and one of y
    (McGraw & Wong 1992; the Mann-Whitney U of x divided by n_x n_y). NaNs dropped; NaN if either is empty."""
    x, y = (np.asarray(a, dtype=np.float64) for a in (x, y))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(stats.mannwhitneyu(x, y).statistic / (x.size * y.size))


def paired_cles(x: np.ndarray, y: np.ndarray) -> float:
    """The paired variant attribench plots: the share of samples where x > y, ties counted half."""
    x, y = (np.asarray(a, dtype=np.float64) for a in (x, y))
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return float("nan")
    return float(np.mean((x[keep] > y[keep]) + 0.5 * (x[keep] == y[keep])))


def sample_sizes(n: int, start: int = 8) -> list[int]:
    """8, 16, 32, ... below n, then n itself (just n when n <= start)."""
    sizes = []
    size = start
    while size < n:
        sizes.append(size)
        size *= 2
    return [*sizes, n] if n > 0 else []


def median_ci_widths(
    values: np.ndarray, sizes: Sequence[int], *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> np.ndarray:
    """Width of the percentile-bootstrap CI of the median at each sample count m in ``sizes``, per column.

    As attribench's convergence plot: m values are drawn with replacement from all n finite values of the
    column (m-out-of-n bootstrap), ``resamples`` times; the width is the spread between the (1 − level)/2 and
    (1 + level)/2 quantiles of those medians. ``values`` (n,) or (n, k); returns (len(sizes),) or
    (len(sizes), k); NaN for a column with fewer than 2 finite values.

    The draws index the *sorted* column, so the median of a draw is the sorted column at the middle order
    statistic(s) of the drawn indices: one (resamples, m) draw per m serves every column without NaNs (a
    column with NaNs is drawn separately from its own finite values).
    """
    values = np.asarray(values, dtype=np.float64)
    columns = values.reshape(values.shape[0], -1)
    out = np.full((len(sizes), columns.shape[1]), np.nan)
    complete = np.all(np.isfinite(columns), axis=0)
    groups = [np.flatnonzero(complete)] + [np.array([j]) for j in np.flatnonzero(~complete)]
    alpha = (1.0 - level) / 2.0
    rng = np.random.default_rng(seed)
    for i, m in enumerate(sizes):
        for cols in groups:
            data = columns[:, cols]
            data = np.sort(data[np.all(np.isfinite(data), axis=1)], axis=0)
            if cols.size == 0 or data.shape[0] < 2:
                continue
            draws = np.sort(rng.integers(0, data.shape[0], size=(resamples, m)), axis=1)
            medians = 0.5 * (data[draws[:, (m - 1) // 2]] + data[draws[:, m // 2]])  # (resamples, columns)
            lo, hi = np.quantile(medians, [alpha, 1.0 - alpha], axis=0)
            out[i, cols] = hi - lo
    return out.reshape(len(sizes), *values.shape[1:])
