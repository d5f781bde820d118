"""Recursive feature elimination (RFEwNA and the scikit-learn RFE baselines): the elimination loop by hand and
by properties, ``rfe_sklearn`` against ``sklearn.feature_selection.RFE`` itself, ``rfe`` wired to fake and to
really trained models, and the error messages."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator
from torch import Tensor, nn

import harness.methods  # registers the methods
import harness.metrics  # registers the metrics
import harness.models  # noqa: F401  (registers the models)
from harness.cases import NO_METHOD
from harness.metrics.elimination import drop_count, eliminate, final_index, schedule, select_columns
from harness.metrics.selection import make_estimator, sklearn_importance
from harness.models.training import build_model, train_model
from harness.specs import (
    METHODS,
    METRICS,
    MODELS,
    DataBundle,
    MetricInputs,
    MetricResult,
    ParamError,
    RunContext,
)

CPU = torch.device("cpu")
CTX = RunContext(device=CPU, seed=0)
PROPERTIES = settings(max_examples=40, deadline=None)
QUIET = logging.getLogger("tests.selection.quiet")
QUIET.setLevel(logging.WARNING)
CURVES = ("curve_precision", "curve_recall", "curve_error", "curve_features")


def fixed(importance: list[float], error: Callable[[Tensor], float] = lambda s: 0.0,
          calls: list[list[int]] | None = None) -> Callable[[Tensor], tuple[Tensor, float]]:
    """A score function with a fixed importance per original feature (and an error from the selection)."""
    weights = torch.tensor(importance, dtype=torch.float64)

    def score(selected: Tensor) -> tuple[Tensor, float]:
        if calls is not None:
            calls.append(selected.tolist())
        return weights[selected], error(selected)

    return score


def relevant_of(n: int, indices: list[int]) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[indices] = True
    return mask


# ------------------------------------------------------------------------------------ the elimination loop


def test_hand_checked_rounds() -> None:
    # R = {0, 3, 7}; 10 -> drop 5 (w 0, 1, 2, 3, 4: features 6, 1, 4, 8, 9) -> [0, 2, 3, 5, 7]
    # -> drop min(floor(2.5), 5 - 3) = 2 (w 5, 6: features 2, 7) -> [0, 3, 5] = keep: stop.
    w = [9.0, 1.0, 5.0, 8.0, 2.0, 7.0, 0.0, 6.0, 3.0, 4.0]
    calls: list[list[int]] = []
    rounds = eliminate(10, relevant_of(10, [0, 3, 7]), fixed(w, lambda s: s.numel() / 10, calls), 3, 0.5)
    assert calls == [list(range(10)), [0, 2, 3, 5, 7], [0, 3, 5]]
    assert [r.selected.tolist() for r in rounds] == calls
    assert [r.error for r in rounds] == pytest.approx([1.0, 0.5, 0.3])
    assert [r.precision for r in rounds] == pytest.approx([3 / 10, 3 / 5, 2 / 3])
    assert [r.recall for r in rounds] == pytest.approx([1.0, 1.0, 2 / 3])
    assert [r.size for r in rounds] == schedule(10, 3, 0.5) == [10, 5, 3]
    assert final_index(rounds, stop_on_worse=False) == 2


def test_ties_drop_the_lower_index_first() -> None:
    """As sklearn's RFE (a stable argsort): constant importance keeps the last features."""
    rounds = eliminate(6, relevant_of(6, [0, 1]), fixed([1.0] * 6), 2, 0.5)
    assert [r.selected.tolist() for r in rounds] == [[0, 1, 2, 3, 4, 5], [3, 4, 5], [4, 5]]
    assert [r.precision for r in rounds] == pytest.approx([2 / 6, 0.0, 0.0])
    # two zeros go first, then of the tied ones the lowest index (0)
    rounds = eliminate(6, relevant_of(6, [0, 1]), fixed([1.0, 1.0, 0.0, 1.0, 1.0, 0.0]), 3, 0.5)
    assert rounds[1].selected.tolist() == [1, 3, 4]


