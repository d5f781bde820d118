"""Sensitivity-n, Seg-Sensitivity-n, Max- and Avg-Sensitivity against plain loops, peers, hand-checked cases.

The references send one masked (or noisy) input at a time through the model (or the explainer), and take the
random subsets / noise from the metrics' own ``draw_subsets`` / ``draw_noise``, whose distributions are
checked separately below.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import harness.metrics  # registers the metrics
import harness.models  # noqa: F401  (registers the models)
from harness.metrics.maskers import MASKERS, masked_baseline
from harness.metrics.rows import target_outputs
from harness.metrics.sensitivity import draw_noise
from harness.metrics.sensitivity_n import draw_subsets, pearson_rows
from harness.segmentation import slic_segments
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext
from tests.small_cases import Case, make_case

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread
SEED = 11
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=12, deadline=None)
SMALL = {"steps": 3, "subsets": 6}


def context(batch_size: int = 256, seed: int = SEED) -> RunContext:
    return RunContext(device=CPU, seed=seed, batch_size=batch_size)


def run(name: str, case: Case, batch_size: int = 256, seed: int = SEED,
        explain: Callable[[Tensor, Tensor], Tensor] | None = None, **params: Any) -> MetricResult:
    model, x, target, attr = case
    inputs = MetricInputs(model, x, target, attr, explain=explain)
    return METRICS.get(name).compute(inputs, context(batch_size, seed), **params)


def np_pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def sens_reference(case: Case, params: dict[str, Any], segmented: bool) -> dict[str, np.ndarray]:
    """Units, subsets and output drops one masked input at a time; per-size Pearson via ``np.corrcoef``."""
    model, x, target, attr = case
    n = x.shape[0]
    a = attr.double().numpy().reshape(n, x.shape[1] if x.ndim > 2 else 1, -1)
    if segmented:
        labels = slic_segments(x, params.get("n_segments", 100), 10.0, True).reshape(n, -1).numpy()
        pixel_score = a.mean(1)
        scores = [np.array([pixel_score[i][labels[i] == s].mean() for s in range(labels[i].max() + 1)])
                  for i in range(n)]
    else:
        labels = np.broadcast_to(np.arange(a.shape[2]), (n, a.shape[2]))
        scores = list(a.mean(1) if params.get("pixel_aggregation", "mean") == "mean" else np.abs(a).max(1))
    units = torch.tensor([len(s) for s in scores])
    chosen = draw_subsets(units, int(units.max()), context(), segmented=segmented, **params).numpy()
    base = masked_baseline(x, params.get("masker", "constant"), context().generator()).numpy()
    steps, subsets, repeats = params["steps"], params["subsets"], params.get("repeats", 1)
    out = {f"corr_{act}": np.zeros((n, repeats, steps)) for act in ("logits", "softmax")}
    for i in range(n):
        with torch.no_grad():
            before = model(x[i : i + 1])[0]
        drops: dict[str, list[float]] = {"logits": [], "softmax": []}
        sums = []
        for row in chosen[i]:
            masked_pixels = row[labels[i]].reshape(1, -1)
            image = x[i].numpy().reshape(-1 if x.ndim == 2 else x.shape[1], masked_pixels.shape[1])
            values = np.where(masked_pixels, base[i].reshape(image.shape), image).reshape(x.shape[1:])
            with torch.no_grad():
                after = model(torch.from_numpy(values)[None])[0]
            drops["logits"].append(float(before[target[i]] - after[target[i]]))
            drops["softmax"].append(float(before.softmax(0)[target[i]] - after.softmax(0)[target[i]]))
            sums.append(scores[i][row[: len(scores[i])]].sum())
        for act in ("logits", "softmax"):
            d = np.array(drops[act]).reshape(repeats, steps, subsets)
            s = np.array(sums).reshape(repeats, steps, subsets)
            for r in range(repeats):
                for t in range(steps):
                    out[f"corr_{act}"][i, r, t] = np_pearson(s[r, t], d[r, t])
    return out


@pytest.mark.parametrize(("name", "kind", "params"), [
    ("sensitivity_n", "cnn", {"masker": "constant"}),
    ("sensitivity_n", "cnn3", {"masker": "random", "pixel_aggregation": "max_abs"}),
    ("sensitivity_n", "cnn", {"masker": "blur", "repeats": 2, "activation": "softmax"}),
    ("sensitivity_n", "mlp", {"masker": "random", "min_fraction": 0.2, "max_fraction": 0.9}),
    ("seg_sensitivity_n", "cnn3", {"masker": "constant", "n_segments": 20}),
    ("seg_sensitivity_n", "cnn", {"masker": "blur", "repeats": 2}),
])
def test_sensitivity_n_matches_loop_reference(name: str, kind: str, params: dict[str, Any]) -> None:
    case = make_case(kind)
    params = {**SMALL, **params}
    got = run(name, case, batch_size=5, **params)  # chunks of 5 rows split the runs of 6 subsets
    want = sens_reference(case, params, segmented=name.startswith("seg"))
    activation = params.get("activation", "logits")
    corr = want[f"corr_{activation}"]
    np.testing.assert_allclose(got.outputs["correlations"].numpy(), corr.mean(1), atol=2e-5)
    np.testing.assert_allclose(got.outputs["repeats"].numpy(), corr.mean(2), atol=2e-5)
    np.testing.assert_allclose(got.outputs["sensitivity_n"].numpy(), corr.mean((1, 2)), atol=2e-5)
    for act in ("logits", "softmax"):
        np.testing.assert_allclose(got.outputs[f"sensitivity_n_{act}"].numpy(),
                                   want[f"corr_{act}"].mean((1, 2)), atol=2e-5)
    rows = params.get("repeats", 1) * params["steps"] * params["subsets"]
    assert got.forward_passes == 2 * (rows + 1)
    assert got.problems() == []


def test_subsets_have_the_right_sizes_and_are_uniform() -> None:
    units = torch.tensor([40, 25])
    params = {"steps": 4, "subsets": 500, "min_fraction": 0.1, "max_fraction": 0.5}
    chosen = draw_subsets(units, 40, context(), segmented=True, **params).reshape(2, 4, 500, 40)
    for i, count in enumerate(units.tolist()):
        sizes = [math.floor(t * count + 1e-9) for t in np.linspace(0.1, 0.5, 4)]
        assert chosen[i].sum(-1).tolist() == [[s] * 500 for s in sizes]
        assert not chosen[i, ..., count:].any()  # units a sample lacks are never chosen
        counts, expected = chosen[i, ..., :count].sum((0, 1)).double(), 500 * sum(sizes) / count
        assert (counts - expected).abs().max() < 4 * math.sqrt(expected)  # each unit chosen n / U of the time
        assert len({tuple(row.tolist()) for row in chosen[i, 3]}) > 450  # subsets differ
    again = draw_subsets(units[:1], 40, context(batch_size=3), segmented=True, **params)
    assert torch.equal(again[0], chosen[0].reshape(-1, 40))  # independent of chunking and later samples


def linear_image_model(weight: Tensor) -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.numel(), 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = weight.reshape(-1)
        model[1].bias.zero_()
    return model.eval()


def test_gradient_times_input_of_a_linear_model_scores_one() -> None:
    """With a zero masker, f(x) - f(x masked on S) = sum_{i in S} w_i x_i: gradient x input predicts every
    drop exactly (correlation 1 at every size); its negation scores -1."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 8, 8, generator=g)
    model, x = linear_image_model(weight), torch.rand(3, 2, 8, 8, generator=g)
    target = torch.zeros(3, dtype=torch.long)
    attribution = weight * x
    got = run("sensitivity_n", (model, x, target, attribution), **SMALL)
    ones = torch.ones(3, 3, dtype=torch.float64)
    torch.testing.assert_close(got.outputs["correlations"], ones, atol=1e-6, rtol=0)
    negated = run("sensitivity_n", (model, x, target, -attribution), **SMALL)
    torch.testing.assert_close(negated.outputs["sensitivity_n"], -ones[0], atol=1e-6, rtol=0)


