"""Noisy linear imputation and ROAD against independent references, hand-checked cases and properties.

The reference imputation below builds the sparse system of Rong et al. 2022 pixel by pixel with plain loops
(neighbour weights 1/6 direct, 1/12 diagonal; neighbours outside the image dropped, the diagonal their
in-image sum) and solves it with ``scipy.sparse.linalg.spsolve``; Quantus 0.6's ``noisy_linear_imputation``
is a second, peer reference. The ROAD reference ranks pixels with NumPy, imputes one image at a time with
that solver and sends one image at a time through the model.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import spsolve
from torch import Tensor

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.metrics.imputation import linear_imputation, noisy_linear_imputation
from harness.metrics.road import removal_counts
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext
from tests.small_cases import Case, make_case

SEED = 5
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=30, deadline=None)
NEIGHBOURS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6,
              (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def reference_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Noise-free linear imputation of one (C, H, W) image at a (H, W) bool mask: a loop-built sparse system
    per pixel, all channels as right-hand sides of one ``spsolve``."""
    channels, height, width = image.shape
    unknowns = [(i, j) for i in range(height) for j in range(width) if removed[i, j]]
    if not unknowns:
        return image.astype(np.float64)
    index = {pixel: n for n, pixel in enumerate(unknowns)}
    a = sp.lil_matrix((len(unknowns), len(unknowns)))
    b = np.zeros((len(unknowns), channels))
    for n, (i, j) in enumerate(unknowns):
        for (di, dj), weight in NEIGHBOURS.items():
            y, x = i + di, j + dj
            if not (0 <= y < height and 0 <= x < width):
                continue
            a[n, n] += weight
            if removed[y, x]:
                a[n, index[(y, x)]] -= weight
            else:
                b[n] += weight * image[:, y, x]
    solution = spsolve(sp.csc_matrix(a), b).reshape(len(unknowns), channels)
    out = image.astype(np.float64).copy()
    for n, (i, j) in enumerate(unknowns):
        out[:, i, j] = solution[n]
    return out


def masks(shape: tuple[int, int, int], kind: str, g: torch.Generator) -> Tensor:
    """(N, H, W) removal masks: random at a rate, the image border (edges and corners), a large block, or
    all but one corner pixel."""
    _, h, w = shape
    if kind.startswith("random"):
        return torch.rand(shape, generator=g) < float(kind.split("_")[1])
    removed = torch.zeros(shape, dtype=torch.bool)
    if kind == "border":
        removed[:, [0, -1], :], removed[:, :, [0, -1]] = True, True
    elif kind == "block":
        removed[:, h // 4:, : 3 * w // 4] = True
    else:  # all but the last pixel
        removed[:] = True
        removed[:, -1, -1] = False
    return removed


@pytest.mark.parametrize("kind", ["random_0.2", "random_0.5", "random_0.9", "border", "block", "one_known"])
@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 16, 16), (2, 5, 7), (1, 1, 9), (1, 9, 1)])
def test_imputation_matches_spsolve(shape: tuple[int, int, int], kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand((3, *shape), generator=g) * 4 - 2
    removed = masks((3, *shape[1:]), kind, g)
    removed[:, -1, -1] &= ~removed.flatten(1).all(1)  # keep a known pixel
    removed[0] = False  # one image with nothing to impute
    got = linear_imputation(x, removed)
    want = np.stack([reference_impute(x[i].double().numpy(), removed[i].numpy()) for i in range(3)])
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=1e-5)
    got64 = linear_imputation(x.double(), removed)
    np.testing.assert_allclose(got64.numpy(), want, rtol=0, atol=1e-7)  # float64 inputs: the solver's error


