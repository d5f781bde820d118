"""ChaosMining symbolic functional data: known formulas buried in pure-noise features (arXiv 2406.12150).

ChaosMining (§1.1 of the seed notes; ``data/symbolic_simulation/formula.csv`` and
``chaosmining/data_utils.py::create_simulation_data`` of github geshijoker/ChaosMining) draws inputs
X = clip(0.33 * N(0, 1), -1, 1) of shape (n, m + n_noise), of which only the first m columns enter a known
formula f; the target is y = f(x_relevant) + 0.01 * N(0, 1). Because f is known, so is the true attribution of
every test input, one kind per attribution family (feature i relevant, zero on the noise columns):

* ``derivative``: the analytic partial derivative df/dx_i (sympy ``diff``), the truth for saliency;
* ``ablation``: f(x) - f(x with x_i := 0), the truth for feature ablation with a zero baseline;
* ``path_integral``: sum_{s=0}^{S-1} [f(z_s + e_i x_i / S) - f(z_s)] with z_s = x s / S, the finite-difference
  path integral from a zero baseline (S = 20 in the paper), the truth for integrated gradients.

:data:`FORMULAS` are the 15 formulas of the seed's latest ``formula.csv`` (six with m = 1, then m = 2..10)
over the variables a, b, c, ... (a = feature 0). **[bug]** the original m = 8 formula
``a+(1/2)*b**2+...+(1/6)*f**6+(1/7)*f**7+(1/8)*g**8`` repeats ``f`` and never uses ``h``, so one of its
"relevant" columns is noise; here it is the intended ``a + b**2/2 + ... + g**7/7 + h**8/8``.

Differences from the seed, all deliberate: everything random comes from one ``numpy.random.Generator`` seeded
with ``seed`` (the seed uses the global numpy RNG plus scikit-learn's ``train_test_split``); the features are
rounded to float32 *before* the target and the truths are computed (in float64), so the truths are exact for
the inputs a model actually sees; the formulas are evaluated in torch through ``sympy.lambdify`` with a torch
function table (:data:`TORCH_FUNCTIONS`) instead of numpy.
"""
from __future__ import annotations

import string
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

if TYPE_CHECKING:
    import sympy

FORMULAS: tuple[str, ...] = (
    "a",
    "a**2",
    "2/(a**2+1)-1",
    "sin(a)",
    "E**a-1.5",
    "2*log(a**2+1)-1",
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
"""The 15 ChaosMining formulas (sympy syntax; ``E`` is Euler's number), index 0..14."""
RELEVANT: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
"""m, the number of relevant variables (a, b, ... in order) of each formula."""
VARIABLES: tuple[str, ...] = tuple(string.ascii_lowercase)
TORCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor] | float] = {
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "Abs": torch.abs, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
    "E": float(np.e), "pi": float(np.pi),
}
"""The namespace ``sympy.lambdify`` compiles the formulas and their derivatives against."""
TRUTHS: frozenset[str] = frozenset({"derivative", "ablation", "path_integral"})
Compiled = Callable[..., torch.Tensor | float]


def relevant_count(formula: int) -> int:
    """m, the number of relevant features (the first m columns) of formula ``formula`` (0..14)."""
    _check_formula(formula)
    return RELEVANT[formula]


def _check_formula(formula: int) -> None:
    if not 0 <= formula < len(FORMULAS):
        raise ParamError(
            f"dataset symbolic: formula = {formula!r} is not valid; valid range 0..{len(FORMULAS) - 1}"
        )


@cache
def expression(formula: int) -> tuple[sympy.Expr, tuple[sympy.Symbol, ...]]:
    """The parsed formula and its m relevant symbols (a, b, ... in column order)."""
    import sympy  # lazily: it takes about a second to import

    _check_formula(formula)
    symbols = sympy.symbols(VARIABLES[: RELEVANT[formula]])
    return sympy.sympify(FORMULAS[formula]), tuple(symbols)


@cache
def _compiled(formula: int) -> tuple[Compiled, tuple[Compiled, ...]]:
    """``f`` and ``(df/da, df/db, ...)`` compiled for torch tensors."""
    import sympy

    expr, symbols = expression(formula)
    fn = sympy.lambdify(symbols, expr, modules=[TORCH_FUNCTIONS])
    grads = tuple(sympy.lambdify(symbols, sympy.diff(expr, s), modules=[TORCH_FUNCTIONS]) for s in symbols)
    return fn, grads


def _columns(formula: int, x: torch.Tensor) -> tuple[Compiled, tuple[Compiled, ...]]:
    """The compiled formula, after checking that ``x`` has its m relevant columns last."""
    compiled = _compiled(formula)
    if x.shape[-1:] != (RELEVANT[formula],):
        raise ValueError(
            f"symbolic formula {formula} takes its {RELEVANT[formula]} relevant columns last; got an input "
            f"of shape {list(x.shape)}"
        )
    return compiled


def _call(fn: Compiled, x: torch.Tensor) -> torch.Tensor:
    """Apply a compiled expression to the columns of ``x`` (..., m); a constant broadcasts to
    ``x.shape[:-1]``."""
    value = fn(*x.unbind(-1))
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(x.shape[:-1]).contiguous()


def evaluate(formula: int, x: torch.Tensor) -> torch.Tensor:
    """f(x) of shape ``x.shape[:-1]`` for ``x`` of shape (..., m) holding the relevant columns."""
    return _call(_columns(formula, x)[0], x)


def derivative(formula: int, x: torch.Tensor) -> torch.Tensor:
    """The analytic gradient (..., m): column i is df/dx_i at ``x`` (..., m)."""
    return torch.stack([_call(grad, x) for grad in _columns(formula, x)[1]], dim=-1)


