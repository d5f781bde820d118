"""Speed against peers: xaiharness, Quantus 0.6 and captum 0.9 on the same CPU workloads, each against its
floor.

Workloads (``benchmarks.common.WORKLOADS``): a small random-init CNN on 16 sklearn digits upscaled to
1 x 28 x 28, and a random-init ResNet-18 on 8 scikit-image photos at 3 x 64 x 64. Every tool gets the same
model, inputs, targets, stored attributions (input x gradient) and explainer, and R perturbed rows per sample
(R = 98 on the CNN, 96 on ResNet-18: Quantus' ``features_in_step`` must divide H * W, so 784 / 8 and
3 * 4096 / 128 steps):

=====================  =======================================================================================
deletion               xaiharness ``deletion`` steps = R, max_fraction = 1 (Quantus runs to every feature);
                       Quantus ``PixelFlipping`` features_in_step = C * H * W / R
deletion, 1 feature    (CNN) xaiharness steps = 784; Quantus features_in_step = 1: 784 steps of N rows
irof                   xaiharness ``irof`` steps = 101, n_segments = 100 (one step per segment, every k once);
                       Quantus ``IROF`` (SLIC, 100 segments, one step per segment): the rows each run differ
                       with their segmentations; each is timed against a floor of its own row count
sensitivity_n          xaiharness steps x subsets = R (14 x 7, 12 x 8); Quantus ``SensitivityN``
                       features_in_step = C * H * W / R (cumulative top-k steps, not random subsets)
infidelity             xaiharness and captum R noisy-baseline perturbations (sigma 0.2); Quantus
                       ``Infidelity`` (patch, draws) = (4, 2) on the CNN, (16, 6) on ResNet-18: R rows
faithfulness corr.     R runs of random subsets of 1/8 of the input (xaiharness: pixels; Quantus: values)
max_sensitivity        saliency explainer, R / 4 = 24 draws of U[-0.1, 0.1] noise, unnormalised (captum's
                       and Quantus' definition); captum explains x once more (N more rows)
max_sensitivity, IG    (CNN) integrated gradients (25 steps) as the explainer, 10 draws
=====================  =======================================================================================

A first, untimed call of each case (it also warms up) records every row the tool sends through the model (a
forward pre-hook) or through the explainer (max-sensitivity); the table's "forward passes" are those rows.
Two floors, each the same number of rows, batched 256 at a time under ``torch.inference_mode()`` (for
max-sensitivity: the registry's explainer in one call, which batches itself):

- ``floor``: the plain inputs, each sample repeated sample-major ("ratio to floor", the goal's measure);
- ``floor_perturbed``: the recorded rows themselves ("ratio to own rows"). A CPU forward costs more on
  masked or noisy rows than on a run of identical plain rows (max pooling branches; the branch predictor
  learns a repeated row), so this ratio is the implementation's own overhead, and floor_perturbed / floor
  is the data's share, which no implementation can remove.

Rounds alternate floors (pytest-benchmark's untimed ``setup``, timed here) and the metric; ratios are
medians of per-round ratios. The slow regimes run ``SLOW`` rounds. attribench 0.1.9 is not run (below).

Peer failures met (Quantus 0.6.0, captum 0.9.0, NumPy 2.4.6, torch 2.11):

- Quantus IROF: ``AttributeError: module 'numpy' has no attribute 'trapz'`` (``quantus/helpers/utils.py``
  ``calculate_auc``; NumPy 2.4 removed ``np.trapz``). Shimmed here: ``np.trapz = np.trapezoid`` in this
  process (:func:`benchmarks.peers.quantus_trapz`).
- Quantus IROF on 3-channel input: ``AssertionError: The shape of arr must be the same as the mask shape``
  (``baseline_replacement_by_mask``: the segment mask is (N, 1, H, W)). Worked around on ResNet-18 with a
  perturbation that broadcasts the mask over the channels (:func:`benchmarks.peers.channel_broadcast`).
- captum ``sensitivity_max`` passes the inputs as a tuple and needs a tuple back, as its attribution
  methods return; an explainer returning a tensor fails with ``RuntimeError: The size of tensor a (256)
  must match the size of tensor b (16) at non-singleton dimension 0`` (it iterates the tensor's rows as
  inputs). Adapted in :func:`benchmarks.peers.captum`.
- attribench 0.1.9 (PyPI): requires ``torch<2,>=1.5.0``; ``pip install --dry-run attribench==0.1.9``
  resolves to torch 1.13.1 (and adds seaborn, statsmodels, pyyaml), replacing the pinned torch 2.11.0, so
  it is not installed and its cases are skipped.

Run one metric with ``make benchmarks ARGS='-k infidelity'`` (ids are ``metric-tool-workload``, e.g.
``-k "sensitivity_n and cnn"``); ``--bench-threads 1`` on a machine shared with other work.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from benchmarks.common import (
    CHUNK,
    WORKLOADS,
    Rounds,
    SpeedRow,
    benchmark_times,
    captured_rows,
    forward_runner,
    ratios,
    repeated_rows,
)
from benchmarks.peers import TOOLS, Bench, Call, Regime
from harness.specs import Explainer

METRICS = ("deletion", "irof", "sensitivity_n", "infidelity", "faithfulness_correlation", "max_sensitivity")
CNN = "cnn_16x1x28x28"
SLOW = (3, 0)
"""Rounds of the slow regimes (seconds per call); the first, untimed call warms up."""
ATTRIBENCH_SKIP = (
    "attribench 0.1.9 requires torch<2,>=1.5.0 (pip resolves torch 1.13.1), which would replace the pinned "
    "torch 2.11.0; not installed"
)


@dataclass(frozen=True)
class Case:
    metric: str
    tool: str
    workload: str
    regime: Regime = field(default_factory=Regime)
    setting: str = "R rows per sample"
    rounds: tuple[int, int] | None = None
    """(timed rounds, warm-up rounds) where not the workload's: fewer for the slow regimes."""

    @property
    def id(self) -> str:
        regime = "" if self.rounds is None else f"-{self.setting.replace(' ', '_')}"
        return f"{self.metric}{regime}-{self.tool}-{self.workload.split('_')[0]}"

    @property
    def reattributes(self) -> bool:
        return self.metric == "max_sensitivity"

    def build(self, bench: Bench) -> Call:
        return TOOLS[self.tool][self.metric](bench, self.regime)


