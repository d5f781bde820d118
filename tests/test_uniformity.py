"""ChaosMining uniformity score against a plain per-sample loop, hand-checked cases and properties."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.metrics.uniformity import EPS
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext

CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=40, deadline=None)


def run(attr: Tensor, truth: Tensor | None, mask: Tensor | None, **params: Any) -> MetricResult:
    inputs = MetricInputs(nn.Identity(), torch.zeros_like(attr), torch.zeros(len(attr), dtype=torch.long), attr,
                          mask, truth=truth)
    return METRICS.get("uniformity").compute(inputs, RunContext(device=CPU, seed=0), **params)


def reference(attr: np.ndarray, truth: np.ndarray, mask: np.ndarray, norm: str = "relevant") -> list[float]:
    """One sample, one feature at a time, in float64, straight from the paper's formula."""
    out = []
    for a, t, m in zip(attr, truth, mask, strict=True):
        relevant = [i for i in range(len(a)) if m[i]]
        a_sum = sum(abs(a[i]) for i in (relevant if norm == "relevant" else range(len(a))))
        t_sum = sum(abs(t[i]) for i in relevant)
        terms = []
        for i in relevant:
            ai = a[i] / a_sum if a_sum > 0 else 0.0
            ti = t[i] / t_sum if t_sum > 0 else 0.0
            terms.append(1 - abs(ai - ti) / (abs(ai) + abs(ti) + EPS))
        out.append(sum(terms) / len(terms))
    return out


def test_hand_checked_case() -> None:
    # relevant features 0, 1: a_hat = (0.5, 0.5), t_hat = (0.75, 0.25):
    # 1 - 0.25/1.25 = 0.8 and 1 - 0.25/0.75 = 2/3, mean 0.7333...
    attr = torch.tensor([[1.0, 1.0, 5.0]])
    truth = torch.tensor([[3.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    got = run(attr, truth, mask).outputs["uniformity"]
    assert got.item() == pytest.approx((0.8 + 2 / 3) / 2, abs=1e-6)
    # the seed's normalisation over all features: a_hat = (1/7, 1/7): 1 - (0.75-1/7)/(0.75+1/7) ...
    seed = run(attr, truth, mask, attribution_norm="all").outputs["uniformity"].item()
    a = 1 / 7
    expected = ((1 - (0.75 - a) / (0.75 + a)) + (1 - (0.25 - a) / (0.25 + a))) / 2
    assert seed == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("norm", ["relevant", "all"])
def test_matches_the_plain_loop(norm: str) -> None:
    rng = np.random.default_rng(3)
    attr, truth = rng.normal(size=(40, 9)), rng.normal(size=(40, 9))
    truth[:5] = 0.0  # an all-zero truth in some samples
    attr[5:8, :4] = 0.0
    mask = rng.random((40, 9)) < 0.5
    mask[:, 0] = True
    got = run(torch.tensor(attr), torch.tensor(truth), torch.tensor(mask), attribution_norm=norm)
    np.testing.assert_allclose(got.outputs["uniformity"].numpy(), reference(attr, truth, mask, norm), atol=1e-9)
    assert got.problems() == []


def test_batch_invariant_and_float32() -> None:
    rng = np.random.default_rng(0)
    attr, truth = torch.tensor(rng.normal(size=(30, 6))), torch.tensor(rng.normal(size=(30, 6)))
    mask = torch.ones(30, 6, dtype=torch.bool)
    whole = run(attr, truth, mask).outputs["uniformity"]
    parts = torch.cat([run(attr[i:i + 7], truth[i:i + 7], mask[i:i + 7]).outputs["uniformity"]
                       for i in range(0, 30, 7)])
    torch.testing.assert_close(whole, parts)
    single = run(attr.float(), truth.float(), mask).outputs["uniformity"]
    torch.testing.assert_close(single.double(), whole, atol=1e-5, rtol=0)


vectors = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=4, max_size=4)


@PROPERTIES
@given(a=vectors, t=vectors, scale=st.floats(1e-3, 1e3), relevant=st.integers(1, 4))
def test_bounds_scale_invariance_and_perfect_match(a: list[float], t: list[float], scale: float,
                                                   relevant: int) -> None:
    attr, truth = torch.tensor([a], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
    mask = torch.zeros(1, 4, dtype=torch.bool)
    mask[0, :relevant] = True
    score = run(attr, truth, mask).outputs["uniformity"].item()
    assert 0.0 <= score <= 1.0
    assert run(attr * scale, truth, mask).outputs["uniformity"].item() == pytest.approx(score, abs=1e-6)
    # noise features do not matter under the intended normalisation
    noisy = attr.clone()
    noisy[0, relevant:] += 50.0
    assert run(noisy, truth, mask).outputs["uniformity"].item() == pytest.approx(score, abs=1e-9)
    if truth[0, :relevant].abs().sum() > 1e-3:
        perfect = run(truth * scale, truth, mask).outputs["uniformity"].item()
        assert perfect == pytest.approx(1.0, abs=1e-5)


def test_opposite_sign_scores_zero_and_random_is_in_between() -> None:
    rng = np.random.default_rng(1)
    truth = torch.tensor(rng.uniform(0.5, 1.0, size=(200, 5)))
    mask = torch.ones(200, 5, dtype=torch.bool)
    assert run(-truth, truth, mask).outputs["uniformity"].max().item() < 1e-6
    random = run(torch.tensor(rng.normal(size=(200, 5))), truth, mask).outputs["uniformity"].mean().item()
    assert 0.1 < random < 0.7


def test_all_zero_attribution_scores_zero_where_truth_is_not() -> None:
    truth = torch.tensor([[1.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True]])
    got = run(torch.zeros(1, 3), truth, mask).outputs["uniformity"].item()
    assert got == pytest.approx(1 / 3, abs=1e-6)  # the third feature: both zero -> 1
    assert math.isfinite(got)


def test_errors_name_the_problem() -> None:
    attr = torch.ones(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs inputs.truth"):
        run(attr, None, mask)
    with pytest.raises(ValueError, match="needs inputs.mask"):
        run(attr, attr, None)
    with pytest.raises(ValueError, match="truth shape"):
        run(attr, torch.ones(2, 4), mask)
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\]"):
        run(attr, attr, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ParamError, match="attribution_norm.*choices: 'relevant', 'all'"):
        run(attr, attr, mask, attribution_norm="some")


def test_spec_declares_what_it_needs() -> None:
    spec = METRICS.get("uniformity")
    assert spec.needs_truth and spec.needs_mask and "regression" in spec.tasks
