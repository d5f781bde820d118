"""Parameter randomisation, random logit and their similarities against plain loops (scipy / skimage per
sample), Quantus 0.6 MPRT and RandomLogit, and properties (bounds, model-blind methods score 1, no side
effects, determinism, chunking)."""
from __future__ import annotations

import copy
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity
from torch import Tensor, nn

import harness.methods  # registers the methods
import harness.metrics  # noqa: F401  (registers the metrics)
from fixtures.evaluation import RowCounter
from harness.metrics.randomisation import kept_parameters, layer_seeds, layers, other_classes
from harness.metrics.similarity import Similarity, average_ranks, spearman_rows, ssim_rows
from harness.specs import METHODS, METRICS, MetricInputs, MetricResult, ParamError, RunContext
from tests.small_cases import make_case

pytestmark = pytest.mark.usefixtures("one_thread")
SEED = 5
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=10, deadline=None)
Explain = Callable[[Tensor, Tensor], Tensor]


def context(batch_size: int = 256, seed: int = SEED) -> RunContext:
    return RunContext(device=CPU, seed=seed, batch_size=batch_size)


def gradient_explainer(model: nn.Module) -> Explain:
    """Plain autograd gradient of the target logit."""
    def explain(x: Tensor, target: Tensor) -> Tensor:
        with torch.enable_grad():
            inputs = x.detach().requires_grad_(True)
            return torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)[0]
    return explain


def run(name: str, model: nn.Module, x: Tensor, target: Tensor, attr: Tensor | None = None,
        explainer: Callable[[nn.Module], Explain] = gradient_explainer, batch_size: int = 256,
        seed: int = SEED, **params: Any) -> MetricResult:
    attr = gradient_explainer(model)(x, target) if attr is None else attr
    inputs = MetricInputs(model, x, target, attr, explain=explainer(model), explainer=explainer)
    return METRICS.get(name).compute(inputs, context(batch_size, seed), **params)


def transform(a: Tensor, abs_: bool, normalize: bool = True) -> np.ndarray:
    flat = a.double().reshape(-1).numpy()
    if normalize and np.abs(flat).max() > 0:
        flat = flat / np.abs(flat).max()
    return np.abs(flat) if abs_ else flat


