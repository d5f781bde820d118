"""Coverage of a test set, and the DeepImportance research questions as metrics (family ``coverage``).

Sources: Gerasimou, Eniser, Sen & Cakan, "Importance-Driven Deep Learning System Testing", ICSE 2020; PyTorch
port github JoshuaQSH/Wisdom; seed-systems.md §3. Criteria: :mod:`harness.coverage` (streaming, mergeable).

* ``coverage`` (RQ5 and the plain figure): one criterion on the model's test inputs, fed in ``shards`` merged
  shards; outputs the coverage, its normalised ratio, build and update seconds and inputs per second. The
  merged value is checked against a single pass and the case fails if they differ (beyond 1e-9 relative: NLC's
  merged covariance sums in another order). ``criterion_params`` go to the criterion; IDC's settings also come
  as ``idc_*``, and the surprise criteria's bucket range ``[lower, upper)`` as ``lsc_lower``, ``lsc_upper``,
  ``dsc_lower``, ... (:func:`harness.coverage.workflow.surprise_params`; e.g. a negative ``lsc_lower`` where
  LSA = -log density is negative). Each applies only to its own criterion.
* ``coverage_pruning`` (RQ1): zero the global top-N neurons of a layer attributor (over every traced layer)
  versus N random neurons; accuracy drop for N in ``ns``. Expected: the attributor's neurons hurt more.

The input-level workflows (RQ2 noise on important pixels, RQ3 adversarial share, RQ4 evenness) are in
:mod:`harness.metrics.coverage_rq`.
"""
from __future__ import annotations

import math
import time
from types import MappingProxyType
from typing import Any

import torch

from harness.coverage import workflow
from harness.coverage.base import coverage_layers
from harness.metrics.minimal_subset import predicted_class
from harness.models.training import accuracy
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

REFERENCE = ("Gerasimou et al., Importance-Driven Deep Learning System Testing, ICSE 2020; github JoshuaQSH/Wisdom "
             "(Torch4DeepImportance)")
IDC_PARAMS = {f"idc_{k}": v for k, v in workflow.IDC_DEFAULTS.items()}
COVERAGE_DEFAULTS = MappingProxyType({
    "criterion": "nc", "criterion_params": {}, "train_samples": 2000, "test_samples": 0, "shards": 2,
    **IDC_PARAMS, **workflow.SURPRISE_BOUNDS,
})
PRUNING_DEFAULTS = MappingProxyType({
    "attributor": "layer_conductance", "voters": list(workflow.IDC_DEFAULTS["voters"]), "ns": [6, 8, 10, 15, 20], "random_draws": 5, "train_samples": 2000,
    "test_samples": 0,
})
RANDOM_OFFSET = 0xC0F1


def idc_settings(p: dict[str, Any]) -> dict[str, Any]:
    return {k[len("idc_"):]: v for k, v in p.items() if k.startswith("idc_")}


def _data(name: str, inputs: MetricInputs):
    if inputs.data is None:
        raise ValueError(f"{name}: needs inputs.data (training inputs build the criteria)")
    return inputs.data


