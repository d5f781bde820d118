"""The attribench statistics sections on hand-made records: tables, skips with their reasons, figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.report.attribench import attribench_sections, group_records
from harness.report.statistics import cles, orient, ranking_alpha
from harness.store import CaseRecord

N = 40


def record(method: str, metric: str, values: np.ndarray, index: np.ndarray | None = None, higher: bool = True,
           dataset: str = "toy", model: str = "mlp", status: str = "passed") -> CaseRecord:
    index = np.arange(len(values)) if index is None else index
    attrs = {"dataset": dataset, "model": model, "method": method, "metric": metric, "primary": "score",
             "higher_is_better": higher, "status": status, "family": "faithfulness"}
    blank = np.zeros(len(index))
    return CaseRecord(attrs, {"score": np.asarray(values, dtype=float)}, np.asarray(index), blank, blank)


def cells(text: str) -> list[list[str]]:
    """Every markdown table row of ``text`` as its stripped cells."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|--")]


def toy_records() -> list[CaseRecord]:
    """Random, a clearly better method and one no better than Random, on a higher-is-better metric and a
    lower-is-better one; the flat method misses 5 samples of the second metric and has a NaN; plus a
    curve-only output that is not per sample."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, N))
    good = base + np.array([[2.0], [-2.0]]) + rng.normal(0, 0.5, size=(2, N))
    flat = base + rng.normal(0, 1.0, size=(2, N))
    flat[0, 3] = np.nan
    return [
        record("random", "auc", base[0]), record("random", "deletion", base[1], higher=False),
        record("good", "auc", good[0]), record("good", "deletion", good[1], higher=False),
        record("flat", "auc", flat[0]),
        record("flat", "deletion", flat[1, 5:], np.arange(5, N), higher=False),
        record("good", "rounds", np.zeros(3), np.arange(0)),
        record("broken", "auc", np.zeros(N), status="failed"),
    ]


def test_grouping_orients_and_skips_outputs_that_are_not_per_sample() -> None:
    (group,) = group_records(toy_records())
    assert group.methods == ["random", "good", "flat"] and group.metrics == ["auc", "deletion"]
    assert "broken" not in group.methods  # failed cases do not count
    assert len(group.skipped) == 1 and "`good` · `rounds`" in group.skipped[0]
    values, total = group.aligned([("random", "deletion"), ("flat", "deletion")])
    assert values.shape == (N - 5, 2) and total == N
    assert np.array_equal(values[:, 0], -toy_records()[1].primary_values[5:])  # lower is better: negated


def test_sections_tables_and_figures(tmp_path: Path) -> None:
    records = toy_records()
    text = "\n".join(attribench_sections(records, tmp_path))
    rows = cells(text)
    assert "## Statistics (attribench)" in text and "### toy × mlp" in text
    assert "`good` · `rounds`" in text  # the skipped output is named
    # tests against Random: the good method significant on both metrics (bold), the flat one on neither
    base, good = (np.array(records[i].primary_values) for i in (0, 2))
    effect = float(np.median(good - base))
    header = next(r for r in rows if r[0] == "method" and "auc" in r)
    good_row = rows[rows.index(header) + 1]
    assert good_row[0] == "good" and good_row[1] == f"**{effect:.3g}**" and good_row[2].startswith("**")
    flat_row = rows[rows.index(header) + 2]
    assert flat_row[0] == "flat" and not any(c.startswith("**") for c in flat_row)
    detail = next(r for r in rows if r[:2] == ["deletion", "flat"])
    assert detail[2] == f"{N - 5} of {N}"  # fewer samples in common: said so
    assert next(r for r in rows if r[:2] == ["auc", "flat"])[2] == f"{N - 1} of {N}"  # one NaN pair dropped
    # Krippendorff's alpha over the samples both metrics' methods share
    auc = np.column_stack([records[i].primary_values for i in (0, 2, 4)])
    assert ["auc", "3", f"{N - 1} of {N}", f"{ranking_alpha(auc):.3g}"] in rows
    # CLES against random, oriented for the lower-is-better metric
    deletion = [orient(records[i].primary_values, False) for i in (3, 1)]
    assert ["good", f"{cles(good, base):.2g}", f"{cles(*deletion):.2g}"] in rows
    assert any(r[:3] == ["auc", "good", "flat"] for r in rows)  # best against runner-up
    # correlation matrix symmetric with a unit diagonal; the convergence table has m = 8 ... n
    corr = [r for r in rows if r[0] in ("auc", "deletion") and len(r) == 3 and r[1] != "good"]
    assert corr[0][1] == "1" and corr[1][2] == "1" and corr[0][2] == corr[1][1]
    assert "m = 8" in text and f"m = {N - 5}" in text and f"m = {N}" in text
    for what in ("vs-random", "metric-correlation", "convergence"):
        name = f"figures/attribench-toy-mlp-{what}.png"
        assert f"]({name})" in text  # linked relative to report.md
        assert (tmp_path / name).stat().st_size > 1000


def test_bh_correction_and_missing_random_are_stated(tmp_path: Path) -> None:
    text = "\n".join(attribench_sections(toy_records(), tmp_path, correction="bh"))
    assert "Benjamini-Hochberg FDR correction" in text
    no_random = [r for r in toy_records() if r.attrs["method"] != "random"]
    text = "\n".join(attribench_sections(no_random, tmp_path))
    assert "No `random` method in this group: the tests against Random are skipped." in text
    assert "No `random` method: CLES against Random skipped." in text
    assert "Krippendorff" in text and "Correlation between metrics" in text  # the rest still runs


def test_too_little_data_is_skipped_with_a_reason(tmp_path: Path) -> None:
    assert attribench_sections([], tmp_path) == []
    per_run = [record("good", "rfe", np.ones(1), np.arange(0), dataset="sym")]
    assert attribench_sections(per_run, tmp_path) == []  # nothing per sample at all: no section
    text = "\n".join(attribench_sections(per_run + toy_records(), tmp_path))
    assert "No per-sample scores, left out: sym × mlp." in text and "### sym × mlp" not in text
    single = [record("good", "auc", np.ones(4))]
    text = "\n".join(attribench_sections(single, tmp_path))
    assert "1 method with per-sample scores: nothing to compare." in text
    tiny = [record("random", "auc", np.array([1.0])), record("good", "auc", np.array([2.0]))]
    text = "\n".join(attribench_sections(tiny, tmp_path))
    assert "– (fewer than 2 samples)" in text
    assert "Fewer than 2 metrics with per-sample scores: no correlation." in text
    tied = [record(m, "auc", np.ones(6)) for m in ("random", "good")]
    assert "– (all tied)" in "\n".join(attribench_sections(tied, tmp_path))


@pytest.mark.parametrize("other_dataset", ["toy", "other"])
def test_one_section_per_data_set_and_model(tmp_path: Path, other_dataset: str) -> None:
    records = toy_records() + [record(m, "auc", np.arange(10.0), dataset=other_dataset, model="cnn")
                               for m in ("random", "good")]
    text = "\n".join(attribench_sections(records, tmp_path))
    assert "### toy × mlp" in text and f"### {other_dataset} × cnn" in text