def test_segment_attribution_of_a_linear_model_scores_one() -> None:
    """Weights w_p = c_s / (|s| x_p) on segment s give f(x) - f(x without the segments S) = sum_{s in S} c_s,
    the sum of the segment-mean attributions of a = c_s on s."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 16, 16, generator=g) + 0.5
    labels = slic_segments(x, 20, 10.0, True)
    c = [torch.randn(int(labels[i].max()) + 1, generator=g) for i in range(2)]
    for i in range(2):
        ids = labels[i, 0]
        sizes = torch.bincount(ids.reshape(-1)).float()
        weight = (c[i][ids] / sizes[ids])[None].expand(3, -1, -1) / (3 * x[i])
        attribution = c[i][ids][None].expand(3, -1, -1)[None]
        case = (linear_image_model(weight), x[i : i + 1], torch.tensor([0]), attribution.contiguous())
        got = run("seg_sensitivity_n", case, n_segments=20, **SMALL)
        one = torch.ones(1, dtype=torch.float64)
        torch.testing.assert_close(got.outputs["sensitivity_n"], one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sensitivity_n", "seg_sensitivity_n"])
def test_constant_attribution_or_model_correlates_zero(name: str) -> None:
    """Equal subset sums (a constant map: every size-n subset sums to n c exactly, in float64) or equal drops
    (a model that ignores its input) are a zero variance: correlation 0 (seed-systems.md §2 [bug] note)."""
    model, x, target, attr = make_case("cnn3")
    value = 0.1 if name == "sensitivity_n" else 0.5  # segment means of 0.1 (float32 sum / size) are not exact
    constant = run(name, (model, x, target, torch.full_like(attr, value)), **SMALL)
    assert torch.equal(constant.outputs["correlations"], torch.zeros(2, 3, dtype=torch.float64))
    blind = nn.Sequential(nn.Flatten(), nn.Linear(768, 10))
    with torch.no_grad():
        blind[1].weight.zero_()
    flat = run(name, (blind.eval(), x, target, attr), masker="random", **SMALL)
    assert torch.equal(flat.outputs["sensitivity_n"], torch.zeros(2, dtype=torch.float64))


def test_pearson_rows() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 9, generator=g, dtype=torch.float64), torch.randn(4, 3, 9, generator=g,
                                                                                dtype=torch.float64)
    b[0, 0] = 7.0
    a[1, 1] = 0.1  # constant but not exactly representable: its float mean is not 0.1 exactly
    got = pearson_rows(a, b)
    want = np.array([[[np_pearson(a[i, j].numpy(), b[i, j].numpy()) for j in range(3)] for i in range(4)]])[0]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    assert got[0, 0] == 0 and got[1, 1] == 0
    linear = pearson_rows(a, 2 * a + 1)
    assert linear[1, 1] == 0 and (linear.flatten()[torch.arange(12) != 4] - 1).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["sensitivity_n", "seg_sensitivity_n"])
def test_batch_invariance_determinism_and_repeats(name: str) -> None:
    case = make_case("cnn3", n=3)
    params = {**SMALL, "masker": "random", "repeats": 2}
    results = [run(name, case, batch_size=b, **params) for b in (1, 7, 10_000)]
    for other in results[1:]:
        for key, value in results[0].outputs.items():
            torch.testing.assert_close(other.outputs[key], value, atol=1e-5, rtol=0, msg=key)
    again = run(name, case, batch_size=7, **params)
    assert all(torch.equal(again.outputs[k], v) for k, v in results[1].outputs.items())
    other_seed = run(name, case, seed=SEED + 1, **params)
    assert not torch.equal(other_seed.outputs["repeats"], results[0].outputs["repeats"])
    repeats = results[0].outputs["repeats"]
    assert repeats.shape == (3, 2) and not torch.equal(repeats[:, 0], repeats[:, 1])  # fresh subsets
    single = run(name, case, **{**params, "repeats": 1})  # repeat 0 is the first draw of every sample
    torch.testing.assert_close(single.outputs["sensitivity_n"], repeats[:, 0], atol=1e-5, rtol=0)


sens_cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["cnn", "cnn3", "mlp"]), "seed": st.integers(0, 2**16),
    "masker": st.sampled_from(MASKERS), "steps": st.integers(1, 4), "subsets": st.integers(2, 6),
    "min_fraction": st.floats(0.0, 0.5), "activation": st.sampled_from(["logits", "softmax"]),
})


@PROPERTIES
@given(sens_cases)
def test_sensitivity_n_bounds_and_shapes(drawn: dict[str, Any]) -> None:
    model, x, target, attr = make_case(drawn["kind"], n=2, seed=drawn["seed"])
    params = {k: v for k, v in drawn.items() if k not in ("kind", "seed")}
    got = run("sensitivity_n", (model, x, target, attr), max_fraction=drawn["min_fraction"] + 0.3, **params)
    assert got.problems() == []
    assert got.outputs["correlations"].shape == (2, drawn["steps"]) and got.outputs["repeats"].shape == (2, 1)
    for value in got.outputs.values():
        assert value.abs().max() <= 1.0


def test_quantus_sensitivity_n_under_its_definition() -> None:
    """Quantus 0.6 ``SensitivityN`` is a different quantity: it masks the top ``k * f`` features in
    attribution order (cumulatively, f = ``features_in_step``), pairs each step's drop f(x) - f(x masked) with
    the sum of the attribution of that step's f features only, and correlates over the *samples* of the
    batch, one value per step (``pearsonr(..., axis=1)`` of (steps, N) arrays). No random subsets exist to
    share. Under that definition our pieces (masked-row forward, row-wise Pearson) reproduce Quantus'
    numbers."""
    quantus = pytest.importorskip("quantus")
    model, x, target, attr = make_case("cnn", n=6, seed=2)
    step, steps_kept = 4, int(0.8 * 256 // 4)
    theirs = np.asarray(quantus.SensitivityN(
        features_in_step=step, n_max_percentage=0.8, normalise=False, abs=False, perturb_baseline=0.0,
        return_aggregate=False, disable_warnings=True,
    )(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(), softmax=False,
      device="cpu", channel_first=True))
    flat = attr.reshape(6, -1)
    order = torch.argsort(-flat, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(256).expand(6, -1))
    k = torch.arange(1, steps_kept + 1) * step

    def build(start: int, stop: int) -> Tensor:
        rows = torch.arange(start, stop)
        masked = rank[rows // steps_kept] < k[rows % steps_kept][:, None]
        return (x.reshape(6, -1)[rows // steps_kept] * ~masked).reshape(-1, *x.shape[1:])

    after = target_outputs(model, x, target, steps_kept, build, context(batch_size=50))
    before = target_outputs(model, x, target, 1, lambda s, e: x[s:e], context())
    block_sums = torch.stack([(flat * ((rank >= k[j] - step) & (rank < k[j]))).sum(1)
                              for j in range(steps_kept)], 1)
    ours = pearson_rows((before.logits - after.logits).T, block_sums.T)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


# --- Max- and Avg-Sensitivity ---------------------------------------------------------------------------


def gradient_explainer(
    model: nn.Module, calls: list[int] | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """Plain autograd gradient of the target logit (records the rows of every call in ``calls``)."""
    def explain(x: Tensor, target: Tensor) -> Tensor:
        if calls is not None:
            calls.append(x.shape[0])
        with torch.enable_grad():
            inputs = x.detach().requires_grad_(True)
            return torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)[0]
    return explain


def max_reference(case: Case, explain: Callable[[Tensor, Tensor], Tensor],
                  params: dict[str, Any]) -> np.ndarray:
    """(N, P) of ||a_hat(x + u) - a_hat(x)||_2, one perturbed input at a time."""
    _, x, target, attr = case
    noise = draw_noise(x, context(), **params)
    normalize = params.get("normalize", True)

    def hat(a: np.ndarray) -> np.ndarray:
        scale = np.abs(a).max()
        return a / scale if normalize and scale > 0 else a

    out = np.zeros(noise.shape[:2])
    for i in range(x.shape[0]):
        reference = hat(attr[i].double().numpy().reshape(-1))
        for j, u in enumerate(noise[i]):
            moved = explain((x[i] + u)[None], target[i : i + 1])[0].double().numpy().reshape(-1)
            out[i, j] = np.linalg.norm(hat(moved) - reference)
    return out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("kind", ["cnn3", "mlp"])
def test_max_and_avg_sensitivity_match_loop_reference(kind: str, normalize: bool) -> None:
    model, x, target, _ = make_case(kind, n=3)
    calls: list[int] = []
    explain = gradient_explainer(model, calls)
    case = (model, x, target, gradient_explainer(model)(x, target))
    params = {"n_perturbations": 7, "radius": 0.2, "normalize": normalize}
    want = max_reference(case, gradient_explainer(model), params)
    norm = np.linalg.norm([
        (a / (np.abs(a).max() if normalize else 1)) for a in case[3].double().numpy().reshape(3, -1)], axis=1)
    for name in ("max_sensitivity", "avg_sensitivity"):
        calls.clear()
        got = run(name, case, batch_size=4, explain=explain, **params)
        np.testing.assert_allclose(got.outputs["max_sensitivity"].numpy(), want.max(1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.outputs["avg_sensitivity"].numpy(), want.mean(1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.outputs["max_relative"].numpy(), want.max(1) / norm, rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(got.outputs["avg_relative"].numpy(), want.mean(1) / norm, rtol=1e-5,
                                   atol=1e-7)
        assert got.primary == name and got.higher_is_better is False
        assert got.forward_passes == 0 and got.info["explained_rows"] == 21
        assert sum(calls) == 21 and max(calls) <= 4  # re-attributed in chunks of the batch budget
        assert got.problems() == []


@pytest.mark.parametrize("normalize", [True, False])
def test_max_sensitivity_agrees_with_captum(normalize: bool) -> None:
    """captum 0.9 ``sensitivity_max`` (``norm_ord = "fro"``) is max_u ||e(x + u) - e(x)|| / ||e(x)|| of its
    ``explanation_func`` e: given e = our a_hat and our noise (``perturb_func`` returns x + u for the N * P
    sample-major rows), it equals our ``max_relative``. captum re-attributes x; we use the stored attribution,
    here the same gradient."""
    metrics = pytest.importorskip("captum.metrics")
    model, x, target, _ = make_case("cnn", n=4)
    explain = gradient_explainer(model)
    case = (model, x, target, explain(x, target))
    noise = draw_noise(x, context(), n_perturbations=9).reshape(-1, *x.shape[1:])

    def explanation(inputs: Tensor | tuple[Tensor, ...], target: Tensor) -> tuple[Tensor]:
        a = explain(inputs[0] if isinstance(inputs, tuple) else inputs, target)
        flat = a.reshape(a.shape[0], -1)
        return ((flat / flat.abs().amax(1, keepdim=True)).reshape(a.shape) if normalize else a,)

    theirs = metrics.sensitivity_max(explanation, x, perturb_func=lambda inputs: inputs + noise,
                                     n_perturb_samples=9, target=target)
    ours = run("max_sensitivity", case, explain=explain, n_perturbations=9, normalize=normalize)
    torch.testing.assert_close(ours.outputs["max_relative"], theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity"])
def test_agrees_with_quantus(name: str) -> None:
    """Quantus 0.6 Max/AvgSensitivity (difference, Frobenius norm over Frobenius norm of the stored a, no
    normalisation) with a ``perturb_func`` that returns our noisy rows, perturbation by perturbation, equal
    our un-normalised relative outputs."""
    quantus = pytest.importorskip("quantus")
    model, x, target, _ = make_case("cnn", n=3)
    explain = gradient_explainer(model)
    attr = explain(x, target)
    noise = draw_noise(x, context(), n_perturbations=5)
    step = iter(range(5))

    def perturb(arr: np.ndarray, **kwargs: Any) -> np.ndarray:
        return (x + noise[:, next(step)]).numpy().reshape(arr.shape)

    def quantus_explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                        **kwargs: Any) -> np.ndarray:
        return explain(torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()

    theirs = getattr(quantus, name)(nr_samples=5, perturb_func=perturb, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(),
        explain_func=quantus_explain, device="cpu", channel_first=True)
    ours = run("max_sensitivity", (model, x, target, attr), explain=explain, n_perturbations=5,
               normalize=False)
    key = "max_relative" if name == "MaxSensitivity" else "avg_relative"
    np.testing.assert_allclose(ours.outputs[key].numpy(), np.asarray(theirs), rtol=1e-5, atol=1e-7)


def test_linear_model_gradient_does_not_move() -> None:
    g = torch.Generator().manual_seed(0)
    model = linear_image_model(torch.randn(1, 8, 8, generator=g))
    x, target = torch.rand(2, 1, 8, 8, generator=g), torch.tensor([0, 1])
    explain = gradient_explainer(model)
    got = run("avg_sensitivity", (model, x, target, explain(x, target)), explain=explain, n_perturbations=6)
    for value in got.outputs.values():
        assert torch.equal(value, torch.zeros(2))
    zero = run("max_sensitivity", (model, x, target, torch.zeros_like(x)),
               explain=lambda a, t: torch.zeros_like(a))
    assert torch.equal(zero.outputs["max_relative"], torch.zeros(2))  # 0 / 0 is 0, not NaN


max_cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["cnn", "mlp"]), "seed": st.integers(0, 2**16),
    "n_perturbations": st.integers(1, 5),
    "radius": st.floats(0.0, 1.0), "normalize": st.booleans(),
})


@PROPERTIES
@given(max_cases)
def test_max_sensitivity_bounds(drawn: dict[str, Any]) -> None:
    model, x, target, attr = make_case(drawn["kind"], n=2, seed=drawn["seed"])
    params = {k: v for k, v in drawn.items() if k not in ("kind", "seed")}
    got = run("max_sensitivity", (model, x, target, attr), explain=gradient_explainer(model), **params)
    assert got.problems() == []
    assert (got.outputs["max_sensitivity"] >= got.outputs["avg_sensitivity"] - 1e-6).all()
    if drawn["normalize"]:  # both maps in [-1, 1]^D
        assert (got.outputs["max_sensitivity"] <= 2 * math.sqrt(x[0].numel()) + 1e-5).all()


def test_noise_is_uniform_per_sample_and_batch_invariant() -> None:
    model, x, target, attr = make_case("cnn", n=3)
    noise = draw_noise(x, context(), n_perturbations=300, radius=0.25)
    assert noise.abs().max() <= 0.25 and abs(float(noise.mean())) < 0.005
    assert abs(float(noise.std()) - 0.25 / math.sqrt(3)) < 0.005
    assert torch.equal(noise[:2], draw_noise(x[:2], context(batch_size=1), n_perturbations=300, radius=0.25))
    explain = gradient_explainer(model)
    results = [run("max_sensitivity", (model, x, target, attr), batch_size=b, explain=explain,
                   n_perturbations=4) for b in (1, 5, 1000)]
    for other in results[1:]:
        for key, value in results[0].outputs.items():
            torch.testing.assert_close(other.outputs[key], value, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", ["sensitivity_n", "seg_sensitivity_n", "max_sensitivity", "avg_sensitivity"])
def test_empty_batch(name: str) -> None:
    model, x, target, attr = make_case("cnn", n=2)
    got = run(name, (model, x[:0], target[:0], attr[:0]), explain=gradient_explainer(model), **(
        SMALL if name.endswith("_n") else {}))
    assert all(value.shape[0] == 0 for value in got.outputs.values()) and got.forward_passes == 0


# --- metadata and errors -------------------------------------------------------------------------------


def test_spec_metadata() -> None:
    for name in ("sensitivity_n", "seg_sensitivity_n"):
        spec = METRICS.get(name)
        assert spec.family == "faithfulness" and not spec.needs_explain and "Ancona" in spec.reference
        assert (spec.defaults["steps"], spec.defaults["subsets"], spec.defaults["repeats"]) == (10, 100, 1)
        assert (spec.defaults["min_fraction"], spec.defaults["max_fraction"]) == (0.1, 0.5)
    assert METRICS.get("sensitivity_n").modalities == {"image", "tabular"}
    assert METRICS.get("seg_sensitivity_n").modalities == {"image"}
    assert METRICS.get("seg_sensitivity_n").defaults["n_segments"] == 100
    for name in ("max_sensitivity", "avg_sensitivity"):
        spec = METRICS.get(name)
        assert spec.family == "robustness" and spec.needs_explain and "Yeh" in spec.reference
        assert spec.defaults == {"n_perturbations": 50, "radius": 0.1, "normalize": True}


@pytest.mark.parametrize(("name", "params", "match"), [
    ("sensitivity_n", {"masker": "smudge"}, "smudge"), ("sensitivity_n", {"steps": 0}, "'steps' = 0"),
    ("sensitivity_n", {"subsets": 1}, "'subsets' = 1"), ("sensitivity_n", {"repeats": 0}, "'repeats' = 0"),
    ("sensitivity_n", {"min_fraction": 0.6}, "0.6"), ("sensitivity_n", {"max_fraction": 1.5}, "1.5"),
    ("sensitivity_n", {"activation": "relu"}, "relu"), ("sensitivity_n", {"n_segments": 10}, "n_segments"),
    ("seg_sensitivity_n", {"pixel_aggregation": "mean"}, "pixel_aggregation"),
    ("seg_sensitivity_n", {"n_segments": 0}, "'n_segments' = 0"),
    ("max_sensitivity", {"n_perturbations": 0}, "'n_perturbations' = 0"),
    ("avg_sensitivity", {"radius": -0.5}, "-0.5"), ("avg_sensitivity", {"normalize": "yes"}, "yes"),
])
def test_bad_params_name_the_value(name: str, params: dict[str, Any], match: str) -> None:
    case = make_case("cnn")
    with pytest.raises(ParamError, match=match):
        run(name, case, explain=gradient_explainer(case[0]), **params)


def test_bad_inputs_name_the_problem() -> None:
    model, x, target, attr = make_case("mlp")
    with pytest.raises(ValueError, match=r"seg_sensitivity_n: needs images \(N, C, H, W\), got shape \[2, 1"):
        run("seg_sensitivity_n", (model, x, target, attr))
    with pytest.raises(ValueError, match="needs inputs.explain"):
        run("max_sensitivity", (model, x, target, attr))
    with pytest.raises(ValueError, match=r"attributions shape \[2, 9\] differs"):
        run("sensitivity_n", (model, x, target, attr[:, :9]))
    with pytest.raises(ValueError, match="explain returned shape"):
        run("avg_sensitivity", (model, x, target, attr), explain=lambda a, t: a[:, :3])
    with pytest.raises(ValueError, match=r"target must be a \(2,\) long tensor"):
        run("sensitivity_n", (model, x, target.float(), attr))
