"""Deletion / insertion against an independent per-sample, per-step loop, a hand-checked case, properties.

The reference below sorts pixels with NumPy and sends one perturbed input at a time through the model. It
takes the fully masked baseline from ``masked_baseline``, which ``test_maskers.py`` checks against its own
loop reference.
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

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.metrics.maskers import MASKERS, masked_baseline
from harness.metrics.perturbation import perturbation_curve, pixel_ranks, step_counts
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext

SEED = 3
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=25, deadline=None)
Case = tuple[nn.Module, Tensor, Tensor, Tensor]


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """A random-weight CNN on (3, 8, 8) images or an MLP on 10 tabular features."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "cnn":
            return nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 4)
            )
        return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))


def make_case(kind: str, n: int = 3, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, 8, 8) if kind == "cnn" else (n, 10)
    x = torch.rand(shape, generator=g) * 2 - 0.5
    attr = torch.randn(shape, generator=g)
    target = torch.randint(0, 4 if kind == "cnn" else 3, (n,), generator=g)
    return make_model(kind, seed), x, target, attr


def run(name: str, model: nn.Module, x: Tensor, target: Tensor, attr: Tensor, batch_size: int = 256,
        **params: Any) -> MetricResult:
    ctx = RunContext(device=CPU, seed=SEED, batch_size=batch_size)
    return METRICS.get(name).compute(MetricInputs(model, x, target, attr), ctx, **params)


def fully_masked(x: Tensor, masker: str) -> Tensor:
    """The baseline the metric uses: the masker applied with the run context's generator (offset 0)."""
    return masked_baseline(x, masker, RunContext(device=CPU, seed=SEED).generator())