def ablation(formula: int, x: torch.Tensor) -> torch.Tensor:
    """(..., m): column i is f(x) - f(x with x_i := 0)."""
    m = x.shape[-1]
    keep = 1.0 - torch.eye(m, dtype=x.dtype, device=x.device)  # row i zeroes column i
    ablated = evaluate(formula, x.unsqueeze(-2) * keep)  # (..., m)
    return evaluate(formula, x).unsqueeze(-1) - ablated


def path_integral(formula: int, x: torch.Tensor, steps: int) -> torch.Tensor:
    """(..., m): column i is sum_{s<S} [f(z_s + e_i x_i / S) - f(z_s)], z_s = x s / S, S = ``steps``."""
    step = torch.diag_embed(x / steps)  # (..., m, m): row i is e_i x_i / S
    total = torch.zeros_like(x)
    for s in range(steps):
        z = x * (s / steps)
        total += evaluate(formula, z.unsqueeze(-2) + step) - evaluate(formula, z).unsqueeze(-1)
    return total


def _validate(formula: int, n_samples: int, n_noise: int, label_noise: float, test_fraction: float,
              scale: float, path_steps: int) -> int:
    """Check the parameters; return the number of test rows."""
    _check_formula(formula)
    if n_noise < 0:
        raise ParamError(f"dataset symbolic: n_noise = {n_noise!r} is not valid; need n_noise >= 0")
    if not 0.0 < test_fraction < 1.0:
        raise ParamError(
            f"dataset symbolic: test_fraction = {test_fraction!r} is not valid; need 0 < test_fraction < 1"
        )
    if label_noise < 0.0:
        raise ParamError(
            f"dataset symbolic: label_noise = {label_noise!r} is not valid; need label_noise >= 0"
        )
    if scale <= 0.0:
        raise ParamError(f"dataset symbolic: scale = {scale!r} is not valid; need scale > 0")
    if path_steps < 1:
        raise ParamError(f"dataset symbolic: path_steps = {path_steps!r} is not valid; need path_steps >= 1")
    n_test = round(test_fraction * n_samples)
    if n_test < 1 or n_samples - n_test < 1:
        raise ParamError(
            f"dataset symbolic: n_samples = {n_samples!r} is too small for test_fraction = "
            f"{test_fraction!r}: it gives {n_test} test and {n_samples - n_test} training rows; need "
            "at least 1 of each"
        )
    return n_test


def build_symbolic(
    seed: int, *, formula: int = 0, n_samples: int = 10000, n_noise: int = 100, label_noise: float = 0.01,
    test_fraction: float = 0.2, scale: float = 0.33, path_steps: int = 20,
) -> DataBundle:
    """One ChaosMining formula as a regression bundle; everything random is drawn from ``seed``.

    x: float32 (n, m + n_noise) = clip(scale N(0, 1), -1, 1), the first m columns relevant; y: float32 (n,) =
    f(x) + label_noise N(0, 1); a random ``round(test_fraction n)`` rows are the test set. ``mask_test`` is
    True on the m relevant columns; ``truth_test`` holds the three true attributions (module docstring) of the
    test inputs, float32 (n_test, m + n_noise), zero on the noise columns.
    """
    n_test = _validate(formula, n_samples, n_noise, label_noise, test_fraction, scale, path_steps)
    m = RELEVANT[formula]
    rng = np.random.default_rng(seed)
    features = np.clip(scale * rng.standard_normal((n_samples, m + n_noise)), -1.0, 1.0).astype(np.float32)
    x = torch.from_numpy(features)
    noise = torch.from_numpy(label_noise * rng.standard_normal(n_samples))
    order = torch.from_numpy(rng.permutation(n_samples))
    test, train = order[:n_test], order[n_test:]
    relevant = x[:, :m].double()
    y = (evaluate(formula, relevant) + noise).float()

    x_test = relevant[test]
    truths = {
        "derivative": derivative(formula, x_test),
        "ablation": ablation(formula, x_test),
        "path_integral": path_integral(formula, x_test, path_steps),
    }
    noise_columns = torch.zeros(n_test, n_noise)
    padded = {kind: torch.cat([value.float(), noise_columns], dim=1) for kind, value in truths.items()}
    mask = torch.zeros(n_test, m + n_noise, dtype=torch.bool)
    mask[:, :m] = True
    return DataBundle(
        x_train=x[train].contiguous(), y_train=y[train].contiguous(), x_test=x[test].contiguous(),
        y_test=y[test].contiguous(), num_classes=1, mask_test=mask, task="regression", truth_test=padded,
    )


DATASETS.add(
    "symbolic",
    DatasetSpec(
        name="symbolic",
        build=build_symbolic,
        modality="tabular",
        task="regression",
        has_mask=True,
        truths=TRUTHS,
        defaults={
            "formula": 0, "n_samples": 10000, "n_noise": 100, "label_noise": 0.01, "test_fraction": 0.2,
            "scale": 0.33, "path_steps": 20,
        },
        choices={"formula": tuple(range(len(FORMULAS)))},
        description=(
            "ChaosMining symbolic functional data (arXiv 2406.12150): one of 15 known formulas (m = 1..10 "
            "relevant variables, the intended m = 8 one) of the first m columns of x = clip(scale N(0, 1), "
            "-1, 1) with n_noise pure-noise columns; y = f + label_noise N(0, 1); regression. mask_test "
            "marks the m relevant columns; truth_test holds the analytic derivative, the zero-baseline "
            "ablation effect and the path_steps-step path integral from zero of every test input."
        ),
    ),
)
