"""Surprise-adequacy coverage (LSC, DSC, MDSC) against independent references and properties.

References: LSA from ``scipy.stats.gaussian_kde`` per class after a plain-loop variance filter; DSA and MDSA
from per-input NumPy loops (sadl's nearest-neighbour rule; ``np.linalg.pinv`` of ``np.cov(bias=True)``);
coverage from a Python set of ``math.floor((sa - lower) / hyper)``. A hand-checked 1-D DSC case and hand-checked
buckets over [lower, upper) with a negative lower pin the arithmetic; the default lower 0 is checked bitwise against
the rule before ``lower`` existed.
"""
from __future__ import annotations

import math
import warnings
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import gaussian_kde
from torch import Tensor, nn

from harness.coverage import surprise, workflow
from harness.coverage.base import CRITERIA, coverage_layers, layer_traces, split
from harness.coverage.surprise import DSC, LSC, MDSC, SurpriseCoverage
from harness.metrics import coverage_rq
from harness.specs import METRICS, DataBundle, MetricInputs, ParamError, RunContext

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: LAPACK is fastest on one thread
NAMES = ("lsc", "dsc", "mdsc")
PROPERTIES = settings(max_examples=15, deadline=None)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def blobs(seed: int, n: int = 120, d: int = 3, classes: int = 3,
          spread: float = 1.0) -> tuple[Tensor, Tensor]:
    """``n`` traces of ``d`` neurons in ``classes`` correlated Gaussian clusters, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = 3.0 * torch.randn(classes, d, generator=g)
    mixing = torch.randn(classes, d, d, generator=g) * spread
    x = centres[labels] + torch.einsum("nd,nde->ne", torch.randn(n, d, generator=g), mixing[labels])
    return x, labels


def make(name: str, **params: Any) -> SurpriseCoverage:
    criterion = CRITERIA.get(name).make(**params)
    assert isinstance(criterion, SurpriseCoverage)
    return criterion


def built(name: str, train: Tensor, labels: Tensor, **params: Any) -> SurpriseCoverage:
    criterion = make(name, **params)
    criterion.build({"layer": train}, labels)
    return criterion


# ----------------------------------------------------------------------------------------- references

def ref_keep(x: np.ndarray, y: np.ndarray, min_var: float) -> np.ndarray:
    """sadl's rule: drop a neuron whose variance is below min_var in any class (of >= 2 traces)."""
    removed = set()
    for label in np.unique(y):
        rows = x[y == label]
        if len(rows) >= 2:
            removed |= {j for j in range(x.shape[1]) if np.var(rows[:, j]) < min_var}
    return np.array([j not in removed for j in range(x.shape[1])])


def ref_lsa(train: Tensor, labels: Tensor, test: Tensor, test_labels: Tensor,
            min_var: float = 1e-5) -> np.ndarray:
    x, y, t = train.double().numpy(), labels.numpy(), test.double().numpy()
    keep = ref_keep(x, y, min_var)
    kdes = {}
    for label in np.unique(y):
        try:
            kdes[label] = gaussian_kde(x[y == label][:, keep].T)
        except np.linalg.LinAlgError:
            pass
    return np.array([-kdes[c].logpdf(row[keep][:, None])[0] if c in kdes else np.nan
                     for row, c in zip(t, test_labels.numpy())])


def ref_dsa(train: Tensor, labels: Tensor, test: Tensor, test_labels: Tensor) -> np.ndarray:
    x, y = train.double().numpy(), labels.numpy()
    out = []
    for row, c in zip(test.double().numpy(), test_labels.numpy()):
        same, other = x[y == c], x[y != c]
        dists = [np.linalg.norm(row - p) for p in same]
        a = same[int(np.argmin(dists))]
        out.append(min(dists) / min(np.linalg.norm(a - q) for q in other))
    return np.array(out)


