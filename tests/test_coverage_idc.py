"""Importance-driven coverage (IDC) and layer relevance (harness.coverage.relevance / .idc).

References: hand-checked activations and centroids, a per-sample autograd loop for gradient x activation,
the completeness of conductance, plain Python loops for the nearest-centroid combinations, scikit-learn
KMeans directly for the centroids; hypothesis properties for IDC's bounds, merging and monotonicity.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.cluster import KMeans
from torch import nn

from harness.coverage import relevance as rel
from harness.coverage.base import CRITERIA, coverage_layers, layer_traces, split
from harness.coverage.idc import IDC, make_idc
from harness.specs import ParamError

pytestmark = pytest.mark.usefixtures("one_thread")
PROPERTIES = settings(max_examples=30, deadline=None)
FAST = {"layer_conductance": {"n_steps": 4}, "internal_influence": {"n_steps": 4},
        "layer_integrated_gradients": {"n_steps": 4}, "layer_gradient_shap": {"n_samples": 2}}
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    """Conv2d(1->3) -> ReLU -> MaxPool -> Flatten -> Linear(48->5) -> ReLU -> Linear(5->3), on 1x8x8."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(48, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def data(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g) * 2 - 0.5, torch.randint(0, 3, (n,), generator=g)


# ---------------------------------------------------------------- relevance


@pytest.mark.parametrize("layer", ["0", "4"])
@pytest.mark.parametrize("attributor", sorted(rel.LAYER_ATTRIBUTORS))
def test_every_attributor_gives_one_relevance_per_neuron(attributor: str, layer: str) -> None:
    model, (x, y) = tiny_cnn(), data()
    out = rel.neuron_relevance(model, layer, x, y, attributor, batch_size=64, **FAST.get(attributor, {}))
    assert out.shape == ((3,) if layer == "0" else (5,)) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not model.training


def test_layer_activation_by_hand() -> None:
    """Linear: R = mean over inputs of W x + b; 1x1 conv: R_c = mean over inputs of w_c * sum of pixels."""
    lin = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
        lin[0].bias.copy_(torch.tensor([0.5, -1.0]))
    x, y = torch.tensor([[1.0, 1.0], [3.0, -1.0]]), torch.tensor([0, 1])
    # unit 0: (3.5 + 1.5) / 2 = 2.5; unit 1: (-1.5 + -4.5) / 2 = -3
    assert torch.allclose(rel.neuron_relevance(lin, "0", x, y, "layer_activation"), torch.tensor([2.5, -3.0]))
    conv = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        conv[0].weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
    images = torch.arange(8.0).view(2, 1, 2, 2)  # pixel sums 6 and 22, mean 14
    out = rel.neuron_relevance(conv, "0", images, y, "layer_activation", batch_size=1)
    assert torch.allclose(out, torch.tensor([14.0, -28.0]))


def test_gradient_x_activation_matches_a_per_sample_autograd_loop() -> None:
    model, (x, y) = tiny_cnn(1), data(5, 1)
    expected, kept = torch.zeros(5), {}
    handle = model[4].register_forward_hook(lambda m, a, out: kept.__setitem__("h", out))
    for i in range(len(x)):
        logit = model(x[i:i + 1])[0, y[i]]
        (grad,) = torch.autograd.grad(logit, kept["h"])
        expected += (grad * kept["h"]).detach()[0] / len(x)
    handle.remove()
    out = rel.neuron_relevance(model, "4", x, y, "layer_gradient_x_activation", batch_size=2)
    assert torch.allclose(out, expected, atol=1e-6)


def test_conductance_is_complete() -> None:
    """Sum of a layer's conductance = mean of f_y(x) - f_y(0) (Dhamdhere et al. 2018), up to quadrature."""
    model, (x, y) = tiny_cnn(2), data(4, 2)
    out = rel.neuron_relevance(model, "0", x, y, "layer_conductance", n_steps=200)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None]).mean()
    assert float(out.sum()) == pytest.approx(float(gap), rel=2e-2, abs=1e-4)


@pytest.mark.parametrize("attributor", ["layer_conductance", "layer_deeplift", "layer_lrp", "layer_gradcam",
                                        "layer_feature_ablation", "layer_deeplift_shap"])