@pytest.mark.parametrize(("n", "keep", "drop", "sizes"), [
    (12, 2, 0.5, [12, 6, 3, 2]),
    (10, 3, 0.2, [10, 8, 7, 6, 5, 4, 3]),  # floor(0.2 * 10) = 2; then max(1, floor(1.6)) = 1 ...
    (5, 4, 1.0, [5, 4]),  # drop everything: capped at keep
    (7, 1, 1.0, [7, 1]),
    (4, 4, 0.5, [4]),  # keep = F: one round
    (100, 10, 0.29, [100, 71, 51, 37, 27, 20, 15, 11, 10]),  # 0.29 * 100 floors to 29, not 28
    (6, 1, 0.01, [6, 5, 4, 3, 2, 1]),  # step 1
])
def test_schedule(n: int, keep: int, drop: float, sizes: list[int]) -> None:
    assert schedule(n, keep, drop) == sizes
    rounds = eliminate(n, relevant_of(n, [0]), fixed(list(range(n))), keep, drop)
    assert [r.size for r in rounds] == sizes


def test_drop_count_never_undershoots_keep() -> None:
    assert drop_count(10, 9, 0.5) == 1
    assert drop_count(10, 10, 0.5) == 0
    assert drop_count(3, 1, 0.1) == 1
    assert drop_count(20, 1, 0.5) == 10


def test_stop_on_worse_keeps_the_round_before_the_rise() -> None:
    errors = {8: 0.5, 4: 0.3, 2: 0.4, 1: 0.1}
    score = fixed(list(range(8)), lambda s: errors[s.numel()])
    relevant = relevant_of(8, [6, 7])
    full = eliminate(8, relevant, score, 1, 0.5)
    assert [r.size for r in full] == [8, 4, 2, 1] and final_index(full, False) == 3
    early = eliminate(8, relevant, score, 1, 0.5, stop_on_worse=True)
    assert [r.size for r in early] == [8, 4, 2]  # the worse round is evaluated and recorded
    assert final_index(early, True) == 1 and early[1].selected.tolist() == [4, 5, 6, 7]
    flat = eliminate(8, relevant, fixed(list(range(8)), lambda s: 0.2), 1, 0.5, stop_on_worse=True)
    assert len(flat) == 4 and final_index(flat, True) == 3  # equal error is not worse


def test_eliminate_rejects_bad_arguments() -> None:
    relevant = relevant_of(4, [0])
    with pytest.raises(ValueError, match=r"keep = 5 must lie in \[1, 4\]"):
        eliminate(4, relevant, fixed([0.0] * 4), 5, 0.5)
    with pytest.raises(ValueError, match="drop = 0.0"):
        eliminate(4, relevant, fixed([0.0] * 4), 1, 0.0)
    with pytest.raises(ValueError, match="marks no feature"):
        eliminate(4, relevant_of(4, []), fixed([0.0] * 4), 1, 0.5)
    with pytest.raises(ValueError, match=r"importance has shape \[3\], expected \[4\]"):
        eliminate(4, relevant, lambda s: (torch.zeros(3), 0.0), 1, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        eliminate(4, relevant, lambda s: (torch.full((s.numel(),), float("nan")), 0.0), 1, 0.5)
    with pytest.raises(ValueError, match="error nan"):
        eliminate(4, relevant, lambda s: (torch.zeros(s.numel()), float("nan")), 1, 0.5)


@st.composite
def problems(draw: st.DrawFn) -> tuple[int, Tensor, list[float], int, float]:
    n = draw(st.integers(1, 40))
    relevant = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    importance = draw(st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n))  # many ties
    keep = draw(st.integers(1, n))
    drop = draw(st.floats(0.01, 1.0))
    return n, torch.tensor(relevant), importance, keep, drop


@PROPERTIES
@given(problems())
def test_properties(problem: tuple[int, Tensor, list[float], int, float]) -> None:
    n, relevant, importance, keep, drop = problem
    rounds = eliminate(n, relevant, fixed(importance), keep, drop)
    sizes = [r.size for r in rounds]
    assert sizes == schedule(n, keep, drop) and sizes[0] == n and sizes[-1] == keep
    assert all(a > b for a, b in itertools.pairwise(sizes))
    for before, after in itertools.pairwise(rounds):
        assert set(after.selected.tolist()) < set(before.selected.tolist())
        assert after.selected.tolist() == sorted(after.selected.tolist())
        # what went had no more importance than what stayed
        gone = set(before.selected.tolist()) - set(after.selected.tolist())
        assert max(importance[i] for i in gone) <= min(importance[i] for i in after.selected.tolist())
    for r in rounds:
        assert 0.0 <= r.precision <= 1.0 and 0.0 <= r.recall <= 1.0
        hits = int(relevant[r.selected].sum())
        assert r.precision == pytest.approx(hits / r.size)
        assert r.recall == pytest.approx(hits / int(relevant.sum()))


