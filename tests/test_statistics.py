"""attribench's statistics, each against an independent reference: scipy on the same data, brute-force loops,
a textbook example (Krippendorff 2011) and hand-checked tiny cases; properties with hypothesis."""
from __future__ import annotations

import itertools

import krippendorff
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from harness.report.statistics import (
    cles,
    correct_pvalues,
    mean_spearman,
    median_ci_widths,
    orient,
    paired_cles,
    ranking_alpha,
    sample_sizes,
    signed_rank_vs_baseline,
    spearman_matrix,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=25)
KRIPPENDORFF_C = [  # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C:
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],  # 4 observers (rows) x 12 units, values 1..5
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
]


def test_orient_negates_lower_is_better() -> None:
    assert np.array_equal(orient(np.array([1.0, -2.0]), True), [1.0, -2.0])
    assert np.array_equal(orient(np.array([1.0, -2.0]), False), [-1.0, 2.0])


# --- Wilcoxon against the baseline and the multiple-testing corrections -------------------------------------

def test_signed_rank_matches_scipy_on_the_pairs_and_the_median_difference() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.normal(size=40)
    method = baseline + rng.normal(0.4, 1.0, size=40)
    method[[3, 7]] = baseline[[3, 7]]  # zero differences: dropped by Wilcoxon's convention
    method[5], baseline[9] = np.nan, np.nan
    result = signed_rank_vs_baseline(method, baseline)
    keep = np.isfinite(method) & np.isfinite(baseline)
    reference = stats.wilcoxon(method[keep], baseline[keep], alternative="greater")
    assert result.n == 38
    assert result.pvalue == pytest.approx(reference.pvalue)
    assert result.effect == pytest.approx(np.median([a - b for a, b in zip(method[keep], baseline[keep])]))
    assert result.pvalue < 0.05


def test_signed_rank_is_one_sided_and_handles_degenerate_input() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(size=30)
    worse = signed_rank_vs_baseline(baseline - 1.0, baseline)
    assert worse.effect == pytest.approx(-1.0) and worse.pvalue > 0.99
    tied = signed_rank_vs_baseline(baseline, baseline)
    assert (tied.n, tied.effect, tied.pvalue) == (30, 0.0, 1.0)
    one = signed_rank_vs_baseline(np.array([2.0, np.nan]), np.array([1.0, 0.0]))
    assert one.n == 1 and one.effect == 1.0 and np.isnan(one.pvalue)


def test_corrections_match_brute_force() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan, 0.5])
    valid = [v for v in p if np.isfinite(v)]
    m = len(valid)
    bonferroni = correct_pvalues(p, "bonferroni")
    assert np.isnan(bonferroni[4])
    assert np.allclose(np.delete(bonferroni, 4), [min(1.0, v * m) for v in valid])
    # Benjamini-Hochberg by its definition: q_(i) = min over j >= i of p_(j) m / j
    order = sorted(valid)
    expected = {v: min(min(1.0, order[j] * m / (j + 1)) for j in range(i, m)) for i, v in enumerate(order)}
    bh = correct_pvalues(p, "bh")
    assert np.allclose(np.delete(bh, 4), [expected[v] for v in valid])
    with pytest.raises(ValueError, match="bonferroni"):
        correct_pvalues(p, "holm")  # type: ignore[arg-type]
    assert np.isnan(correct_pvalues(np.array([np.nan]), "bh")).all()


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_corrected_p_values_are_at_least_the_raw_ones(raw: list[float]) -> None:
    p = np.array(raw)
    bonferroni, bh = correct_pvalues(p, "bonferroni"), correct_pvalues(p, "bh")
    assert np.all(bonferroni >= p) and np.all(bh >= p - 1e-12)
    assert np.all(bh <= bonferroni + 1e-12) and np.all(bonferroni <= 1.0)


# --- Krippendorff's alpha -----------------------------------------------------------------------------------