def ref_mdsa(train: Tensor, labels: Tensor, test: Tensor, test_labels: Tensor,
             min_var: float = 1e-5) -> np.ndarray:
    x, y = train.double().numpy(), labels.numpy()
    keep = ref_keep(x, y, min_var)
    out = []
    for row, c in zip(test.double().numpy(), test_labels.numpy()):
        points = x[y == c][:, keep]
        diff = row[keep] - points.mean(axis=0)
        out.append(math.sqrt(max(0.0, diff @ np.linalg.pinv(np.cov(points.T, bias=True)) @ diff)))
    return np.array(out)


def ref_compute(sa: np.ndarray, hyper: float, upper: float, lower: float = 0.0) -> dict[str, float]:
    finite = [float(s) for s in sa if np.isfinite(s)]
    hits = {math.floor((s - lower) / hyper) for s in finite}
    n = round((upper - lower) / hyper)
    return {"coverage": sum(0 <= b < n for b in hits) / n, "buckets": float(len(hits)),
            "ratio": len(hits) / len(sa), "inputs": float(len(sa)),
            "undefined": float((~np.isfinite(sa)).sum()),
            "below": float(sum(s < lower for s in finite)), "above": float(sum(s >= upper for s in finite))}


def rule_before_lower(sa: Tensor, hyper: float, upper: float) -> dict[str, float]:
    """``update`` + ``compute`` as they were before the ``lower`` bound, verbatim: the default must not move."""
    finite = torch.isfinite(sa)
    hits = {int(b) for b in torch.floor(sa[finite] / hyper).unique().tolist()}
    n = math.ceil(upper / hyper - 1e-9)
    return {"coverage": sum(1 for b in hits if 0 <= b < n) / n, "buckets": float(len(hits)),
            "ratio": len(hits) / len(sa) if len(sa) else 0.0, "inputs": float(len(sa)),
            "undefined": float(int((~finite).sum()))}


REFERENCES = {"lsc": ref_lsa, "dsc": ref_dsa, "mdsc": ref_mdsa}


# ------------------------------------------------------------------------------------------- registry

def test_registered_with_seed_defaults() -> None:
    assert {"lsc": 10.0, "dsc": 0.1, "mdsc": 10.0} == {n: CRITERIA.get(n).defaults["hyper"] for n in NAMES}
    for name in NAMES:
        spec = CRITERIA.get(name)
        assert spec.description and spec.reference and spec.defaults["layers"] == []
        assert spec.defaults["lower"] == 0.0
        criterion = spec.make(**spec.defaults)
        assert criterion.name == name and criterion.compute()["coverage"] == 0.0
    assert [type(make(n)) for n in NAMES] == [LSC, DSC, MDSC]
    assert {n: CRITERIA.get(n).defaults["upper"] for n in NAMES} == {"lsc": 2000.0, "dsc": 2.0, "mdsc": 100.0}