def cases() -> list[Case]:
    out = [Case(metric, tool, workload) for workload in WORKLOADS for metric in METRICS
           for tool, builders in TOOLS.items() if metric in builders]
    ig = Regime(explain="integrated_gradients")
    out += [Case("deletion", tool, CNN, Regime(one_feature=True), "one feature per step", SLOW)
            for tool in ("xaiharness", "quantus")]
    out += [Case("max_sensitivity", tool, CNN, ig, "IG explainer", SLOW) for tool in TOOLS]
    return out


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_speed_vs_floor(
    benchmark: Any, case: Case, allocator: dict[str, int], speed_table: list[SpeedRow],
    bench_rounds: int | None,
) -> None:
    if case.metric == "faithfulness_correlation" and case.tool == "xaiharness" and importlib.util.find_spec(
        "harness.metrics.faithfulness_correlation"
    ) is None:
        pytest.skip("harness/metrics/faithfulness_correlation.py does not exist yet")
    workload = WORKLOADS[case.workload]
    bench = Bench(workload)
    call = case.build(bench)
    floors, passes = prepare_floors(bench, case, call)  # a first, untimed call, which also warms up
    rounds = Rounds(floors)
    count, warmup = case.rounds or (workload.rounds, workload.warmup)
    if bench_rounds is not None:
        count, warmup = bench_rounds, 0
    benchmark.pedantic(call, setup=rounds.run_floors, rounds=count, warmup_rounds=warmup)
    metric_times = benchmark_times(benchmark)
    if metric_times is None:
        return
    stats = {name: ratios(metric_times, times[warmup:]) for name, times in rounds.times.items()}
    benchmark.extra_info.update({
        **{f"{name}_{key}": value for name, values in stats.items() for key, value in values.items()},
        "passes": passes, "unit": "explained rows" if case.reattributes else "forward rows",
        "threads": torch.get_num_threads(), "allocator": allocator,
    })
    plain, own = stats["floor"], stats["floor_perturbed"]
    speed_table.append(SpeedRow(
        case.metric, case.tool, case.workload, case.setting, plain["metric_s"],
        plain["floor_s"], passes, plain["ratio_paired"], own["ratio_paired"],
        note="explained rows" if case.reattributes else "",
    ))


def prepare_floors(bench: Bench, case: Case, call: Call) -> tuple[dict[str, Callable[[], None]], int]:
    """Run ``call`` once, recording the rows it sends through the model (or explainer); return the floors
    (``floor``: as many rows of the plain inputs; ``floor_perturbed``: the recorded rows themselves) and
    the row count."""
    if case.reattributes:
        bench.capture = True
        call()
        bench.capture = False
        rows = torch.cat([x for x, _ in bench.explained])
        targets = torch.cat([t for _, t in bench.explained])
        bench.explained.clear()
        explain = bench.plain_explainer(case.regime.explain)
        plain_rows = repeated_rows(bench.x, rows.shape[0])
        plain_targets = repeated_rows(bench.target[:, None], rows.shape[0])[:, 0]
        return {"floor": explain_runner(explain, plain_rows, plain_targets),
                "floor_perturbed": explain_runner(explain, rows, targets)}, rows.shape[0]
    rows = captured_rows(bench.model, call)
    return {"floor": forward_runner(bench.model, repeated_rows(bench.x, rows.shape[0]), CHUNK),
            "floor_perturbed": forward_runner(bench.model, rows, CHUNK)}, rows.shape[0]


def explain_runner(explain: Explainer, rows: Tensor, targets: Tensor) -> Callable[[], None]:
    """The explainer on all ``rows`` in one call (it batches under the run's budget itself)."""

    def run() -> None:
        explain(rows, targets)

    return run


@pytest.mark.parametrize("metric", [m for m in METRICS if m != "faithfulness_correlation"])
def test_attribench(benchmark: Any, metric: str) -> None:
    pytest.skip(ATTRIBENCH_SKIP)
