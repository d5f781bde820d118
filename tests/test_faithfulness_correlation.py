"""Faithfulness Correlation against a plain loop, Quantus 0.6, a linear model, and properties.

The reference sends one masked input at a time through the model and correlates in NumPy; it takes the random
subsets from ``draw_subsets`` (the metric's own draws), whose sizes and spread are checked separately below.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.metrics.faithfulness_correlation import draw_subsets
from harness.metrics.maskers import masked_baseline
from harness.metrics.sensitivity_n import draw_subsets as sensitivity_subsets
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext
from tests.small_cases import Case, make_case

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread
NAME = "faithfulness_correlation"
SEED = 13
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=15, deadline=None)


def context(batch_size: int = 256, seed: int = SEED, memory_mb: int = 1024) -> RunContext:
    return RunContext(device=CPU, seed=seed, batch_size=batch_size, memory_mb=memory_mb)


def run(case: Case, batch_size: int = 256, seed: int = SEED, memory_mb: int = 1024,
        **params: Any) -> MetricResult:
    model, x, target, attr = case
    return METRICS.get(NAME).compute(MetricInputs(model, x, target, attr), context(batch_size, seed, memory_mb),
                                     **params)


def reference(case: Case, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """One masked input per (sample, run); pixel scores, sums and Pearson's r in NumPy."""
    model, x, target, attr = case
    n, channels = x.shape[0], x.shape[1] if x.ndim > 2 else 1
    a = attr.double().numpy().reshape(n, channels, -1)
    score = np.abs(a).max(1) if params.get("pixel_aggregation") == "max_abs" else a.mean(1)
    fill = masked_baseline(x, params.get("masker", "constant"), context().generator(),
                           value=params.get("mask_value", 0.0)).reshape(n, channels, -1)
    subsets = draw_subsets(score.shape[1], n, context(), **params).numpy()
    out = {key: np.zeros(n) for key in ("logits", "softmax")}
    with torch.no_grad():
        for i in range(n):
            before = model(x[i : i + 1])[0]
            sums, drops = [], {key: [] for key in out}
            for chosen in subsets[i]:
                masked = x[i].reshape(channels, -1).clone()
                masked[:, chosen] = fill[i][:, chosen]
                after = model(masked.reshape(1, *x.shape[1:]))[0]
                drops["logits"].append(float(before[target[i]] - after[target[i]]))
                drops["softmax"].append(float(before.softmax(0)[target[i]] - after.softmax(0)[target[i]]))
                sums.append(score[i][chosen].sum())
            for key, values in out.items():
                a_, b_ = np.array(sums), np.array(drops[key])
                constant = np.all(a_ == a_[0]) or np.all(b_ == b_[0])
                values[i] = 0.0 if constant else np.corrcoef(a_, b_)[0, 1]
    return out


@pytest.mark.parametrize(("kind", "params"), [
    ("cnn", {"subset_size": 40, "runs": 12}),
    ("cnn3", {"subset_size": 9, "runs": 10, "masker": "random", "pixel_aggregation": "max_abs"}),
    ("cnn", {"subset_size": 100, "runs": 8, "masker": "blur", "activation": "softmax"}),
    ("mlp", {"subset_size": 4, "runs": 15, "mask_value": 0.5}),
])
def test_matches_loop_reference(kind: str, params: dict[str, Any]) -> None:
    case = make_case(kind, n=3, seed=1)
    got = run(case, batch_size=7, **params)  # chunks of 7 rows split the samples' runs
    want = reference(case, params)
    for activation in ("logits", "softmax"):
        np.testing.assert_allclose(got.outputs[f"{NAME}_{activation}"].numpy(), want[activation], atol=2e-5)
    assert torch.equal(got.outputs[NAME], got.outputs[f"{NAME}_{params.get('activation', 'logits')}"])
    assert got.forward_passes == 3 * (1 + params["runs"]) and got.problems() == []


