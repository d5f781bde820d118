"""Localisation metrics against independent NumPy loops, Quantus 0.6, hand-checked cases and properties.

The references below score one sample at a time with plain NumPy: a stable argsort for top-k (ties to the
lower index, the metrics' documented rule), pairwise comparisons for the AUC (no ranks), distances to every
mask pixel for the pointing game's radius, scipy.ndimage.gaussian_filter for box IoU's smoothing and
np.nonzero for its boxes.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from torch import Tensor, nn

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.metrics.box_iou import gaussian_smooth
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext

CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=25, deadline=None)
AGGREGATIONS = ["mean", "sum_abs", "max_abs"]
GENERAL = ["pointing_game", "relevance_mass", "relevance_rank", "top_k_relevant", "top_k_intersection",
           "attribution_auc"]
RANKED = ["pointing_game", "relevance_rank", "top_k_intersection", "attribution_auc"]
KEYS = {"pointing_game": "hit", "relevance_mass": "mass", "relevance_rank": "rank_accuracy",
        "top_k_relevant": "fraction", "top_k_intersection": "intersection", "attribution_auc": "auc",
        "channel_relevance": "ratio", "box_iou": "iou"}


def run(name: str, attr: Tensor, mask: Tensor | None, x: Tensor | None = None, **params: Any) -> MetricResult:
    x = torch.zeros_like(attr) if x is None else x
    inputs = MetricInputs(nn.Identity(), x, torch.zeros(len(x), dtype=torch.long), attr, mask)
    return METRICS.get(name).compute(inputs, RunContext(device=CPU, seed=0), **params)


def values(name: str, attr: Tensor, mask: Tensor | None, **params: Any) -> np.ndarray:
    got = run(name, attr, mask, **params)
    assert got.problems() == [] and got.forward_passes == 0 and got.higher_is_better
    return got.outputs[KEYS[name]].numpy()


def box_masks(rng: np.random.Generator, n: int, size: int, sides: tuple[int, int] = (1, 0)) -> np.ndarray:
    """(n, 1, size, size) bool, one random box per sample with sides in [low, high) (high 0: ``size``)."""
    mask = np.zeros((n, 1, size, size), dtype=bool)
    for i in range(n):
        h, w = rng.integers(sides[0], sides[1] or size, 2)
        r, c = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        mask[i, 0, r:r + h, c:c + w] = True
    return mask


def subset_masks(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random element masks with at least one True and one False per sample."""
    mask = rng.random(shape) < rng.uniform(0.1, 0.6)
    flat = mask.reshape(shape[0], -1)
    flat[:, 0], flat[:, -1] = True, False
    return mask


def make_case(kind: str, n: int = 6, seed: int = 0, integer: bool = False) -> tuple[Tensor, Tensor]:
    """(attributions, mask): images 'image1' / 'image3' (8x8 or 12x12), 'tabular' (10), 'audio' (4, 16)."""
    rng = np.random.default_rng(seed)
    if kind.startswith("image"):
        size = 8 if seed % 2 == 0 else 12
        shape: tuple[int, ...] = (n, int(kind[-1]), size, size)
        mask = box_masks(rng, n, size)
    else:
        shape = (n, 10) if kind == "tabular" else (n, 4, 16)
        mask = subset_masks(rng, shape)
    attr = rng.integers(-3, 4, shape) if integer else rng.standard_normal(shape)
    return torch.from_numpy(attr.astype(np.float32)), torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------- NumPy references


def ref_scores(a: np.ndarray, aggregation: str) -> np.ndarray:
    """One sample's unit scores: images (C, H, W) collapse channels; other inputs score every element."""
    groups = a.reshape(a.shape[0], -1) if a.ndim == 3 else a.reshape(1, -1)
    groups = groups.astype(np.float64)
    if aggregation == "mean":
        return groups.mean(0)
    return np.abs(groups).sum(0) if aggregation == "sum_abs" else np.abs(groups).max(0)


def ref_top(s: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-s, kind="stable")[:k]


def reference(name: str, attr: Tensor, mask: Tensor, **params: Any) -> np.ndarray:
    out = []
    for a, m in zip(attr.numpy(), mask.numpy(), strict=True):
        image = a.ndim == 3
        m = np.broadcast_to(m, a.shape)
        m = m.any(0).ravel() if image else m.ravel()
        s = ref_scores(a, params.get("pixel_aggregation", "sum_abs" if name == "top_k_relevant" else "mean"))
        out.append(REFERENCES[name](s, m, a.shape[-1] if image else 0, params))
    return np.array(out)