def reference_similarity(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    if kind == "spearman":
        return float(scipy.stats.spearmanr(a, b)[0])
    if kind == "pearson":
        return float(scipy.stats.pearsonr(a, b)[0])
    span = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    return float(structural_similarity(a, b, data_range=span))  # as Quantus' ssim calls it


def reset_layers(model: nn.Module) -> list[nn.Module]:
    """Modules with their own parameters and a reset_parameters, in module order (written independently)."""
    return [m for m in model.modules() if hasattr(m, "reset_parameters") and len(m._parameters) > 0]


def randomisation_reference(model: nn.Module, x: Tensor, target: Tensor, attr: Tensor,
                            params: dict[str, Any]) -> np.ndarray:
    """(N, L) similarities, one freshly built model per step and one sample at a time: step k re-initialises
    the top k + 1 layers (cascading) or the (k + 1)-th from the top (independent), each layer l under
    ``torch.manual_seed(seed_l)`` on the global generator."""
    count = len(reset_layers(model))
    seeds = layer_seeds(context(), count)
    top_down = list(range(count))[::-1]
    out = np.zeros((len(x), count))
    for k, layer in enumerate(top_down):
        randomised = copy.deepcopy(model)
        chosen = top_down[: k + 1] if params.get("layer_order", "cascading") == "cascading" else [layer]
        for j in chosen:
            torch.manual_seed(seeds[j])
            reset_layers(randomised)[j].reset_parameters()
        for i in range(len(x)):
            b = gradient_explainer(randomised)(x[i : i + 1], target[i : i + 1])[0]
            out[i, k] = reference_similarity(transform(attr[i], params.get("abs", False)),
                                             transform(b, params.get("abs", False)),
                                             params.get("similarity", "spearman"))
    return out


@pytest.mark.parametrize(("kind", "params"), [
    ("cnn", {}),
    ("cnn3", {"abs": True}),
    ("cnn", {"layer_order": "independent"}),
    ("mlp", {"similarity": "pearson", "layer_order": "independent", "abs": True}),
    ("cnn3", {"similarity": "ssim"}),
    ("mlp", {"similarity": "ssim", "layer_order": "independent"}),
])
def test_parameter_randomisation_matches_loop_reference(kind: str, params: dict[str, Any]) -> None:
    model, x, target, _ = make_case(kind, n=3)
    got = run("parameter_randomisation", model, x, target, batch_size=2, **params)
    want = randomisation_reference(model, x, target, gradient_explainer(model)(x, target), params)
    np.testing.assert_allclose(got.outputs["layers"].numpy(), want, atol=1e-6)
    cascading = params.get("layer_order", "cascading") == "cascading"
    primary = want[:, -1] if cascading else want.mean(1)
    np.testing.assert_allclose(got.outputs["parameter_randomisation"].numpy(), primary, atol=1e-6)
    names = [n for n, m in model.named_modules() if m in reset_layers(model)][::-1]
    assert got.info["layers"] == names and got.info["explained_rows"] == 3 * len(names)
    assert got.primary == "parameter_randomisation" and got.higher_is_better is False
    assert got.forward_passes == 0 and got.problems() == [] and got.info["kept_parameters"] == 0


def seeded_reset(layer: nn.Module, seed: int) -> None:
    """Make ``layer.reset_parameters`` reseed torch with ``seed`` first (it survives ``deepcopy``, bound to
    the copy), so that Quantus' generator, which reseeds with ``seed + 1`` before every layer, draws our
    layer's weights."""
    original = type(layer).reset_parameters

    def reset(self: nn.Module) -> None:
        torch.manual_seed(seed)
        original(self)
    layer.reset_parameters = types.MethodType(reset, layer)  # type: ignore[method-assign]


def per_sample_max(a: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Our ``normalize``: each map divided by its own max |a| (Quantus' default divides by the batch's)."""
    scale = np.abs(a).reshape(len(a), -1).max(1).reshape(-1, *[1] * (a.ndim - 1))
    return a / np.where(scale > 0, scale, 1.0)


def quantus_explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
    return gradient_explainer(model)(torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()


@pytest.mark.parametrize(("layer_order", "abs_", "similarity"), [
    ("cascading", True, "spearman"), ("cascading", False, "spearman"), ("independent", True, "spearman"),
    ("cascading", False, "ssim"),
])
def test_parameter_randomisation_agrees_with_quantus_mprt(
    layer_order: str, abs_: bool, similarity: str
) -> None:
    """Quantus 0.6 MPRT on the same (wrapped) model, inputs, stored attributions and explanation function,
    with each layer's weights made identical to ours (``seeded_reset``): the per-layer similarities agree.
    Quantus orders ``"independent"`` bottom-up; the layer names pair the columns. (MPRT fails with its own
    ``ssim``, which returns a list where MPRT calls ``.tolist()``: wrapped in an array here.)"""
    quantus = pytest.importorskip("quantus")
    from quantus.functions.similarity_func import correlation_spearman, ssim

    def ssim_array(a: np.ndarray, b: np.ndarray, batched: bool = False, **kwargs: Any) -> np.ndarray:
        return np.asarray(ssim(a, b, batched=batched, **kwargs))
    inner, x, target, _ = make_case("cnn", n=4, seed=3)
    model = RowCounter(inner).eval()
    attr = gradient_explainer(model)(x, target)
    params = {"layer_order": layer_order, "abs": abs_, "similarity": similarity}
    ours = run("parameter_randomisation", model, x, target, attr, **params)
    patched = copy.deepcopy(model)
    for (layer, seed) in zip(reset_layers(patched), layer_seeds(context(), 4)):
        seeded_reset(layer, seed)
    theirs = quantus.MPRT(
        layer_order="top_down" if layer_order == "cascading" else "independent", abs=abs_,
        similarity_func=correlation_spearman if similarity == "spearman" else ssim_array,
        normalise=True, normalise_func=per_sample_max, disable_warnings=True,
    )(model=patched, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(),
      explain_func=quantus_explain, device="cpu", channel_first=True, batch_size=3)
    assert set(theirs) == {"original", *ours.info["layers"]}
    assert ours.info["layers"] == ["inner.9", "inner.7", "inner.3", "inner.0"]
    for column, name in enumerate(ours.info["layers"]):
        np.testing.assert_allclose(ours.outputs["layers"][:, column].numpy(), theirs[name], atol=1e-5,
                                   err_msg=name)


def logit_reference(model: nn.Module, x: Tensor, target: Tensor, attr: Tensor, other: Tensor,
                    params: dict[str, Any]) -> np.ndarray:
    out = np.zeros(len(x))
    abs_, normalize = params.get("abs", False), params.get("normalize", True)
    for i in range(len(x)):
        b = gradient_explainer(model)(x[i : i + 1], other[i : i + 1])[0]
        out[i] = reference_similarity(transform(attr[i], abs_, normalize), transform(b, abs_, normalize),
                                      params.get("similarity", "ssim"))
    return out


@pytest.mark.parametrize(("kind", "params"), [
    ("cnn", {}), ("cnn3", {"similarity": "spearman", "abs": True}), ("mlp", {"normalize": False}),
    ("mlp", {"similarity": "pearson"}),
])
def test_random_logit_matches_loop_reference(kind: str, params: dict[str, Any]) -> None:
    model, x, target, _ = make_case(kind, n=4)
    attr = gradient_explainer(model)(x, target)
    got = run("random_logit", model, x, target, attr, batch_size=3, **params)
    classes = 10 if kind.startswith("cnn") else 3
    other = other_classes(target, classes, context())
    assert got.info["other_class"] == other.tolist() and got.info["num_classes"] == classes
    want = logit_reference(model, x, target, attr, other, params)
    np.testing.assert_allclose(got.outputs["random_logit"].numpy(), want, atol=1e-6)
    assert got.forward_passes == 1 and got.problems() == [] and got.higher_is_better is False


def test_other_classes_are_uniform_over_the_others() -> None:
    target = torch.arange(4).repeat(2000)
    other = other_classes(target, 4, context())
    assert not (other == target).any() and torch.equal(other, other_classes(target, 4, context()))
    counts = torch.zeros(4, 4)
    counts.index_put_((target, other), torch.ones(len(target)), accumulate=True)
    off_diagonal = counts[~torch.eye(4, dtype=torch.bool)]
    assert (off_diagonal - 2000 / 3).abs().max() < 4 * (2000 / 3) ** 0.5


def two_class_model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(256, 16), nn.Tanh(), nn.Linear(16, 2)).eval()


@pytest.mark.parametrize("similarity", ["ssim", "spearman"])
def test_random_logit_agrees_with_quantus(similarity: str) -> None:
    """With two classes the other class is fixed, so Quantus 0.6 RandomLogit (its defaults: SSIM, no abs,
    max-normalised, here per sample) and ours see the same attributions end to end. With ten classes its
    classes come from its own generator: our similarity on the attributions it computed for them agrees."""
    quantus = pytest.importorskip("quantus")
    from quantus.functions.similarity_func import correlation_spearman, ssim
    func = ssim if similarity == "ssim" else correlation_spearman
    _, x, _, _ = make_case("cnn", n=5, seed=4)
    model = two_class_model()
    target = torch.tensor([0, 1, 1, 0, 1])
    attr = gradient_explainer(model)(x, target)
    theirs = quantus.RandomLogit(num_classes=2, similarity_func=func, normalise_func=per_sample_max,
                                 disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(),
        explain_func=quantus_explain, device="cpu", channel_first=True)
    ours = run("random_logit", model, x, target, attr, similarity=similarity)
    assert ours.info["other_class"] == (1 - target).tolist()
    np.testing.assert_allclose(ours.outputs["random_logit"].numpy(), theirs, atol=1e-5)

    model, x, target, _ = make_case("cnn", n=5, seed=4)
    attr = gradient_explainer(model)(x, target)
    seen: list[np.ndarray] = []

    def recording(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        seen.append(targets)
        return quantus_explain(model, inputs, targets)

    theirs = quantus.RandomLogit(num_classes=10, similarity_func=func, normalise_func=per_sample_max,
                                 disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(), explain_func=recording,
        device="cpu", channel_first=True)
    other = torch.from_numpy(np.concatenate(seen))
    assert not (other == target).any()
    want = logit_reference(model, x, target, attr, other, {"similarity": similarity})
    np.testing.assert_allclose(want, theirs, atol=1e-5)


# --- similarities ----------------------------------------------------------------------------------------


rows = st.integers(1, 4).flatmap(lambda n: st.integers(7, 40).flatmap(lambda d: st.tuples(
    st.lists(st.lists(st.integers(-3, 3), min_size=d, max_size=d), min_size=n, max_size=n),
    st.lists(st.lists(st.floats(-5, 5, width=32), min_size=d, max_size=d), min_size=n, max_size=n))))


@PROPERTIES
@given(rows)
def test_ranks_spearman_and_ssim_match_scipy_and_skimage(
    drawn: tuple[list[list[int]], list[list[float]]]
) -> None:
    a, b = torch.tensor(drawn[0], dtype=torch.float64), torch.tensor(drawn[1], dtype=torch.float64)
    for values in (a, b):
        want = np.stack([scipy.stats.rankdata(row) for row in values.numpy()])
        np.testing.assert_array_equal(average_ranks(values).numpy(), want)  # ties: average ranks
    rho, s = spearman_rows(a, b).numpy(), ssim_rows(a, b).numpy()
    for i in range(len(a)):
        ai, bi = a[i].numpy(), b[i].numpy()
        constant = np.all(ai == ai[0]) or np.all(bi == bi[0])
        want_rho = 0.0 if constant else scipy.stats.spearmanr(ai, bi)[0]
        assert rho[i] == pytest.approx(want_rho, abs=1e-9)
        span = float(max(ai.max(), bi.max()) - min(ai.min(), bi.min()))
        want_s = 1.0 if span == 0 else structural_similarity(ai, bi, data_range=span)
        assert s[i] == pytest.approx(want_s, abs=1e-9)
    assert (np.abs(rho) <= 1).all() and (np.abs(s) <= 1).all()


@pytest.mark.parametrize("kind", ["spearman", "pearson", "ssim"])
def test_similarity_of_large_tied_maps_in_chunks(kind: str) -> None:
    """Maps of 5,000 values with many ties, compared two samples at a time, match scipy / skimage."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(-40, 40, (5, 5000), generator=g).float(), torch.randn(5, 5000, generator=g)
    params = {"similarity": kind, "abs": True, "normalize": True}
    got = Similarity(a, params, context(batch_size=2))(b).numpy()
    want = [reference_similarity(transform(a[i], True), transform(b[i], True), kind) for i in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_similarity_edge_cases() -> None:
    same = torch.full((1, 9), 0.25, dtype=torch.float64)
    assert ssim_rows(same, same).item() == 1.0 and spearman_rows(same, same).item() == 0.0
    ramp = torch.arange(9.0)[None]
    assert spearman_rows(ramp, -ramp).item() == pytest.approx(-1.0)
    assert ssim_rows(ramp, ramp).item() == pytest.approx(1.0)


# --- properties ------------------------------------------------------------------------------------------


def registered_random(model: nn.Module) -> Explain:
    return METHODS.get("random").build(model, RunContext(device=CPU, seed=99))


@pytest.mark.parametrize("explainer", [registered_random, lambda model: lambda x, target: x.clone()],
                         ids=["random_method", "input_itself"])
@pytest.mark.parametrize("similarity", ["spearman", "pearson", "ssim"])
def test_a_method_blind_to_the_model_and_class_scores_one(explainer: Callable[[nn.Module], Explain],
                                                          similarity: str) -> None:
    model, x, target, _ = make_case("cnn3", n=3)
    attr = explainer(model)(x, target)
    for order in ("cascading", "independent"):
        got = run("parameter_randomisation", model, x, target, attr, explainer=explainer, layer_order=order,
                  similarity=similarity)
        torch.testing.assert_close(got.outputs["layers"], torch.ones(3, 4, dtype=torch.float64))
    logit = run("random_logit", model, x, target, attr, explainer=explainer, similarity=similarity)
    torch.testing.assert_close(logit.outputs["random_logit"], torch.ones(3, dtype=torch.float64))


@PROPERTIES
@given(st.fixed_dictionaries({
    "kind": st.sampled_from(["cnn", "cnn3", "mlp"]), "seed": st.integers(0, 2**16),
    "similarity": st.sampled_from(["spearman", "pearson", "ssim"]), "abs": st.booleans(),
    "layer_order": st.sampled_from(["cascading", "independent"]),
}))
def test_bounds_no_side_effects_and_determinism(drawn: dict[str, Any]) -> None:
    model, x, target, attr = make_case(drawn["kind"], n=2, seed=drawn["seed"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    params = {k: drawn[k] for k in ("similarity", "abs", "layer_order")}
    got = run("parameter_randomisation", model, x, target, attr, seed=drawn["seed"], **params)
    assert got.problems() == [] and got.outputs["layers"].abs().max() <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert torch.equal(torch.get_rng_state(), rng)  # so is the global random state
    again = run("parameter_randomisation", model, x, target, attr, seed=drawn["seed"], batch_size=1, **params)
    assert torch.equal(again.outputs["layers"], got.outputs["layers"])  # deterministic, chunk-invariant
    logit = run("random_logit", model, x, target, attr, similarity=drawn["similarity"], abs=drawn["abs"])
    assert logit.problems() == [] and logit.outputs["random_logit"].abs().max() <= 1


def test_orders_share_layer_weights_and_seeds_matter() -> None:
    model, x, target, _ = make_case("cnn", n=3)
    cascading = run("parameter_randomisation", model, x, target)
    independent = run("parameter_randomisation", model, x, target, layer_order="independent")
    top_only = independent.outputs["layers"][:, 0]  # step 1 resets the top layer alone in both orders
    assert torch.equal(cascading.outputs["layers"][:, 0], top_only)
    torch.testing.assert_close(independent.outputs["parameter_randomisation"],
                               independent.outputs["layers"].mean(1))
    skipped = run("parameter_randomisation", model, x, target, skip_layers=True)
    assert skipped.outputs["layers"].shape == (3, 1) and skipped.info["layers"] == ["0"]
    torch.testing.assert_close(skipped.outputs["parameter_randomisation"],
                               cascading.outputs["parameter_randomisation"])
    other = run("parameter_randomisation", model, x, target, seed=SEED + 1)
    assert not torch.equal(other.outputs["layers"], cascading.outputs["layers"])


def test_registered_methods_through_a_wrapped_model() -> None:
    """The harness's path: a RowCounter-wrapped model, explainers built by the registered methods (GradCAM
    finds the last conv of the copy it is given); the wrapper counts no rows of the randomised copies.
    ``explain`` is built on the unwrapped model, as the evaluate fixture does."""
    inner, x, target, _ = make_case("cnn3", n=4)
    model = RowCounter(inner).eval()
    ctx = context()
    for method in ("saliency", "gradcam", "integrated_gradients"):
        def explainer(m: nn.Module, method: str = method) -> Explain:
            return METHODS.get(method).build(m, ctx)
        attr = explainer(inner)(x, target)
        got = run("parameter_randomisation", model, x, target, attr, explainer=explainer)
        assert got.problems() == [] and got.info["layers"][0] == "inner.9"
        assert got.outputs["parameter_randomisation"].abs().max() < 0.9  # a sane method moves
        assert model.rows == 0  # the randomised copies count nowhere
        inputs = MetricInputs(model, x, target, attr, explain=explainer(inner), explainer=explainer)
        logit = METRICS.get("random_logit").compute(inputs, ctx)
        assert logit.problems() == [] and model.rows == 1  # one row to learn the number of classes
        model.rows = 0


def test_multihead_attention_is_reset_through_its_private_method() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True))
    names = [n for n, m in model.named_modules() if m in reset_layers(model)]
    seen = [name for name, _ in layers(model)]
    assert seen == ["0", "1", "1.out_proj"] and names == ["0", "1.out_proj"]
    assert kept_parameters(model) == 0
    assert kept_parameters(nn.Sequential(nn.Linear(2, 2), nn.PReLU())) == 0  # PReLU has reset_parameters


@pytest.mark.parametrize(("name", "params", "message"), [
    ("parameter_randomisation", {"similarity": "kendall"}, "'kendall' is not valid; choices: 'spearman'"),
    ("parameter_randomisation", {"layer_order": "top_down"}, "'top_down' is not valid; choices: 'cascading'"),
    ("parameter_randomisation", {"layer_order": "independent", "skip_layers": True}, "needs layer_order"),
    ("parameter_randomisation", {"abs": 1}, "expected bool"),
    ("random_logit", {"num_classes": 3}, "unknown parameter 'num_classes'"),
    ("random_logit", {"similarity": "hog"}, "'hog' is not valid"),
])
def test_bad_parameters_are_named(name: str, params: dict[str, Any], message: str) -> None:
    model, x, target, attr = make_case("cnn", n=2)
    with pytest.raises(ParamError, match=message):
        run(name, model, x, target, attr, **params)


def test_unusable_inputs_are_explained() -> None:
    model, x, target, attr = make_case("cnn", n=2)
    for name in ("parameter_randomisation", "random_logit"):
        inputs = MetricInputs(model, x, target, attr)
        with pytest.raises(ValueError, match="needs inputs.explain"):
            METRICS.get(name).compute(inputs, context())
    tiny = nn.Sequential(nn.Linear(5, 3)).eval()
    x5, t5 = torch.rand(2, 5), torch.tensor([0, 2])
    with pytest.raises(ParamError, match="at least 7 values"):
        run("random_logit", tiny, x5, t5)
    blind = nn.Sequential(nn.Flatten(), nn.Softmax(1)).eval()
    with pytest.raises(ValueError, match="no layer with parameters"):
        run("parameter_randomisation", blind, torch.rand(2, 3), torch.tensor([0, 1]),
            explainer=lambda m: lambda a, t: a.clone())
    one = nn.Sequential(nn.Linear(8, 1)).eval()
    with pytest.raises(ValueError, match="no other class"):
        run("random_logit", one, torch.rand(2, 8), torch.zeros(2, dtype=torch.long))