@pytest.mark.parametrize("baseline", [0.0, "black"])
@pytest.mark.parametrize(("kind", "activation"), [("cnn", "logits"), ("cnn", "softmax"), ("mlp", "logits")])
def test_agrees_with_quantus(kind: str, activation: str, baseline: Any, monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    """Quantus 0.6 ``FaithfulnessCorrelation`` fed our subsets: it draws, run by run and sample by sample,
    ``np.random.choice(n_features, subset_size, replace=False)`` over the *flattened values* (C * H * W; we
    draw pixels: the same for the C = 1 images and tabular data here). Its ``"black"`` baseline is each
    input's minimum (not 0), so the inputs are shifted to a minimum of exactly 0, where it equals our
    constant-0 masker. Tabular inputs go in as (N, 1, F) behind a ``Flatten``: Quantus' subset-size check
    rejects any ``subset_size`` >= 1 for (N, F) inputs (it also compares with ``prod(shape[2:])`` = 1)."""
    quantus = pytest.importorskip("quantus")
    caplog.set_level(logging.WARNING)  # Quantus logs "softmax=True ... Softmax module is added" per batch
    model, x, target, attr = make_case(kind, n=4, seed=3)
    x = x - x.flatten(1).amin(1).reshape(-1, *[1] * (x.ndim - 1))
    units, runs, size = x[0].numel(), 15, 7
    subsets = draw_subsets(units, 4, context(), subset_size=size, runs=runs)
    calls = iter(subsets.transpose(0, 1).reshape(-1, units))  # run-major, as Quantus loops

    def choice(n: int, k: int, replace: bool = True) -> np.ndarray:
        assert (n, k, replace) == (units, size, False)
        return next(calls).nonzero()[:, 0].numpy()

    monkeypatch.setattr(np.random, "choice", choice)
    theirs_model, x_in, a_in = (model, x, attr) if kind == "cnn" else (
        nn.Sequential(nn.Flatten(), model).eval(), x[:, None], attr[:, None])
    theirs = quantus.FaithfulnessCorrelation(
        nr_runs=runs, subset_size=size, normalise=False, abs=False, perturb_baseline=baseline,
        return_aggregate=False, disable_warnings=True,
    )(model=theirs_model, x_batch=x_in.numpy(), y_batch=target.numpy(), a_batch=a_in.numpy(),
      softmax=activation == "softmax", device="cpu", channel_first=True)
    assert next(calls, None) is None  # Quantus drew exactly our subsets
    ours = run((model, x, target, attr), subset_size=size, runs=runs, activation=activation)
    np.testing.assert_allclose(ours.outputs[NAME].numpy(), np.asarray(theirs), atol=1e-4)


def test_gradient_times_input_of_a_linear_model_scores_one() -> None:
    """A linear model with the constant-0 masker drops by exactly sum_{pixels in S} sum_c w_c x_c, which is
    C times the subset's sum of channel-mean gradient x input: correlation 1 (its negation: -1)."""
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)) + 0.1
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4)).eval()
    target = torch.tensor([0, 3, 1])
    attribution = model[1].weight.detach()[target].reshape(x.shape) * x
    ones = torch.ones(3, dtype=torch.float64)
    got = run((model, x, target, attribution), subset_size=16, runs=20)
    torch.testing.assert_close(got.outputs[f"{NAME}_logits"], ones, atol=1e-5, rtol=0)
    negated = run((model, x, target, -attribution), subset_size=16, runs=20)
    torch.testing.assert_close(negated.outputs[NAME], -ones, atol=1e-5, rtol=0)


def test_subsets_have_the_size_are_uniform_per_sample_and_own_streams() -> None:
    subsets = draw_subsets(50, 3, context(), subset_size=12, runs=400)
    assert subsets.shape == (3, 400, 50) and (subsets.sum(-1) == 12).all()
    share = subsets.double().mean(1)  # each unit is chosen with probability 12 / 50
    assert (share - 0.24).abs().max() < 0.08
    assert torch.equal(subsets[:2], draw_subsets(50, 2, context(batch_size=1), subset_size=12, runs=400))
    assert not torch.equal(subsets, draw_subsets(50, 3, context(seed=SEED + 1), subset_size=12, runs=400))
    theirs = sensitivity_subsets(torch.full((3,), 50), 50, context(), steps=1, subsets=400, min_fraction=0.24,
                                 max_fraction=0.24)
    assert (theirs.sum(-1) == 12).all() and not torch.equal(subsets, theirs)  # a stream of its own


cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["cnn", "cnn3", "mlp"]), "seed": st.integers(0, 2**16),
    "subset_size": st.integers(1, 10), "runs": st.integers(2, 12),
    "masker": st.sampled_from(["constant", "random"]), "activation": st.sampled_from(["logits", "softmax"]),
    "scale": st.floats(1e-3, 1e3), "batch_size": st.integers(1, 30), "memory_mb": st.sampled_from([1, 64]),
})