def test_hand_checked_centre_and_corner() -> None:
    """Centre of a 3 x 3 image: 1/6 * (sum of the 4 direct) + 1/12 * (sum of the 4 diagonal). Corner (0, 0):
    its 3 in-image neighbours renormalised, (1/6 * x01 + 1/6 * x10 + 1/12 * x11) / (5/12)."""
    x = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3) ** 2  # 0, 1, 4, 9, ..., 64
    centre = torch.zeros(1, 3, 3, dtype=torch.bool)
    centre[0, 1, 1] = True
    direct, diagonal = 1 + 9 + 25 + 49, 0 + 4 + 36 + 64
    got = float(linear_imputation(x, centre)[0, 0, 1, 1])
    assert got == pytest.approx(direct / 6 + diagonal / 12, abs=1e-9)
    corner = torch.zeros(1, 3, 3, dtype=torch.bool)
    corner[0, 0, 0] = True
    want = (1 / 6 + 9 / 6 + 16 / 12) / (5 / 12)
    assert float(linear_imputation(x, corner)[0, 0, 0, 0]) == pytest.approx(want, abs=1e-9)


def test_agrees_with_quantus() -> None:
    quantus = pytest.importorskip("quantus.functions.perturb_func")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 12, 10, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 12, 10, generator=g) < 0.6
    got = linear_imputation(x, removed)
    for i in range(2):
        indices = np.flatnonzero(removed[i].numpy())
        theirs = quantus.noisy_linear_imputation(x[i].numpy(), indices, noise=0.0)
        np.testing.assert_allclose(got[i].numpy(), theirs, rtol=0, atol=1e-8)


images = st.fixed_dictionaries({
    "n": st.integers(1, 3), "c": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(2, 9),
    "rate": st.floats(0.0, 1.0), "seed": st.integers(0, 2**16), "scale": st.floats(0.01, 100.0),
})


def drawn_images(d: dict[str, Any]) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(d["seed"])
    x = (torch.rand(d["n"], d["c"], d["h"], d["w"], generator=g, dtype=torch.float64) - 0.5) * d["scale"]
    removed = torch.rand(d["n"], d["h"], d["w"], generator=g) < d["rate"]
    removed[:, 0, 0] &= ~removed.flatten(1).all(1)  # keep one known pixel
    return x, removed


@PROPERTIES
@given(images)
def test_known_pixels_kept_and_maximum_principle(drawn: dict[str, Any]) -> None:
    x, removed = drawn_images(drawn)
    out = linear_imputation(x, removed)
    keep = ~removed[:, None].expand_as(x)
    assert torch.equal(out[keep], x[keep])
    known = torch.where(keep, x, torch.nan)
    low = known.flatten(2).nan_to_num(torch.inf).amin(2)[..., None, None]
    high = known.flatten(2).nan_to_num(-torch.inf).amax(2)[..., None, None]
    slack = 1e-7 * drawn["scale"]  # the solver's tolerance is relative to the known values
    assert bool(((out >= low - slack) & (out <= high + slack)).all())


@PROPERTIES
@given(images, st.floats(-50.0, 50.0))
def test_constant_image_stays_constant(drawn: dict[str, Any], value: float) -> None:
    x, removed = drawn_images(drawn)
    constant = torch.full_like(x, value)
    torch.testing.assert_close(linear_imputation(constant, removed), constant, rtol=0, atol=1e-12)


def test_noise_on_removed_pixels_only_and_seeded() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 32, 32, generator=g)
    removed = torch.rand(2, 32, 32, generator=g) < 0.5
    clean = linear_imputation(x, removed)
    noisy = noisy_linear_imputation(x, removed, 0.05, torch.Generator().manual_seed(9))
    again = noisy_linear_imputation(x, removed, 0.05, torch.Generator().manual_seed(9))
    assert torch.equal(noisy, again)
    mask = removed[:, None].expand_as(x)
    assert torch.equal(noisy[~mask], x[~mask])
    diff = (noisy - clean)[mask]
    assert abs(float(diff.std()) - 0.05) < 0.003 and abs(float(diff.mean())) < 0.003
    assert torch.equal(noisy_linear_imputation(x, removed, 0.0), clean)


def test_each_image_solved_as_if_alone() -> None:
    """A system stops at its own convergence check, whatever shares its batch: bitwise the same result."""
    g = torch.Generator().manual_seed(6)
    x = torch.rand(6, 3, 16, 16, generator=g)
    removed = torch.rand(6, 16, 16, generator=g) < torch.linspace(0.1, 0.95, 6)[:, None, None]
    alone = torch.cat([linear_imputation(x[i: i + 1], removed[i: i + 1]) for i in range(6)])
    assert torch.equal(linear_imputation(x, removed), alone)


