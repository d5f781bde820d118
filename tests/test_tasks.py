"""Regression data, ground-truth attributions, retraining metrics and method-free metrics in the core:
compatibility rules, the 'none' method, regression training and targets, the derived-model cache."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import harness.methods
import harness.metrics
import harness.models  # noqa: F401  (registers the models)
from harness.cache import Cache
from harness.cases import NO_METHOD, expand
from harness.models.training import build_model, regression_scores, train_model
from harness.specs import (
    DATASETS,
    METRICS,
    MODELS,
    DataBundle,
    DatasetSpec,
    MetricInputs,
    MetricResult,
    MetricSpec,
    RunContext,
)
from harness.suite import SuiteError, load_suite
from harness.workspace import Workspace

CPU = torch.device("cpu")


def linear_bundle(seed: int, n: int = 240, features: int = 6) -> DataBundle:
    """y = 2 x0 - x1 (+ no noise): derivative truth (2, -1, 0, ...), relevant features 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = 2 * x[:, 0] - x[:, 1]
    split = n * 3 // 4
    truth = torch.zeros(n - split, features)
    truth[:, 0], truth[:, 1] = 2.0, -1.0
    mask = torch.zeros(n - split, features, dtype=torch.bool)
    mask[:, :2] = True
    return DataBundle(x[:split], y[:split], x[split:], y[split:], 1, mask, task="regression",
                      truth_test={"derivative": truth})


def _build(seed: int, n: int) -> DataBundle:
    return linear_bundle(seed, n)


