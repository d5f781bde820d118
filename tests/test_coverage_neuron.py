"""The neuron-level baseline coverage criteria (NC, KMNC, NBC, SNAC, TKNC, TKNP, CC, NLC) against plain
Python / numpy loops, hand-checked tiny cases, a tiny network, and hypothesis properties (bounds, merge,
batch order and split, monotonicity, invariances)."""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from harness.coverage import neuron, pattern
from harness.coverage.base import CRITERIA, Criterion, coverage_layers, layer_traces
from harness.specs import ParamError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead
PROPERTIES = settings(max_examples=30, deadline=None)
NAMES = ["nc", "kmnc", "nbc", "snac", "tknc", "tknp", "cc", "nlc"]
SMALL = {"kmnc": {"k": 4}, "tknc": {"k": 2}, "tknp": {"k": 2}, "cc": {"threshold": 1.5}}
"""Parameters that make tiny cases interesting (defaults are checked separately)."""
ORDER_FREE = [name for name in NAMES if name != "cc"]
GROWING = [name for name in NAMES if name != "nlc"]
Arrays = dict[str, np.ndarray]


def make(name: str, train: Arrays, **params: Any) -> Criterion:
    criterion = CRITERIA.get(name).make(**{**SMALL.get(name, {}), **params})
    criterion.build(tensors(train), torch.zeros(1, dtype=torch.long))
    return criterion


def tensors(arrays: Arrays, rows: slice = slice(None), device: str = "cpu") -> dict[str, Tensor]:
    return {layer: torch.as_tensor(values[rows], device=device) for layer, values in arrays.items()}


def fed(criterion: Criterion, test: Arrays, cuts: list[int]) -> Criterion:
    """``criterion.empty()`` fed ``test`` in the batches between ``cuts``."""
    out = criterion.empty()
    for lo, hi in itertools.pairwise(cuts):
        out.update(tensors(test, slice(lo, hi)), torch.zeros(hi - lo, dtype=torch.long))
    return out


def run(name: str, train: Arrays, test: Arrays, **params: Any) -> dict[str, float]:
    return fed(make(name, train, **params), test, [0, rows(test)]).compute()


def rows(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))