@pytest.mark.parametrize(("name", "params", "match"), [
    ("lsc", {"hyper": 0.0}, "'hyper' = 0.0"), ("dsc", {"upper": -1.0}, "'upper' = -1.0"),
    ("mdsc", {"upper": math.inf}, "'upper' = inf"), ("lsc", {"min_var": -1e-3}, "'min_var'"),
    ("dsc", {"min_var": 1e-5}, "unknown parameter 'min_var'"),
    ("mdsc", {"layers": [3]}, "'layers' = \\[3\\]"),
    ("lsc", {"hyper": "10"}, "'hyper' = '10' has type str"), ("dsc", {"bins": 3}, "valid parameters"),
    ("lsc", {"lower": 5.0, "upper": 5.0}, "'lower' = 5.0 must be below 'upper' = 5.0"),
    ("mdsc", {"lower": 200.0}, "'lower' = 200.0 must be below 'upper' = 100.0"),
    ("dsc", {"lower": -math.inf}, "'lower' = -inf must be finite"), ("lsc", {"lower": math.nan}, "'lower' = nan"),
])
def test_bad_parameters_raise(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        make(name, **params)
    with pytest.raises(ValueError, match="lower = 3.0 must be below upper = 2.0"):
        LSC(1.0, 2.0, lower=3.0)


# ------------------------------------------------------------------------------- against references

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_surprise_and_coverage_match_references(name: str, seed: int) -> None:
    train, labels = blobs(seed, n=150, d=4)
    train[:, 2] = 0.5  # constant neuron: dropped by LSC / MDSC
    test, test_labels = blobs(seed + 10, n=40, d=4)
    test = test * 1.5
    params = {"hyper": 0.5, "upper": 40.0} if name != "dsc" else {"hyper": 0.1, "upper": 2.0}
    criterion = built(name, train, labels, **params)
    expected = REFERENCES[name](train, labels, test, test_labels)
    got = criterion.surprise({"layer": test}, test_labels).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    criterion.update({"layer": test}, test_labels)
    assert criterion.compute() == pytest.approx(ref_compute(got, **params))
    assert criterion.compute()["buckets"] >= 3  # the case is not degenerate


def test_lsa_of_a_tight_cluster_is_negative_and_floored() -> None:
    train, labels = blobs(3, n=90, d=2, spread=0.01)
    criterion = built("lsc", train, labels, hyper=1.0, upper=10.0)
    sa = criterion.surprise({"layer": train[:20]}, labels[:20]).numpy()
    np.testing.assert_allclose(sa, ref_lsa(train, labels, train[:20], labels[:20]), rtol=1e-6)
    assert (sa < -1).all()  # a density above e: buckets -1, -2, ... count in "buckets", not in coverage
    criterion.update({"layer": train[:20]}, labels[:20])
    assert criterion.compute() == pytest.approx(ref_compute(sa, 1.0, 10.0))
    assert criterion.compute()["coverage"] == 0.0 and criterion.compute()["buckets"] > 0
    assert criterion.compute()["below"] == 20.0
    lowered = built("lsc", train, labels, hyper=1.0, lower=-50.0, upper=10.0)  # sadl: lower = the least SA
    lowered.update({"layer": train[:20]}, labels[:20])
    assert lowered.compute() == pytest.approx(ref_compute(sa, 1.0, 10.0, -50.0))
    assert lowered.compute()["coverage"] > 0.0 and lowered.compute()["below"] == 0.0


def test_variance_filter_is_the_union_over_classes() -> None:
    train, labels = blobs(4, n=60, d=4, classes=2)
    train[labels == 0, 1] = 2.0  # constant within class 0 only
    train[labels == 1, 3] = -1.0  # constant within class 1 only
    for name in ("lsc", "mdsc"):
        criterion = built(name, train, labels)
        assert criterion._keep is not None
        assert criterion._keep.tolist() == ref_keep(train.double().numpy(), labels.numpy(), 1e-5).tolist()
        assert criterion._keep.tolist() == [True, False, True, False]
    assert built("dsc", train, labels)._keep.all()  # type: ignore[union-attr]


def test_dsc_hand_checked() -> None:
    train, labels = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1])
    criterion = built("dsc", train, labels)  # width 0.1, upper 2.0: 20 buckets
    test, test_labels = torch.tensor([[0.5], [1.5], [12.0], [1.4]]), torch.tensor([0, 0, 0, 0])
    # dist_a: 0.5, 1.5, 12, 1.4 to the class-0 trace 0; dist_b: from 0 to 10 -> 0.05, 0.15, 1.2, 0.14
    sa = criterion.surprise({"layer": test}, test_labels).numpy()
    np.testing.assert_allclose(sa, [0.05, 0.15, 1.2, 0.14])
    criterion.update({"layer": test}, test_labels)
    assert criterion.compute() == pytest.approx(
        {"coverage": 3 / 20, "buckets": 3.0, "ratio": 3 / 4, "inputs": 4.0, "undefined": 0.0, "below": 0.0,
         "above": 0.0})