def rounds_metric(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """A method-free retraining metric: refit on the first column only and report the test MAE."""
    assert inputs.data is not None and inputs.fit is not None and inputs.explainer is None
    data = inputs.data
    sub = DataBundle(data.x_train[:, :1], data.y_train, data.x_test[:, :1], data.y_test, 1, task=data.task)
    model = inputs.fit(sub, {"columns": [0]})
    with torch.no_grad():
        mae = (model(sub.x_test)[:, 0] - sub.y_test).abs().mean()
    return MetricResult(outputs={"mae": mae.reshape(1)}, primary="mae", higher_is_better=False)


if "test_linear" not in DATASETS:
    DATASETS.add("test_linear", DatasetSpec(
        name="test_linear", build=_build, modality="tabular", task="regression", has_mask=True,
        truths=frozenset({"derivative"}), defaults={"n": 240}))
    METRICS.add("test_refit", MetricSpec(
        name="test_refit", family="selection", compute=rounds_metric, modalities=frozenset({"tabular"}),
        tasks=frozenset({"regression"}), needs_training=True, uses_method=False, per_sample=False))

SUITE = """
[suite]
samples = 8

[datasets.lin]
dataset = "test_linear"

[datasets.digits]

[models.mlp]
hidden = [16]
[models.mlp.training]
epochs = 60
batch_size = 256

[methods.saliency]
abs = false
[methods.random]
[methods.feature_ablation]

[metrics.deletion]
steps = 4
[metrics.uniformity]
[metrics.top_k_relevant]
[metrics.refit]
metric = "test_refit"
"""


def suite_cases(tmp_path: Path) -> list[Any]:
    path = tmp_path / "tasks.toml"
    path.write_text(SUITE)
    return expand(load_suite(path))


def test_bundle_round_trips_task_and_truths() -> None:
    bundle = linear_bundle(0)
    again = DataBundle.from_arrays(bundle.arrays())
    assert again.task == "regression" and set(again.truth_test) == {"derivative"}
    torch.testing.assert_close(again.truth_test["derivative"], bundle.truth_test["derivative"])
    with pytest.raises(ValueError, match="task 'ranking' is not one of classification, regression"):
        DataBundle(bundle.x_train, bundle.y_train, bundle.x_test, bundle.y_test, 1, task="ranking")


def test_compatibility_by_task_truth_and_method(tmp_path: Path) -> None:
    ids = {case.id for case in suite_cases(tmp_path)}
    # regression: no deletion (classification only); uniformity only where the method has that truth kind
    assert not any(i.startswith("lin-") and i.endswith("-deletion") for i in ids)
    assert "lin-mlp-saliency-uniformity" in ids
    assert "lin-mlp-random-uniformity" not in ids
    assert "lin-mlp-feature_ablation-uniformity" not in ids  # the data set has no ablation truth
    assert {"lin-mlp-saliency-top_k_relevant", "lin-mlp-random-top_k_relevant"} <= ids
    # a method-free metric: one case per (data set, model), method 'none'
    assert [i for i in ids if i.endswith("-refit")] == ["lin-mlp-none-refit"]
    assert "digits-mlp-saliency-deletion" in ids and not any(i.startswith("digits-") and "uniformity" in i
                                                             for i in ids)


def test_method_name_none_is_reserved(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SUITE.replace("[methods.random]", "[methods.none]\nmethod = \"random\""))
    with pytest.raises(SuiteError, match="'none' is reserved"):
        load_suite(path)


def test_regression_training_reports_r2_and_mae() -> None:
    bundle = linear_bundle(1, n=800)
    model = build_model(MODELS.get("mlp"), {"hidden": [32]}, bundle.input_shape, 1, seed=0)
    report = train_model(model, bundle, {"epochs": 150, "batch_size": 600, "lr": 1e-2}, 0, CPU,
                         logging.getLogger("test"))
    assert report.score_name == "r2" and report.test_score > 0.95 and report.test_mae is not None
    r2, mae = regression_scores(model, bundle.x_test, bundle.y_test, 64, CPU)
    assert (r2, mae) == (report.test_score, report.test_mae)
    assert report.losses[-1] < report.losses[0] / 10


def test_regression_scores_against_sklearn() -> None:
    from sklearn.metrics import mean_absolute_error, r2_score

    torch.manual_seed(0)
    x = torch.randn(50, 1)
    y = torch.randn(50)
    model = torch.nn.Linear(1, 1)
    r2, mae = regression_scores(model, x, y, 7, CPU)
    with torch.no_grad():  # the scores are computed in float64; so is the reference
        pred = model(x)[:, 0].double().numpy()
    truth = y.double().numpy()
    assert r2 == pytest.approx(r2_score(truth, pred), rel=1e-9) and mae == pytest.approx(
        mean_absolute_error(truth, pred), rel=1e-9)


def test_workspace_regression_target_truth_and_derived_models(tmp_path: Path) -> None:
    cases = {case.id: case for case in suite_cases(tmp_path)}
    workspace = Workspace(Cache(tmp_path / "cache"), CPU)
    case = cases["lin-mlp-saliency-uniformity"]
    attributions = workspace.attributions(case)
    assert attributions.target.tolist() == [0] * 8  # regression: output 0
    assert attributions.label.is_floating_point()
    assert attributions.truth is not None and attributions.truth[0, :2].tolist() == [2.0, -1.0]
    assert workspace.model(case).score_name == "r2"

    refit = cases["lin-mlp-none-refit"]
    assert refit.method is NO_METHOD and not refit.uses_method
    bundle = workspace.dataset(refit)
    sub = DataBundle(bundle.x_train[:, :1], bundle.y_train, bundle.x_test[:, :1], bundle.y_test, 1,
                     task="regression")
    first = workspace.fit(refit, sub, {"columns": [0]})
    assert first.training is False and first[1].in_features == 1
    calls: list[int] = []
    original = train_model

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    import harness.models.training as training_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_module, "train_model", counting)
        again = Workspace(Cache(tmp_path / "cache"), CPU).fit(refit, sub, {"columns": [0]})
        assert calls == []  # cached on disk under (model spec, identity)
        Workspace(Cache(tmp_path / "cache"), CPU).fit(refit, sub, {"columns": [0], "round": 2})
        assert calls == [1]  # another identity trains again
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_model_artifacts_are_made_once_per_model_and_identity(tmp_path: Path) -> None:
    case = {case.id: case for case in suite_cases(tmp_path)}["lin-mlp-none-refit"]
    made: list[int] = []

    def make() -> dict[str, torch.Tensor]:
        made.append(1)
        return {"patch": torch.arange(6.0).reshape(2, 3)}

    first = Workspace(Cache(tmp_path / "cache"), CPU).artifact(case, {"metric": "x", "size": 3}, make)
    again = Workspace(Cache(tmp_path / "cache"), CPU).artifact(case, {"metric": "x", "size": 3}, make)
    assert made == [1] and torch.equal(first["patch"], again["patch"])
    Workspace(Cache(tmp_path / "cache"), CPU).artifact(case, {"metric": "x", "size": 4}, make)
    assert made == [1, 1]  # another identity makes it again
    with pytest.raises(TypeError, match="mapping of tensors"):
        Workspace(Cache(tmp_path / "cache"), CPU).artifact(case, {"bad": 1}, lambda: {"a": [1.0]})