def ref_pointing(s: np.ndarray, m: np.ndarray, width: int, params: dict[str, Any]) -> float:
    top = ref_top(s, 1)[0]
    radius = params.get("radius", 0.0)
    if radius == 0:
        return float(m[top])
    r0, c0 = divmod(top, width)
    cells = (divmod(int(i), width) for i in np.flatnonzero(m))
    return float(any(math.hypot(r - r0, c - c0) <= radius for r, c in cells))


def ref_mass(s: np.ndarray, m: np.ndarray, width: int, params: dict[str, Any]) -> float:
    s = np.maximum(s, 0.0)
    return s[m].sum() / s.sum() if s.sum() > 0 else m.mean()


def ref_rank(s: np.ndarray, m: np.ndarray, width: int, params: dict[str, Any]) -> float:
    k = int(m.sum())
    return m[ref_top(s, k)].sum() / k


def ref_topk(s: np.ndarray, m: np.ndarray, width: int, params: dict[str, Any]) -> float:
    k = params.get("k", 0) or max(1, int(params.get("k_fraction", 0.05) * len(s) + 1e-9))
    return m[ref_top(s, k)].mean()


def ref_auc(s: np.ndarray, m: np.ndarray, width: int, params: dict[str, Any]) -> float:
    pos, neg = s[m], s[~m]
    wins = sum(float(p > q) + 0.5 * float(p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


REFERENCES = {"pointing_game": ref_pointing, "relevance_mass": ref_mass, "relevance_rank": ref_rank,
              "top_k_relevant": ref_rank, "top_k_intersection": ref_topk, "attribution_auc": ref_auc}


def ref_channel(attr: Tensor, mask: Tensor) -> np.ndarray:
    out = []
    for a, m in zip(attr.numpy().astype(np.float64), mask.numpy(), strict=True):
        means = [np.abs(a[c]).mean() for c in range(a.shape[0])]
        fg = next(c for c in range(a.shape[0]) if m[c].any())
        out.append(means[fg] / sum(means) if sum(means) > 0 else 1 / len(means))
    return np.array(out)


def ref_box_iou(attr: Tensor, mask: Tensor, sigma: float, k: int = 0) -> np.ndarray:
    out = []
    for a, m in zip(attr.numpy().astype(np.float64), mask.numpy(), strict=True):
        smooth = np.stack([gaussian_filter(ch, sigma, mode="reflect") for ch in a]) if sigma else a
        score = np.abs(smooth).mean(0)
        truth = m.any(0)
        chosen = np.zeros(score.size, dtype=bool)
        chosen[ref_top(score.ravel(), k or int(truth.sum()))] = True
        boxes = [(r.min(), r.max(), c.min(), c.max()) for r, c in (np.nonzero(chosen.reshape(score.shape)),
                                                                     np.nonzero(truth))]
        (a0, a1, b0, b1), (c0, c1, d0, d1) = boxes
        inter = max(0, min(a1, c1) - max(a0, c0) + 1) * max(0, min(b1, d1) - max(b0, d0) + 1)
        union = (a1 - a0 + 1) * (b1 - b0 + 1) + (c1 - c0 + 1) * (d1 - d0 + 1) - inter
        out.append(inter / union)
    return np.array(out)


# ------------------------------------------------------------------------------ (a) against the references


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["image1", "image3", "tabular", "audio"])
@pytest.mark.parametrize("name", GENERAL)
def test_matches_loop_reference(name: str, kind: str, seed: int, integer: bool) -> None:
    attr, mask = make_case(kind, seed=seed, integer=integer)
    choices = ["sum_abs", "max_abs"] if name == "top_k_relevant" else AGGREGATIONS
    for aggregation in choices:
        params: dict[str, Any] = {"pixel_aggregation": aggregation}
        got = values(name, attr, mask, **params)
        np.testing.assert_allclose(got, reference(name, attr, mask, **params), atol=1e-6, err_msg=aggregation)


@pytest.mark.parametrize("params", [{"k": 3}, {"k": 1}, {"k_fraction": 0.3}, {"k_fraction": 1.0}])
def test_top_k_intersection_k_matches_reference(params: dict[str, Any]) -> None:
    attr, mask = make_case("image3", seed=1)
    np.testing.assert_allclose(values("top_k_intersection", attr, mask, **params),
                               reference("top_k_intersection", attr, mask, **params), atol=1e-6)


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5, 3.0, 20.0])
def test_pointing_game_radius_matches_reference(radius: float) -> None:
    for seed in (0, 1):
        attr, mask = make_case("image3", seed=seed)
        mask = mask.roll(shifts=(2, 3), dims=(2, 3))  # shifted (wrapped) boxes: the radius decides more hits
        got = values("pointing_game", attr, mask, radius=radius)
        np.testing.assert_array_equal(got, reference("pointing_game", attr, mask, radius=radius))