def test_relevance_does_not_depend_on_the_batch_size(attributor: str) -> None:
    model, (x, y) = tiny_cnn(), data(7)
    kw = FAST.get(attributor, {})
    one = rel.neuron_relevance(model, "0", x, y, attributor, batch_size=1, **kw)
    assert torch.allclose(one, rel.neuron_relevance(model, "0", x, y, attributor, batch_size=512, **kw), atol=1e-5)


def test_gradient_shap_is_seeded_and_leaves_global_rngs_alone() -> None:
    model, (x, y) = tiny_cnn(), data()
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    runs = [rel.neuron_relevance(model, "4", x, y, "layer_gradient_shap",
                                 generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)


def test_lrp_names_an_unsupported_layer_and_bad_parameters_raise() -> None:
    model, (x, y) = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)), data()
    with pytest.raises(ValueError, match=r"'1' \(Sigmoid\)"):
        rel.neuron_relevance(model, "0", torch.rand(3, 4), torch.tensor([0, 1, 0]), "layer_lrp")
    with pytest.raises(ParamError, match="layer_conductance"):
        rel.neuron_relevance(tiny_cnn(), "0", x, y, "conductance")
    with pytest.raises(ParamError, match="n_step"):
        rel.neuron_relevance(tiny_cnn(), "0", x, y, "layer_conductance", n_step=3)
    with pytest.raises(ValueError, match="coverage layers"):
        rel.neuron_relevance(tiny_cnn(), "9", x, y, "layer_activation")