def fixed(criterion: SurpriseCoverage, values: list[float], monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """``criterion`` fed inputs whose surprise values are ``values`` (``surprise`` stubbed out)."""
    monkeypatch.setattr(criterion, "surprise", lambda traces, labels: torch.tensor(values, dtype=torch.float64))
    criterion.update({}, torch.zeros(len(values)))
    return criterion.compute()


def test_buckets_with_a_negative_lower_hand_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # lower -4, upper 4, width 1: 8 buckets [-4, -3), ..., [3, 4); bucket floor(SA + 4)
    # -3.2 -> 0, -0.1 -> 3, 0.4 -> 4, 5 -> 9 (above), -4.5 -> -1 (below), 4 -> 8 (above: upper is open), -4 -> 0
    values = [-3.2, -0.1, 0.4, 5.0, -4.5, 4.0, -4.0, math.nan]
    got = fixed(make("lsc", hyper=1.0, lower=-4.0, upper=4.0), values, monkeypatch)
    assert got == {"coverage": 3 / 8, "buckets": 6.0, "ratio": 6 / 8, "inputs": 8.0, "undefined": 1.0,
                   "below": 1.0, "above": 2.0}
    # the default lower 0 (4 buckets [0, 1), ..., [3, 4)): only 0.4 -> 0 is inside; four SAs are below
    got = fixed(make("lsc", hyper=1.0, upper=4.0), values, monkeypatch)
    assert got == {"coverage": 1 / 4, "buckets": 6.0, "ratio": 6 / 8, "inputs": 8.0, "undefined": 1.0,
                   "below": 4.0, "above": 2.0}
    # a lower off the width's grid shifts every bucket: 7 buckets [-3.5, -2.5), ..., [2.5, 3.5); -3.2 -> 0,
    # -0.1 and 0.4 -> 3 (both in [-0.5, 0.5)), -4.5 and -4 -> -1, 4 -> 7, 5 -> 8: buckets -1, 0, 3, 7, 8
    got = fixed(make("lsc", hyper=1.0, lower=-3.5, upper=3.5), values, monkeypatch)
    assert got == {"coverage": 2 / 7, "buckets": 5.0, "ratio": 5 / 8, "inputs": 8.0, "undefined": 1.0,
                   "below": 2.0, "above": 2.0}


@pytest.mark.parametrize("name", NAMES)
def test_default_lower_is_bitwise_the_rule_before_it(name: str) -> None:
    train, labels = blobs(0, n=150, d=4)
    test, test_labels = blobs(10, n=40, d=4)
    test = test * 1.5
    params = {"hyper": 0.5, "upper": 40.0} if name != "dsc" else {}
    spec = {**CRITERIA.get(name).defaults, **params}
    for explicit in (params, {**params, "lower": 0.0}):
        criterion = built(name, train, labels, **explicit)
        criterion.update({"layer": test}, test_labels)
        got = criterion.compute()
        before = rule_before_lower(criterion.surprise({"layer": test}, test_labels), spec["hyper"], spec["upper"])
        assert {k: got[k] for k in before} == before  # exact, not approx
        assert repr(criterion).startswith(f"{type(criterion).__name__}(hyper={spec['hyper']}, lower=0.0, ")


def test_dsa_uses_the_gap_of_the_nearest_same_class_trace() -> None:
    # NeuraL-Coverage measures dist_b from x (here 2); the paper and sadl from a = 0 (here 10): 1 / 10
    train, labels = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1, 1])
    dsa = built("dsc", train, labels).surprise({"layer": torch.tensor([[0.0, 1.0]])}, torch.tensor([0]))
    assert dsa.tolist() == pytest.approx([1.0 / 3.0])


def test_classes_without_statistics_give_undefined_inputs() -> None:
    train, labels = blobs(5, n=40, d=3, classes=2)
    flat = torch.tensor([[0.0, 1.0, 0.0], [1.0, 3.0, 0.0], [2.0, 2.0, 0.0], [1.0, 0.0, 0.0]])  # singular
    train = torch.cat([train, flat, torch.ones(1, 3)])
    labels = torch.cat([labels, torch.full((4,), 2), torch.tensor([3])])  # class 3: a single trace
    criterion = make("lsc", min_var=0.0)
    with pytest.warns(UserWarning, match=r"classes \[2, 3\]"):
        criterion.build({"layer": train}, labels)
    test_labels = torch.tensor([0, 2, 7, 1, 3])
    sa = criterion.surprise({"layer": train[:5]}, test_labels)
    assert torch.isnan(sa).tolist() == [False, True, True, False, True]
    criterion.update({"layer": train[:5]}, test_labels)
    assert criterion.compute()["undefined"] == 3.0 and criterion.compute()["inputs"] == 5.0