@pytest.mark.parametrize("whole_channel", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_relevance_matches_reference(seed: int, whole_channel: bool) -> None:
    rng = np.random.default_rng(seed)
    attr = torch.from_numpy(rng.standard_normal((6, 5, 16)).astype(np.float32))
    mask = torch.zeros((6, 5, 1 if whole_channel else 16), dtype=torch.bool)
    fg = torch.from_numpy(rng.integers(0, 5, 6))
    mask[torch.arange(6), fg, : 1 if whole_channel else 4] = True  # part of the channel also marks it
    attr[2] = 0.0  # no attribution at all: 1 / C
    np.testing.assert_allclose(values("channel_relevance", attr, mask), ref_channel(attr, mask), atol=1e-6)
    whole = mask.any(2, keepdim=True)
    np.testing.assert_allclose(values("channel_relevance", attr, mask),
                               values("relevance_mass", attr, whole, pixel_aggregation="sum_abs"), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.5, 6.0])
@pytest.mark.parametrize("kind", ["image1", "image3"])
def test_box_iou_matches_reference(kind: str, sigma: float) -> None:
    for seed in (0, 1):
        attr, mask = make_case(kind, seed=seed)
        for k in (0, 5):
            np.testing.assert_allclose(values("box_iou", attr, mask, sigma=sigma, k=k),
                                       ref_box_iou(attr, mask, sigma, k), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 6.0, 9.0])
@pytest.mark.parametrize("size", [8, 12, 31])
def test_smoothing_is_scipy_gaussian_filter(size: int, sigma: float) -> None:
    a = np.random.default_rng(size).standard_normal((2, 3, size, size))
    want = gaussian_filter(a, sigma, axes=(2, 3), mode="reflect")  # truncate=4.0; radius up to 36 > size
    np.testing.assert_allclose(gaussian_smooth(torch.from_numpy(a), sigma).numpy(), want, atol=1e-12)
    assert torch.equal(gaussian_smooth(torch.from_numpy(a), 0.0), torch.from_numpy(a))


# ------------------------------------------------------------------------------------- (b) hand-checked


# 3 x 3, one channel; the mask is the top-left 2 x 2 block: positives 0.1, 0.9, 0.4, 0.8.
HAND_ATTR = torch.tensor([[[[0.1, 0.9, 0.2], [0.4, 0.8, -0.5], [0.0, 0.3, 0.6]]]])
HAND_MASK = torch.tensor([[[[True, True, False], [True, True, False], [False, False, False]]]])


@pytest.mark.parametrize(("name", "params", "want"), [
    ("pointing_game", {}, 1.0),  # the max 0.9 is inside
    ("relevance_mass", {}, 2.2 / 3.3),  # positive part: inside 0.1+0.9+0.4+0.8, total adds 0.2+0.3+0.6
    ("relevance_mass", {"pixel_aggregation": "sum_abs"}, 2.2 / 3.8),  # |-0.5| joins the total
    ("relevance_rank", {}, 3 / 4),  # top 4: 0.9, 0.8, 0.6 (outside), 0.4
    ("top_k_relevant", {}, 2 / 4),  # top 4 of |a|: 0.9, 0.8, 0.6, 0.5 (both outside)
    ("top_k_intersection", {"k": 2}, 1.0),
    ("top_k_intersection", {"k": 3}, 2 / 3),
    ("attribution_auc", {}, 16 / 20),  # wins over the 5 negatives: 0.1: 2, 0.9: 5, 0.4: 4, 0.8: 5
])
def test_hand_checked_image(name: str, params: dict[str, Any], want: float) -> None:
    assert values(name, HAND_ATTR, HAND_MASK, **params)[0] == pytest.approx(want, abs=1e-6)