def test_important_neurons_by_hand() -> None:
    relevance = {"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([5.0, 0.0])}
    assert rel.important_neurons(relevance, 3, "model") == [("a", 1), ("b", 0), ("a", 2)]  # tie: earlier layer
    assert rel.important_neurons(relevance, 5, "b") == [("b", 0), ("b", 1)]
    assert rel.important_neurons({"c": torch.zeros(3)}, 2, "c") == [("c", 0), ("c", 1)]
    with pytest.raises(ParamError, match="'model', 'a', 'b'"):
        rel.important_neurons(relevance, 2, "z")
    with pytest.raises(ParamError, match="m = 0"):
        rel.important_neurons(relevance, 0)


def test_select_neurons_uses_coverage_layer_one_by_default() -> None:
    model, (x, y) = tiny_cnn(), data()
    assert coverage_layers(model) == ["0", "4"]
    chosen = rel.select_neurons(model, x, y, n_steps=4)
    assert len(chosen) == 5 and {layer for layer, _ in chosen} == {"4"}
    relevance = rel.layer_relevance(model, x, y, "layer_activation")
    assert rel.select_neurons(model, x, y, "layer_activation", 4, "model") == rel.important_neurons(relevance, 4)


@pytest.mark.parametrize(("layer", "index"), [("0", 1), ("4", 3)])
def test_zeroed_changes_exactly_that_unit(layer: str, index: int) -> None:
    model, (x, _) = tiny_cnn(), data()
    outputs: list[torch.Tensor] = []
    after_layer = model[int(layer) + 1]  # sees the layer's output after the zeroing hook
    handle = after_layer.register_forward_pre_hook(lambda m, args: outputs.append(args[0]))
    with torch.no_grad():
        before = model(x)
        with rel.zeroed(model, [(layer, index)]):
            during = model(x)
        after = model(x)
    handle.remove()
    plain, zero = outputs[0], outputs[1]
    others = torch.ones(plain.shape[1], dtype=torch.bool)
    others[index] = False
    assert torch.equal(zero[:, others], plain[:, others]) and (zero[:, index] == 0).all()
    assert not torch.equal(plain[:, index], zero[:, index]) and not torch.equal(before, during)
    assert torch.equal(before, after)
    with pytest.raises(IndexError, match="has 5 neurons"), torch.no_grad(), rel.zeroed(model, [("4", 7)]):
        model(x)


A, B, C = ("l", 0), ("l", 1), ("m", 2)


def test_combine_rankings_weights_by_loss_gain() -> None:
    rankings = {"a": [(A, 2.0), (B, 1.0)], "b": [(C, 4.0), (B, 2.0)]}
    # weights .75 / .25; score: A 1.5, B .75 + .5 = 1.25, C 1.0
    assert rel.combine_rankings(rankings, {"a": 3.0, "b": 1.0}, 3) == [A, B, C]
    # borda (m = 2): A 2 * .75 = 1.5, B .75 + .25 = 1.0, C .5
    assert rel.combine_rankings(rankings, {"a": 3.0, "b": 1.0}, 2, "borda") == [A, B]
    # a negative gain weighs nothing; C 4, B 2, A 0
    assert rel.combine_rankings(rankings, {"a": -1.0, "b": 1.0}, 3) == [C, B, A]
    # no positive gain: equal weights; A 1, B 1.5, C 2
    assert rel.combine_rankings(rankings, {"a": 0.0, "b": -2.0}, 3) == [C, B, A]
    with pytest.raises(ParamError, match="borda"):
        rel.combine_rankings(rankings, {"a": 1.0, "b": 1.0}, 2, "mean")


def test_tally_gives_length_minus_rank_points() -> None:
    assert rel.tally([[A, B], [B, C], [B]], 3) == [B, A, C]  # A 2, B 1 + 2 + 1, C 1
    assert rel.tally([[A, B], [B, A]], 1) == [A]  # tie 3 : 3 goes to the first seen


def test_voting_prefers_the_attributor_whose_neurons_matter() -> None:
    """Unit 0 has the largest activation but no outgoing weight; unit 1 drives class 0. LayerActivation names
    unit 0 (zeroing it costs nothing), gradient x activation unit 1 (zeroing it raises the loss)."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[10.0, 10.0], [1.0, 1.0], [0.0, 0.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 0.0]]))
        model[2].bias.zero_()
    x, y = torch.rand(8, 2) + 0.1, torch.zeros(8, dtype=torch.long)
    assert rel.select_neurons(model, x, y, "layer_activation", 1, "model") == [("0", 0)]
    assert rel.select_neurons(model, x, y, "layer_gradient_x_activation", 1, "model") == [("0", 1)]
    for combine in rel.COMBINATIONS:
        chosen = rel.voting(model, x, y, ["layer_activation", "layer_gradient_x_activation"], 1, combine=combine)
        assert chosen == [("0", 1)]
    assert rel.voting(model, x, y, ["layer_activation", "layer_gradient_x_activation"], 1, vote_size=3) == [("0", 1)]
    both = ["layer_activation", "layer_conductance"]
    assert rel.voting(model, x, y, both, 1, attributor_params={"layer_conductance": {"n_steps": 8}}) == [("0", 1)]


def test_voting_with_one_attributor_is_its_ranking() -> None:
    model, (x, y) = tiny_cnn(), data(8)
    relevance = rel.layer_relevance(model, x, y, "layer_deeplift")
    assert rel.voting(model, x, y, ["layer_deeplift"], 4) == rel.important_neurons(relevance, 4)
    assert rel.voting(model, x, y, ["layer_deeplift"], 2, "0") == rel.important_neurons(relevance, 2, "0")
    with pytest.raises(ParamError, match="vote_size"):
        rel.voting(model, x, y, ["layer_deeplift"], 2, vote_size=0)


# ---------------------------------------------------------------- IDC


def reference_combinations(criterion: IDC, traces: dict[str, torch.Tensor]) -> set[tuple[int, ...]]:
    """Nearest centroid per neuron, input by input, in plain Python."""
    assert criterion.centroids is not None
    table = [[c for c in row.tolist() if math.isfinite(c)] for row in criterion.centroids.cpu()]
    seen = set()
    for i in range(len(next(iter(traces.values())))):
        codes = []
        for (layer, index), cents in zip(criterion.neurons, table):
            value = float(traces[layer][i, index])
            codes.append(min(range(len(cents)), key=lambda c: (abs(value - cents[c]), c)))
        seen.add(tuple(codes))
    return seen


def two_cluster_traces() -> dict[str, torch.Tensor]:
    a0 = torch.tensor([0.0, 0.2, 0.1, 10.0, 10.2, 10.1])
    a1 = torch.tensor([-5.0, 5.0, -5.2, 5.2, -4.8, 4.8])
    return {"a": torch.stack([a0, a1], dim=1)}


def test_idc_by_hand() -> None:
    idc = make_idc(neurons=[("a", 0), ("a", 1)])
    idc.build(two_cluster_traces(), torch.zeros(6))
    assert idc.ks == [2, 2] and idc.centroids is not None
    assert torch.allclose(idc.centroids, torch.tensor([[0.1, 10.1], [-5.0, 5.0]]), atol=1e-5)
    idc.update({"a": torch.tensor([[1.0, -3.0], [9.0, 4.0], [0.0, -6.0]])}, torch.zeros(3))
    assert idc.compute() == {"coverage": 0.5, "max_attainable": 0.75, "combinations": 2.0, "total": 4.0,
                             "inputs": 3.0}


def test_idc_on_a_tiny_network_matches_plain_references() -> None:
    model, (x, y) = tiny_cnn(), data(40)
    neurons = rel.select_neurons(model, x, y, "layer_gradient_x_activation", 4, "model")
    traces = layer_traces(model, x, coverage_layers(model))
    idc = make_idc(neurons=neurons, seed=1)
    idc.build(traces, y)
    for j, (layer, index) in enumerate(neurons):
        fitted = KMeans(n_clusters=2, n_init=10, random_state=1).fit(traces[layer][:, index, None].double().numpy())
        assert np.allclose(idc.centroids[j].numpy(), np.sort(fitted.cluster_centers_.ravel()), atol=1e-5)
    test_x, _ = data(25, 7)
    test = layer_traces(model, test_x, coverage_layers(model))
    idc.update(test, y[:25])
    assert idc.compute()["combinations"] == len(reference_combinations(idc, test))
    assert idc.compute()["total"] == 16.0


def test_silhouette_picks_the_number_of_clusters_on_a_subsample() -> None:
    g = torch.Generator().manual_seed(0)
    three = torch.tensor([-6.0, 0.0, 6.0])[torch.randint(0, 3, (2500,), generator=g)]
    two = torch.tensor([-3.0, 3.0])[torch.randint(0, 2, (2500,), generator=g)]
    traces = {"h": torch.stack([three, two, torch.full((2500,), 0.5)], dim=1)
              + 0.1 * torch.randn(2500, 3, generator=g) * torch.tensor([1.0, 1.0, 0.0])}
    idc = make_idc(neurons=[["h", 0], ["h", 1], ["h", 2]], silhouette=True)
    idc.build(traces, torch.zeros(2500))
    assert idc.ks == [3, 2, 1]  # a constant neuron has one cluster
    again = idc.empty()
    again.build(traces, torch.zeros(2500))
    assert torch.equal(again.centroids, idc.centroids)
    narrow = make_idc(neurons=[["h", 0]], silhouette=True, k_range=[4, 6])
    narrow.build(traces, torch.zeros(2500))
    assert narrow.ks[0] in (4, 5, 6)


def test_idc_merge_of_shards_equals_one_pass() -> None:
    model, (x, y) = tiny_cnn(), data(60)
    traces = layer_traces(model, x, coverage_layers(model))
    idc = make_idc(neurons=[("0", 0), ("0", 2), ("4", 1), ("4", 3)])
    idc.build(split(traces, slice(0, 30)), y[:30])
    whole, left, right = idc.empty(), idc.empty(), idc.empty()
    whole.update(split(traces, slice(30, 60)), y[30:])
    left.update(split(traces, slice(30, 41)), y[30:41])
    right.update(split(traces, slice(41, 60)), y[41:])
    left.merge(right)
    assert left.compute() == whole.compute()
    assert torch.equal(left.covered, whole.covered)
    with pytest.raises(ValueError, match="same training traces"):
        other = make_idc(neurons=[("0", 0), ("0", 2), ("4", 1), ("4", 3)], seed=0)
        other.build(split(traces, slice(30, 60)), y[30:])
        left.merge(other)


@pytest.mark.parametrize("device", DEVICES)
def test_idc_runs_on_the_traces_device(device: str) -> None:
    traces = {name: t.to(device) for name, t in two_cluster_traces().items()}
    idc = make_idc(neurons=[("a", 0), ("a", 1)])
    idc.build(traces, torch.zeros(6, device=device))
    idc.update(traces, torch.zeros(6, device=device))
    assert idc.covered is not None and idc.covered.device.type == device
    assert idc.compute()["combinations"] == len(reference_combinations(idc, two_cluster_traces()))


def test_idc_parameters_and_registration() -> None:
    spec = CRITERIA.get("idc")
    assert spec.defaults == {"neurons": [], "k": 2, "silhouette": False, "k_range": [2, 9], "seed": 0}
    assert isinstance(spec.make(neurons=[("a", 0)]), IDC)
    for bad, match in [({}, "non-empty"), ({"neurons": [("a", -1)]}, "neuron"), ({"neurons": [("a", 0), ("a", 0)]}, "distinct"),
                       ({"neurons": [("a", 0)], "k": 0}, "k = 0"), ({"neurons": [("a", 0)], "k_range": [1, 3]}, "k_range"),
                       ({"neurons": [("a", 0)], "clusters": 2}, "clusters")]:
        with pytest.raises(ParamError, match=match):
            make_idc(**bad)
    idc = make_idc(neurons=[("a", 0)])
    with pytest.raises(RuntimeError, match="build"):
        idc.compute()
    with pytest.raises(ValueError, match="lack layers"):
        idc.build({"b": torch.zeros(3, 2)}, torch.zeros(3))
    idc.build(two_cluster_traces(), torch.zeros(6))
    with pytest.raises(ValueError, match="built with 2"):
        idc.update({"a": torch.zeros(3, 4)}, torch.zeros(3))


# ---------------------------------------------------------------- IDC properties


@pytest.fixture(scope="module")
def built() -> IDC:
    g = torch.Generator().manual_seed(5)
    train = {"a": torch.randn(200, 3, generator=g), "b": torch.randn(200, 2, generator=g) * 3}
    idc = make_idc(neurons=[("a", 0), ("a", 2), ("b", 1)], k=3)
    idc.build(train, torch.zeros(200))
    return idc


def trace_sets(n: int) -> st.SearchStrategy[dict[str, torch.Tensor]]:
    values = arrays(np.float32, (n, 5), elements=st.floats(-6, 6, width=32))
    return values.map(lambda v: {"a": torch.from_numpy(v[:, :3].copy()), "b": torch.from_numpy(v[:, 3:].copy())})


traces_and_cut = st.integers(1, 40).flatmap(lambda n: st.tuples(trace_sets(n), st.integers(0, n)))


@PROPERTIES
@given(traces_and_cut)
def test_idc_properties(built: IDC, case: tuple[dict[str, torch.Tensor], int]) -> None:
    traces, cut = case
    n = len(traces["a"])
    whole, first, second, reverse = built.empty(), built.empty(), built.empty(), built.empty()
    whole.update(traces, torch.zeros(n))
    result = whole.compute()
    assert 0.0 <= result["coverage"] <= result["max_attainable"] <= 1.0
    assert result["combinations"] == len(reference_combinations(whole, traces)) and result["total"] == 27.0
    first.update(split(traces, slice(0, cut)), torch.zeros(cut))
    assert first.compute()["coverage"] <= result["coverage"]  # adding inputs never lowers coverage
    second.update(split(traces, slice(cut, n)), torch.zeros(n - cut))
    first.merge(second)
    assert first.compute() == result
    reverse.update(split(traces, slice(cut, n)), torch.zeros(n - cut))
    reverse.update(split(traces, slice(0, cut)), torch.zeros(cut))
    assert reverse.compute() == result


@PROPERTIES
@given(trace_sets(1), st.integers(1, 20))
def test_one_input_repeated_covers_one_combination(built: IDC, one: dict[str, torch.Tensor], times: int) -> None:
    idc = built.empty()
    idc.update({name: t.repeat(times, 1) for name, t in one.items()}, torch.zeros(times))
    assert idc.compute()["coverage"] == pytest.approx(1 / 27)
    assert idc.compute()["max_attainable"] == pytest.approx(min(1.0, times / 27))