def test_mdsc_singular_covariance_uses_the_pseudo_inverse() -> None:
    g = torch.Generator().manual_seed(6)
    train = torch.randn(4, 6, generator=g)  # 4 traces in 6 dimensions: rank 3
    labels = torch.zeros(4, dtype=torch.long)
    test = torch.randn(5, 6, generator=g)
    got = built("mdsc", train, labels).surprise({"layer": test}, torch.zeros(5, dtype=torch.long))
    np.testing.assert_allclose(got.numpy(), ref_mdsa(train, labels, test, torch.zeros(5, dtype=torch.long)),
                               rtol=1e-6)


def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    train, labels = blobs(7, n=90, d=3)
    test, test_labels = blobs(8, n=25, d=3)
    whole = {n: built(n, train, labels).surprise({"layer": test}, test_labels) for n in NAMES}
    monkeypatch.setattr(surprise, "CHUNK_ELEMENTS", 7)
    for name in NAMES:
        chunked = built(name, train, labels).surprise({"layer": test}, test_labels)
        torch.testing.assert_close(chunked, whole[name])


# ------------------------------------------------------------------------------------ layers and model

def test_layers_default_to_the_last_and_concatenate_in_order() -> None:
    a, labels = blobs(9, n=60, d=2)
    b, _ = blobs(10, n=60, d=3)
    ta, test_labels = blobs(11, n=10, d=2)
    tb, _ = blobs(12, n=10, d=3)
    train, test = {"a": a, "b": b}, {"a": ta, "b": tb}
    last, both = make("dsc"), make("dsc", layers=["b", "a"])
    last.build(train, labels)
    both.build(train, labels)
    np.testing.assert_allclose(last.surprise(test, test_labels).numpy(), ref_dsa(b, labels, tb, test_labels))
    np.testing.assert_allclose(both.surprise(test, test_labels).numpy(),
                               ref_dsa(torch.cat([b, a], 1), labels, torch.cat([tb, ta], 1), test_labels))
    with pytest.raises(ValueError, match="layers \\['c'\\]"):
        make("dsc", layers=["c"]).build(train, labels)
    with pytest.raises(ValueError, match="has 2 neurons, built with 3"):
        last.update({"a": ta, "b": ta}, test_labels)
    with pytest.raises(RuntimeError, match="build"):
        make("lsc").update(test, test_labels)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_network_end_to_end(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 2)).eval()
    layers = coverage_layers(model)
    assert layers == ["0", "2"]
    x_train, x_test = torch.randn(400, 4), 2 * torch.randn(60, 4)
    train, test = layer_traces(model, x_train, layers), layer_traces(model, x_test, layers)
    labels, test_labels = model(x_train).argmax(1), model(x_test).argmax(1)
    assert min(torch.bincount(labels, minlength=2).tolist()) > 20
    params = {"hyper": 0.5, "upper": 20.0} if name != "dsc" else {}
    criterion = make(name, **params)
    criterion.build(train, labels)
    criterion.update(test, test_labels)
    sa = REFERENCES[name](train["2"], labels, test["2"], test_labels)
    spec = {**CRITERIA.get(name).defaults, **params}
    assert criterion.compute() == pytest.approx(ref_compute(sa, spec["hyper"], spec["upper"]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_traces_device(name: str, device: str) -> None:
    train, labels = blobs(13, n=90, d=3)
    test, test_labels = blobs(14, n=30, d=3)
    on_cpu = built(name, train, labels).surprise({"layer": test}, test_labels)
    criterion = built(name, train.to(device), labels.to(device))
    got = criterion.surprise({"layer": test.to(device)}, test_labels.to(device))
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), on_cpu)