def test_hand_checked_pointing_radius_and_ties() -> None:
    right_column = torch.zeros_like(HAND_MASK)
    right_column[..., 2] = True  # the max at (0, 1) is 1 px from (0, 2)
    assert values("pointing_game", HAND_ATTR, right_column)[0] == 0.0
    assert values("pointing_game", HAND_ATTR, right_column, radius=0.99)[0] == 0.0
    assert values("pointing_game", HAND_ATTR, right_column, radius=1.0)[0] == 1.0
    constant = torch.ones_like(HAND_ATTR)  # every pixel ties: the first, (0, 0), is the pointed one
    assert values("pointing_game", constant, HAND_MASK)[0] == 1.0
    assert values("pointing_game", constant, right_column)[0] == 0.0


def test_hand_checked_auc_ties_and_degenerate_mass() -> None:
    mask = torch.tensor([[True, False, True, False], [True, True, False, False]])
    attr = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0]])
    # row 0: pairs (1|1) 0.5, (1|0) 1, (0|1) 0, (0|0) 0.5 -> 2 / 4; row 1: 1 + 1 + 0.5 + 1 -> 3.5 / 4
    np.testing.assert_allclose(values("attribution_auc", attr, mask), [0.5, 0.875])
    np.testing.assert_allclose(values("attribution_auc", torch.zeros(2, 4), mask), [0.5, 0.5])
    # no positive mass: the constant map's share |M| / P
    np.testing.assert_allclose(values("relevance_mass", -torch.ones(2, 4), mask), [0.5, 0.5])


def test_hand_checked_channel_relevance() -> None:
    attr = torch.tensor([[[1.0, -1.0], [2.0, 0.0], [0.0, -4.0]]])  # channel means of |a|: 1, 1, 2
    mask = torch.tensor([[[False], [True], [False]]])
    assert values("channel_relevance", attr, mask)[0] == pytest.approx(1 / 4)


def test_hand_checked_box_iou() -> None:
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 1:3, 1:4] = True  # rows 1-2, cols 1-3: 6 pixels
    attr = torch.zeros(1, 2, 6, 6)
    attr[:, :, 2:4, 1:4] = torch.tensor([1.0, -1.0])[:, None, None]  # |a| blob on rows 2-3, cols 1-3
    assert values("box_iou", attr, mask, sigma=0.0)[0] == pytest.approx(3 / 9)  # overlap row 2: 3 px; union 9


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0])
def test_box_iou_blob_at_the_true_box_scores_one(sigma: float) -> None:
    mask = torch.from_numpy(box_masks(np.random.default_rng(4), 8, 16, sides=(3, 7)))  # borders included
    attr = (mask.float() * 5.0).expand(8, 3, 16, 16).clone()
    np.testing.assert_allclose(values("box_iou", attr, mask, sigma=sigma), 1.0)


def test_box_iou_at_the_papers_scale_matches_reference() -> None:
    """224 px, a 32 px box, sigma 6: smoothing rounds the top-1024 region, so even the box scores < 1."""
    mask = torch.zeros(1, 1, 224, 224, dtype=torch.bool)
    mask[..., 96:128, 96:128] = True
    attr = mask.float().expand(1, 3, 224, 224).clone()
    got = values("box_iou", attr, mask)
    np.testing.assert_allclose(got, ref_box_iou(attr, mask, 6.0), atol=1e-6)
    assert 0.8 < got[0] < 1.0


# ---------------------------------------------------------------------------------------- (c) Quantus 0.6


@pytest.fixture(scope="module")
def quantus() -> Any:
    return pytest.importorskip("quantus")


