"""Infidelity against a per-perturbation loop, captum's ``infidelity``, a linear model, and properties.

The reference sends one perturbed input at a time through the model and does the arithmetic in NumPy; it
takes the perturbations from ``draw_perturbations`` (the metric's own draws), whose distribution is checked
separately below.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import harness.metrics  # registers the metrics
import harness.models  # noqa: F401  (registers the models)
from harness.metrics.infidelity import PERTURBATIONS, draw_perturbations
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext
from tests.small_cases import Case
from tests.small_cases import make_case as small_case

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread
SEED = 5
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=15, deadline=None)


def make_case(kind: str, n: int = 3, seed: int = 0) -> Case:
    return small_case(kind, n, seed)


def context(batch_size: int = 256, seed: int = SEED) -> RunContext:
    return RunContext(device=CPU, seed=seed, batch_size=batch_size)


def run(case: Case, batch_size: int = 256, seed: int = SEED, **params: Any) -> MetricResult:
    model, x, target, attr = case
    return METRICS.get("infidelity").compute(MetricInputs(model, x, target, attr), context(batch_size, seed),
                                             **params)


def reference(case: Case, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """One perturbation at a time; beta and both infidelities from their textbook formulas."""
    model, x, target, attr = case
    shifts = draw_perturbations(x, context(), **params).double().numpy()
    a = attr.double().numpy().reshape(x.shape[0], -1)
    out: dict[str, np.ndarray] = {}
    for activation in ("logits", "softmax"):
        normalized, raw = np.zeros(x.shape[0]), np.zeros(x.shape[0])
        for i in range(x.shape[0]):
            d, delta = [], []
            with torch.no_grad():
                before = model(x[i : i + 1])[0]
                for shift in shifts[i]:
                    after = model(x[i : i + 1] - torch.from_numpy(shift).float()[None])[0]
                    f0, f1 = (before, after) if activation == "logits" else (
                        before.softmax(0), after.softmax(0))
                    delta.append(float(f0[target[i]] - f1[target[i]]))
                    d.append(float(shift.reshape(-1) @ a[i]))
            d_arr, delta_arr = np.array(d), np.array(delta)
            beta = np.mean(d_arr * delta_arr) / np.mean(d_arr**2) if np.any(d_arr) else 0.0
            normalized[i] = np.mean((beta * d_arr - delta_arr) ** 2)
            raw[i] = np.mean((d_arr - delta_arr) ** 2)
        out[f"normalized_{activation}"], out[f"raw_{activation}"] = normalized, raw
    return out


@pytest.mark.parametrize(("kind", "perturbation"), [
    ("cnn", "noisy_baseline"), ("cnn", "gaussian"), ("cnn", "square"), ("mlp", "noisy_baseline"),
    ("mlp", "gaussian"),
])
def test_matches_loop_reference(kind: str, perturbation: str) -> None:
    case = make_case(kind)
    params = {"perturbation": perturbation, "n_perturbations": 12, "square_size": 4}
    got = run(case, batch_size=5, **params)  # chunks of 5 rows split samples of 12 perturbations
    for key, want in reference(case, params).items():
        np.testing.assert_allclose(got.outputs[key].numpy(), want, rtol=1e-4, atol=1e-7, err_msg=key)
    assert torch.equal(got.outputs["infidelity"], got.outputs["normalized_logits"])
    assert got.forward_passes == 3 * (12 + 1)
    assert got.problems() == []


@pytest.mark.parametrize("activation", ["logits", "softmax"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_agrees_with_captum(perturbation: str, normalize: bool, activation: str) -> None:
    """captum 0.9 ``infidelity`` fed our perturbations: ``perturb_func`` returns (I, x - I) for the rows it is
    given, which with ``max_examples_per_batch`` unset are all N * P rows at once, sample-major (captum
    ``repeat_interleave``s the inputs), as ours. captum's normalised form expands the square; ours does
    not."""
    metrics = pytest.importorskip("captum.metrics")
    model, x, target, attr = case = make_case("cnn", n=4)
    params = {"perturbation": perturbation, "n_perturbations": 30}
    shifts = draw_perturbations(x, context(), **params).reshape(-1, *x.shape[1:])

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        assert torch.equal(inputs, x.repeat_interleave(30, dim=0))
        return shifts, inputs - shifts

    def forward(inputs: Tensor) -> Tensor:
        return model(inputs) if activation == "logits" else model(inputs).softmax(1)

    theirs = metrics.infidelity(forward, perturb, x, attr, target=target, n_perturb_samples=30,
                                normalize=normalize)
    ours = run(case, **params, normalize=normalize, activation=activation).outputs["infidelity"]
    torch.testing.assert_close(ours.float(), theirs, rtol=2e-4, atol=1e-7)


def linear_model(features: int, classes: int = 3, seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).eval()


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_gradient_of_a_linear_model_has_zero_infidelity(perturbation: str) -> None:
    """f(x) - f(x - I) = <w, I> exactly, so the gradient w has d = delta for every I: beta = 1 and both
    infidelities vanish (up to float32 rounding of the model's sums)."""
    model = linear_model(64)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 2, 1])
    gradient = model[1].weight.detach()[target].reshape(x.shape)
    got = run((model, x, target, gradient), perturbation=perturbation, n_perturbations=40)
    assert got.outputs["normalized_logits"].max() < 1e-10
    assert got.outputs["raw_logits"].max() < 1e-10
    torch.testing.assert_close(got.outputs["beta"], torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=0)
    # a wrong attribution (gradient x input) is penalised
    assert run((model, x, target, gradient * x), perturbation=perturbation, n_perturbations=40).outputs[
        "raw_logits"].min() > 1e-6


