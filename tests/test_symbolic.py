"""symbolic: the 15 ChaosMining formulas (arXiv 2406.12150) and their true attributions, against loops."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.data  # noqa: F401  (registers the datasets)
from harness.data.symbolic import (
    FORMULAS,
    ablation,
    build_symbolic,
    derivative,
    evaluate,
    expression,
    path_integral,
    relevant_count,
)
from harness.specs import DATASETS, DataBundle, ParamError, resolve_params

pytestmark = pytest.mark.usefixtures("one_thread")
PROPERTIES = settings(max_examples=40, deadline=None)
SEED_NOTES = (  # seed-systems.md §1.1, verbatim (m = 8 in its intended form)
    "a", "a**2", "2/(a**2+1)-1", "sin(a)", "E**a-1.5", "2*log(a**2+1)-1",
    "0.25*a**3+0.75*b**2",
    "0.5*a**3+0.75*b**2+a*c",
    "0.5*E**a*sin(b)-0.25*cos(d)**5/(c**2+1)",
    "0.5*(a-b)**2+0.2*(c+d*e)**3-0.5",
    "0.5*cos(a)*tan(b)-log((c-d)**2+1)/((e+f+1)**2+1)",
    "0.5*(b-c)**2/(a**2+1)+tan(d)*log(e**2+1)+0.5*cos(f)*sin(g)",
    "a + b**2/2 + c**3/3 + d**4/4 + e**5/5 + f**6/6 + g**7/7 + h**8/8",
    "0.5*(a-1)/(b**2+1) - 0.5*c**3/(d**2+1) + 0.5*e**5/(f**2+1) - 0.5*g**7/(h**2+1) + 0.5*tan(i) + 0.5",
    "0.5*sin(a) - 0.5*b**3 - log(c**2+1) + 0.5*sqrt((d+e)**2+1) - 0.5*cos(f)*g + h*i**2/((1-j)**2+1) - 0.5",
)
M = (1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
ADDITIVE = (0, 1, 2, 3, 4, 5, 6, 12)
"""Formulas that are sums of one-variable terms."""

PLAIN: tuple[Callable[[Sequence[float]], float], ...] = (  # the formulas again, written by hand with math
    lambda v: v[0],
    lambda v: v[0] ** 2,
    lambda v: 2 / (v[0] ** 2 + 1) - 1,
    lambda v: math.sin(v[0]),
    lambda v: math.exp(v[0]) - 1.5,
    lambda v: 2 * math.log(v[0] ** 2 + 1) - 1,
    lambda v: 0.25 * v[0] ** 3 + 0.75 * v[1] ** 2,
    lambda v: 0.5 * v[0] ** 3 + 0.75 * v[1] ** 2 + v[0] * v[2],
    lambda v: 0.5 * math.exp(v[0]) * math.sin(v[1]) - 0.25 * math.cos(v[3]) ** 5 / (v[2] ** 2 + 1),
    lambda v: 0.5 * (v[0] - v[1]) ** 2 + 0.2 * (v[2] + v[3] * v[4]) ** 3 - 0.5,
    lambda v: 0.5 * math.cos(v[0]) * math.tan(v[1])
    - math.log((v[2] - v[3]) ** 2 + 1) / ((v[4] + v[5] + 1) ** 2 + 1),
    lambda v: 0.5 * (v[1] - v[2]) ** 2 / (v[0] ** 2 + 1) + math.tan(v[3]) * math.log(v[4] ** 2 + 1)
    + 0.5 * math.cos(v[5]) * math.sin(v[6]),
    lambda v: sum(v[k] ** (k + 1) / (k + 1) for k in range(8)),
    lambda v: 0.5 * (v[0] - 1) / (v[1] ** 2 + 1) - 0.5 * v[2] ** 3 / (v[3] ** 2 + 1)
    + 0.5 * v[4] ** 5 / (v[5] ** 2 + 1) - 0.5 * v[6] ** 7 / (v[7] ** 2 + 1) + 0.5 * math.tan(v[8]) + 0.5,
    lambda v: 0.5 * math.sin(v[0]) - 0.5 * v[1] ** 3 - math.log(v[2] ** 2 + 1)
    + 0.5 * math.sqrt((v[3] + v[4]) ** 2 + 1) - 0.5 * math.cos(v[5]) * v[6]
    + v[7] * v[8] ** 2 / ((1 - v[9]) ** 2 + 1) - 0.5,
)


def build(seed: int = 0, **given: object) -> DataBundle:
    spec = DATASETS.get("symbolic")
    given = {"n_samples": 200, "n_noise": 5, **given}
    params = resolve_params("dataset symbolic", given, spec.defaults, spec.choices)
    return spec.build(seed, **params)


def points(formula: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, M[formula])))


def vector(formula: int) -> st.SearchStrategy[torch.Tensor]:
    coordinate = st.floats(-1.0, 1.0, allow_nan=False)
    return st.lists(coordinate, min_size=M[formula], max_size=M[formula]).map(
        lambda v: torch.tensor([v], dtype=torch.float64)
    )


formula_and_x = st.integers(0, 14).flatmap(lambda k: st.tuples(st.just(k), vector(k)))


# ---- the formulas ----------------------------------------------------------------------------------------


def test_fifteen_formulas_as_in_the_seed_notes() -> None:
    assert FORMULAS == SEED_NOTES
    assert [relevant_count(k) for k in range(15)] == list(M)
    for k in range(15):
        expr, symbols = expression(k)
        assert [s.name for s in symbols] == list("abcdefghij"[: M[k]])
        assert expr.free_symbols == set(symbols), f"formula {k} uses exactly its first m variables"
    assert sympy.sympify("E").evalf() == sympy.E.evalf() and expression(4)[0].has(sympy.exp)


def test_eight_variable_formula_is_the_intended_one() -> None:
    expr, symbols = expression(12)
    f, h = symbols[5], symbols[7]
    assert sympy.simplify(expr - sum(v ** (k + 1) / (k + 1) for k, v in enumerate(symbols))) == 0
    assert sympy.degree(expr, h) == 8 and sympy.degree(expr, f) == 6, "h is used, f only once"


@pytest.mark.parametrize("formula", range(15))
def test_torch_evaluation_matches_plain_math(formula: int) -> None:
    x = torch.cat([points(formula, 6, formula), torch.zeros(1, M[formula]), torch.ones(1, M[formula])])
    expected = torch.tensor([PLAIN[formula](row) for row in x.tolist()], dtype=torch.float64)
    value = evaluate(formula, x)
    assert value.dtype == torch.float64 and value.shape == (8,)
    assert torch.allclose(value, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("formula", range(15))
def test_derivative_is_the_autograd_gradient(formula: int) -> None:
    x = points(formula, 7, 100 + formula).requires_grad_(True)
    evaluate(formula, x).sum().backward()
    grad = derivative(formula, x.detach())
    assert grad.shape == (7, M[formula]) and grad.dtype == torch.float64
    assert torch.allclose(grad, x.grad, rtol=1e-10, atol=1e-12)


def test_constant_derivatives_broadcast() -> None:
    x = points(12, 5)
    assert torch.equal(derivative(0, x[:, :1]), torch.ones(5, 1, dtype=torch.float64))
    assert torch.equal(derivative(12, x)[:, 0], torch.ones(5, dtype=torch.float64))
    assert derivative(0, torch.zeros(2, 3, 1)).shape == (2, 3, 1)
    with pytest.raises(ValueError, match="10 relevant columns"):
        evaluate(14, x)


# ---- the bundle -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", [0, 7, 11, 14])
def test_truths_match_plain_loops(formula: int) -> None:
    steps, f = 7, PLAIN[formula]
    bundle = build(3, formula=formula, n_samples=30, n_noise=2, path_steps=steps)
    m = M[formula]
    for row, x in enumerate(bundle.x_test.double().tolist()):
        v = x[:m]
        for i in range(m):
            ablated = [0.0 if j == i else v[j] for j in range(m)]
            integral = 0.0
            for s in range(steps):
                z = [t * s / steps for t in v]
                moved = [z[j] + (v[j] / steps if j == i else 0.0) for j in range(m)]
                integral += f(moved) - f(z)
            close = {"rel_tol": 1e-5, "abs_tol": 1e-6}
            assert math.isclose(bundle.truth_test["ablation"][row, i], f(v) - f(ablated), **close)
            assert math.isclose(bundle.truth_test["path_integral"][row, i], integral, **close)
    x = bundle.x_test[:, :m].double().requires_grad_(True)
    evaluate(formula, x).sum().backward()
    assert torch.allclose(bundle.truth_test["derivative"][:, :m], x.grad.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("formula", [0, 9, 14])
def test_shapes_dtypes_mask_and_zero_noise_truths(formula: int) -> None:
    m = M[formula]
    bundle = build(1, formula=formula, n_samples=51, n_noise=4, test_fraction=0.3)
    n_test = round(0.3 * 51)
    assert bundle.task == "regression" and bundle.num_classes == 1 and bundle.input_shape == (m + 4,)
    assert bundle.x_train.shape == (51 - n_test, m + 4) and bundle.x_test.shape == (n_test, m + 4)
    assert bundle.y_train.shape == (51 - n_test,) and bundle.y_test.shape == (n_test,)
    for t in (bundle.x_train, bundle.x_test, bundle.y_train, bundle.y_test):
        assert t.dtype == torch.float32
    expected_mask = torch.zeros(n_test, m + 4, dtype=torch.bool)
    expected_mask[:, :m] = True
    assert torch.equal(bundle.mask_test, expected_mask)
    assert set(bundle.truth_test) == {"derivative", "ablation", "path_integral"}
    for values in bundle.truth_test.values():
        assert values.dtype == torch.float32 and values.shape == (n_test, m + 4)
        assert torch.isfinite(values).all() and not values[:, m:].any()
    rows = torch.cat([bundle.x_train, bundle.x_test])
    assert len(torch.unique(rows, dim=0)) == 51, "train and test rows are disjoint"
    assert DataBundle.from_arrays(bundle.arrays()).truth_test.keys() == bundle.truth_test.keys()


def test_inputs_targets_and_label_noise() -> None:
    bundle = build(2, formula=14, n_samples=20000, n_noise=3, label_noise=0.05)
    x = torch.cat([bundle.x_train, bundle.x_test])
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 0.33) < 0.01
    for xs, ys in ((bundle.x_train, bundle.y_train), (bundle.x_test, bundle.y_test)):
        residual = ys.double() - evaluate(14, xs[:, :10].double())
        assert abs(float(residual.std()) - 0.05) < 0.0025 and abs(float(residual.mean())) < 0.003
    exact = build(2, formula=14, n_samples=100, label_noise=0.0)
    assert torch.allclose(exact.y_test, evaluate(14, exact.x_test[:, :10].double()).float(), atol=1e-6)
    wide = build(0, n_samples=5000, n_noise=0, scale=2.0)
    assert float(wide.x_train.abs().max()) == 1.0, "large scales are clipped to [-1, 1]"


def test_deterministic_per_seed() -> None:
    first, again, other = (build(seed, formula=10).arrays() for seed in (7, 7, 8))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    for key in ("x_train", "x_test", "y_train", "truth_derivative"):
        assert not torch.equal(first[key], other[key])


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ({"formula": 15}, "formula = 15"), ({"formula": -1}, "formula = -1"),
        ({"n_noise": -1}, "n_noise = -1"),
        ({"test_fraction": 0.0}, "test_fraction = 0.0"), ({"test_fraction": 1.0}, "test_fraction = 1.0"),
        ({"n_samples": 2, "test_fraction": 0.1}, "n_samples = 2"), ({"n_samples": 1}, "n_samples = 1"),
        ({"path_steps": 0}, "path_steps = 0"), ({"label_noise": -0.5}, "label_noise = -0.5"),
        ({"scale": 0.0}, "scale = 0.0"),
    ],
)
def test_bad_parameters_are_rejected(given: dict[str, float], shown: str) -> None:
    with pytest.raises(ParamError, match=shown):
        build_symbolic(0, **given)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="formula"):
        relevant_count(15)


def test_registered_spec() -> None:
    spec = DATASETS.get("symbolic")
    assert spec.task == "regression" and spec.modality == "tabular" and spec.has_mask
    assert spec.truths == {"derivative", "ablation", "path_integral"}
    assert spec.choices["formula"] == tuple(range(15))
    assert all(isinstance(spec.defaults[k], int) for k in ("formula", "n_samples", "n_noise", "path_steps"))
    assert all(isinstance(spec.defaults[k], float) for k in ("label_noise", "test_fraction", "scale"))
    with pytest.raises(ParamError, match="choices"):
        resolve_params("dataset symbolic", {"formula": 15}, spec.defaults, spec.choices)


def test_default_size_builds_quickly() -> None:
    bundle = build_symbolic(0, formula=14)
    assert bundle.x_train.shape == (8000, 110) and bundle.x_test.shape == (2000, 110)


# ---- properties of the truths -----------------------------------------------------------------------------


@PROPERTIES
@given(st.sampled_from(ADDITIVE).flatmap(lambda k: st.tuples(st.just(k), vector(k))), st.integers(1, 40))
def test_additive_path_integral_telescopes(case: tuple[int, torch.Tensor], steps: int) -> None:
    """For f = sum_i f_i(x_i) the path sum of feature i telescopes to f_i(x_i) - f_i(0) = the ablation effect,
    and the features sum to f(x) - f(0) (completeness), for every number of steps."""
    formula, x = case
    integral = path_integral(formula, x, steps)
    assert torch.allclose(integral, ablation(formula, x), atol=1e-12)
    gap = integral.sum(-1) - (evaluate(formula, x) - evaluate(formula, torch.zeros_like(x)))
    assert float(gap.abs().max()) < 1e-12


@PROPERTIES
@given(st.integers(0, 5).flatmap(lambda k: st.tuples(st.just(k), vector(k))))
def test_one_variable_truths_are_the_total_change(case: tuple[int, torch.Tensor]) -> None:
    formula, x = case
    change = (evaluate(formula, x) - evaluate(formula, torch.zeros_like(x))).unsqueeze(-1)
    assert torch.allclose(ablation(formula, x), change, atol=1e-12)
    assert torch.allclose(path_integral(formula, x, 20), change, atol=1e-12)


@PROPERTIES
@given(formula_and_x, st.integers(1, 64))
def test_path_integral_converges_to_integrated_gradients(case: tuple[int, torch.Tensor], steps: int) -> None:
    """The S-step path sum differs from IG_i = x_i * int_0^1 df/dx_i(t x) dt (64-point Gauss-Legendre on the
    autograd gradient) by O(1/S): at most 2/S on [-1, 1]^m (at most 0.93/S was seen on 20,000 random points
    and every corner), and at most 8/S for the completeness gap sum_i - (f(x) - f(0)) (3.6/S seen)."""
    formula, x = case
    nodes, weights = np.polynomial.legendre.leggauss(64)
    path = (torch.from_numpy((nodes + 1) / 2)[:, None] * x).requires_grad_(True)  # (64, m)
    evaluate(formula, path).sum().backward()
    exact = (torch.from_numpy(weights / 2)[:, None] * path.grad).sum(0) * x[0]
    integral = path_integral(formula, x, steps)[0]
    assert float((integral - exact).abs().max()) <= 2.0 / steps
    gap = float(integral.sum() - (evaluate(formula, x) - evaluate(formula, torch.zeros_like(x)))[0])
    assert abs(gap) <= 8.0 / steps
    assert torch.allclose(path_integral(formula, x, 1), evaluate(formula, torch.diag_embed(x)) - evaluate(
        formula, torch.zeros_like(x)).unsqueeze(-1), atol=1e-12), "S = 1: f(x_i e_i) - f(0)"


@PROPERTIES
@given(formula_and_x)
def test_ablation_of_an_unused_value_is_zero(case: tuple[int, torch.Tensor]) -> None:
    """Ablating a feature that is already zero changes nothing, and zero input has zero path integral."""
    formula, x = case
    x = x.clone()
    x[0, 0] = 0.0
    assert abs(float(ablation(formula, x)[0, 0])) <= 1e-12
    assert float(path_integral(formula, x, 5)[0, 0]) == 0.0
    zero = torch.zeros_like(x)
    assert not ablation(formula, zero).any() and not path_integral(formula, zero, 3).any()