@PROPERTIES
@given(problems())
def test_perfect_importance_selects_exactly_the_relevant(
    problem: tuple[int, Tensor, list[float], int, float],
) -> None:
    n, relevant, importance, _, drop = problem
    perfect = [v + (10.0 if r else 0.0) for v, r in zip(importance, relevant.tolist(), strict=True)]
    rounds = eliminate(n, relevant, fixed(perfect), int(relevant.sum()), drop)
    assert rounds[-1].precision == 1.0 and rounds[-1].recall == 1.0
    assert all(r.recall == 1.0 for r in rounds)


# ----------------------------------------------------------------------------------- sub-bundles and masks


def linear_bundle(task: str, n_train: int = 160, n_test: int = 60, features: int = 8, relevant: int = 3,
                  seed: int = 0, classes: int = 2) -> DataBundle:
    """x ~ N(0, 1); y from the first ``relevant`` features (classification: argmax of random projections)."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    weights = torch.linspace(1.0, 2.0, relevant, dtype=torch.float64)
    if task == "regression":
        y: Tensor = x[:, :relevant] @ weights + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    else:
        projection = torch.randn(relevant, classes, generator=g, dtype=torch.float64)
        noisy = x[:, :relevant] @ projection + 0.3 * torch.randn(n, classes, generator=g, dtype=torch.float64)
        y = noisy.argmax(1)
    mask = torch.zeros(n_test, features, dtype=torch.bool)
    mask[:, :relevant] = True
    outputs = 1 if task == "regression" else classes
    return DataBundle(x[:n_train], y[:n_train], x[n_train:], y[n_train:], outputs, mask, task,
                      {"derivative": torch.zeros(n_test, features)})


def test_select_columns() -> None:
    data = linear_bundle("regression")
    sub = select_columns(data, [5, 0, 2])
    assert torch.equal(sub.x_train, data.x_train[:, [5, 0, 2]])
    assert torch.equal(sub.x_test, data.x_test[:, [5, 0, 2]])
    assert torch.equal(sub.mask_test, data.mask_test[:, [5, 0, 2]])
    assert sub.y_train is data.y_train and sub.task == "regression" and sub.num_classes == 1
    assert sub.truth_test == {} and sub.input_shape == (3,)
    for bad in ([], [8], [-1], [1, 1]):
        with pytest.raises(ValueError, match="select_columns"):
            select_columns(data, bad)


# -------------------------------------------------------------------------------- rfe_sklearn vs sklearn RFE


def sklearn_inputs(data: DataBundle) -> MetricInputs:
    return MetricInputs(model=nn.Identity(), x=data.x_test, target=data.y_test, attributions=torch.empty(0),
                        mask=data.mask_test, data=data)


@pytest.mark.parametrize(("estimator", "task", "classes"), [
    ("linear", "regression", 1), ("linear", "classification", 2), ("linear", "classification", 3),
    ("tree", "regression", 1), ("tree", "classification", 3), ("svm", "regression", 1),
    ("svm", "classification", 2),
])
def test_rfe_sklearn_matches_sklearn_rfe_step_one(estimator: str, task: str, classes: int) -> None:
    from sklearn.feature_selection import RFE

    data = linear_bundle(task, seed=classes, classes=max(classes, 2))
    for keep in (3, 2, 5):
        got = METRICS.get("rfe_sklearn").compute(
            sklearn_inputs(data), CTX, estimator=estimator, keep=keep, drop=0.01)  # floor(0.01 * 8) -> 1
        assert got.problems() == []
        x = data.x_train.double().numpy()
        y = data.y_train.numpy()
        peer = RFE(make_estimator(estimator, task, CTX.seed), n_features_to_select=keep, step=1)
        reference = peer.fit(x, y)
        rounds = got.info["rounds"]
        assert rounds[-1] == np.flatnonzero(reference.support_).tolist()
        # the whole path: the set of size k is what sklearn ranks at most k - keep + 1
        for selected in rounds:
            want = np.flatnonzero(reference.ranking_ <= len(selected) - keep + 1).tolist()
            assert selected == want, (estimator, keep)
        assert got.outputs["features"].tolist() == [keep]
        relevant = 3
        hits = sum(i < relevant for i in rounds[-1])
        assert got.outputs["precision"].tolist() == pytest.approx([hits / keep])
        assert got.outputs["recall"].tolist() == pytest.approx([hits / relevant])


class FixedCoef(BaseEstimator):
    """A scikit-learn estimator whose coef_ is a fixed (classes, F) table, restricted to the columns it is
    fitted on (the training matrix's first row holds the original column indices)."""

    def __init__(self, table: np.ndarray | None = None) -> None:
        self.table = table

    def fit(self, x: np.ndarray, y: np.ndarray) -> FixedCoef:
        self.coef_ = np.asarray(self.table)[:, x[0].astype(int)]
        return self


def test_importance_is_sklearn_rfes_sum_of_squares_over_classes() -> None:
    """Summed squares rank [9, 8, 3, 0.75] (keep feature 0); summed |coef| would rank [3, 4, 3, 1.5]."""
    from sklearn.feature_selection import RFE

    table = np.array([[3.0, 0.0, 1.0, 0.5], [0.0, 2.0, 1.0, 0.5], [0.0, 2.0, 1.0, 0.5]])
    x = np.tile(np.arange(4.0), (5, 1))
    reference = RFE(FixedCoef(table), n_features_to_select=1, step=1).fit(x, np.arange(5) % 3)

    def score(selected: Tensor) -> tuple[Tensor, float]:
        fitted = FixedCoef(table).fit(x[:, selected.numpy()], np.zeros(5))
        return torch.from_numpy(sklearn_importance(fitted)), 0.0

    rounds = eliminate(4, relevant_of(4, [0]), score, 1, 0.01)
    assert [r.selected.tolist() for r in rounds] == [[0, 1, 2, 3], [0, 1, 2], [0, 1], [0]]
    assert reference.support_.tolist() == [True, False, False, False]
    assert reference.ranking_.tolist() == [1, 2, 3, 4]


def test_rfe_sklearn_errors_are_the_estimators_own() -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    data = linear_bundle("regression")
    got = METRICS.get("rfe_sklearn").compute(sklearn_inputs(data), CTX)  # keep = 3 relevant, halving
    assert got.info["schedule"] == [8, 4, 3] and got.info["estimator"] == "linear"
    x, xt, y, yt = (t.numpy() for t in (data.x_train, data.x_test, data.y_train, data.y_test))
    for selected, error in zip(got.info["rounds"], got.outputs["curve_error"][0].tolist(), strict=True):
        want = np.abs(LinearRegression().fit(x[:, selected], y).predict(xt[:, selected]) - yt).mean()
        assert error == pytest.approx(want)
    assert got.outputs["error"].tolist() == got.outputs["curve_error"][0, -1:].tolist()
    data = linear_bundle("classification", classes=3)
    got = METRICS.get("rfe_sklearn").compute(sklearn_inputs(data), CTX, keep=2)
    x, xt, y, yt = (t.numpy() for t in (data.x_train, data.x_test, data.y_train, data.y_test))
    for selected, error in zip(got.info["rounds"], got.outputs["curve_error"][0].tolist(), strict=True):
        accuracy = LogisticRegression(max_iter=1000).fit(x[:, selected], y).score(xt[:, selected], yt)
        assert error == pytest.approx(1.0 - accuracy)


def test_rfe_sklearn_on_the_easy_problem_finds_the_relevant() -> None:
    data = linear_bundle("regression", features=12)
    for estimator in ("linear", "svm"):
        got = METRICS.get("rfe_sklearn").compute(sklearn_inputs(data), CTX, estimator=estimator)
        assert got.info["rounds"][-1] == [0, 1, 2]
        assert got.outputs["precision"].tolist() == [1.0] and got.outputs["recall"].tolist() == [1.0]


# ------------------------------------------------------------------------------------------- rfe (RFEwNA)


class Weighted(nn.Module):
    """A fixed linear model sum_j w_j x_j over the selected features (weights indexed by original feature)."""

    def __init__(self, weights: Tensor, selected: list[int]) -> None:
        super().__init__()
        self.linear = nn.Linear(len(selected), 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(weights[selected][None])

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.double())


class FakeTraining:
    """``fit`` building :class:`Weighted` models (recording every call) and an input x weight explainer."""

    def __init__(self, weights: Tensor) -> None:
        self.weights = weights
        self.calls: list[tuple[DataBundle, dict[str, Any]]] = []
        self.explained: list[int] = []

    def fit(self, bundle: DataBundle, identity: dict[str, Any]) -> nn.Module:
        self.calls.append((bundle, identity))
        return Weighted(self.weights, identity["rfe_features"])

    def explainer(self, model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        def explain(x: Tensor, target: Tensor) -> Tensor:
            assert len(target) == len(x) and not target.is_floating_point()
            self.explained.append(len(x))
            return x * model.linear.weight[0]

        return explain


def fake_case(weights: list[float], **change: Any) -> tuple[MetricInputs, FakeTraining, DataBundle]:
    """Regression y = x0 + x1 on 8 features; the case model and every fit weigh feature j by ``weights[j]``;
    ``change`` replaces inputs."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(140, 8, generator=g, dtype=torch.float64)
    y = x[:, 0] + x[:, 1]
    mask = torch.zeros(40, 8, dtype=torch.bool)
    mask[:, :2] = True
    data = DataBundle(x[:100], y[:100], x[100:], y[100:], 1, mask, "regression")
    training = FakeTraining(torch.tensor(weights, dtype=torch.float64))
    inputs = MetricInputs(
        model=Weighted(training.weights, list(range(8))), x=data.x_test,
        target=torch.zeros(40, dtype=torch.long),
        attributions=torch.empty(0), mask=mask, data=data, fit=training.fit, explainer=training.explainer,
    )
    return replace(inputs, **change), training, data


NOISY = [1.0, 1.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32]


def test_rfe_wiring_with_a_fake_fit() -> None:
    inputs, training, data = fake_case(NOISY)
    got = METRICS.get("rfe").compute(inputs, CTX)
    assert got.problems() == [] and got.primary == "precision" and got.higher_is_better
    assert got.info["rounds"] == [list(range(8)), [0, 1, 6, 7], [0, 1]] and got.info["schedule"] == [8, 4, 2]
    assert got.info["keep"] == 2 and got.info["relevant"] == [0, 1] and got.info["samples"] == 40
    identities = [identity for _, identity in training.calls]
    assert identities == [{"rfe_features": [0, 1, 6, 7]}, {"rfe_features": [0, 1]}]  # round 0: the case model
    for bundle, identity in training.calls:  # fit sees exactly the selected columns
        cols = identity["rfe_features"]
        assert torch.equal(bundle.x_train, data.x_train[:, cols])
        assert torch.equal(bundle.x_test, data.x_test[:, cols])
        assert torch.equal(bundle.mask_test, data.mask_test[:, cols]) and bundle.task == "regression"
    assert got.outputs["precision"].tolist() == [1.0] and got.outputs["recall"].tolist() == [1.0]
    assert got.outputs["features"].tolist() == [2.0] and got.outputs["error"].tolist() == pytest.approx([0.0])
    for name in ("precision", "recall", "error", "features"):
        assert got.outputs[name].shape == (1,)
    for name in CURVES:
        assert got.outputs[name].shape == (1, 3)
    assert got.outputs["curve_precision"][0].tolist() == pytest.approx([2 / 8, 2 / 4, 1.0])
    assert got.outputs["curve_recall"][0].tolist() == [1.0, 1.0, 1.0]
    assert got.outputs["curve_features"][0].tolist() == [8.0, 4.0, 2.0]
    # MAE of the noise terms still in the model, falling to 0
    x, y = data.x_test, data.y_test
    for selected, error in zip(got.info["rounds"], got.outputs["curve_error"][0].tolist(), strict=True):
        assert error == pytest.approx(float((x[:, selected] @ training.weights[selected] - y).abs().mean()))
    assert training.explained == [40, 40, 40]


def test_rfe_samples_keep_and_stop_on_worse() -> None:
    inputs, training, _ = fake_case(NOISY)
    got = METRICS.get("rfe").compute(inputs, CTX, samples=7, keep=1)
    assert training.explained == [7, 7, 7, 7] and got.info["schedule"] == [8, 4, 2, 1]
    assert got.outputs["recall"].tolist() == [0.5] and got.outputs["error"].item() > 0.1
    inputs, training, _ = fake_case(NOISY)
    got = METRICS.get("rfe").compute(inputs, CTX, keep=1, stop_on_worse=True)
    # the last round (one feature) is worse: it is recorded, but the selection is the round before it
    assert got.info["schedule"] == [8, 4, 2, 1] and got.info["final_round"] == 2
    assert got.outputs["features"].tolist() == [2.0] and got.outputs["recall"].tolist() == [1.0]
    assert got.outputs["error"].tolist() == pytest.approx([0.0])
    assert got.outputs["curve_error"].shape == (1, 4)


def test_rfe_with_a_useless_attribution_keeps_the_last_features() -> None:
    inputs, _, _ = fake_case(NOISY, explainer=lambda model: lambda x, target: torch.zeros_like(x))
    got = METRICS.get("rfe").compute(inputs, CTX)
    assert got.info["rounds"][-1] == [6, 7] and got.outputs["precision"].tolist() == [0.0]


@pytest.fixture(scope="module")
def trained() -> Callable[[DataBundle], tuple[MetricInputs, list[dict[str, Any]]]]:
    """Inputs with a real ``fit`` (an MLP of one hidden layer of 32, full-batch Adam) and captum Saliency."""

    def make(data: DataBundle) -> tuple[MetricInputs, list[dict[str, Any]]]:
        identities: list[dict[str, Any]] = []

        def train(bundle: DataBundle) -> nn.Module:
            mlp = MODELS.get("mlp")
            model = build_model(mlp, {"hidden": [32]}, bundle.input_shape, bundle.num_classes, 0)
            train_model(model, bundle, {"epochs": 200, "lr": 1e-2, "batch_size": 1024}, 0, CPU, QUIET)
            return model

        def fit(bundle: DataBundle, identity: dict[str, Any]) -> nn.Module:
            identities.append(identity)
            return train(bundle)

        inputs = MetricInputs(
            model=train(data), x=data.x_test, target=data.y_test, attributions=torch.empty(0),
            mask=data.mask_test, data=data, fit=fit,
            explainer=lambda model: METHODS.get("saliency").build(model, CTX),
        )
        return inputs, identities

    return make


def chaos_bundle(task: str, n: int = 600, features: int = 12, train: int = 480) -> DataBundle:
    """ChaosMining-style: x = clip(0.33 N(0, 1), -1, 1); y = x0 + x1^2 (classification: x0 - x1 > 0)."""
    g = torch.Generator().manual_seed(0)
    x = (0.33 * torch.randn(n, features, generator=g)).clamp(-1.0, 1.0)
    y = x[:, 0] + x[:, 1] ** 2 if task == "regression" else (x[:, 0] - x[:, 1] > 0).long()
    mask = torch.zeros(n - train, features, dtype=torch.bool)
    mask[:, :2] = True
    outputs = 1 if task == "regression" else 2
    return DataBundle(x[:train], y[:train], x[train:], y[train:], outputs, mask, task)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_rfe_end_to_end_finds_the_relevant_features(
    task: str, trained: Callable[[DataBundle], tuple[MetricInputs, list[dict[str, Any]]]], one_thread: None,
) -> None:
    inputs, identities = trained(chaos_bundle(task))
    got = METRICS.get("rfe").compute(inputs, CTX)
    assert got.problems() == []
    assert got.info["schedule"] == [12, 6, 3, 2] and got.info["rounds"][-1] == [0, 1]
    assert got.outputs["precision"].tolist() == [1.0] and got.outputs["recall"].tolist() == [1.0]
    assert got.outputs["curve_recall"][0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert identities == [{"rfe_features": r} for r in got.info["rounds"][1:]]
    assert len({str(i) for i in identities}) == len(identities) == 3
    errors = got.outputs["curve_error"][0]
    assert errors[-1] <= errors[0] + 0.01  # dropping noise features does not hurt
    if task == "classification":
        assert 0.0 <= errors.min() and errors.max() <= 0.2


# -------------------------------------------------------------------------------- registration and errors


def test_registration() -> None:
    for name, uses_method in (("rfe", True), ("rfe_sklearn", False)):
        spec = METRICS.get(name)
        assert spec.family == "selection" and spec.modalities == frozenset({"tabular"})
        assert spec.tasks == frozenset({"regression", "classification"}) and spec.needs_mask
        assert spec.needs_training and spec.uses_method is uses_method and "ChaosMining" in spec.reference
        assert spec.description
    assert NO_METHOD.name == "none"


@pytest.mark.parametrize(("name", "params", "match"), [
    ("rfe_sklearn", {"estimator": "forest"},
     r"'estimator' = 'forest' is not valid; choices: 'linear', 'tree', 'svm'"),
    ("rfe_sklearn", {"drop": 0.0}, r"'drop' = 0.0 must lie in \(0, 1\]"),
    ("rfe", {"drop": 1.5}, r"'drop' = 1.5 must lie in \(0, 1\]"),
    ("rfe", {"keep": -1}, r"'keep' = -1 must be at least 0"),
    ("rfe", {"keep": 9}, "'keep' = 9 exceeds the 8 features"),
    ("rfe_sklearn", {"keep": 9}, "'keep' = 9 exceeds the 8 features"),
    ("rfe", {"samples": -2}, "'samples' = -2 must be at least 0"),
    ("rfe", {"estimator": "linear"}, "unknown parameter 'estimator'"),
    ("rfe", {"drop": "half"}, "'drop' = 'half' has type str"),
])
def test_bad_params(name: str, params: dict[str, Any], match: str) -> None:
    inputs, _, _ = fake_case(NOISY)
    with pytest.raises(ParamError, match=match):
        METRICS.get(name).compute(inputs, CTX, **params)


def disagreeing_mask() -> Tensor:
    mask = torch.zeros(40, 8, dtype=torch.bool)
    mask[:, 0] = True
    mask[3, 5] = True
    return mask


@pytest.mark.parametrize(("names", "change", "match"), [
    (("rfe", "rfe_sklearn"), {"data": None}, "needs inputs.data"),
    (("rfe",), {"fit": None}, "needs inputs.fit"),
    (("rfe",), {"explainer": None}, "needs inputs.explainer"),
    (("rfe", "rfe_sklearn"), {"mask": None}, "needs inputs.mask"),
    (("rfe", "rfe_sklearn"), {"mask": torch.ones(40, 8)}, "must be a bool tensor"),
    (("rfe", "rfe_sklearn"), {"mask": torch.ones(40, 3, dtype=torch.bool)}, r"must be \(N, 8\)"),
    (("rfe", "rfe_sklearn"), {"mask": torch.zeros(40, 8, dtype=torch.bool)}, "marks no relevant feature"),
    (("rfe", "rfe_sklearn"), {"mask": disagreeing_mask()}, r"column\(s\) \[5\] are marked in some rows only"),
    (("rfe",), {"explainer": lambda model: lambda x, t: x[:, :1]}, r"explainer returned .* \[40, 1\]"),
])
def test_missing_or_bad_inputs(names: tuple[str, ...], change: dict[str, Any], match: str) -> None:
    inputs, _, _ = fake_case(NOISY, **change)
    for name in names:
        with pytest.raises(ValueError, match=match):
            METRICS.get(name).compute(inputs, CTX)


def test_rfe_sklearn_result_is_valid() -> None:
    inputs, _, _ = fake_case(NOISY)
    result: MetricResult = METRICS.get("rfe_sklearn").compute(inputs, CTX, estimator="tree")
    assert result.problems() == [] and result.forward_passes == 0
    assert set(result.outputs) == {"precision", "recall", "error", "features", *CURVES}