def test_exclude_patterns_leave_cases_out(tmp_path: Path) -> None:
    path = tmp_path / "excl.toml"
    path.write_text(SUITE.replace("samples = 8", 'samples = 8\nexclude = ["lin-*-random-*", "*-refit"]'))
    ids = {case.id for case in expand(load_suite(path))}
    assert ids and not any("-random-" in i and i.startswith("lin-") for i in ids)
    assert not any(i.endswith("-refit") for i in ids) and "digits-mlp-random-deletion" in ids
    path.write_text(SUITE.replace("samples = 8", "samples = 8\nexclude = [3]"))
    with pytest.raises(SuiteError, match="exclude must be a list of strings; 3 is not"):
        load_suite(path)


def _attributions(x: torch.Tensor, mask: torch.Tensor) -> Any:
    from harness.workspace import Attributions

    n = len(x)
    return Attributions(values=-x, x=x, target=torch.zeros(n, dtype=torch.long), label=torch.zeros(n),
                        sample_index=torch.arange(n), mask=mask, seconds=0.0)


def test_example_maps_for_sequences_and_tabular_data() -> None:
    from harness.recorder import EXAMPLE_SIDE, EXAMPLES, examples

    audio = torch.randn(5, 10, 1000)
    channel = torch.zeros(5, 10, 1, dtype=torch.bool)
    channel[:, 3] = True
    maps = {k: torch.tensor(v) for k, v in examples(_attributions(audio, channel)).items()}
    assert maps["input"].shape == maps["attribution"].shape == maps["mask"].shape == (EXAMPLES, 10, EXAMPLE_SIDE)
    assert maps["mask"][:, 3].eq(1).all() and maps["mask"].sum() == EXAMPLES * EXAMPLE_SIDE
    torch.testing.assert_close(maps["attribution"][0, 0, 0], audio[0, 0, :16].abs().mean(), rtol=1e-5, atol=0)

    table = torch.randn(4, 7)
    relevant = torch.zeros(4, 7, dtype=torch.bool)
    relevant[:, :2] = True
    maps = {k: torch.tensor(v) for k, v in examples(_attributions(table, relevant)).items()}
    assert maps["attribution"].shape == (EXAMPLES, 1, 7)
    torch.testing.assert_close(maps["attribution"][:, 0], table[:EXAMPLES].abs())
    assert maps["mask"][0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0]


def test_model_entries_of_an_older_layout_are_never_read(tmp_path: Path) -> None:
    from harness.cache import save_json, save_tensors

    case = next(c for c in suite_cases(tmp_path) if c.id == "lin-mlp-saliency-uniformity")
    cache = Cache(tmp_path / "cache")
    old = cache.entry("models", case.model_spec())  # the format-1 key: the spec without "format"
    old.mkdir(parents=True)
    save_json(old / "report.json", {"train_accuracy": 1.0, "test_accuracy": 1.0, "losses": [], "seconds": 0})
    save_tensors(old / "weights.pt", {})
    model = Workspace(cache, CPU).model(case)
    assert model.score_name == "r2" and model.key != old.name


def test_methods_are_paired_only_with_modalities_and_models_they_apply_to(tmp_path: Path) -> None:
    path = tmp_path / "cam.toml"
    path.write_text(SUITE.replace("[methods.random]", "[methods.random]\n[methods.gradcam]")
                    .replace("[models.mlp]", "[models.cnn]\nmodel = \"small_cnn\"\n[models.mlp]"))
    ids = {case.id for case in expand(load_suite(path))}
    assert "digits-cnn-gradcam-deletion" in ids
    assert not any("-gradcam-" in i and ("-mlp-" in i or i.startswith("lin-")) for i in ids)


def test_correct_only_scores_the_first_correctly_classified_samples(tmp_path: Path) -> None:
    from harness.workspace import predictions

    path = tmp_path / "correct.toml"
    path.write_text(SUITE.replace("samples = 8", "samples = 30\ncorrect_only = true")
                    .replace("epochs = 60", "epochs = 1"))
    case = next(c for c in expand(load_suite(path)) if c.id == "digits-mlp-saliency-deletion")
    plain = next(c for c in suite_cases(tmp_path) if c.id == "digits-mlp-saliency-deletion")
    assert case.key() != plain.key()  # the protocol is part of the spec
    workspace = Workspace(Cache(tmp_path / "cache"), CPU)
    got = workspace.attributions(case)
    bundle = workspace.dataset(case)
    model = workspace.model(case).module
    predicted = predictions(model, bundle.x_test, workspace.context(case))
    expected = (predicted == bundle.y_test).nonzero()[:, 0][:30]
    assert 0 < len(expected) and torch.equal(got.sample_index, expected)
    assert torch.equal(got.label, bundle.y_test[expected]) and torch.equal(got.x, bundle.x_test[expected])
    assert bool((predicted[bundle.y_test != predicted]).numel())  # one epoch leaves mistakes to skip