def ordinal_alpha_by_hand(data: np.ndarray) -> float:
    """Krippendorff (2011) step by step: coincidences within units, the ordinal metric, 1 - D_o / D_e."""
    data = np.asarray(data, dtype=float)
    values = np.unique(data[np.isfinite(data)])
    o = np.zeros((values.size, values.size))
    for unit in data.T:
        pairable = unit[np.isfinite(unit)]
        for a, b in itertools.permutations(range(pairable.size), 2):
            c, k = np.searchsorted(values, pairable[a]), np.searchsorted(values, pairable[b])
            o[c, k] += 1 / (pairable.size - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = np.zeros_like(o)
    for c, k in itertools.product(range(values.size), repeat=2):
        lo, hi = min(c, k), max(c, k)
        delta[c, k] = (n_c[lo:hi + 1].sum() - (n_c[c] + n_c[k]) / 2) ** 2
    return float(1 - (n - 1) * (o * delta).sum() / (np.outer(n_c, n_c) * delta).sum())


def test_reference_alpha_reproduces_the_textbook_example() -> None:
    assert ordinal_alpha_by_hand(np.array(KRIPPENDORFF_C)) == pytest.approx(0.815, abs=5e-4)
    package = krippendorff.alpha(KRIPPENDORFF_C, level_of_measurement="ordinal")
    assert package == pytest.approx(0.815, abs=5e-4)


def test_ranking_alpha_hand_checked_tiny_case() -> None:
    # two samples rank three methods 1-2-3 and 1-3-2: coincidences o_11 = 2, o_23 = o_32 = 2, n_c = 2 each,
    # delta^2 = 4 (1-2, 2-3), 16 (1-3): alpha = 1 - 5 * 16 / (2 * (16 + 16 + 64)) = 7 / 12
    assert ranking_alpha(np.array([[0.1, 0.5, 0.9], [0.2, 0.9, 0.4]])) == pytest.approx(7 / 12)
    same_order = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [0.0, 5.0, 6.0]])
    assert ranking_alpha(same_order) == pytest.approx(1.0)


def test_ranking_alpha_matches_the_reference_on_rankings_with_ties() -> None:
    rng = np.random.default_rng(2)
    values = rng.integers(0, 4, size=(12, 5)).astype(float) + np.arange(5) * 0.7  # ties within samples
    expected = ordinal_alpha_by_hand(stats.rankdata(values, axis=1))
    assert ranking_alpha(values) == pytest.approx(expected)
    assert ranking_alpha(-values) == pytest.approx(expected)  # direction does not matter
    with_nan = np.vstack([values, [np.nan, 1, 2, 3, 4]])
    assert ranking_alpha(with_nan) == pytest.approx(expected)  # the sample with a NaN is dropped


def test_ranking_alpha_is_nan_when_undefined() -> None:
    assert np.isnan(ranking_alpha(np.array([[1.0, 2.0, 3.0]])))  # one sample
    assert np.isnan(ranking_alpha(np.ones((5, 1))))  # one method
    assert np.isnan(ranking_alpha(np.ones((5, 3))))  # every score tied


# --- inter-metric Spearman correlation ----------------------------------------------------------------------

def test_spearman_matrix_matches_pairwise_pearson_of_ranks() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(30, 4))
    values[:, 1] = values[:, 0] + rng.normal(0, 0.3, size=30)
    values[:, 2] = np.round(values[:, 2])  # ties
    values[4, 3] = np.nan  # dropped as a whole sample
    kept = values[np.all(np.isfinite(values), axis=1)]
    expected = np.array([[stats.pearsonr(stats.rankdata(kept[:, a]), stats.rankdata(kept[:, b]))[0]
                          for b in range(4)] for a in range(4)])
    assert np.allclose(spearman_matrix(values), expected)


def test_spearman_constant_metric_and_two_metrics() -> None:
    rng = np.random.default_rng(4)
    values = np.column_stack([rng.normal(size=10), np.full(10, 2.0), rng.normal(size=10)])
    corr = spearman_matrix(values)
    assert np.isnan(corr[0, 1]) and np.isnan(corr[1, 2]) and corr[1, 1] == 1.0
    assert corr[0, 2] == pytest.approx(stats.spearmanr(values[:, 0], values[:, 2]).statistic)
    two = spearman_matrix(values[:, [0, 2]])
    assert two.shape == (2, 2) and two[0, 1] == pytest.approx(corr[0, 2])