def target_outputs(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        out = model.eval()(x)
    return out.gather(1, target[:, None])[:, 0], out.softmax(1).gather(1, target[:, None])[:, 0]


def reference(case: Case, name: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """One sample, one step, one forward pass at a time (``params`` as passed to the metric)."""
    model, x, target, attr = case
    n, steps = x.shape[0], params["steps"]
    a = attr.numpy().astype(np.float64)
    a = a.reshape(n, 1, -1) if a.ndim == 2 else a.reshape(n, a.shape[1], -1)
    scores = a.mean(axis=1) if params["pixel_aggregation"] == "mean" else np.abs(a).max(axis=1)
    pixels = x.numpy().reshape(a.shape)
    base = fully_masked(x, params.get("masker", "constant")).numpy().reshape(a.shape)
    ks = np.floor(np.linspace(0.0, params["max_fraction"], steps) * scores.shape[1] + 1e-9).astype(int)
    logits, probs = np.zeros((n, steps)), np.zeros((n, steps))
    model.eval()
    for i in range(n):
        ranked = np.argsort(-scores[i] if params["order"] == "morf" else scores[i], kind="stable")
        for s, k in enumerate(ks):
            chosen = np.zeros(scores.shape[1], dtype=bool)
            chosen[ranked[:k]] = True
            fill, keep = (pixels[i], base[i]) if name == "insertion" else (base[i], pixels[i])
            row = np.where(chosen, fill, keep)
            with torch.no_grad():
                out = model(torch.from_numpy(row).reshape(x.shape[1:])[None])[0]
            logits[i, s], probs[i, s] = float(out[target[i]]), float(out.softmax(0)[target[i]])
    return {"curve_logits": logits, "curve_softmax": probs, "auc_logits": logits.mean(1),
            "auc_softmax": probs.mean(1)}


@pytest.mark.parametrize("max_fraction", [1.0, 0.3])
@pytest.mark.parametrize("aggregation", ["mean", "max_abs"])
@pytest.mark.parametrize("masker", MASKERS)
@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("name", ["deletion", "insertion"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_matches_loop_reference(kind: str, name: str, order: str, masker: str, aggregation: str,
                                max_fraction: float) -> None:
    case = make_case(kind)
    params = {"order": order, "masker": masker, "pixel_aggregation": aggregation, "steps": 7,
              "max_fraction": max_fraction}
    got = run(name, *case, batch_size=5, **params)  # chunks of 5 rows split samples of 7 steps
    for key, value in reference(case, name, params).items():
        np.testing.assert_allclose(got.outputs[key].numpy(), value, atol=1e-5, rtol=1e-5, err_msg=key)
    distinct = len(set(step_counts(64 if kind == "cnn" else 10, 7, max_fraction)))
    assert got.forward_passes == case[1].shape[0] * distinct  # repeated k are evaluated once
    assert got.problems() == []


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("name", ["deletion", "insertion"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_ties_go_to_the_lower_index_first(kind: str, name: str, order: str) -> None:
    model, x, target, _ = make_case(kind, n=4)
    attr = torch.randint(-2, 3, x.shape, generator=torch.Generator().manual_seed(5)).float()  # many ties
    params = {"order": order, "pixel_aggregation": "max_abs", "steps": 9, "max_fraction": 1.0}
    got = run(name, model, x, target, attr, **params)
    want = reference((model, x, target, attr), name, params)
    np.testing.assert_allclose(got.outputs["curve_logits"].numpy(), want["curve_logits"], atol=1e-5)


def test_float64_inputs_match_the_reference() -> None:
    model, x, target, attr = make_case("mlp")
    case = (model.double(), x.double(), target, attr.double())
    params = {"order": "morf", "masker": "blur", "pixel_aggregation": "mean", "steps": 6, "max_fraction": 1.0}
    got = run("deletion", *case, **params)
    assert got.outputs["curve_logits"].dtype == torch.float64
    want = reference(case, "deletion", params)
    np.testing.assert_allclose(got.outputs["curve_logits"].numpy(), want["curve_logits"], atol=1e-12)


def linear_case() -> Case:
    """Logit 0 = 1*x0 + 2*x1 + 3*x2 + 4*x3, logit 1 = 0; x = (2, 1, 1, 1), attribution w*x = (2, 2, 3, 4)."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 1.0, 1.0, 1.0]])
    return model, x, torch.tensor([0]), x * model.weight[0].detach()


# k = 0..4. MoRF order: x3 (4), x2 (3), x0 (2), x1 (2: a tie, the higher index later). LeRF: x0, x1, x2, x3.
HAND = {
    ("deletion", "morf"): [11.0, 7.0, 4.0, 2.0, 0.0],  # 11 - 4, then - 3, then - 2 (x0), then - 2 (x1)
    ("deletion", "lerf"): [11.0, 9.0, 7.0, 4.0, 0.0],  # 11 - 2 (x0), - 2 (x1), - 3, - 4
    ("insertion", "morf"): [0.0, 4.0, 7.0, 9.0, 11.0],
    ("insertion", "lerf"): [0.0, 2.0, 4.0, 7.0, 11.0],
}


@pytest.mark.parametrize(("name", "order"), list(HAND))
def test_hand_checked_linear_model(name: str, order: str) -> None:
    got = run(name, *linear_case(), order=order, steps=5, max_fraction=1.0)
    logits = torch.tensor([HAND[name, order]])
    assert torch.allclose(got.outputs["curve_logits"], logits)
    assert torch.allclose(got.outputs["curve_softmax"], torch.sigmoid(logits))  # two classes, other logit 0
    assert got.outputs["auc_logits"].item() == pytest.approx(sum(HAND[name, order]) / 5)
    assert torch.equal(got.outputs["auc"], got.outputs["auc_softmax"])
    assert got.info["k"] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("name", "order", "better"), [
    ("deletion", "morf", False), ("deletion", "lerf", True),
    ("insertion", "morf", True), ("insertion", "lerf", False),
])
def test_direction(name: str, order: str, better: bool) -> None:
    assert run(name, *linear_case(), order=order, steps=3).higher_is_better is better


@pytest.mark.parametrize("name", ["deletion", "insertion"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_batch_invariance(kind: str, name: str) -> None:
    case = make_case(kind, n=4)
    results = [run(name, *case, batch_size=b, steps=11, masker="random") for b in (1, 7, 13, 10_000)]
    for other in results[1:]:
        for key, value in results[0].outputs.items():
            assert torch.allclose(other.outputs[key], value, atol=1e-6), key


cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["cnn", "mlp"]), "seed": st.integers(0, 2**16),
    "name": st.sampled_from(["deletion", "insertion"]), "order": st.sampled_from(["morf", "lerf"]),
    "masker": st.sampled_from(MASKERS), "pixel_aggregation": st.sampled_from(["mean", "max_abs"]),
    "steps": st.integers(1, 9), "max_fraction": st.floats(0.0, 1.0),
})


def split(drawn: dict[str, Any]) -> tuple[str, Case, dict[str, Any]]:
    params = {k: v for k, v in drawn.items() if k not in ("kind", "seed", "name")}
    return drawn["name"], make_case(drawn["kind"], n=2, seed=drawn["seed"]), params


@PROPERTIES
@given(cases)
def test_bounds_shapes_and_first_point(drawn: dict[str, Any]) -> None:
    name, (model, x, target, attr), params = split(drawn)
    got = run(name, model, x, target, attr, **params)
    assert got.problems() == []
    assert got.outputs["curve_softmax"].shape == (2, params["steps"])
    assert 0.0 <= got.outputs["auc_softmax"].min() and got.outputs["auc_softmax"].max() <= 1.0
    start = x if name == "deletion" else fully_masked(x, params["masker"])
    logit, prob = target_outputs(model, start, target)
    assert torch.allclose(got.outputs["curve_logits"][:, 0], logit, atol=1e-5)
    assert torch.allclose(got.outputs["curve_softmax"][:, 0], prob, atol=1e-6)


@PROPERTIES
@given(cases)
def test_invariant_to_increasing_transform(drawn: dict[str, Any]) -> None:
    name, (model, x, target, _), params = split(drawn)
    attr = torch.randint(-20, 20, x.shape, generator=torch.Generator().manual_seed(drawn["seed"])).float()
    # integers keep 3a + 1 exact; for max_abs only 3a is increasing in |a|
    transformed = 3 * attr + 1 if params["pixel_aggregation"] == "mean" else 3 * attr
    first = run(name, model, x, target, attr, **params)
    second = run(name, model, x, target, transformed, **params)
    for key, value in first.outputs.items():
        assert torch.equal(second.outputs[key], value), key


@PROPERTIES
@given(cases)
def test_endpoints_at_full_fraction(drawn: dict[str, Any]) -> None:
    name, (model, x, target, attr), params = split(drawn)
    params.update(order="morf", max_fraction=1.0, steps=max(2, params["steps"]))
    got = run(name, model, x, target, attr, **params)
    end = fully_masked(x, params["masker"]) if name == "deletion" else x
    logit, prob = target_outputs(model, end, target)
    assert torch.allclose(got.outputs["curve_logits"][:, -1], logit, atol=1e-5)
    assert torch.allclose(got.outputs["curve_softmax"][:, -1], prob, atol=1e-6)


@PROPERTIES
@given(cases)
def test_lerf_is_morf_of_negated_attribution(drawn: dict[str, Any]) -> None:
    name, (model, x, target, attr), params = split(drawn)
    params["pixel_aggregation"] = "mean"
    lerf = run(name, model, x, target, attr, **{**params, "order": "lerf"})
    morf = run(name, model, x, target, -attr, **{**params, "order": "morf"})
    assert torch.equal(lerf.outputs["curve_logits"], morf.outputs["curve_logits"])


def test_step_counts_floor_with_slack() -> None:
    assert step_counts(100, 2, 0.29) == [0, 29]  # 0.29 * 100 = 28.999999999999996 in floating point
    assert step_counts(784, 100, 0.15)[-1] == 117 and step_counts(64, 1, 1.0) == [0]
    assert step_counts(10, 11, 1.0) == list(range(11))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_pixel_ranks_match_a_stable_sort(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    ties = torch.randint(-2, 2, (3, 50), generator=g).float()
    scores = torch.cat([torch.randn(3, 50, generator=g), ties], 1)
    scores[:, :4] = torch.tensor([0.0, -0.0, 1e-40, -1e-40])  # signed zeros tie; subnormals order
    scores = scores.to(dtype)
    order = np.argsort(-scores.double().numpy(), axis=1, kind="stable")
    want = np.argsort(order, axis=1)  # the inverse permutation: each pixel's position
    assert np.array_equal(pixel_ranks(scores).numpy(), want)
    assert np.array_equal(pixel_ranks(scores, 7).numpy(), np.minimum(want, 7))


def test_perturbation_curve_per_sample_ks() -> None:
    model, x, target, scores = make_case("mlp", n=2)
    base, ctx = torch.zeros_like(x), RunContext(device=CPU, seed=0, batch_size=3)
    ks = torch.tensor([[0, 2, 10], [1, 3, 5]])
    both = perturbation_curve(model, x, target, scores, base, ks, insert=False, ctx=ctx)
    for i in range(2):
        part = slice(i, i + 1)
        one = perturbation_curve(model, x[part], target[part], scores[part], base[part], ks[i], insert=False,
                                 ctx=ctx)
        assert torch.allclose(both.logits[i], one.logits[0], atol=1e-6)
    assert both.forward_passes == 6


def test_leaves_inputs_and_modes_alone() -> None:
    model, x, target, attr = make_case("cnn")
    model = nn.Sequential(nn.Dropout(0.5), model)
    model.train()
    model[1][0].eval()  # mixed modes must come back exactly
    modes = [m.training for m in model.modules()]
    copies = [t.clone() for t in (x, target, attr)]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    got = run("deletion", model, x, target, attr, steps=5, masker="blur")
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip((x, target, attr), copies, strict=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    logit, _ = target_outputs(model, x, target)  # dropout off, so the first point is f(x)
    assert torch.allclose(got.outputs["curve_logits"][:, 0], logit, atol=1e-5)


def test_results_are_ordinary_tensors() -> None:
    got = run("insertion", *make_case("mlp"), steps=4)
    for value in got.outputs.values():
        assert not value.is_inference() and not value.requires_grad
        value.add_(1)  # downstream code may work in place


def test_spec_metadata() -> None:
    for name in ("deletion", "insertion"):
        spec = METRICS.get(name)
        assert spec.family == "faithfulness" and spec.modalities == {"image", "tabular"}
        assert spec.defaults["max_fraction"] == 0.15 and spec.defaults["steps"] == 100
        assert set(spec.choices["masker"]) == set(MASKERS)
        assert "Gevaert" in spec.reference


@pytest.mark.parametrize(("params", "match"), [
    ({"order": "sideways"}, "sideways"), ({"masker": "smudge"}, "smudge"), ({"steps": 0}, "'steps' = 0"),
    ({"steps": 2.5}, "2.5"), ({"max_fraction": 1.5}, "1.5"), ({"colour": 1}, "colour"),
    ({"pixel_aggregation": "sum"}, "sum"), ({"activation": "relu"}, "relu"),
])
def test_bad_params_name_the_value(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        run("deletion", *linear_case(), **params)


def test_bad_shapes_and_values_name_the_problem() -> None:
    model, x, target, attr = make_case("cnn", n=2)
    with pytest.raises(ValueError, match=r"attributions shape \[2, 3, 8\]"):
        run("deletion", model, x, target, attr[..., 0])
    with pytest.raises(ValueError, match=r"target must be a \(2,\) long tensor"):
        run("insertion", model, x, target[:1], attr)
    with pytest.raises(ValueError, match="target class 9 out of range"):
        run("deletion", model, x, torch.tensor([0, 9]), attr, steps=3)
    with pytest.raises(ValueError, match="attribution scores contain NaN"):
        run("deletion", model, x, target, attr.clone().fill_(math.nan))
    with pytest.raises(ValueError, match="inputs contain NaN or infinite"):
        run("insertion", model, x.clone().fill_(math.inf), target, attr)
    with pytest.raises(ValueError, match=r"inputs must be floating point, got torch.int64"):
        run("deletion", model, x.long(), target, attr)
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        run("deletion", model, torch.rand(4), target, torch.rand(4))


@pytest.mark.parametrize("softmax", [True, False])
def test_agrees_with_quantus_pixel_flipping(softmax: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus 0.6 ``PixelFlipping`` is deletion MoRF at ``max_fraction = 1`` with a different grid and AUC.

    With ``features_in_step = f`` Quantus masks ``f, 2f, ..., P`` top features (no unperturbed point) and
    integrates that curve with ``np.trapz(dx=1)``; ours with ``steps = P / f + 1`` has ``k = 0, f, ..., P``
    and AUC = mean. So Quantus' curve is ours without its first point, and its AUC is the trapezoid of that.
    Quantus sorts with an unstable ``np.argsort`` and flattens channels, so: one channel, no ties. Its
    ``np.trapz`` is gone in numpy 2.4; ``np.trapezoid`` is the same function under its new name.
    """
    quantus = pytest.importorskip("quantus")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 4)
        ).eval()
    g = torch.Generator().manual_seed(2)
    x, attr = torch.rand(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    target = torch.tensor([0, 1, 3])
    ours = run("deletion", model, x, target, attr, steps=17, max_fraction=1.0, masker="constant")
    curve = ours.outputs["curve_softmax" if softmax else "curve_logits"][:, 1:].numpy()
    data = {"model": model, "x_batch": x.numpy(), "y_batch": target.numpy(), "a_batch": attr.numpy(),
            "softmax": softmax, "device": "cpu", "channel_first": True}
    make = {"features_in_step": 4, "normalise": False, "abs": False, "perturb_baseline": 0.0,
            "disable_warnings": True}
    np.testing.assert_allclose(np.asarray(quantus.PixelFlipping(**make)(**data)), curve, atol=1e-5)
    their_auc = np.asarray(quantus.PixelFlipping(**make, return_auc_per_sample=True)(**data))
    np.testing.assert_allclose(their_auc, np.trapezoid(curve, axis=1), atol=1e-5)


def test_repeated_steps_are_evaluated_once() -> None:
    """8x8 pixels, 20 steps over 15%: k takes 10 distinct values; the curve is the same as step by step."""
    model, x, target, attr = make_case("cnn", n=3)
    scores = attr.mean(1).reshape(3, -1)
    base, ctx = torch.zeros_like(x), RunContext(device=CPU, seed=0, batch_size=4)
    ks = step_counts(64, 20, 0.15)
    assert len(set(ks)) == 10
    curves = perturbation_curve(model, x, target, scores, base, ks, insert=False, ctx=ctx)
    assert curves.forward_passes == 3 * 10 and curves.logits.shape == (3, 20)
    for step, k in enumerate(ks):
        one = perturbation_curve(model, x, target, scores, base, [k], insert=False, ctx=ctx)
        assert torch.equal(curves.logits[:, step], one.logits[:, 0])
        assert torch.equal(curves.softmax[:, step], one.softmax[:, 0])
