"""The results file: ``reports/<run>/results.h5``, written only by the controller, one case at a time.

Layout (``FORMAT_VERSION`` 2)::

    /                          attrs: format_version, run, created, suite, suite_toml, seed, and the
                                      environment (python, torch, captum, numpy, platform, cpu, cuda, ...)
    /cases/<case id>/          one group per case (id = dataset-model-method-metric)
        attrs: id, key (hash of the full spec), spec (JSON), family, dataset, model, method, metric,
               status (passed | failed), message, primary, higher_is_better, bounds (JSON), aggregates (JSON:
               the mean of every per-sample scalar output),
               attribution_seconds, metric_seconds, forward_passes, samples_per_second, device, worker,
               model_key, model_score_name (accuracy | r2), model_train_score, model_test_score,
               model_train_seconds, info (JSON),
               recorded_at
        sample_index  (n,)     int64, index into the data set's test split
        label (n,)             int64 true class (classification) or float64 true value (regression)
        target (n,)            int64, the class (or, for regression, output 0) attributed / scored
                               (all three empty for a metric that is not per sample, e.g. RFE rounds)
        outputs/<name> (n, ...) float64, one per metric output (e.g. auc (n,), curve_softmax (n, steps))
    /examples/<dataset-model-method>/   written once per triple, for the report's figures
        input, attribution[, mask] (k, h, w) float32 (``harness.recorder.examples``): images: channel mean
        of x, channel mean of |attribution|, mask; sequences: channels x time bins of |x|, |attribution|,
        mask; tabular: 1 x F strips

The file is opened, appended and closed for every case, so a run that is interrupted keeps every case that
finished; a case recorded again (same id) replaces the old group.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 2
SCALAR_ATTRS = (
    "id", "key", "family", "dataset", "model", "method", "metric", "primary", "higher_is_better", "device",
    "worker",
)


def write_environment(path: Path, attrs: Mapping[str, Any]) -> None:
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in attrs.items():
            f.attrs[key] = _attr(value)
        f.require_group("cases")


def _attr(value: Any) -> Any:
    """A value h5py stores as an attribute: plain bool/int/float/str (str subclasses such as torch's
    version string become str), anything else as JSON."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return json.dumps(value)


def write_case(path: Path, payload: Mapping[str, Any], status: str, message: str = "") -> None:
    """Append one case (a payload from :func:`harness.recorder.case_payload`) and flush it to disk."""
    with h5py.File(path, "a") as f:
        cases = f.require_group("cases")
        if payload["id"] in cases:
            del cases[payload["id"]]
        group = cases.create_group(payload["id"])
        for key in SCALAR_ATTRS:
            group.attrs[key] = _attr(payload[key])
        group.attrs["spec"] = payload["spec"]
        group.attrs["status"] = status
        group.attrs["message"] = message
        group.attrs["bounds"] = json.dumps(payload["bounds"])
        group.attrs["info"] = json.dumps(payload["info"])
        group.attrs["aggregates"] = json.dumps(payload["aggregates"])
        group.attrs["input_shape"] = json.dumps(payload.get("input_shape", []))  # one sample's; [] unknown
        group.attrs["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key, value in {**payload["timings"], **{f"model_{k}": v for k, v in payload["trained"].items()}}.items():
            group.attrs[key] = _attr(value)
        for key in ("sample_index", "target"):
            group.create_dataset(key, data=np.asarray(payload[key], dtype=np.int64))
        label = np.asarray(payload["label"])
        group.create_dataset("label", data=label.astype(np.float64 if label.dtype.kind == "f" else np.int64))
        outputs = group.create_group("outputs")
        for name, values in payload["outputs"].items():
            outputs.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        _write_examples(f, payload)
        f.flush()


def _write_examples(f: h5py.File, payload: Mapping[str, Any]) -> None:
    """Example maps, once per (data set, model, method): the same for every metric of that triple."""
    name = f"{payload['dataset']}-{payload['model']}-{payload['method']}"
    if not payload.get("examples") or name in f.require_group("examples"):
        return
    group = f["examples"].create_group(name)
    for key, values in payload["examples"].items():
        group.create_dataset(key, data=np.asarray(values, dtype=np.float32))


def read_examples(path: Path | str) -> dict[str, dict[str, np.ndarray]]:
    """``{dataset-model-method: {input, attribution[, mask]: (k, h, w)}}`` of a run."""
    with h5py.File(results_path(path), "r") as f:
        return {name: {k: d[()] for k, d in g.items()} for name, g in f.get("examples", {}).items()}


def recorded_keys(path: Path) -> dict[str, str]:
    """``{case id: spec key}`` of every case recorded as passed (what ``--resume`` skips)."""
    if not path.exists():
        return {}
    with h5py.File(path, "r") as f:
        cases = f.get("cases", {})
        return {name: str(g.attrs["key"]) for name, g in cases.items() if g.attrs.get("status") == "passed"}


@dataclass(frozen=True)
class CaseRecord:
    attrs: dict[str, Any]
    outputs: dict[str, np.ndarray]
    sample_index: np.ndarray
    label: np.ndarray
    target: np.ndarray

    @property
    def primary_values(self) -> np.ndarray:
        return self.outputs[self.attrs["primary"]]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_run(path: Path | str) -> tuple[dict[str, Any], list[CaseRecord]]:
    """The environment attributes and every case of a results file (or of a run directory)."""
    path = results_path(path)
    with h5py.File(path, "r") as f:
        env = {k: _plain(v) for k, v in f.attrs.items()}
        records = []
        for name in f.get("cases", {}):
            group = f["cases"][name]
            records.append(CaseRecord(
                attrs={k: _plain(v) for k, v in group.attrs.items()},
                outputs={k: d[()] for k, d in group["outputs"].items()},
                sample_index=group["sample_index"][()], label=group["label"][()], target=group["target"][()],
            ))
    return env, records


def results_path(path: Path | str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "results.h5"
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path} (expected a run directory or its results.h5)")
    return path