def coverage(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """One criterion's coverage of the test inputs, with build / update timings (module docstring)."""
    p = resolve_params("metric coverage", params, COVERAGE_DEFAULTS)
    data = _data("coverage", inputs)
    if p["criterion"] not in workflow.CRITERIA:
        raise ParamError(f"metric coverage: criterion {p['criterion']!r} is not registered; choices: "
                         + ", ".join(workflow.CRITERIA.names()))
    if p["shards"] < 1:
        raise ParamError(f"metric coverage: parameter 'shards' = {p['shards']} must be at least 1")
    given = p["criterion_params"]
    if p["criterion"] in workflow.SURPRISE:
        given = workflow.surprise_params("metric coverage", p["criterion"], p, given)
    (built,) = workflow.build_criteria(inputs, ctx, [p["criterion"]], {p["criterion"]: given}, p["train_samples"],
                                       idc_settings(p))
    x = workflow.subset(data.x_test, p["test_samples"]).to(ctx.device)
    start = time.perf_counter()
    traces = workflow.traces_of(inputs.model, x, ctx)
    labels = predicted_class(inputs.model, x, ctx)
    merged = workflow.covered(built, traces, labels, p["shards"])
    seconds = time.perf_counter() - start
    single = workflow.covered(built, traces, labels, 1)
    if merged.keys() != single.keys() or not all(
            math.isclose(merged[k], single[k], rel_tol=1e-9, abs_tol=1e-12) for k in merged):  # NLC: float sums
        raise AssertionError(f"coverage {p['criterion']}: {p['shards']} merged shards give {merged}, one pass "
                             f"{single}")
    outputs = {
        "coverage": torch.tensor([merged["coverage"]], dtype=torch.float64),
        "ratio": torch.tensor([merged.get("ratio", merged["coverage"])], dtype=torch.float64),
        "build_seconds": torch.tensor([built.build_seconds], dtype=torch.float64),
        "update_seconds": torch.tensor([seconds], dtype=torch.float64),
        "throughput": torch.tensor([len(x) / seconds if seconds > 0 else 0.0], dtype=torch.float64),
    }
    positive = (0.0, None)
    return MetricResult(
        outputs=outputs, primary="coverage", higher_is_better=True,
        bounds={"coverage": positive, "ratio": positive, "build_seconds": positive, "update_seconds": positive,
                "throughput": positive},
        forward_passes=len(x),
        info={"criterion": p["criterion"], "figures": {k: float(v) for k, v in merged.items()},
              "test_inputs": len(x), "shards": p["shards"]},
    )


def coverage_pruning(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """RQ1: accuracy drop from zeroing the attributor's global top-N neurons versus N random ones."""
    from harness.coverage.relevance import LAYER_ATTRIBUTORS, zeroed

    p = resolve_params("metric coverage_pruning", params, PRUNING_DEFAULTS)
    if p["attributor"] not in LAYER_ATTRIBUTORS and p["attributor"] != "voting":
        raise ParamError(f"metric coverage_pruning: attributor {p['attributor']!r} unknown; choices: voting, "
                         + ", ".join(sorted(LAYER_ATTRIBUTORS)))
    data = _data("coverage_pruning", inputs)
    model = workflow.unwrap(inputs.model)
    idc = {**workflow.IDC_DEFAULTS, "attributor": p["attributor"], "scope": "model", "m": max(p["ns"]),
           "voters": p["voters"]}
    ranked = workflow.idc_neurons(inputs, ctx, data, idc, p["train_samples"])
    x = workflow.subset(data.x_test, p["test_samples"]).to(ctx.device)
    y = workflow.subset(data.y_test, p["test_samples"]).to(ctx.device)
    clean = accuracy(model, x, y, ctx.batch_size, ctx.device)
    layers = coverage_layers(model)
    widths = {name: t.shape[1] for name, t in workflow.traces_of(model, x[:1], ctx).items()}
    everyone = [(layer, i) for layer in layers for i in range(widths[layer])]
    generator = ctx.generator(RANDOM_OFFSET)
    drop = torch.zeros(1, len(p["ns"]), dtype=torch.float64)
    random_drop = torch.zeros(p["random_draws"], len(p["ns"]), dtype=torch.float64)
    for j, n in enumerate(p["ns"]):
        if n > len(everyone):
            raise ParamError(f"metric coverage_pruning: N = {n} exceeds the model's {len(everyone)} neurons")
        with zeroed(model, ranked[:n]):  # the ranking is most important first
            drop[0, j] = clean - accuracy(model, x, y, ctx.batch_size, ctx.device)
        for r in range(p["random_draws"]):
            chosen = [everyone[i] for i in torch.randperm(len(everyone), generator=generator)[:n].tolist()]
            with zeroed(model, chosen):
                random_drop[r, j] = clean - accuracy(model, x, y, ctx.batch_size, ctx.device)
    excess = (drop - random_drop.mean(dim=0, keepdim=True)).mean(dim=1)
    unit = (-1.0, 1.0)
    return MetricResult(
        outputs={"drop": drop, "random_drop": random_drop, "excess": excess,
                 "clean_accuracy": torch.tensor([clean], dtype=torch.float64)},
        primary="excess", higher_is_better=True,
        bounds={"drop": unit, "random_drop": unit, "excess": (-1.0, 1.0), "clean_accuracy": (0.0, 1.0)},
        info={"ns": p["ns"], "attributor": p["attributor"], "neurons": [list(n) for n in ranked],
              "random_draws": p["random_draws"]},
    )


for _name, _compute, _defaults, _what in (
    ("coverage", coverage, COVERAGE_DEFAULTS,
     ("Coverage of the test inputs by one criterion (nc, kmnc, nbc, snac, tknc, tknp, cc, nlc, lsc, dsc, mdsc, "
      "idc), fed in merged shards; build and update time, inputs per second (RQ5). lsc_lower / lsc_upper, "
      "dsc_*, mdsc_*: the surprise criteria's bucket range [lower, upper) (lower 0; a negative lsc_lower lets "
      "LSC count negative LSA).")),
    ("coverage_pruning", coverage_pruning, PRUNING_DEFAULTS,
     "RQ1: accuracy drop from zeroing the global top-N neurons of a layer attributor versus N random neurons."),
):
    METRICS.add(_name, MetricSpec(
        name=_name, family="coverage", compute=_compute, modalities=frozenset({"image"}), reference=REFERENCE,
        needs_data=True, per_sample=False, uses_method=False, defaults=dict(_defaults), description=_what,
    ))