# ----------------------------------------------------------------------------- merging and properties

def fed(criterion: SurpriseCoverage, test: Tensor, labels: Tensor, bounds: list[int]) -> dict[str, float]:
    """Feed contiguous shards to empty() copies and merge them into the first."""
    parts = []
    for lo, hi in pairwise(bounds):
        part = criterion.empty()
        part.update(split({"layer": test}, slice(lo, hi)), labels[lo:hi])
        parts.append(part)
    for other in parts[1:]:
        parts[0].merge(other)
    return parts[0].compute()


@pytest.mark.parametrize("name", NAMES)
def test_merged_shards_equal_one_pass(name: str) -> None:
    train, labels = blobs(15, n=120, d=3)
    test, test_labels = blobs(16, n=50, d=3)
    criterion = built(name, train, labels, hyper=0.05 if name == "dsc" else 0.5)
    test = 3 * test
    assert fed(criterion, test, test_labels, [0, 50]) == fed(criterion, test, test_labels, [0, 17, 17, 50])
    assert criterion.compute()["inputs"] == 0.0  # empty() copies leave the built criterion untouched


def test_merge_refuses_a_different_criterion() -> None:
    train, labels = blobs(17, n=60, d=2)
    with pytest.raises(ValueError, match="cannot merge"):
        built("lsc", train, labels).merge(built("mdsc", train, labels))
    with pytest.raises(ValueError, match="cannot merge"):
        built("dsc", train, labels).merge(built("dsc", train, labels, hyper=0.2))
    lowered = built("lsc", train, labels, lower=-20.0)
    with pytest.raises(ValueError, match="cannot merge.*lower=-20.0"):
        built("lsc", train, labels).merge(lowered)
    assert lowered.empty().lower == -20.0
    lowered.empty().merge(lowered.empty())  # the same bounds merge


@PROPERTIES
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 10_000), batches=st.integers(1, 5),
       width=st.floats(0.01, 2.0))
def test_bounds_monotone_and_order_free(name: str, seed: int, batches: int, width: float) -> None:
    train, labels = blobs(seed, n=60, d=2)
    test, test_labels = blobs(seed + 1, n=40, d=2)
    test = test * 2
    criterion = built(name, train, labels, hyper=width, upper=20 * width)
    bounds = [round(i * 40 / batches) for i in range(batches + 1)]
    running, last = criterion.empty(), 0.0
    for lo, hi in pairwise(bounds):
        running.update({"layer": test[lo:hi]}, test_labels[lo:hi])
        values = running.compute()
        assert 0.0 <= values["coverage"] <= 1.0 and 0.0 <= values["ratio"] <= 1.0
        assert values["coverage"] >= last
        last = values["coverage"]
    reverse = criterion.empty()
    for lo, hi in reversed(list(pairwise(bounds))):
        reverse.update({"layer": test[lo:hi]}, test_labels[lo:hi])
    assert reverse.compute() == running.compute() == fed(criterion, test, test_labels, bounds)


@PROPERTIES
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0), shift=st.floats(-5.0, 5.0))
def test_invariances(seed: int, scale: float, shift: float) -> None:
    """DSA and MDSA are invariant to scaling and shifting every trace; LSA shifts by d log(scale)."""
    train, labels = blobs(seed, n=60, d=3)
    test, test_labels = blobs(seed + 1, n=20, d=3)
    train, test = train.double(), test.double()  # transform exactly: far inputs have LSA in the thousands

    def sa(name: str, s: float, t: float) -> Tensor:
        return built(name, s * train + t, labels).surprise({"layer": s * test + t}, test_labels)

    for name in ("dsc", "mdsc"):
        torch.testing.assert_close(sa(name, scale, shift), sa(name, 1.0, 0.0), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sa("lsc", scale, shift), sa("lsc", 1.0, 0.0) + 3 * math.log(scale),
                               rtol=1e-6, atol=1e-6)


