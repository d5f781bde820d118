"""The results file and the report, from hand-made payloads (no models involved)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from harness import load_results
from harness.report import write_report
from harness.report.figures import example_grid, mask_box
from harness.store import read_run, recorded_keys, write_case, write_environment


def payload(method: str, metric: str, values: list[float], higher: bool, key: str = "k") -> dict[str, Any]:
    n = len(values)
    return {
        "id": f"digits-mlp-{method}-{metric}", "key": key, "spec": "{}", "family": "faithfulness",
        "dataset": "digits", "model": "mlp", "method": method, "metric": metric, "primary": "auc",
        "higher_is_better": higher, "bounds": {"auc": [0.0, 1.0]}, "info": {"k": [0, 1]},
        "outputs": {"auc": values, "curve_softmax": [[v, v] for v in values]},
        "aggregates": {"auc": float(np.mean(values))},
        "sample_index": list(range(n)), "label": [1] * n, "target": [1] * n,
        "timings": {"attribution_seconds": 0.5, "metric_seconds": 0.25, "forward_passes": 2 * n,
                    "samples_per_second": n / 0.25},
        "trained": {"key": "m", "train_score": 0.99, "test_score": 0.9, "train_seconds": 1.0},
        "device": "cpu", "worker": "main",
    }


@pytest.fixture
def run(tmp_path: Path) -> Path:
    path = tmp_path / "results.h5"
    order = {"datasets": ["digits"], "models": ["mlp"], "methods": ["saliency", "random"],
             "metrics": ["deletion_morf", "deletion_lerf"]}
    write_environment(path, {"run": "r1", "suite": "smoke", "settings": json.dumps({"seed": 0, "samples": 4}),
                             "order": json.dumps(order), "torch": "2.11.0"})
    write_case(path, payload("random", "deletion_morf", [0.5, 0.6, 0.7, 0.8], higher=False), "passed")
    write_case(path, payload("saliency", "deletion_morf", [0.1, 0.2, 0.3, 0.4], higher=False), "passed")
    write_case(path, payload("random", "deletion_lerf", [0.5, 0.5, 0.5, 0.5], higher=True), "passed")
    write_case(path, payload("saliency", "deletion_lerf", [0.9, 0.9, 0.9, 0.9], higher=True), "passed")
    write_case(path, payload("saliency", "broken", [float("nan")] * 4, higher=True), "failed", "auc: not finite")
    return tmp_path


def test_layout_round_trips(run: Path) -> None:
    env, records = read_run(run)
    assert env["format_version"] == 2 and env["torch"] == "2.11.0"
    by_id = {r.attrs["id"]: r for r in records}
    record = by_id["digits-mlp-saliency-deletion_morf"]
    np.testing.assert_array_equal(record.outputs["auc"], [0.1, 0.2, 0.3, 0.4])
    assert record.outputs["curve_softmax"].shape == (4, 2) and record.outputs["auc"].dtype == np.float64
    assert record.attrs["forward_passes"] == 8 and record.attrs["model_test_score"] == 0.9
    assert json.loads(record.attrs["aggregates"]) == {"auc": pytest.approx(0.25)}
    assert by_id["digits-mlp-saliency-broken"].attrs["message"] == "auc: not finite"
    assert recorded_keys(run / "results.h5") == {i: "k" for i in by_id if "broken" not in i}


def test_rewriting_a_case_replaces_it(run: Path) -> None:
    write_case(run / "results.h5", payload("random", "deletion_morf", [0.0] * 3, higher=False, key="k2"), "passed")
    _, records = read_run(run)
    record = next(r for r in records if r.attrs["id"] == "digits-mlp-random-deletion_morf")
    assert record.attrs["key"] == "k2" and record.outputs["auc"].tolist() == [0.0] * 3
    assert len(records) == 5


def test_report_tables(run: Path) -> None:
    text = write_report(run).read_text()
    assert "## digits × mlp" in text and "train accuracy 0.990, test accuracy 0.900" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header = lines[0]
    assert header.index("deletion_morf ↓") < header.index("deletion_lerf ↑")  # suite order, not alphabetical
    saliency = next(ln for ln in lines if ln.startswith("| saliency"))
    random = next(ln for ln in lines if ln.startswith("| random"))
    assert lines.index(saliency) < lines.index(random)
    assert "**0.25**" in saliency and "**0.9**" in saliency  # lower-is-better and higher-is-better winners
    assert "**" not in random
    assert "0.65 [0.5" in random  # mean 0.65 with a CI starting at or above the minimum value
    assert "## Failed cases" in text and "`digits-mlp-saliency-broken`: auc: not finite" in text
    assert "## Methods and metrics" in text


def test_load_results_frame(run: Path) -> None:
    frame = load_results(run)
    assert set(frame.columns) >= {"id", "method", "metric", "sample", "output", "value", "primary"}
    primary = frame[frame.primary & (frame.status == "passed")]
    table = primary.pivot_table(index="method", columns="metric", values="value")
    assert table.loc["saliency", "deletion_morf"] == pytest.approx(0.25)
    assert table.loc["random", "deletion_lerf"] == pytest.approx(0.5)
    assert "curve_softmax" not in set(frame.output)


def test_cli_regenerates_report(run: Path) -> None:
    (run / "report.md").unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "harness", "report", str(run)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (run / "report.md").exists() and "## digits × mlp" in (run / "report.md").read_text()
    missing = subprocess.run([sys.executable, "-m", "harness", "report", str(run / "nope")], capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 2 and "no results file" in missing.stderr


def test_partial_file_is_readable_after_each_case(tmp_path: Path) -> None:
    path = tmp_path / "results.h5"
    write_environment(path, {"run": "x"})
    write_case(path, payload("saliency", "deletion_morf", [0.1], higher=False), "passed")
    with h5py.File(path, "r") as f:  # closed and flushed: readable by another process right away
        assert list(f["cases"]) == ["digits-mlp-saliency-deletion_morf"]


def test_mask_box_and_example_grid(tmp_path: Path) -> None:
    mask = np.zeros((6, 7))
    mask[2:4, 1:5] = 1
    assert mask_box(mask) == (2, 1, 2, 4)
    assert mask_box(np.zeros((3, 3))) is None
    rng = np.random.default_rng(0)
    maps = {"input": rng.random((2, 6, 7)), "attribution": rng.random((2, 6, 7)), "mask": np.stack([mask, mask])}
    out = example_grid({"saliency": maps, "random": maps}, ["random", "saliency", "absent"], tmp_path / "f.png", "t")
    assert out == tmp_path / "f.png" and out.stat().st_size > 1000
    assert example_grid({}, ["saliency"], tmp_path / "g.png", "t") is None