def test_mean_spearman_averages_over_methods() -> None:
    rng = np.random.default_rng(5)
    per_method = [rng.normal(size=(20, 3)) for _ in range(3)]
    per_method[2][:, 1] = 1.0  # constant for one method: that method does not count for metric 1
    expected = np.eye(3)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        rhos = [stats.spearmanr(v[:, a], v[:, b]).statistic for v in per_method
                if np.ptp(v[:, a]) and np.ptp(v[:, b])]
        expected[a, b] = expected[b, a] = np.mean(rhos)
    assert np.allclose(mean_spearman(per_method), expected)


@settings(max_examples=50, deadline=None)
@given(st.integers(3, 15), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_spearman_matrix_is_symmetric_with_unit_diagonal(n: int, k: int, seed: int) -> None:
    values = np.round(np.random.default_rng(seed).normal(size=(n, k)), 1)
    corr = spearman_matrix(values)
    assert corr.shape == (k, k)
    assert np.array_equal(np.diag(corr), np.ones(k))
    assert np.array_equal(np.isnan(corr), np.isnan(corr.T))
    assert np.allclose(corr, corr.T, equal_nan=True)
    assert np.all((corr[np.isfinite(corr)] >= -1 - 1e-12) & (corr[np.isfinite(corr)] <= 1 + 1e-12))


# --- CLES ---------------------------------------------------------------------------------------------------

def cles_by_hand(x: list[float], y: list[float]) -> float:
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y) / (len(x) * len(y))


def test_cles_matches_the_pairwise_loop() -> None:
    x, y = [1.0, 2.0, 2.0, 5.0, np.nan], [2.0, 0.0, 3.0]
    assert cles(np.array(x), np.array(y)) == pytest.approx(cles_by_hand(x[:4], y))
    assert np.isnan(cles(np.array([np.nan]), np.array([1.0])))
    paired = paired_cles(np.array([1.0, 2.0, 3.0, np.nan]), np.array([0.0, 2.0, 4.0, 1.0]))
    assert paired == pytest.approx((1 + 0.5 + 0) / 3)


@given(samples, samples)
def test_cles_bounds_complement_and_reference(x: list[float], y: list[float]) -> None:
    forward, backward = cles(np.array(x), np.array(y)), cles(np.array(y), np.array(x))
    assert 0.0 <= forward <= 1.0
    assert forward + backward == pytest.approx(1.0)
    assert forward == pytest.approx(cles_by_hand(x, y))


# --- bootstrap convergence of the median --------------------------------------------------------------------

def test_sample_sizes_double_from_eight_and_end_at_n() -> None:
    assert sample_sizes(100) == [8, 16, 32, 64, 100]
    assert sample_sizes(64) == [8, 16, 32, 64]
    assert sample_sizes(5) == [5] and sample_sizes(0) == []


def test_median_ci_widths_match_a_plain_loop() -> None:
    rng = np.random.default_rng(6)
    values = rng.normal(size=(50, 2))
    values[3, 1] = np.nan  # column 1 is drawn on its own, after the complete columns
    widths = median_ci_widths(values, [8, 50], resamples=300, seed=9)
    draw = np.random.default_rng(9)
    for i, m in enumerate([8, 50]):
        for j in (0, 1):
            column = np.sort(values[np.isfinite(values[:, j]), j])
            medians = [np.median(column[row]) for row in draw.integers(0, column.size, size=(300, m))]
            lo, hi = np.quantile(medians, [0.025, 0.975])
            assert widths[i, j] == pytest.approx(hi - lo)


def test_median_ci_width_at_n_agrees_with_scipy_bootstrap_and_shrinks() -> None:
    values = np.random.default_rng(7).normal(size=200)
    widths = median_ci_widths(values, [8, 32, 200], resamples=4000)
    ci = stats.bootstrap((values,), np.median, method="percentile", n_resamples=4000,
                         rng=np.random.default_rng(0)).confidence_interval
    assert widths[-1] == pytest.approx(ci.high - ci.low, rel=0.2)
    assert widths[0] > widths[1] > widths[2]
    assert np.isnan(median_ci_widths(np.array([1.0, np.nan]), [2])).all()
