"""The one place where a case's results become plain Python data (what xdist can send to the controller).

A tensor or numpy scalar in ``user_properties`` crashes an xdist run, so everything goes through
:func:`case_payload`, and only its output enters ``user_properties``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from harness.cache import canonical_json
from harness.cases import Case
from harness.specs import MetricResult
from harness.workspace import Attributions, TrainedModel

PROPERTY = "xaiharness"


@dataclass(frozen=True)
class Timings:
    attribution_seconds: float
    metric_seconds: float
    forward_passes: int
    samples: int

    def plain(self) -> dict[str, float | int]:
        seconds = self.metric_seconds
        return {
            "attribution_seconds": float(self.attribution_seconds),
            "metric_seconds": float(seconds),
            "forward_passes": int(self.forward_passes),
            "samples_per_second": float(self.samples / seconds) if seconds > 0 else math.inf,
        }


def _plain(value: Any) -> Any:
    """Tensors, numpy values and containers of them as lists, floats, ints, strs, bools."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


EXAMPLES = 3
"""Samples per (data set, model, method) kept as example attribution maps for the report's figures."""
EXAMPLE_SIDE = 64
"""Example maps larger than this are average-pooled down to it (the mask max-pooled)."""


def examples(attributions: Attributions) -> dict[str, Any]:
    """The first few inputs, |attribution| maps and masks of a case, as plain (k, h, w) lists.

    Images: channels collapsed (input: mean; attribution: mean |.|; mask: any), large maps pooled to
    ``EXAMPLE_SIDE``. Sequences (N, C, T): a channels x time map, |input| and |attribution| averaged (mask:
    max) over ``EXAMPLE_SIDE`` time bins. Tabular (N, F): a 1 x F strip. Empty for other shapes."""
    x = attributions.x[:EXAMPLES]
    attr = attributions.values[:EXAMPLES]
    mask = attributions.mask[:EXAMPLES].expand(x.shape) if attributions.mask is not None else None
    if x.ndim == 2:
        maps = {"input": x[:, None], "attribution": attr.abs()[:, None]}
        if mask is not None:
            maps["mask"] = mask[:, None].float()
        return {k: _plain(v.float()) for k, v in maps.items()}
    if x.ndim == 3:
        bins = min(EXAMPLE_SIDE, x.shape[-1])
        pool = torch.nn.functional.adaptive_avg_pool1d
        maps = {"input": pool(x.abs().float(), bins), "attribution": pool(attr.abs().float(), bins)}
        if mask is not None:
            maps["mask"] = torch.nn.functional.adaptive_max_pool1d(mask.float(), bins)
        return {k: _plain(v) for k, v in maps.items()}
    if x.ndim != 4:
        return {}
    maps = {"input": x.mean(1), "attribution": attr.abs().mean(1)}
    if mask is not None:
        maps["mask"] = mask.any(1).float()
    side = max(x.shape[-2:])
    if side > EXAMPLE_SIDE:
        size = [max(1, round(d * EXAMPLE_SIDE / side)) for d in x.shape[-2:]]
        maps = {k: (torch.nn.functional.adaptive_max_pool2d if k == "mask" else
                    torch.nn.functional.adaptive_avg_pool2d)(v[:, None].float(), size)[:, 0]
                for k, v in maps.items()}
    return {k: _plain(v.float()) for k, v in maps.items()}


def case_payload(
    case: Case, result: MetricResult, timings: Timings, model: TrainedModel, attributions: Attributions | None,
    device: torch.device,
) -> dict[str, Any]:
    """``attributions`` is None for a metric that uses no attribution method and is not per sample (its
    outputs' first dimension is then e.g. the elimination round); sample_index, label, target are empty."""
    per_sample = attributions is not None
    return {
        "id": case.id,
        "key": case.key(),
        "spec": canonical_json(case.spec()),
        "family": case.family,
        "dataset": case.dataset.key,
        "model": case.model.key,
        "method": case.method.key,
        "metric": case.metric.key,
        "primary": result.primary,
        "higher_is_better": bool(result.higher_is_better),
        "bounds": _plain(result.bounds),
        "info": _plain(result.info),
        "outputs": {name: _plain(value.double()) for name, value in result.outputs.items()},
        "aggregates": {
            name: float(value.double().mean()) for name, value in result.outputs.items() if value.ndim == 1
        },
        "sample_index": _plain(attributions.sample_index) if per_sample else [],
        "label": _plain(attributions.label) if per_sample else [],
        "target": _plain(attributions.target) if per_sample else [],
        "timings": timings.plain(),
        "trained": {
            "key": model.key,
            "train_score": float(model.train_score),
            "test_score": float(model.test_score),
            "train_seconds": float(model.seconds),
            "score_name": model.score_name,
            "test_mae": math.nan if model.test_mae is None else float(model.test_mae),
        },
        "examples": examples(attributions) if per_sample else {},
        "input_shape": list(attributions.x.shape[1:]) if per_sample else [],
        "device": str(device),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
    }