def quantus_scores(quantus: Any, metric: Any, pixel_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A Quantus localisation metric on our (N, 1, H, W) pixel map and mask; the model is never called."""
    n, _, h, w = pixel_map.shape
    model = nn.Sequential(nn.Flatten(), nn.Linear(h * w, 2))
    x = np.zeros((n, 1, h, w), dtype=np.float32)
    out = metric(model=model, x_batch=x, y_batch=np.zeros(n, dtype=int), a_batch=pixel_map,
                 s_batch=mask.astype(float), device="cpu")
    return np.asarray(out, dtype=np.float64)


def pixel_map(attr: Tensor, aggregation: str = "mean") -> np.ndarray:
    """The channel-collapsed map, computed here in NumPy (what a Quantus user passes as a_batch)."""
    a = attr.numpy().astype(np.float64)
    return np.stack([ref_scores(s, aggregation).reshape(a.shape[2:]) for s in a])[:, None]


QUANTUS_CASES = [("image1", 0), ("image3", 1), ("image3", 2)]


@pytest.mark.parametrize(("kind", "seed"), QUANTUS_CASES)
def test_pointing_game_matches_quantus(quantus: Any, kind: str, seed: int) -> None:
    attr, mask = make_case(kind, seed=seed)
    want = quantus_scores(quantus, quantus.PointingGame(disable_warnings=True), pixel_map(attr), mask.numpy())
    np.testing.assert_array_equal(values("pointing_game", attr, mask), want)


def test_pointing_game_ties_differ_from_quantus_as_documented(quantus: Any) -> None:
    """Quantus hits when any tied maximum is relevant (a constant map always hits); here the first counts."""
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 4:6, 4:6] = True
    attr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    attr[:, :, 0, 0] = attr[:, :, 5, 5] = 2.0  # two tied maxima: (0, 0) outside the box, (5, 5) inside
    want = quantus_scores(quantus, quantus.PointingGame(disable_warnings=True), pixel_map(attr), mask.numpy())
    np.testing.assert_array_equal(want, [1.0, 1.0])
    np.testing.assert_array_equal(values("pointing_game", attr, mask), [0.0, 0.0])


@pytest.mark.parametrize(("kind", "seed"), QUANTUS_CASES)
def test_relevance_mass_matches_quantus_on_non_negative_scores(quantus: Any, kind: str, seed: int) -> None:
    attr, mask = make_case(kind, seed=seed)
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True)  # abs=False, normalise by the max: a ratio
    for aggregation in ("sum_abs", "max_abs"):
        want = quantus_scores(quantus, metric, pixel_map(attr, aggregation), mask.numpy())
        got = values("relevance_mass", attr, mask, pixel_aggregation=aggregation)
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(("kind", "seed"), QUANTUS_CASES)
def test_relevance_mass_signed_is_quantus_on_the_positive_part(quantus: Any, kind: str, seed: int) -> None:
    """Quantus divides signed sums (values outside [0, 1]); ours is Quantus on the positive part (sum,pos)."""
    attr, mask = make_case(kind, seed=seed)
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True)
    signed = quantus_scores(quantus, metric, pixel_map(attr), mask.numpy())
    assert ((signed < 0) | (signed > 1)).any()
    want = quantus_scores(quantus, metric, np.maximum(pixel_map(attr), 0.0), mask.numpy())
    np.testing.assert_allclose(values("relevance_mass", attr, mask), want, atol=1e-6)


@pytest.mark.parametrize(("kind", "seed"), QUANTUS_CASES)
def test_relevance_rank_matches_quantus(quantus: Any, kind: str, seed: int) -> None:
    attr, mask = make_case(kind, seed=seed)  # continuous: Quantus's unstable argsort meets no ties
    for aggregation in AGGREGATIONS:
        want = quantus_scores(quantus, quantus.RelevanceRankAccuracy(disable_warnings=True),
                              pixel_map(attr, aggregation), mask.numpy())
        np.testing.assert_allclose(values("relevance_rank", attr, mask, pixel_aggregation=aggregation), want,
                                   atol=1e-6)
    want = quantus_scores(quantus, quantus.RelevanceRankAccuracy(disable_warnings=True),
                          pixel_map(attr, "sum_abs"), mask.numpy())
    np.testing.assert_allclose(values("top_k_relevant", attr, mask), want, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize(("kind", "seed"), QUANTUS_CASES)
def test_top_k_intersection_matches_quantus(quantus: Any, kind: str, seed: int, k: int) -> None:
    attr, mask = make_case(kind, seed=seed)
    want = quantus_scores(quantus, quantus.TopKIntersection(k=k, disable_warnings=True), pixel_map(attr),
                          mask.numpy())
    np.testing.assert_allclose(values("top_k_intersection", attr, mask, k=k), want, atol=1e-6)


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize(("kind", "seed"), QUANTUS_CASES)
def test_auc_matches_quantus(quantus: Any, kind: str, seed: int, integer: bool) -> None:
    attr, mask = make_case(kind, seed=seed, integer=integer)  # sklearn's roc_curve merges ties: average ranks
    for aggregation in AGGREGATIONS:
        want = quantus_scores(quantus, quantus.AUC(disable_warnings=True), pixel_map(attr, aggregation),
                              mask.numpy())
        np.testing.assert_allclose(values("attribution_auc", attr, mask, pixel_aggregation=aggregation), want,
                                   atol=1e-6)


# ------------------------------------------------------------------------------------------ (d) properties


cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["image1", "image3", "tabular", "audio"]), "seed": st.integers(0, 2**16),
    "n": st.integers(1, 6), "aggregation": st.sampled_from(AGGREGATIONS),
})


def draw(drawn: dict[str, Any], integer: bool = False) -> tuple[Tensor, Tensor, dict[str, dict[str, Any]]]:
    attr, mask = make_case(drawn["kind"], n=drawn["n"], seed=drawn["seed"], integer=integer)
    params = {name: {"pixel_aggregation": drawn["aggregation"]} for name in GENERAL}
    absolute = "max_abs" if drawn["aggregation"] == "max_abs" else "sum_abs"
    params["top_k_relevant"] = {"pixel_aggregation": absolute}
    params["top_k_intersection"]["k"] = 1 + drawn["seed"] % 4
    return attr, mask, params


@PROPERTIES
@given(cases)
def test_bounds_and_shapes(drawn: dict[str, Any]) -> None:
    attr, mask, params = draw(drawn)
    for name in GENERAL:
        got = run(name, attr, mask, **params[name])
        assert got.problems() == [] and got.outputs[KEYS[name]].shape == (drawn["n"],)
        assert got.bounds == {KEYS[name]: (0.0, 1.0)} and got.primary == KEYS[name]
    if drawn["kind"].startswith("image"):
        assert run("box_iou", attr, mask, sigma=1.0).problems() == []
    same = params["top_k_relevant"]  # ChaosMining's top-k score is relevance rank accuracy on |a|
    np.testing.assert_array_equal(values("top_k_relevant", attr, mask, **same),
                                  values("relevance_rank", attr, mask, **same))


@PROPERTIES
@given(cases)
def test_rank_metrics_invariant_to_increasing_transforms(drawn: dict[str, Any]) -> None:
    attr, mask, params = draw(drawn, integer=True)  # small integers: the transforms below are exact
    one_channel = attr.ndim < 4 or attr.shape[1] == 1
    for name in RANKED:
        p = params[name]
        if p["pixel_aggregation"] == "mean":  # scores transform as the attribution does for mean
            transformed = attr**3 + 2 * attr if one_channel else 3 * attr + 1
        else:  # |.| aggregations: only positive scaling is increasing in |a|
            transformed = 3 * attr
        np.testing.assert_array_equal(values(name, transformed, mask, **p), values(name, attr, mask, **p))


@PROPERTIES
@given(cases)
def test_perfect_and_inverted_attributions(drawn: dict[str, Any]) -> None:
    attr, mask, params = draw(drawn)
    perfect = mask.float().expand(attr.shape).clone()
    k = int(mask.flatten(1).sum(1).min()) if perfect.ndim < 4 else int(mask.flatten(2).any(1).sum(1).min())
    for name in GENERAL:
        p = {**params[name], "k": min(k, params[name]["k"])} if name == "top_k_intersection" else params[name]
        np.testing.assert_allclose(values(name, perfect, mask, **p), 1.0, err_msg=name)
    if perfect.ndim == 4:
        np.testing.assert_allclose(values("box_iou", perfect, mask, sigma=0.0), 1.0)
    auc = values("attribution_auc", -perfect, mask, pixel_aggregation="mean")
    np.testing.assert_allclose(auc, 0.0)


@PROPERTIES
@given(cases, st.integers(1, 5))
def test_batch_invariance(drawn: dict[str, Any], cut: int) -> None:
    attr, mask, params = draw({**drawn, "n": 6})
    names = GENERAL + (["box_iou"] if attr.ndim == 4 else [])
    for name in names:
        p = params.get(name, {"sigma": 1.0})
        whole = values(name, attr, mask, **p)
        parts = [values(name, attr[s], mask[s], **p) for s in (slice(0, cut), slice(cut, None))]
        np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=name)


@PROPERTIES
@given(st.integers(0, 2**16), st.integers(2, 6))
def test_channel_relevance_of_the_true_channel_alone_is_one(seed: int, channels: int) -> None:
    rng = np.random.default_rng(seed)
    fg = torch.from_numpy(rng.integers(0, channels, 4))
    mask = torch.nn.functional.one_hot(fg, channels).bool()[:, :, None]
    attr = torch.from_numpy(rng.standard_normal((4, channels, 8)).astype(np.float32)) * mask
    np.testing.assert_allclose(values("channel_relevance", attr, mask), 1.0)
    assert run("channel_relevance", torch.randn(4, channels, 8), mask).problems() == []


RANDOM_N = 4000
"""Samples per random-attribution check: the tolerance below is 5 standard errors of a per-sample score in [0, 1]."""


def random_case(kind: str, seed: int) -> tuple[Tensor, Tensor, float]:
    """(i.i.d. N(0, 1) attributions, one fixed mask for every sample, share of the units the mask marks)."""
    rng = np.random.default_rng(seed)
    if kind == "image":  # a 3x4 box on an 8x8 single-channel image: 12 of 64 pixels
        mask = np.zeros((RANDOM_N, 1, 8, 8), dtype=bool)
        mask[:, :, 2:5, 3:7] = True
        shape: tuple[int, ...] = (RANDOM_N, 1, 8, 8)
    elif kind == "tabular":  # the first 5 of 20 features, as symbolic data's relevant block
        mask = np.zeros((RANDOM_N, 20), dtype=bool)
        mask[:, :5] = True
        shape = mask.shape
    else:  # one whole channel of four
        mask = np.zeros((RANDOM_N, 4, 16), dtype=bool)
        mask[:, 1] = True
        shape = mask.shape
    attr = rng.standard_normal(shape).astype(np.float32)
    return torch.from_numpy(attr), torch.from_numpy(mask), float(mask[0].mean())


@pytest.mark.parametrize("kind", ["image", "tabular", "audio"])
def test_random_attributions_score_the_chance_level(kind: str) -> None:
    """Exchangeable random scores put every unit in the top-k, the argmax or the mass with equal chance, so the
    expected score is the marked share (pointing game, relevance mass on |a|, relevance rank, top-k relevant and
    top-k intersection), 1/2 for the AUC and 1/C for the channel-relevance ratio; the mean of 4,000 samples must
    lie within 5 standard errors (SE <= 0.5 / sqrt(4000) = 0.008)."""
    attr, mask, share = random_case(kind, seed=7)
    tolerance = 5 * 0.5 / math.sqrt(RANDOM_N)
    expected = {"pointing_game": share, "relevance_mass": share, "relevance_rank": share,
                "top_k_relevant": share, "top_k_intersection": share, "attribution_auc": 0.5}
    params = {"relevance_mass": {"pixel_aggregation": "sum_abs"}, "top_k_intersection": {"k": 3}}
    for name, want in expected.items():
        got = values(name, attr, mask, **params.get(name, {})).mean()
        assert abs(got - want) < tolerance, (name, got, want)
    if kind == "audio":
        assert abs(values("channel_relevance", attr, mask).mean() - 0.25) < tolerance
    if kind == "image":  # random maps' boxes cover most of the canvas: far below a perfect map's 1
        random_iou = values("box_iou", attr, mask, sigma=1.0).mean()
        perfect_iou = values("box_iou", mask.float(), mask, sigma=0.0).mean()
        assert perfect_iou == 1.0 and random_iou < 0.35, random_iou


# ------------------------------------------------------------------------------------------ (e) bad inputs


ALL = [*GENERAL, "box_iou"]


@pytest.mark.parametrize("name", [*ALL, "channel_relevance"])
def test_missing_mask_is_named(name: str) -> None:
    attr = torch.randn(2, 3, 4, 4) if name != "channel_relevance" else torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=rf"{name}: needs inputs\.mask"):
        run(name, attr, None)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("shape", "dtype", "match"), [
    ((2, 1, 4, 5), torch.bool, r"mask shape \[2, 1, 4, 5\] does not fit inputs \[2, 3, 4, 4\]"),
    ((2, 4, 4), torch.bool, r"mask shape \[2, 4, 4\] does not fit"),
    ((3, 1, 4, 4), torch.bool, r"mask shape \[3, 1, 4, 4\] does not fit"),
    ((2, 2, 4, 4), torch.bool, r"mask shape \[2, 2, 4, 4\] does not fit"),
    ((2, 1, 4, 4), torch.float32, r"inputs\.mask must be a bool tensor, got torch\.float32"),
])
def test_bad_mask_is_named(name: str, shape: tuple[int, ...], dtype: torch.dtype, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run(name, torch.randn(2, 3, 4, 4), torch.ones(shape, dtype=dtype))


@pytest.mark.parametrize("name", ALL)
def test_empty_mask_and_bad_attributions_are_named(name: str) -> None:
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 1, 1] = True
    with pytest.raises(ValueError, match=r"marks no relevant input in sample\(s\) \[1, 2\]"):
        run(name, torch.randn(3, 3, 4, 4), mask)
    mask[:] = True
    with pytest.raises(ValueError, match=r"attributions shape \[3, 3, 4, 5\] differs from input \[3, 3, 4,"):
        run(name, torch.randn(3, 3, 4, 5), mask, x=torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="attributions must be finite"):
        run(name, torch.full((3, 3, 4, 4), math.nan), mask)


def test_degenerate_masks_for_auc_and_channel_relevance() -> None:
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 0] = False
    every = r"attribution_auc: inputs\.mask marks every input of sample\(s\) \[1\]"
    with pytest.raises(ValueError, match=every):
        run("attribution_auc", torch.randn(2, 5), mask)
    two = torch.zeros(2, 3, 1, dtype=torch.bool)
    two[0, 0], two[1, :2] = True, True
    with pytest.raises(ValueError, match=r"exactly one channel per sample; sample\(s\) \[1\] mark \[2\]"):
        run("channel_relevance", torch.randn(2, 3, 8), two)
    with pytest.raises(ValueError, match=r"channel_relevance: inputs must be sequences \(N, C, T\)"):
        run("channel_relevance", torch.randn(2, 3, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"box_iou: inputs must be images \(N, C, H, W\), got shape \[2, 5"):
        run("box_iou", torch.randn(2, 5), mask)


@pytest.mark.parametrize(("name", "params", "match"), [
    ("pointing_game", {"radius": -1.0}, r"'radius' = -1\.0 must be at least 0"),
    ("pointing_game", {"radius": "1"}, r"'radius' = '1' has type str"),
    ("relevance_mass", {"pixel_aggregation": "sum"}, r"'pixel_aggregation' = 'sum' is not valid; choices"),
    ("top_k_relevant", {"pixel_aggregation": "mean"}, r"'pixel_aggregation' = 'mean' is not valid"),
    ("relevance_rank", {"k": 3}, r"metric relevance_rank: unknown parameter 'k'; valid parameters"),
    ("top_k_intersection", {"k": -1}, r"'k' = -1 must be at least 0"),
    ("top_k_intersection", {"k": 17}, r"'k' = 17 exceeds the 16 units"),
    ("top_k_intersection", {"k": 2.0}, r"'k' = 2\.0 has type float"),
    ("top_k_intersection", {"k_fraction": 0.0}, r"'k_fraction' = 0\.0 must lie in \(0, 1\]"),
    ("top_k_intersection", {"k_fraction": 1.5}, r"'k_fraction' = 1\.5 must lie in \(0, 1\]"),
    ("box_iou", {"sigma": -0.5}, r"'sigma' = -0\.5 must be at least 0"),
    ("box_iou", {"k": 17}, r"'k' = 17 exceeds the 16 pixels"),
    ("box_iou", {"k": -2}, r"'k' = -2 must be at least 0"),
    ("channel_relevance", {"sigma": 1.0}, r"metric channel_relevance: unknown parameter 'sigma'"),
])
def test_bad_params_are_named(name: str, params: dict[str, Any], match: str) -> None:
    attr = torch.randn(2, 4, 4) if name == "channel_relevance" else torch.randn(2, 3, 4, 4)
    mask = torch.ones(*attr.shape[:-1], 1, dtype=torch.bool) if name == "channel_relevance" else None
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool) if mask is None else mask
    with pytest.raises(ParamError, match=match):
        run(name, attr, mask, **params)


def test_radius_needs_images() -> None:
    with pytest.raises(ParamError, match=r"'radius' = 2\.0 needs images"):
        run("pointing_game", torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool), radius=2.0)


def test_registered_specs() -> None:
    for name in [*ALL, "channel_relevance"]:
        spec = METRICS.get(name)
        assert spec.family == "localization" and spec.needs_mask and not spec.needs_explain
        assert spec.reference and spec.description
    assert METRICS.get("box_iou").modalities == {"image"}
    assert METRICS.get("channel_relevance").modalities == {"audio"}
    assert METRICS.get("attribution_auc").modalities == {"image", "tabular", "audio"}
