"""Each tool's call of each benchmarked metric on one workload: ``TOOLS[tool][metric](bench, regime)``
returns the zero-argument call to time.

All tools get the same model, inputs, targets, stored attributions (input x gradient) and explainer, and the
same number of perturbed rows per sample (:attr:`Workload.rows_per_sample`, R) wherever their parameters
allow; ``benchmarks/test_peer_speed.py``'s docstring lists what each call runs.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import harness.methods  # registers the methods
import harness.metrics  # noqa: F401  (registers the metrics)
from benchmarks.common import Workload, input_x_gradient, model_and_inputs
from harness.specs import METHODS, METRICS, Explainer, MetricInputs, RunContext

Call = Callable[[], object]


@dataclass(frozen=True)
class Regime:
    """How a case departs from the defaults: one feature per step (deletion), or the explainer that
    max-sensitivity re-attributes with (a registry name)."""

    one_feature: bool = False
    explain: str = "saliency"


Builder = Callable[["Bench", Regime], Call]

QUANTUS_INFIDELITY = {"cnn_16x1x28x28": (4, 2), "resnet18_8x3x64x64": (16, 6)}
"""(patch size, n_perturb_samples): Quantus' Infidelity runs one row per patch position and draw,
(H / patch)^2 * draws = R rows per sample (49 * 2 = 98, 16 * 6 = 96)."""

FAITHFULNESS_FRACTION = 8
"""Faithfulness correlation masks 1/8 of the input per run (98 of 784 pixels; 512 of 4096)."""

RADIUS = 0.1
"""Max-sensitivity noise: U[-0.1, 0.1] per value (attribench's radius)."""


def max_sensitivity_draws(rows: int, method: str) -> int:
    """Perturbations per sample: R / 4 with a one-pass explainer, 10 when each costs 25 (integrated
    gradients, 25 steps: the registry's default)."""
    return 10 if method == "integrated_gradients" else rows // 4


@dataclass
class Bench:
    """One workload, built once per case: model, data, attributions, run context and explainers."""

    workload: Workload
    model: nn.Module = field(init=False)
    x: Tensor = field(init=False)
    target: Tensor = field(init=False)
    attributions: Tensor = field(init=False)
    ctx: RunContext = field(init=False)
    explained: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    """(rows, targets) of every call of the explainers that :meth:`explainer` returned, while
    :attr:`capture` is set."""
    capture: bool = False

    def __post_init__(self) -> None:
        self.model, self.x = model_and_inputs(self.workload.name)
        self.ctx = RunContext(device=self.x.device, seed=0, batch_size=256)
        with torch.no_grad():
            self.target = self.model(self.x).argmax(1)
        self.attributions = input_x_gradient(self.model, self.x, self.target)

    @property
    def rows(self) -> int:
        return self.workload.rows_per_sample

    @property
    def pixels(self) -> int:
        return math.prod(self.x.shape[2:])

    @cached_property
    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, target and attributions as NumPy arrays (what Quantus takes)."""
        return self.x.numpy(), self.target.numpy(), self.attributions.numpy()

    def plain_explainer(self, method: str) -> Explainer:
        """The registry's explainer (batched under ``ctx``'s budget): every tool calls this one."""
        return METHODS.get(method).build(self.model, self.ctx)

    def explainer(self, method: str) -> Explainer:
        """:meth:`plain_explainer`, recording what it explains in :attr:`explained` while :attr:`capture`."""
        inner = self.plain_explainer(method)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            if self.capture:
                self.explained.append((x.detach().clone(), target.clone()))
            return inner(x, target)

        return explain


def features_in_step(bench: Bench, steps: int) -> int:
    """Quantus' features per step for ``steps`` steps over all C * H * W values (it must divide H * W)."""
    values = math.prod(bench.x.shape[1:])
    step = values // steps
    if values % steps or bench.pixels % step:
        raise ValueError(f"{steps} steps do not split {values} values in steps that divide {bench.pixels}")
    return step


def factor_pair(rows: int) -> tuple[int, int]:
    """(steps, subsets) with steps * subsets = rows and steps >= subsets as close as possible."""
    subsets = max(d for d in range(2, math.isqrt(rows) + 1) if rows % d == 0)
    return rows // subsets, subsets


# ---- xaiharness -------------------------------------------------------------------------------------------