# ----------------------------------------------------------------------------------------- plain references
def top_k(values: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def reference(name: str, train: Arrays, test: Arrays, **params: Any) -> float:
    """The coverage, one input and one neuron at a time, straight from the definitions."""
    p = {**SMALL.get(name, {}), **params}
    n = rows(test)
    if name == "nc":
        covered = set()
        for layer, values in test.items():
            for a in values:
                lo, hi = min(a), max(a)
                covered |= {(layer, j) for j in range(len(a)) if hi > lo and (a[j] - lo) / (hi - lo) > p.get(
                    "threshold", 0.5)}
        return len(covered) / sum(v.shape[1] for v in test.values())
    if name in ("kmnc", "nbc", "snac"):
        cells, lower, upper = set(), set(), set()
        for layer, values in test.items():
            for j in range(values.shape[1]):
                lo, hi = min(train[layer][:, j]), max(train[layer][:, j])
                for a in values[:, j]:
                    if a < lo:
                        lower.add((layer, j))
                    if a > hi:
                        upper.add((layer, j))
                    if name == "kmnc" and hi > lo and lo <= a <= hi:
                        cells.add((layer, j, min(math.floor((a - lo) / (hi - lo) * p["k"]), p["k"] - 1)))
        neurons = sum(v.shape[1] for v in test.values())
        if name == "kmnc":
            return len(cells) / (neurons * p["k"])
        return len(upper) / neurons if name == "snac" else (len(lower) + len(upper)) / neurons / 2
    if name == "tknc":
        covered = {(layer, j) for layer, values in test.items() for a in values for j in top_k(a, p["k"])}
        return len(covered) / sum(v.shape[1] for v in test.values())
    if name == "tknp":
        return len({tuple(tuple(sorted(top_k(values[i], p["k"]))) for values in test.values()) for i in range(n)})
    if name == "cc":
        entries: list[np.ndarray] = []
        for i in range(n):
            x = np.concatenate([values[i] for values in test.values()])
            if all(((x - e) ** 2).sum() > p["threshold"] ** 2 for e in entries):
                entries.append(x)
        return len(entries)
    assert name == "nlc"
    return sum(np.abs(np.cov(values, rowvar=False, bias=True).reshape(values.shape[1], -1)).mean()
               for values in test.values()) if n else 0.0


# ----------------------------------------------------------------------------------------- strategies
@st.composite
def cases(draw: st.DrawFn, min_test: int = 0) -> tuple[Arrays, Arrays, int]:
    """Tiny traces of 1-2 layers on a grid of halves (many ties, exact in float64), and a cut point."""
    widths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    n_train, n_test = draw(st.integers(1, 6)), draw(st.integers(min_test, 10))

    def block(n: int, width: int) -> np.ndarray:
        cells = draw(st.lists(st.integers(-4, 4), min_size=n * width, max_size=n * width))
        return np.array(cells, dtype=np.float64).reshape(n, width) / 2

    train = {f"l{i}": block(n_train, w) for i, w in enumerate(widths)}
    test = {f"l{i}": block(n_test, w) for i, w in enumerate(widths)}
    return train, test, draw(st.integers(0, n_test))


def same(name: str, a: dict[str, float], b: dict[str, float]) -> bool:
    if name == "nlc":
        return a["inputs"] == b["inputs"] and a["coverage"] == pytest.approx(b["coverage"], rel=1e-9, abs=1e-12)
    return a == b


# ----------------------------------------------------------------------------------------- against references
@pytest.mark.parametrize("name", NAMES)
@PROPERTIES
@given(case=cases())
def test_matches_plain_reference(name: str, case: tuple[Arrays, Arrays, int]) -> None:
    train, test, _ = case
    got = run(name, train, test)
    expected = reference(name, train, test)
    assert got["coverage"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got["inputs"] == rows(test)


def tiny_network_traces(n: int, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    layers = coverage_layers(model)
    assert layers == ["0", "2", "5"]
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return {layer: values.double().numpy() for layer, values in layer_traces(model, x, layers, 7).items()}


@pytest.mark.parametrize("name", NAMES)
def test_tiny_network_matches_reference_with_seed_defaults(name: str) -> None:
    train, test = tiny_network_traces(40, 1), tiny_network_traces(30, 2)
    test = {layer: values * 1.3 for layer, values in test.items()}  # leave the training range now and then
    params = dict(CRITERIA.get(name).defaults)
    if name == "cc":
        params["threshold"] = 0.3  # the seed's 10 is one entry for traces this small
    if name in ("tknc", "tknp"):
        params["k"] = 2  # the seed's 10 is every neuron of these layers
    got = run(name, train, test, **params)
    assert got["coverage"] == pytest.approx(reference(name, train, test, **params), rel=1e-9)
    assert 0.0 < got["ratio"] < 1.0  # not a trivial case


# ----------------------------------------------------------------------------------------- hand-checked
def test_nc_by_hand() -> None:
    train = {"a": np.zeros((1, 3))}
    test = {"a": np.array([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])}  # scaled [0, .5, 1]; a constant layer: 0
    assert run("nc", train, test) == {"coverage": 1 / 3, "ratio": 1 / 3, "inputs": 2}
    assert run("nc", train, test, threshold=0.0)["coverage"] == 2 / 3


def test_kmnc_nbc_snac_by_hand() -> None:
    train = {"a": np.array([[0.0, 5.0], [10.0, 5.0]])}  # neuron 1 has an empty range: no sections
    test = {"a": np.array([[0.0, 5.0], [10.0, 4.0], [5.0, 6.0], [-1.0, 5.0], [9.99, 5.0]])}
    assert run("kmnc", train, test, k=10)["coverage"] == 3 / 20  # sections 0, 9 (closed top), 5, 9 again
    assert run("nbc", train, test)["coverage"] == (2 / 2 + 1 / 2) / 2
    assert run("snac", train, test)["coverage"] == 1 / 2


def test_top_k_ties_go_to_the_lower_index() -> None:
    values = torch.tensor([[1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert neuron.top_k_indices(values, 2).tolist() == [[1, 2], [0, 1]]
    assert neuron.top_k_indices(values, 9).shape == (2, 4)
    test = {"a": values.numpy().astype(np.float64), "b": np.array([[1.0], [0.0]])}
    assert run("tknc", test, test, k=2)["coverage"] == 4 / 5  # a: 0, 1, 2; b: its only neuron
    assert run("tknp", test, test, k=2) == {"coverage": 2.0, "ratio": 1.0, "inputs": 2}


def test_tknp_ratio_caps_the_denominator() -> None:
    criterion = make("tknp", {"a": np.zeros((1, 3))}, k=1)
    criterion.inputs = 20000  # as if many repeated inputs had been seen
    criterion.patterns = torch.zeros((5000, 1), dtype=torch.long)
    assert criterion.compute()["ratio"] == 0.5


def test_cc_merge_replays_inputs_not_entries() -> None:
    """a = [0], b = [0.9, 1.8], threshold 1: one pass keeps 0 and 1.8 (0.9 is near 0, so 1.8 is far from every
    entry); b alone keeps only 0.9, so replaying b's entries would give 1."""
    train = {"a": np.zeros((1, 1))}
    test = {"a": np.array([[0.0], [0.9], [1.8]])}
    criterion = make("cc", train, threshold=1.0)
    single = fed(criterion, test, [0, 3]).compute()
    first, second = fed(criterion, test, [0, 1]), criterion.empty()
    second.update(tensors(test, slice(1, 3)), torch.zeros(2, dtype=torch.long))
    assert second.compute()["coverage"] == 1
    first.merge(second)
    assert first.compute() == single == {"coverage": 2.0, "ratio": 2 / 3, "inputs": 3}


def test_cc_distance_at_the_threshold_is_not_farther() -> None:
    test = {"a": np.array([[0.0, 0.0], [3.0, 4.0], [-3.0, -4.0], [0.0, 5.000001]])}
    assert run("cc", test, test, threshold=5.0)["coverage"] == 2  # at distance 5: near; 5.000001: farther


def test_nlc_by_hand() -> None:
    test = {"a": np.array([[0.0, 0.0], [2.0, 0.0]]), "b": np.array([[1.0], [1.0]])}
    assert run("nlc", test, test) == {"coverage": 0.25, "ratio": 0.25, "inputs": 2}  # cov [[1, 0], [0, 0]]
    assert run("nlc", test, {layer: values[:0] for layer, values in test.items()})["coverage"] == 0.0


@PROPERTIES
@given(case=cases(min_test=1), cuts=st.lists(st.integers(0, 10), max_size=3))
def test_nlc_merged_covariance_equals_the_concatenation(case: tuple[Arrays, Arrays, int], cuts: list[int]) -> None:
    train, test, _ = case
    n = rows(test)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    criterion = make("nlc", train)
    parts = [fed(criterion, test, [lo, hi]) for lo, hi in itertools.pairwise(bounds)]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert isinstance(merged, pattern.NeuralCoverage)
    for layer, values in test.items():
        expected = np.cov(values, rowvar=False, bias=True).reshape(values.shape[1], -1) if n else 0.0
        np.testing.assert_allclose(merged.covariance(layer).numpy(), expected, atol=1e-6)


@PROPERTIES
@given(size=st.integers(0, 12), data=st.data())
def test_greedy_cover_matches_a_sequential_loop(size: int, data: st.DataObject) -> None:
    cells = data.draw(st.lists(st.booleans(), min_size=size * size, max_size=size * size))
    near = torch.tensor(cells, dtype=torch.bool).reshape(size, size)
    candidate = torch.tensor(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=torch.bool)
    admitted: list[int] = []
    for i in range(size):
        if candidate[i] and not any(near[i, j] for j in admitted):
            admitted.append(i)
    assert pattern.greedy_cover(candidate, near).nonzero().flatten().tolist() == admitted


# ----------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", NAMES)
@PROPERTIES
@given(case=cases())
def test_two_merged_shards_equal_one_pass(name: str, case: tuple[Arrays, Arrays, int]) -> None:
    """For CC, one pass over shard a then shard b (its defined merge order)."""
    train, test, cut = case
    criterion = make(name, train)
    single = fed(criterion, test, [0, rows(test)]).compute()
    first, second = fed(criterion, test, [0, cut]), fed(criterion, test, [cut, rows(test)])
    first.merge(second)
    assert same(name, first.compute(), single)
    assert same(name, criterion.compute(), fed(criterion, test, [0, 0]).compute())  # the built one is untouched


@pytest.mark.parametrize("name", NAMES)
@PROPERTIES
@given(case=cases(), cuts=st.lists(st.integers(0, 10), max_size=4))
def test_batch_split_is_irrelevant(name: str, case: tuple[Arrays, Arrays, int], cuts: list[int]) -> None:
    train, test, _ = case
    n = rows(test)
    criterion = make(name, train)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    assert same(name, fed(criterion, test, bounds).compute(), fed(criterion, test, [0, n]).compute())


@pytest.mark.parametrize("name", ORDER_FREE)
@PROPERTIES
@given(case=cases())
def test_batch_order_is_irrelevant(name: str, case: tuple[Arrays, Arrays, int]) -> None:
    train, test, cut = case
    criterion = make(name, train)
    forward = fed(criterion, test, [0, cut, rows(test)])
    backward = fed(criterion, {layer: np.concatenate([v[cut:], v[:cut]]) for layer, v in test.items()},
                   [0, rows(test) - cut, rows(test)])
    assert same(name, forward.compute(), backward.compute())


@pytest.mark.parametrize("name", GROWING)
@PROPERTIES
@given(case=cases())
def test_coverage_never_falls_as_inputs_are_added_and_stays_in_bounds(
    name: str, case: tuple[Arrays, Arrays, int]
) -> None:
    train, test, _ = case
    criterion = make(name, train).empty()
    previous = 0.0
    for i in range(rows(test)):
        criterion.update(tensors(test, slice(i, i + 1)), torch.zeros(1, dtype=torch.long))
        result = criterion.compute()
        assert result["coverage"] >= previous
        previous = result["coverage"]
        assert 0.0 <= result["ratio"] <= 1.0
        if name in ("tknp", "cc"):
            assert 1 <= result["coverage"] <= result["inputs"] == i + 1


@PROPERTIES
@given(case=cases(min_test=1), threshold=st.sampled_from([0.0, 0.5, 1.0, 2.5]))
def test_cc_entries_are_far_apart_and_cover_every_input(case: tuple[Arrays, Arrays, int], threshold: float) -> None:
    train, test, _ = case
    criterion = fed(make("cc", train, threshold=threshold), test, [0, rows(test)])
    assert isinstance(criterion, pattern.ClusterCoverage)
    entries = criterion.entries.numpy()
    traces = np.concatenate(list(test.values()), axis=1)
    gaps = ((entries[:, None] - entries[None]) ** 2).sum(-1)
    assert (gaps[~np.eye(len(entries), dtype=bool)] > threshold ** 2).all()
    assert (((traces[:, None] - entries[None]) ** 2).sum(-1) <= threshold ** 2).any(axis=1).all()


@PROPERTIES
@given(case=cases(), scale=st.sampled_from([0.5, 2.0, 4.0]), shift=st.integers(-3, 3))
def test_nc_ignores_a_positive_affine_map_of_a_layer(case: tuple[Arrays, Arrays, int], scale: float,
                                                     shift: int) -> None:
    train, test, _ = case
    moved = {layer: values * scale + shift for layer, values in test.items()}
    assert run("nc", train, moved) == run("nc", train, test)


@pytest.mark.parametrize("name", ["tknc", "tknp"])
@PROPERTIES
@given(case=cases())
def test_top_k_criteria_ignore_an_increasing_map(name: str, case: tuple[Arrays, Arrays, int]) -> None:
    train, test, _ = case
    moved = {layer: values ** 3 + values for layer, values in test.items()}  # strictly increasing, exact
    assert run(name, train, moved) == run(name, train, test)


@pytest.mark.parametrize("name", ["kmnc", "nbc", "snac"])
@PROPERTIES
@given(case=cases(), scale=st.sampled_from([0.25, 2.0]))
def test_range_criteria_ignore_a_common_rescaling(name: str, case: tuple[Arrays, Arrays, int], scale: float) -> None:
    train, test, _ = case
    scaled = {layer: values * scale for layer, values in train.items()}
    assert run(name, scaled, {layer: values * scale for layer, values in test.items()}) == run(name, train, test)


# ----------------------------------------------------------------------------------------- contract and errors
def test_registered_with_the_seed_hyperparameters() -> None:
    expected = {"nc": {"threshold": 0.5}, "kmnc": {"k": 1000}, "nbc": {}, "snac": {}, "tknc": {"k": 10},
                "tknp": {"k": 10}, "cc": {"threshold": 10.0}, "nlc": {}}
    for name, defaults in expected.items():
        spec = CRITERIA.get(name)
        assert spec.defaults == defaults and spec.reference and spec.description
        assert spec.make().name == name


@pytest.mark.parametrize(("name", "params", "message"), [
    ("nc", {"threshold": 1.5}, "'threshold' = 1.5 is not valid; valid: 0 <= threshold <= 1"),
    ("kmnc", {"k": 0}, "'k' = 0 is not valid; valid: an integer k >= 1"),
    ("tknc", {"k": -2}, "'k' = -2"),
    ("tknp", {"k": 2.5}, "'k' = 2.5 has type float"),
    ("cc", {"threshold": -1.0}, "'threshold' = -1.0 is not valid; valid: a finite threshold >= 0"),
    ("nbc", {"k": 3}, "unknown parameter 'k'; valid parameters: (none)"),
    ("nlc", {"hyper": 1}, "unknown parameter 'hyper'"),
])
def test_bad_parameters_raise_param_error(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CRITERIA.get(name).make(**params)


@pytest.mark.parametrize("name", NAMES)
def test_misuse_is_reported(name: str) -> None:
    train = {"a": np.zeros((2, 3)), "b": np.ones((2, 2))}
    labels = torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="build"):
        CRITERIA.get(name).make().update(tensors(train), labels)
    criterion = make(name, train)
    with pytest.raises(ValueError, match="built with 3"):
        criterion.update({"a": torch.zeros(1, 4, dtype=torch.float64), "b": torch.zeros(1, 2)}, labels)
    with pytest.raises(ValueError, match="lack layers"):
        criterion.update({"a": torch.zeros(1, 3)}, labels)
    others = [make("tknc" if name == "nc" else "nc", train)]  # another kind
    others += [make({"nbc": "snac", "snac": "nbc"}[name], train)] if name in ("nbc", "snac") else []
    others += [make(name, train, **{key: value / 2 for key, value in CRITERIA.get(name).defaults.items()})
               ] if name in ("nc", "cc") else [make(name, train, k=3)] if name in ("kmnc", "tknc", "tknp") else []
    for other in others:
        with pytest.raises(ValueError, match="can only merge"):
            criterion.merge(other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name: str) -> None:
    train, test = tiny_network_traces(40, 1), tiny_network_traces(300, 2)
    params = {"threshold": 0.3} if name == "cc" else {}
    results = []
    for device in ("cpu", "cuda"):
        criterion = CRITERIA.get(name).make(**params)
        criterion.build(tensors(train, device=device), torch.zeros(1, dtype=torch.long))
        part = fed_on(criterion, test, device)
        assert all(t.device.type == device for t in _state_tensors(part))
        results.append(part.compute())
    assert same(name, results[0], results[1])


def fed_on(criterion: Criterion, test: Arrays, device: str) -> Criterion:
    first, second = criterion.empty(), criterion.empty()
    first.update(tensors(test, slice(0, 100), device), torch.zeros(100, dtype=torch.long))
    second.update(tensors(test, slice(100, None), device), torch.zeros(200, dtype=torch.long))
    first.merge(second)
    return first


def _state_tensors(criterion: Criterion) -> list[Tensor]:
    found = []
    for value in vars(criterion).values():
        found += [value] if isinstance(value, Tensor) else []
        if isinstance(value, dict):
            for inner in value.values():
                found += [t for t in (inner.values() if isinstance(inner, dict) else [inner]) if isinstance(t, Tensor)]
    return found
