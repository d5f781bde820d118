"""Summary statistics for the report."""
from __future__ import annotations

import numpy as np


def bootstrap_mean_ci(
    values: np.ndarray, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and its percentile-bootstrap confidence interval (Efron & Tibshirani 1993, ch. 13).

    Vectorised: one (resamples, n) index draw. Seeded, so the report is reproducible. With one value the
    interval collapses to it; NaN values are ignored; no values gives NaNs.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"),) * 3
    mean = float(values.mean())
    if values.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)