@PROPERTIES
@given(cases)
def test_bounds_constant_attribution_scale_and_budget_invariance(drawn: dict[str, Any]) -> None:
    model, x, target, attr = make_case(drawn["kind"], n=2, seed=drawn["seed"])
    params = {k: drawn[k] for k in ("subset_size", "runs", "masker", "activation")}
    got = run((model, x, target, attr), **params)
    assert got.problems() == [] and all(value.shape == (2,) for value in got.outputs.values())
    constant = run((model, x, target, torch.full_like(attr, 0.3)), **params)
    for value in constant.outputs.values():  # equal subset sums (exact in float64) correlate 0 exactly
        assert torch.equal(value, torch.zeros(2, dtype=torch.float64))
    scaled = run((model, x, target, attr * drawn["scale"]), **params)
    torch.testing.assert_close(scaled.outputs[NAME], got.outputs[NAME], atol=1e-5, rtol=0)
    # chunking changes no subset; in float64 (float32 forwards of other batch sizes round differently, and a
    # correlation of tiny drops over few runs amplifies that) it changes the values by rounding only
    double = (model.double(), x.double(), target, attr.double())
    whole = run(double, **params)
    budget = run(double, batch_size=drawn["batch_size"], memory_mb=drawn["memory_mb"], **params)
    for key, value in whole.outputs.items():
        torch.testing.assert_close(budget.outputs[key], value, atol=1e-9, rtol=0, msg=key)


def test_empty_batch_and_inputs_left_alone() -> None:
    model, x, target, attr = make_case("cnn", n=2)
    got = run((model, x[:0], target[:0], attr[:0]), subset_size=5, runs=3)
    assert all(value.shape == (0,) for value in got.outputs.values()) and got.forward_passes == 0
    model = nn.Sequential(nn.Dropout(0.5), model).train()
    copies = [t.clone() for t in (x, target, attr)]
    run((model, x, target, attr), subset_size=5, runs=3)
    assert model.training and all(torch.equal(a, b) for a, b in zip((x, target, attr), copies, strict=True))


def test_spec_metadata() -> None:
    spec = METRICS.get(NAME)
    assert spec.family == "faithfulness" and spec.modalities == {"image", "tabular"}
    assert spec.defaults["subset_size"] == 224 and spec.defaults["runs"] == 100  # Quantus' defaults
    assert spec.defaults["masker"] == "constant" and "Bhatt" in spec.reference
    assert run(make_case("cnn"), runs=2).problems() == []  # the default subset_size fits 16 x 16 images
    got = run(make_case("mlp"), subset_size=3, runs=4)
    assert got.higher_is_better and got.info["units"] == 10 and got.bounds[NAME] == (-1.0, 1.0)


@pytest.mark.parametrize(("kind", "params", "match"), [
    ("cnn", {"subset_size": 257}, r"'subset_size' = 257 exceeds the 256 units"),
    ("mlp", {}, r"'subset_size' = 224 exceeds the 10 units \(pixels, or tabular features\)"),
    ("mlp", {"subset_size": 0}, "'subset_size' = 0 must be at least 1"),
    ("mlp", {"runs": 1, "subset_size": 2}, "'runs' = 1 must be at least 2"),
    ("mlp", {"subset_size": 2.5}, "2.5"), ("mlp", {"masker": "smudge"}, "smudge.*'constant', 'random'"),
    ("mlp", {"activation": "relu"}, "relu"), ("mlp", {"pixel_aggregation": "sum"}, "'sum' is not valid"),
    ("mlp", {"nr_runs": 3}, "unknown parameter 'nr_runs'"),
])
def test_bad_params_name_the_value(kind: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        run(make_case(kind), **params)


def test_bad_inputs_name_the_problem() -> None:
    model, x, target, attr = make_case("mlp", n=2)
    with pytest.raises(ValueError, match=r"faithfulness_correlation: attributions shape \[2, 9\] differs"):
        run((model, x, target, attr[:, :9]), subset_size=2, runs=2)
    with pytest.raises(ValueError, match="attributions contain NaN"):
        run((model, x, target, attr.clone().fill_(math.nan)), subset_size=2, runs=2)
