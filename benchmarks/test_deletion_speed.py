"""Deletion (100 steps, attribench's max_fraction = 0.15) against its forward-pass floor, on the CPU.

``floor``: the same number of rows (samples x steps) of the same smooth images (each sample repeated
``steps`` times, as the metric's rows come) through the same model in the same batch size under
``torch.inference_mode()``.

``floor_perturbed``: the same forward passes over the metric's own perturbed rows (captured once by a
forward hook). A CPU forward pass depends on the data: max pooling branches, and a run of identical rows
trains the branch predictor, so masked rows cost more than the clean ones. metric / floor_perturbed is the
implementation's own overhead (masks, sorting, bookkeeping); floor_perturbed / floor is the data's share.

Each round runs both floors (in pytest-benchmark's untimed ``setup``, timed here) and then the metric, so
they alternate; medians, ratios of medians and of minima, and medians of per-round ratios go to
``extra_info`` and the summary table. Allocator and thread settings: see ``conftest.py``. Run with
``make benchmarks ARGS='-k deletion_vs_floor'``. The comparison with peers is in ``test_peer_speed.py``.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

import harness.metrics  # noqa: F401  (registers the metrics)
from benchmarks.common import (
    WORKLOADS,
    Rounds,
    SpeedRow,
    benchmark_times,
    captured_rows,
    forward_runner,
    input_x_gradient,
    model_and_inputs,
    ratios,
)
from harness.specs import METRICS, MetricInputs, MetricResult, RunContext

STEPS = 100
PARAMS = {"steps": STEPS, "max_fraction": 0.15, "order": "morf", "masker": "constant"}
SETTINGS = {"cnn_16x1x28x28": (20, 3), "resnet18_8x3x64x64": (3, 0)}  # (rounds, warm-up rounds)


@pytest.mark.parametrize("setting_name", list(SETTINGS))
def test_deletion_vs_floor(
    benchmark: Any, setting_name: str, allocator: dict[str, int], speed_table: list[SpeedRow],
    bench_rounds: int | None,
) -> None:
    assert setting_name in WORKLOADS
    model, x = model_and_inputs(setting_name)
    ctx = RunContext(device=x.device, seed=0, batch_size=256)
    with torch.no_grad():
        target = model(x).argmax(1)
    inputs = MetricInputs(model, x, target, input_x_gradient(model, x, target))
    compute = METRICS.get("deletion").compute

    def metric() -> MetricResult:
        return compute(inputs, ctx, **PARAMS)

    chunk, perturbed = ctx.rows_per_chunk(x[0].numel(), x.element_size()), captured_rows(model, metric)
    plain_rows = x.repeat_interleave(STEPS, dim=0).contiguous()
    assert perturbed.shape == plain_rows.shape and torch.equal(perturbed[::STEPS], x)  # k = 0: x itself
    rounds = Rounds({name: forward_runner(model, rows, chunk) for name, rows in
                     (("floor", plain_rows), ("floor_perturbed", perturbed))})
    count, warmup = SETTINGS[setting_name] if bench_rounds is None else (bench_rounds, 0)
    result = benchmark.pedantic(metric, setup=rounds.run_floors, rounds=count, warmup_rounds=warmup)
    assert result.problems() == [] and result.forward_passes == plain_rows.shape[0]
    metric_times = benchmark_times(benchmark)
    if metric_times is None:
        return
    info: dict[str, Any] = {"chunk_rows": chunk, "allocator": allocator, "threads": torch.get_num_threads(),
                            **PARAMS}
    for name, times in rounds.times.items():
        info |= {f"{name}_{key}": value for key, value in ratios(metric_times, times[warmup:]).items()}
    benchmark.extra_info.update(info)
    plain, own = (ratios(metric_times, rounds.times[name][warmup:]) for name in ("floor", "floor_perturbed"))
    speed_table.append(SpeedRow(
        "deletion", "xaiharness", setting_name, "100 steps to 15% (attribench)", plain["metric_s"],
        plain["floor_s"], plain_rows.shape[0], plain["ratio_paired"], own["ratio_paired"],
    ))