def test_all_zero_attribution_has_beta_zero() -> None:
    case = make_case("cnn", n=2)
    got = run((*case[:3], torch.zeros_like(case[3])), n_perturbations=10)
    assert torch.equal(got.outputs["beta"], torch.zeros(2, dtype=torch.float64))
    assert got.problems() == []
    # with beta = 0 both forms are E[delta^2]
    torch.testing.assert_close(got.outputs["normalized_logits"], got.outputs["raw_logits"])


def test_perturbation_distributions() -> None:
    x = torch.rand(2, 2, 12, 10, generator=torch.Generator().manual_seed(0)) + 1  # no zeros
    ctx = context()
    gaussian = draw_perturbations(x, ctx, perturbation="gaussian", n_perturbations=400, sigma=0.3)
    assert abs(float(gaussian.mean())) < 0.01 and abs(float(gaussian.std()) - 0.3) < 0.01
    noisy = draw_perturbations(x, ctx, perturbation="noisy_baseline", n_perturbations=400, sigma=0.3)
    residual = x[:, None] - noisy  # the noisy baseline x - I = eps
    assert abs(float(residual.mean())) < 0.01 and abs(float(residual.std()) - 0.3) < 0.01
    square = draw_perturbations(x, ctx, perturbation="square", n_perturbations=400, square_size=3)
    inside = square != 0
    assert torch.equal(square[inside], x[:, None].expand_as(square)[inside])  # I = x on the square
    assert torch.equal(inside[:, :, 0], inside[:, :, 1])  # every channel
    assert (inside[:, :, 0].sum((-1, -2)) == 9).all()
    rows, cols = inside[:, :, 0].any(-1), inside[:, :, 0].any(-2)
    first_row, first_col = rows.float().argmax(-1), cols.float().argmax(-1)
    assert set(first_row.unique().tolist()) == set(range(10))  # every corner position, the last included
    assert set(first_col.unique().tolist()) == set(range(8))