def test_imputation_errors() -> None:
    x = torch.rand(2, 1, 4, 4)
    everything = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="every pixel of image 0 is removed"):
        linear_imputation(x, everything)
    with pytest.raises(ValueError, match="bool"):
        linear_imputation(x, torch.ones(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        linear_imputation(x[:, 0], everything)
    hard = torch.ones(1, 40, 40, dtype=torch.bool)
    hard[0, 0, 0] = hard[0, -1, -1] = False  # two known pixels of different values
    with pytest.raises(RuntimeError, match="did not converge in 8 iterations"):
        linear_imputation(torch.rand(1, 1, 40, 40), hard, max_iter=8)


# --- the ROAD metric -----------------------------------------------------------------------------------


def run(case: Case, batch_size: int = 256, seed: int = SEED, **params: Any) -> MetricResult:
    model, x, target, attr = case
    ctx = RunContext(device=CPU, seed=seed, batch_size=batch_size)
    return METRICS.get("road").compute(MetricInputs(model, x, target, attr), ctx, **params)


def reference_road(case: Case, order: str, fractions: list[float], aggregation: str) -> dict[str, np.ndarray]:
    """One sample, one fraction, one imputation and one forward pass at a time (noise 0)."""
    model, x, target, attr = case
    n, _, h, w = x.shape
    a = attr.double().numpy().reshape(n, x.shape[1], h * w)
    scores = a.mean(axis=1) if aggregation == "mean" else np.abs(a).max(axis=1)
    probability, correct = np.zeros((n, len(fractions))), np.zeros((n, len(fractions)))
    for i in range(n):
        ranked = np.argsort(-scores[i] if order == "morf" else scores[i], kind="stable")
        for s, f in enumerate(fractions):
            removed = np.zeros(h * w, dtype=bool)
            removed[ranked[: math.floor(f * h * w + 1e-9)]] = True
            image = reference_impute(x[i].double().numpy(), removed.reshape(h, w))
            with torch.no_grad():
                out = model(torch.from_numpy(image).float()[None])[0]
            probability[i, s] = float(out.softmax(0)[target[i]])
            correct[i, s] = float(int(out.argmax()) == int(target[i]))
    return {"probability": probability, "correct": correct, "auc": probability.mean(axis=1)}


@pytest.mark.parametrize("aggregation", ["mean", "max_abs"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("kind", ["cnn", "cnn3"])
def test_matches_loop_reference(kind: str, order: str, aggregation: str) -> None:
    case = make_case(kind, n=3)
    fractions = [0.1, 0.25, 0.5, 0.75, 0.9]
    got = run(case, batch_size=4, order=order, fractions=fractions, noise=0.0, pixel_aggregation=aggregation)
    want = reference_road(case, order, fractions, aggregation)
    assert set(got.outputs) == {"probability", "correct", "auc"}
    for key, value in want.items():
        np.testing.assert_allclose(got.outputs[key].double().numpy(), value, rtol=0, atol=1e-5, err_msg=key)
    assert got.problems() == [] and got.forward_passes == 3 * len(fractions)
    assert got.info == {"fractions": fractions, "order": order, "k": [25, 64, 128, 192, 230], "noise": 0.0}


def test_ties_go_to_the_lower_index_first() -> None:
    model, x, target, _ = make_case("cnn", n=2)
    attr = torch.randint(-1, 2, x.shape, generator=torch.Generator().manual_seed(4)).float()  # many ties
    for order in ("morf", "lerf"):
        got = run((model, x, target, attr), order=order, fractions=[0.3, 0.6], noise=0.0)
        want = reference_road((model, x, target, attr), order, [0.3, 0.6], "mean")
        np.testing.assert_allclose(got.outputs["probability"].numpy(), want["probability"], atol=1e-5)


def test_batch_invariance_and_determinism() -> None:
    """Imputed rows are bitwise the same under any chunking (above); the CPU model's outputs differ by
    ~1e-8 between batch sizes, hence the tolerance on the probabilities."""
    case = make_case("cnn3", n=3)
    results = [run(case, batch_size=b, fractions=[0.2, 0.5, 0.8]) for b in (1, 5, 512)]
    for other in results[1:]:
        assert torch.equal(other.outputs["correct"], results[0].outputs["correct"])
        for key in ("probability", "auc"):
            torch.testing.assert_close(other.outputs[key], results[0].outputs[key], rtol=0, atol=1e-6)
    again = run(case, batch_size=5, fractions=[0.2, 0.5, 0.8])
    assert all(torch.equal(again.outputs[k], v) for k, v in results[1].outputs.items())
    other_seed = run(case, seed=SEED + 1, fractions=[0.2, 0.5, 0.8])
    clean = run(case, fractions=[0.2, 0.5, 0.8], noise=0.0)
    for different in (other_seed, clean):
        assert not torch.equal(different.outputs["probability"], results[0].outputs["probability"])


def test_noise_is_drawn_per_sample() -> None:
    """A sample's noise comes from its own stream: the first two samples score the same alone as with a
    third one after them."""
    model, x, target, attr = make_case("cnn3", n=3)
    three = run((model, x, target, attr), noise=0.05, fractions=[0.4, 0.7])
    two = run((model, x[:2], target[:2], attr[:2]), noise=0.05, fractions=[0.4, 0.7])
    torch.testing.assert_close(two.outputs["probability"], three.outputs["probability"][:2], rtol=0,
                               atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["morf", "lerf"]), st.floats(0.0, 0.2),
       st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4))
def test_outputs_in_bounds(seed: int, order: str, noise: float, fractions: list[float]) -> None:
    got = run(make_case("cnn", n=2, seed=seed), order=order, noise=noise, fractions=fractions)
    assert got.problems() == []
    assert got.outputs["probability"].shape == got.outputs["correct"].shape == (2, len(fractions))
    assert set(got.outputs["correct"].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(got.outputs["auc"], got.outputs["probability"].mean(1))


def test_removal_counts() -> None:
    assert removal_counts(10, [0.1, 0.3, 0.7, 0.99]) == [1, 3, 7, 9]
    assert removal_counts(1, [0.9]) == [0]
    assert removal_counts(100, [0.999]) == [99]


def test_spec_metadata() -> None:
    spec = METRICS.get("road")
    assert (spec.family, spec.modalities, spec.per_sample) == ("roar", frozenset({"image"}), True)
    assert "Rong" in spec.reference and np.allclose(spec.defaults["fractions"], np.arange(1, 10) / 10)
    case = make_case("cnn", n=2)
    morf, lerf = run(case, fractions=[0.5]), run(case, order="lerf", fractions=[0.5])
    assert (morf.higher_is_better, lerf.higher_is_better, morf.primary) == (False, True, "auc")
    assert morf.bounds == {"probability": (0.0, 1.0), "correct": (0.0, 1.0), "auc": (0.0, 1.0)}


def test_empty_batch() -> None:
    model, x, target, attr = make_case("cnn", n=2)
    got = run((model, x[:0], target[:0], attr[:0]))
    assert got.outputs["probability"].shape == (0, 9) and got.outputs["auc"].shape == (0,)
    assert got.forward_passes == 0


@pytest.mark.parametrize("params, message", [
    ({"order": "up"}, "choices: 'morf', 'lerf'"),
    ({"fractions": [0.5, 1.0]}, r"fractions in \(0, 1\)"),
    ({"fractions": []}, r"fractions in \(0, 1\)"),
    ({"fractions": [True]}, r"fractions in \(0, 1\)"),
    ({"noise": -0.1}, "noise"),
    ({"pixel_aggregation": "sum"}, "choices: 'mean', 'max_abs'"),
    ({"steps": 3}, "unknown parameter 'steps'"),
])
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        run(make_case("cnn", n=1), **params)


def test_tabular_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"images \(N, C, H, W\)"):
        run(make_case("mlp", n=2))
