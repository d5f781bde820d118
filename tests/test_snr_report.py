"""The Sensitivity-n SNR study (harness.report.snr): the SNR against hand-checked values, NumPy and the pandas
computation of attribench's study script; the report section on hand-made records; the verdict's outcomes."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from harness.cache import Cache, save_tensors
from harness.report import write_report
from harness.report.snr import (
    FAILS,
    FIGURE,
    HOLDS,
    UNTESTABLE,
    ImageSize,
    image_sizes,
    sample_snr,
    snr_section,
    study_cells,
    verdict,
)
from harness.store import CaseRecord, write_case, write_environment

N, R = 12, 10


def data_spec(dataset: str) -> dict:
    return {"name": dataset, "params": {}, "seed": 0, "version": 1}


def record(dataset: str, method: str, metric: str, registered: str, repeats: np.ndarray,
           status: str = "passed") -> CaseRecord:
    spec = {"model": {"dataset": data_spec(dataset)}, "metric": {"name": registered, "params": {}}}
    attrs = {"dataset": dataset, "model": "cnn", "method": method, "metric": metric, "status": status,
             "primary": "sensitivity_n", "higher_is_better": True, "spec": json.dumps(spec)}
    outputs = {"sensitivity_n": repeats.mean(1), "repeats": repeats}
    index = np.arange(repeats.shape[0])
    return CaseRecord(attrs, outputs, index, index, index)


def noisy(mean: float, sd: float, seed: int) -> np.ndarray:
    """(N, R) scores around ``mean`` with spread ``sd``: SNR about (mean / sd)²."""
    return mean + sd * np.random.default_rng(seed).normal(size=(N, R))


def study(sizes: dict[str, float]) -> list[CaseRecord]:
    """Two methods per data set; the segment version's noise shrinks relative to the pixel's by the factor."""
    out = []
    for k, (dataset, factor) in enumerate(sizes.items()):
        for m, method in enumerate(("random", "saliency")):
            pixel = noisy(0.3, 0.1, 10 * k + m)
            out.append(record(dataset, method, "sensitivity_n_snr", "sensitivity_n", pixel))
            out.append(record(dataset, method, "seg_sensitivity_n_snr", "seg_sensitivity_n",
                              noisy(0.3, 0.1 / factor, 10 * k + m + 5)))
    return out


def cache_shapes(root: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    for dataset, shape in shapes.items():
        entry = Cache(root).entry("datasets", data_spec(dataset))
        entry.mkdir(parents=True)
        save_tensors(entry / "data.pt", {"x_test": torch.zeros(2, *shape)})


def test_snr_hand_checked() -> None:
    # [1, 2, 3]: mean 2, variance (ddof 1) 1 -> 4; [1, 3]-like spread [0, 2, 4]: mean 2, variance 4 -> 1;
    # constant scores: variance 0, no SNR; mean 0 with spread: SNR 0
    repeats = np.array([[1.0, 2.0, 3.0], [0.0, 2.0, 4.0], [0.5, 0.5, 0.5], [-1.0, 0.0, 1.0]])
    np.testing.assert_allclose(sample_snr(repeats), [4.0, 1.0, np.nan, 0.0])


def test_snr_matches_numpy_and_attribench_pandas() -> None:
    rng = np.random.default_rng(1)
    repeats = rng.normal(0.2, 0.3, size=(7, 5))
    expected = np.mean(repeats, axis=1) ** 2 / np.var(repeats, axis=1, ddof=1)
    np.testing.assert_allclose(sample_snr(repeats), expected)
    # attribench's scripts/sens_n_variance/plot.py: a row per (iteration, sample), groupby sample, pandas std
    index = pd.Index(np.tile(np.arange(7), 5), name="Sample")
    frame = pd.DataFrame({"method": repeats.T.ravel()}, index=index)
    mu, sigma = frame.groupby("Sample").mean()["method"], frame.groupby("Sample").std()["method"]
    np.testing.assert_allclose(sample_snr(repeats), (mu**2 / sigma**2).to_numpy())


def test_snr_needs_two_repeats() -> None:
    with pytest.raises(ValueError, match="repeats >= 2"):
        sample_snr(np.ones((3, 1)))


def test_cells_by_registered_metric_not_instance_name() -> None:
    records = [
        record("d", "saliency", "pix", "sensitivity_n", noisy(0.3, 0.1, 0)),
        record("d", "saliency", "seg", "seg_sensitivity_n", noisy(0.3, 0.1, 1)),
        record("d", "saliency", "sensitivity_n_snr", "irof", noisy(0.3, 0.1, 2)),  # named like it, is not
        record("d", "saliency", "once", "sensitivity_n", noisy(0.3, 0.1, 3)[:, :1]),  # one repeat: no SNR
        record("d", "random", "pix", "sensitivity_n", noisy(0.3, 0.1, 4), status="failed"),
    ]
    cells = study_cells(records)
    assert [(c.metric, c.kind, c.repeats) for c in cells] == [("pix", "pixel", R), ("seg", "segment", R)]


def test_image_size_from_cache_then_examples(tmp_path: Path) -> None:
    cache_shapes(tmp_path / "cache", {"big": (3, 64, 48)})
    with h5py.File(tmp_path / "results.h5", "w") as f:  # the recorder's example maps (k, h, w): no channels
        f.create_dataset("examples/small-cnn-saliency/input", data=np.zeros((3, 8, 8), dtype=np.float32))
    records = [record(d, "saliency", "pix", "sensitivity_n", noisy(0.3, 0.1, 0))
               for d in ("big", "small", "none")]
    sizes = image_sizes(records, tmp_path, tmp_path / "cache")
    assert sizes == {"big": ImageSize(64, 48, 3), "small": ImageSize(8, 8), "none": ImageSize()}
    assert str(sizes["big"]) == "64×48, 3 channels" and str(sizes["small"]) == "8×8, ? channels"
    assert sizes["none"].pixels is None and str(sizes["none"]) == "size unknown"


def test_image_size_recorded_with_the_case_comes_first(tmp_path: Path) -> None:
    cache_shapes(tmp_path / "cache", {"big": (3, 64, 48)})
    stored = record("big", "saliency", "pix", "sensitivity_n", noisy(0.3, 0.1, 0))
    stored.attrs["input_shape"] = json.dumps([1, 28, 20])
    assert image_sizes([stored], tmp_path, tmp_path / "cache") == {"big": ImageSize(28, 20, 1)}


def test_verdict_holds() -> None:
    result = verdict([("a", 64, 10.0, 10.0), ("b", 784, 10.0, 30.0), ("c", 4096, 5.0, 50.0)])
    assert result.outcome == HOLDS and "ρ = 1.00" in result.line


def test_verdict_does_not_hold() -> None:
    lower = verdict([("a", 64, 10.0, 20.0), ("b", 4096, 10.0, 5.0)])  # segment below pixel on the largest
    assert lower.outcome == FAILS and "not above" in lower.line and "does not grow" in lower.line
    shrinking = verdict([("a", 64, 10.0, 80.0), ("b", 784, 10.0, 40.0), ("c", 4096, 10.0, 20.0)])
    assert shrinking.outcome == FAILS and "segment SNR above" in shrinking.line
    assert "does not grow" in shrinking.line
    flat = verdict([("a", 64, 10.0, 20.0), ("b", 4096, 10.0, 20.0)])  # equal gaps: ρ undefined, no growth
    assert flat.outcome == FAILS and "ρ = nan" in flat.line


def test_verdict_not_testable() -> None:
    assert verdict([("a", 784, 10.0, 30.0), ("b", 784, 10.0, 40.0)]).outcome == UNTESTABLE  # one size
    assert verdict([("a", None, 10.0, 30.0), ("b", 4096, 10.0, 40.0)]).outcome == UNTESTABLE  # size unknown
    assert verdict([("a", 64, np.nan, 30.0), ("b", 4096, 10.0, 40.0)]).outcome == UNTESTABLE  # no pixel SNR
    assert verdict([]).outcome == UNTESTABLE


def test_section_renders_with_figure(tmp_path: Path) -> None:
    cache_shapes(tmp_path / "cache", {"small": (1, 8, 8), "large": (1, 64, 64)})
    records = study({"small": 1.0, "large": 4.0})
    records[0].outputs["repeats"][2] = 0.25  # one sample with constant scores: skipped and counted
    text = "\n".join(snr_section(records, tmp_path, tmp_path / "cache"))
    assert "## Sensitivity-n SNR (attribench)" in text
    assert "### small (8×8, 1 channel) × cnn" in text and "### large (64×64, 1 channel) × cnn" in text
    assert "(11 of 12)" in text  # random's pixel SNR on small
    assert f"**Verdict: the finding {HOLDS}**" in text
    assert (tmp_path / FIGURE).stat().st_size > 0
    summary = text[text.index("### Summary"):]
    assert summary.index("small × cnn") < summary.index("large × cnn")  # smallest image first


def test_no_section_without_repeated_cases(tmp_path: Path) -> None:
    once = [record("d", "saliency", "pix", "sensitivity_n", noisy(0.3, 0.1, 0)[:, :1])]
    assert snr_section(once, tmp_path, tmp_path) == []
    assert not (tmp_path / FIGURE).exists()


def test_write_report_includes_the_section(tmp_path: Path) -> None:
    """The call site in harness.report.markdown.write_report, through a results file."""
    path = tmp_path / "results.h5"
    write_environment(path, {"run": "r", "suite": "snr", "settings": json.dumps({"seed": 0})})
    for rec in study({"digits": 1.0}):
        a = rec.attrs
        write_case(path, {
            "id": f"{a['dataset']}-cnn-{a['method']}-{a['metric']}", "key": "k", "spec": a["spec"],
            "family": "faithfulness", "dataset": a["dataset"], "model": "cnn", "method": a["method"],
            "metric": a["metric"], "primary": "sensitivity_n", "higher_is_better": True, "bounds": {},
            "info": {},
            "outputs": {k: v.tolist() for k, v in rec.outputs.items()}, "aggregates": {},
            "sample_index": list(range(N)), "label": [0] * N, "target": [0] * N,
            "timings": {"attribution_seconds": 0.1, "metric_seconds": 0.1, "forward_passes": 1,
                        "samples_per_second": 1.0},
            "trained": {"key": "m", "train_score": 1.0, "test_score": 1.0, "train_seconds": 1.0},
            "device": "cpu", "worker": "main",
        }, "passed")
    text = write_report(tmp_path).read_text()
    assert "## Sensitivity-n SNR (attribench)" in text and f"**Verdict: {UNTESTABLE}**" in text
    assert text.index("## Sensitivity-n SNR") < text.index("## Methods and metrics")