def test_perturbations_are_per_sample_and_device_free() -> None:
    """Sample i's perturbations depend on the seed and i only: not on the chunking nor on later samples."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full = draw_perturbations(x, context(batch_size=1), n_perturbations=7)
    assert torch.equal(full, draw_perturbations(x, context(batch_size=999), n_perturbations=7))
    assert torch.equal(full[:2], draw_perturbations(x[:2], context(), n_perturbations=7))
    assert not torch.equal(full, draw_perturbations(x, context(seed=SEED + 1), n_perturbations=7))


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_batch_invariance_and_determinism(perturbation: str) -> None:
    case = make_case("cnn", n=3)
    results = [run(case, batch_size=b, perturbation=perturbation, n_perturbations=11) for b in (1, 7, 10_000)]
    for other in results[1:]:
        for key, value in results[0].outputs.items():
            torch.testing.assert_close(other.outputs[key], value, rtol=1e-5, atol=1e-9, msg=key)
    again = run(case, batch_size=7, perturbation=perturbation, n_perturbations=11)
    assert all(torch.equal(again.outputs[k], v) for k, v in results[1].outputs.items())
    other_seed = run(case, seed=SEED + 1, perturbation=perturbation, n_perturbations=11)
    assert not torch.equal(other_seed.outputs["raw_logits"], results[0].outputs["raw_logits"])


cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["cnn", "mlp"]), "seed": st.integers(0, 2**16),
    "perturbation": st.sampled_from(["noisy_baseline", "gaussian"]),
    "activation": st.sampled_from(["logits", "softmax"]),
    "n_perturbations": st.integers(1, 8), "sigma": st.floats(0.01, 2.0), "scale": st.floats(-50, 50),
})


@PROPERTIES
@given(cases)
def test_bounds_optimal_scale_and_scale_invariance(drawn: dict[str, Any]) -> None:
    model, x, target, attr = make_case(drawn["kind"], n=2, seed=drawn["seed"])
    params = {k: drawn[k] for k in ("perturbation", "activation", "n_perturbations", "sigma")}
    got = run((model, x, target, attr), **params)
    assert got.problems() == []
    for key, value in got.outputs.items():
        if key != "beta":
            assert (value >= 0).all(), key
    for activation in ("logits", "softmax"):  # beta minimises E[(beta d - delta)^2]; beta = 1 is the raw form
        normalized, raw = got.outputs[f"normalized_{activation}"], got.outputs[f"raw_{activation}"]
        assert (normalized <= raw * (1 + 1e-9) + 1e-12).all()
    if abs(drawn["scale"]) > 1e-3:  # the normalised form ignores the attribution's scale
        scaled = run((model, x, target, attr * drawn["scale"]), **params)
        torch.testing.assert_close(scaled.outputs["infidelity"], got.outputs["infidelity"], rtol=1e-4,
                                   atol=1e-9)  # d = <I, a> is a float32 product, summed in float64


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_empty_batch(perturbation: str) -> None:
    model, x, target, attr = make_case("cnn", n=2)
    got = run((model, x[:0], target[:0], attr[:0]), perturbation=perturbation, n_perturbations=3)
    assert all(value.shape == (0,) for value in got.outputs.values()) and got.forward_passes == 0


def test_leaves_inputs_and_modes_alone() -> None:
    model, x, target, attr = make_case("cnn")
    model = nn.Sequential(nn.Dropout(0.5), model)
    model.train()
    copies = [t.clone() for t in (x, target, attr)]
    got = run((model, x, target, attr), n_perturbations=5, perturbation="square")
    assert model.training and model[1].training
    assert all(torch.equal(a, b) for a, b in zip((x, target, attr), copies, strict=True))
    for value in got.outputs.values():
        assert not value.is_inference() and not value.requires_grad


def test_spec_metadata() -> None:
    spec = METRICS.get("infidelity")
    assert spec.family == "faithfulness" and spec.modalities == {"image", "tabular"}
    assert spec.defaults["n_perturbations"] == 1000 and spec.defaults["sigma"] == 0.2
    assert spec.defaults["square_size"] == 5 and set(spec.choices["perturbation"]) == set(PERTURBATIONS)
    assert "Yeh" in spec.reference and not spec.needs_explain
    assert run(make_case("mlp"), n_perturbations=2).higher_is_better is False


@pytest.mark.parametrize(("params", "match"), [
    ({"perturbation": "salt"}, "salt"), ({"n_perturbations": 0}, "'n_perturbations' = 0"),
    ({"sigma": 0.0}, "'sigma' = 0.0"), ({"sigma": -1}, "-1"), ({"square_size": 0}, "'square_size' = 0"),
    ({"activation": "relu"}, "relu"), ({"normalize": 1}, "normalize"), ({"colour": 1}, "colour"),
    ({"n_perturbations": 2.5}, "2.5"),
])
def test_bad_params_name_the_value(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        run(make_case("mlp"), **params)


def test_bad_inputs_name_the_problem() -> None:
    model, x, target, attr = make_case("mlp", n=2)
    with pytest.raises(ValueError, match=r"square perturbation needs images \(N, C, H, W\), got shape \["):
        run((model, x, target, attr), perturbation="square")
    cnn = make_case("cnn", n=2)
    with pytest.raises(ValueError, match="square_size 17 exceeds the image size 16 x 16"):
        run(cnn, perturbation="square", square_size=17)
    with pytest.raises(ValueError, match=r"attributions shape \[2, 10\] differs from input \[2, 1, 16, 16\]"):
        run((*cnn[:3], attr))
    with pytest.raises(ValueError, match="attributions contain NaN"):
        run((model, x, target, attr.clone().fill_(math.nan)))
    with pytest.raises(ValueError, match="target class 5 out of range"):
        run((model, x, torch.tensor([0, 5]), attr), n_perturbations=2)