XAIHARNESS_PARAMS: dict[str, Callable[[Bench, Regime], dict[str, Any]]] = {
    "deletion": lambda b, r: {"steps": b.pixels if r.one_feature else b.rows, "max_fraction": 1.0},
    "irof": lambda b, r: {"steps": 101, "n_segments": 100},
    "sensitivity_n": lambda b, r: dict(zip(("steps", "subsets"), factor_pair(b.rows), strict=True)),
    "infidelity": lambda b, r: {"n_perturbations": b.rows, "perturbation": "noisy_baseline"},
    "faithfulness_correlation": lambda b, r: {
        "runs": b.rows, "subset_size": b.pixels // FAITHFULNESS_FRACTION},
    "max_sensitivity": lambda b, r: {"n_perturbations": max_sensitivity_draws(b.rows, r.explain),
                                     "radius": RADIUS, "normalize": False},
}
"""xaiharness parameters per metric (maskers: the default constant 0)."""


def xaiharness(metric: str) -> Builder:
    def build(bench: Bench, regime: Regime) -> Call:
        if metric == "faithfulness_correlation":  # registered on import, if it exists
            importlib.import_module("harness.metrics.faithfulness_correlation")
        params, compute = XAIHARNESS_PARAMS[metric](bench, regime), METRICS.get(metric).compute
        explain = bench.explainer(regime.explain) if METRICS.get(metric).needs_explain else None
        inputs = MetricInputs(bench.model, bench.x, bench.target, bench.attributions, explain=explain)

        def call() -> object:
            result = compute(inputs, bench.ctx, **params)
            assert result.problems() == [], result.problems()
            return result

        return call

    return build


# ---- Quantus 0.6 -------------------------------------------------------------------------------------------

def quantus_call(bench: Bench, metric: Any, **kwargs: Any) -> Call:
    """``metric`` called on the bench's NumPy arrays, the whole batch at once (Quantus' ``batch_size``)."""
    x, y, a = bench.numpy

    def call() -> object:
        return metric(model=bench.model, x_batch=x, y_batch=y, a_batch=a, device="cpu",
                      batch_size=x.shape[0], **kwargs)

    return call


def quantus_explain(explain: Explainer) -> Callable[..., np.ndarray]:
    """Quantus' ``explain_func(model, inputs, targets, **kwargs)`` over NumPy arrays, calling ``explain``."""

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    return explain_func


def channel_broadcast(arr: np.ndarray, mask: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Quantus' default IROF perturbation with its (N, 1, H, W) segment mask broadcast over the channels (the
    default asserts equal shapes and so rejects 3-channel images)."""
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)


def quantus_trapz() -> None:
    """Quantus 0.6 calls ``np.trapz``, removed in NumPy 2.4: alias it to ``np.trapezoid`` (same function)."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]


QUIET = {"disable_warnings": True, "display_progressbar": False, "perturb_baseline": "black"}
"""Every Quantus metric: no warnings or progress bar; masked values become the input's minimum ("black")."""


def quantus_pixel_flipping(bench: Bench, regime: Regime) -> Call:
    import quantus

    step = 1 if regime.one_feature else features_in_step(bench, bench.rows)
    return quantus_call(bench, quantus.PixelFlipping(features_in_step=step, **QUIET))


def quantus_sensitivity_n(bench: Bench, regime: Regime) -> Call:
    import quantus

    return quantus_call(bench, quantus.SensitivityN(
        features_in_step=features_in_step(bench, bench.rows), n_max_percentage=1.0, return_aggregate=False,
        **QUIET))


def quantus_irof(bench: Bench, regime: Regime) -> Call:
    import quantus

    quantus_trapz()
    extra = {"perturb_func": channel_broadcast} if bench.x.shape[1] > 1 else {}
    return quantus_call(bench, quantus.IROF(segmentation_method="slic", return_aggregate=False, **extra,
                                            **QUIET))


def quantus_infidelity(bench: Bench, regime: Regime) -> Call:
    import quantus

    patch, draws = QUANTUS_INFIDELITY[bench.workload.name]
    return quantus_call(bench, quantus.Infidelity(perturb_patch_sizes=[patch], n_perturb_samples=draws,
                                                  **QUIET))


def quantus_faithfulness_correlation(bench: Bench, regime: Regime) -> Call:
    import quantus

    size = math.prod(bench.x.shape[1:]) // FAITHFULNESS_FRACTION
    return quantus_call(bench, quantus.FaithfulnessCorrelation(
        nr_runs=bench.rows, subset_size=size, return_aggregate=False, **QUIET))


def quantus_max_sensitivity(bench: Bench, regime: Regime) -> Call:
    import quantus

    quiet = {key: value for key, value in QUIET.items() if key != "perturb_baseline"}
    metric = quantus.MaxSensitivity(
        nr_samples=max_sensitivity_draws(bench.rows, regime.explain), lower_bound=RADIUS, normalise=False,
        abs=False, return_aggregate=False, **quiet)
    return quantus_call(bench, metric, explain_func=quantus_explain(bench.explainer(regime.explain)))


# ---- captum 0.9 --------------------------------------------------------------------------------------------

def noisy_baseline(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """captum perturbation (I, x - I) with I = x - eps, eps ~ N(0, 0.2^2): xaiharness' (and attribench's)
    noisy baseline."""
    noise = torch.randn_like(inputs) * 0.2
    return inputs - noise, noise


def captum_infidelity(bench: Bench, regime: Regime) -> Call:
    from captum.metrics import infidelity

    def call() -> object:
        return infidelity(bench.model, noisy_baseline, bench.x, bench.attributions, target=bench.target,
                          n_perturb_samples=bench.rows, max_examples_per_batch=bench.ctx.batch_size,
                          normalize=True)

    return call


def captum_sensitivity_max(bench: Bench, regime: Regime) -> Call:
    from captum.metrics import sensitivity_max

    inner = bench.explainer(regime.explain)

    def explanation_func(inputs: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor | tuple[Tensor, ...]:
        """captum passes a tuple of inputs and wants a tuple back, as its attribution methods return."""
        if isinstance(inputs, tuple):
            return (inner(inputs[0], target),)
        return inner(inputs, target)

    def call() -> object:
        return sensitivity_max(explanation_func, bench.x, perturb_radius=RADIUS,
                               n_perturb_samples=max_sensitivity_draws(bench.rows, regime.explain),
                               max_examples_per_batch=bench.ctx.batch_size, target=bench.target)

    return call


TOOLS: dict[str, dict[str, Builder]] = {
    "xaiharness": {metric: xaiharness(metric) for metric in XAIHARNESS_PARAMS},
    "quantus": {
        "deletion": quantus_pixel_flipping, "irof": quantus_irof, "sensitivity_n": quantus_sensitivity_n,
        "infidelity": quantus_infidelity, "faithfulness_correlation": quantus_faithfulness_correlation,
        "max_sensitivity": quantus_max_sensitivity,
    },
    "captum": {"infidelity": captum_infidelity, "max_sensitivity": captum_sensitivity_max},
}
"""Each tool's builder per metric it has (captum 0.9 has no deletion, IROF, sensitivity-n or faithfulness
correlation)."""