def test_no_warning_on_ordinary_data() -> None:
    train, labels = blobs(18, n=90, d=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in NAMES:
            built(name, train, labels)


# ------------------------------------------------------------------------------------- metric params

CTX = RunContext(device=torch.device("cpu"), seed=0, batch_size=16)


def tight_inputs() -> MetricInputs:
    """A 2-neuron first layer with weights x0.01: its traces cluster so tightly that every LSA is negative."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        net[0].weight.mul_(0.01)
        net[0].bias.zero_()
    g = torch.Generator().manual_seed(1)
    data = DataBundle(x_train=torch.randn((80, 4), generator=g), y_train=torch.randint(0, 2, (80,), generator=g),
                      x_test=torch.randn((30, 4), generator=g), y_test=torch.randint(0, 2, (30,), generator=g),
                      num_classes=2)
    return MetricInputs(model=net, x=data.x_test, target=data.y_test, attributions=torch.empty(0), data=data)


def test_lsc_lower_reaches_the_criterion_through_the_metric() -> None:
    metric = METRICS.get("coverage")
    assert {k: metric.defaults[k] for k in workflow.SURPRISE_BOUNDS} == {
        "lsc_lower": 0.0, "lsc_upper": 2000.0, "dsc_lower": 0.0, "dsc_upper": 2.0, "mdsc_lower": 0.0,
        "mdsc_upper": 100.0}
    at_zero = metric.compute(tight_inputs(), CTX, criterion="lsc")
    assert at_zero.info["figures"]["coverage"] == 0.0 and at_zero.info["figures"]["below"] == 30.0
    lowered = metric.compute(tight_inputs(), CTX, criterion="lsc", lsc_lower=-50.0)
    figures = lowered.info["figures"]
    assert float(lowered.outputs["coverage"][0]) == figures["coverage"] > 0.0 and figures["below"] == 0.0
    assert figures["coverage"] == figures["buckets"] / 205  # 205 buckets of width 10 over [-50, 2000)
    same = metric.compute(tight_inputs(), CTX, criterion="lsc", lsc_lower=-50.0, criterion_params={"lower": -50})
    assert same.info["figures"] == figures
    ignored = metric.compute(tight_inputs(), CTX, criterion="dsc", lsc_lower=-50.0)  # another criterion's bound
    assert ignored.info["figures"] == metric.compute(tight_inputs(), CTX, criterion="dsc").info["figures"]


@pytest.mark.parametrize(("params", "match"), [
    ({"lsc_lower": -5.0, "criterion_params": {"lower": -6.0}}, "'lsc_lower' = -5.0 contradicts .*'lower' = -6.0"),
    ({"lsc_lower": 3000.0}, "lower = 3000.0 \\(lsc_lower\\) and upper = 2000.0 \\(lsc_upper\\)"),
    ({"lsc_upper": math.inf}, "'lsc_upper' = inf must be finite"),
    ({"lsc_lower": "low"}, "'lsc_lower' = 'low' has type str"),
])
def test_bad_metric_bounds_are_named(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        METRICS.get("coverage").compute(tight_inputs(), CTX, criterion="lsc", **params)


def test_research_question_metrics_thread_the_bounds() -> None:
    p = {**coverage_rq.EVENNESS_DEFAULTS, "criteria": ["lsc", "dsc", "mdsc"], "lsc_lower": -50.0,
         "dsc_upper": 3.0, "mdsc_lower": -1.0, "mdsc_upper": 50.0}
    made = coverage_rq._setup("coverage_evenness", tight_inputs(), CTX, p)
    bounds = {b.name: (b.criterion.lower, b.criterion.upper) for b in made if isinstance(b.criterion, SurpriseCoverage)}
    assert bounds == {"lsc": (-50.0, 2000.0), "dsc": (0.0, 3.0), "mdsc": (-1.0, 50.0)}
    with pytest.raises(ParamError, match="metric coverage_evenness: dsc bounds"):
        coverage_rq._setup("coverage_evenness", tight_inputs(), CTX, {**p, "dsc_lower": 3.0})
