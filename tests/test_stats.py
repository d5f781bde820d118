from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.report.stats import bootstrap_mean_ci


def test_constant_values_give_a_point_interval() -> None:
    assert bootstrap_mean_ci(np.full(10, 2.5)) == (2.5, 2.5, 2.5)


def test_single_and_empty() -> None:
    assert bootstrap_mean_ci(np.array([1.0])) == (1.0, 1.0, 1.0)
    assert all(np.isnan(v) for v in bootstrap_mean_ci(np.array([])))


def test_matches_plain_loop_reference() -> None:
    values = np.random.default_rng(1).normal(size=30)
    mean, lo, hi = bootstrap_mean_ci(values, resamples=500, seed=7)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 30, size=(500, 30))
    means = [values[row].mean() for row in idx]
    assert np.isclose(mean, values.mean())
    assert np.isclose(lo, np.quantile(means, 0.025)) and np.isclose(hi, np.quantile(means, 0.975))


def test_normal_coverage_is_roughly_right() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        _, lo, hi = bootstrap_mean_ci(rng.normal(size=50), resamples=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 0.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40))
def test_interval_is_ordered_and_lies_within_the_data(values: list[float]) -> None:
    arr = np.array(values)
    mean, lo, hi = bootstrap_mean_ci(arr, resamples=200)
    tol = 1e-9 * (1 + np.abs(arr).max())
    assert arr.min() - tol <= lo <= hi + tol and hi <= arr.max() + tol
    assert arr.min() - tol <= mean <= arr.max() + tol
