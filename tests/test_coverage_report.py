"""The coverage report sections (harness.report.coverage) on hand-made records: table numbers checked by hand,
the RQ1–RQ3 verdicts and the Reproduction paragraph on constructed cases, the figures, the empty section, and
the report end to end through a results file."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.report import write_report
from harness.report.coverage import coverage_sections, direction, number, pruning_verdict, rising
from harness.store import CaseRecord, write_case, write_environment

CRITERIA = ["nc", "kmnc", "tknp"]


def record(registered: str, info: dict[str, Any], outputs: dict[str, Any], *, method: str = "none",
           metric: str = "", dataset: str = "mnist", status: str = "passed") -> CaseRecord:
    """A CaseRecord as read_run returns it: spec and info as JSON strings, outputs as float64 arrays."""
    spec = {"method": {"name": method, "params": {}}, "metric": {"name": registered, "params": {}}}
    attrs = {"dataset": dataset, "model": "lenet", "method": method, "metric": metric or registered,
             "family": "coverage", "status": status, "primary": next(iter(outputs)), "higher_is_better": True,
             "info": json.dumps(info), "spec": json.dumps(spec)}
    index = np.arange(0)
    return CaseRecord(attrs, {k: np.asarray(v, dtype=np.float64) for k, v in outputs.items()}, index, index, index)


def plain(criterion: str, coverage: float, ratio: float, figures: dict[str, float] | None = None,
          **kw: Any) -> CaseRecord:
    info = {"criterion": criterion, "figures": {"coverage": coverage, "ratio": ratio, **(figures or {})},
            "test_inputs": 200, "shards": 2}
    outputs = {"coverage": [coverage], "ratio": [ratio], "build_seconds": [0.25], "update_seconds": [0.5],
               "throughput": [400.0 if criterion != "nc" else 12345.6]}
    return record("coverage", info, outputs, metric=kw.pop("metric", f"cov_{criterion}"), **kw)


def pruning(attributor: str, drop: list[float], random: list[list[float]], ns: list[int] | None = None,
            **kw: Any) -> CaseRecord:
    ns = ns or [6, 10]
    excess = float(np.mean(np.asarray(drop) - np.mean(random, axis=0)))
    info = {"ns": ns, "attributor": attributor, "random_draws": len(random)}
    return record("coverage_pruning", info, {"excess": [excess], "drop": [drop], "random_drop": random,
                                             "clean_accuracy": [0.98]}, metric=f"prune_{attributor}", **kw)


def diversity(method: str, important: list[float], random: list[float], **kw: Any) -> CaseRecord:
    i, r = np.asarray(important), np.asarray(random)
    wins = (i > r) + 0.5 * (i == r)
    return record("coverage_diversity", {"criteria": CRITERIA[:len(i)]},
                  {"wins": wins, "important": i, "random": r}, method=method, metric="diversity", **kw)


def adversarial(attack: str, change: list[list[float]], **kw: Any) -> CaseRecord:
    change_ = np.asarray(change)
    clean = np.full((len(change_), 1), 0.5)
    info = {"criteria": CRITERIA[:len(change_)], "attack": attack, "shares": [0.01, 0.05, 0.1][:change_.shape[1]],
            "replaced": [1, 5, 8][:change_.shape[1]], "samples": 100, "successful": 8}
    return record("coverage_adversarial", info, {"rises": change_[:, -1] > 0, "coverage": np.hstack(
        [clean, clean * (1 + change_)]), "change": change_}, metric=f"adv_{attack}", **kw)


def evenness(pearson: list[list[float]], undefined: int) -> CaseRecord:
    r = np.asarray(pearson)
    info = {"criteria": CRITERIA[:len(r)], "sizes": [100, 500], "draws": 5, "undefined": undefined}
    return record("coverage_evenness", info, {"mean_r": r.mean(1), "pearson": r}, metric="evenness")


def cells(lines: list[str], first: str, after: str = "") -> list[str]:
    """The cells of the first table row starting with ``| first`` (after the line containing ``after``)."""
    lines = "\n".join(lines).splitlines()
    start = next(i for i, ln in enumerate(lines) if after in ln) if after else 0
    row = next(ln for ln in lines[start:] if ln.startswith(f"| {first} "))
    return [c.strip() for c in row.strip("|").split("|")]


def test_coverage_and_cost_tables() -> None:
    lines = coverage_sections([plain("nc", 0.625, 0.625), plain("tknp", 37.0, 0.185, {"patterns_per_input": 0.5})],
                              Path("."))
    text = "\n".join(lines)
    assert "## Coverage (DeepImportance RQ1–RQ5)" in text and "### mnist × lenet" in text
    assert cells(lines, "nc") == ["nc", "cov_nc", "200", "0.625", "0.625", "–"]
    assert cells(lines, "tknp") == ["tknp", "cov_tknp", "200", "37", "0.185", "patterns_per_input 0.5"]
    assert cells(lines, "nc", "RQ5, cost") == ["nc", "cov_nc", "0.625", "0.625", "0.25", "0.5", "12,346"]
    assert cells(lines, "tknp", "RQ5, cost")[-1] == "400"
    assert "**Reproduction.**" not in text  # no RQ1-RQ3 records: nothing to reproduce


def test_pruning_table_verdict_and_figure(tmp_path: Path) -> None:
    # random draws per N: (0.01, 0.03, 0.02) -> mean 0.02, sd 0.01; (0.02, 0.04, 0.03) -> 0.03, 0.01
    random = [[0.01, 0.02], [0.03, 0.04], [0.02, 0.03]]
    assert statistics.stdev([0.01, 0.03, 0.02]) == pytest.approx(0.01)
    records = [pruning("layer_conductance", [0.05, 0.2], random),
               pruning("layer_activation", [0.05, 0.035], random),  # 0.035 < 0.03 + 0.01 at N = 10
               pruning("layer_activation", [0.0, 0.0], random, ns=[6, 20])]
    lines = coverage_sections(records, tmp_path)
    text = "\n".join(lines)
    row = cells(lines, "layer_conductance")
    assert row == ["layer_conductance", "0.980", "0.050 vs 0.020 ± 0.010", "0.200 vs 0.030 ± 0.010", "",
                   "hurts more than random"]
    assert cells(lines, "layer_activation · prune_layer_activation")[-1] == "no (1 of 2 N)"
    assert "| N = 6 " in text and "| N = 20 " in text  # the union of the Ns, in order
    assert (tmp_path / "figures" / "coverage-pruning-mnist-lenet.png").stat().st_size > 1000
    assert "![RQ1 pruning, mnist × lenet](figures/coverage-pruning-mnist-lenet.png)" in text
    assert ("**Reproduction.** RQ1, pruning the attributor's top-N neurons hurts accuracy more than random at "
            "every N: held partly for 1 of 3 attributors (layer_conductance).") in text


def test_pruning_verdict_hand_checked() -> None:
    random = np.array([[0.1, 0.2], [0.3, 0.2]])  # mean (0.2, 0.2), sd (0.1414, 0)
    assert pruning_verdict(np.array([0.35, 0.21]), random) == (2, 2)
    assert pruning_verdict(np.array([0.34, 0.2]), random) == (0, 2)  # 0.34 < 0.3414; 0.2 not above 0.2
    assert pruning_verdict(np.array([[0.5, 0.5]]), random[:1]) == (2, 2)  # one draw: sd 0, strict


def test_diversity_bold_counts_and_reproduction(tmp_path: Path) -> None:
    records = [diversity("saliency", [0.6, 0.3, 0.2], [0.5, 0.4, 0.2]),
               diversity("integrated_gradients", [0.7, 0.5, 0.3], [0.5, 0.4, 0.2])]
    lines = coverage_sections(records, tmp_path)
    text = "\n".join(lines)
    assert cells(lines, "nc") == ["nc", "**0.6** vs 0.5", "**0.7** vs 0.5"]
    assert cells(lines, "kmnc") == ["kmnc", "0.3 vs **0.4**", "**0.5** vs 0.4"]
    assert cells(lines, "tknp") == ["tknp", "0.2 vs 0.2", "**0.3** vs 0.2"]  # a tie: neither bold
    assert cells(lines, "U_I > U_R") == ["U_I > U_R", "1 of 3", "3 of 3"]
    assert ("RQ2, noise on important pixels covers more than noise on random pixels: held partly (U_I > U_R on 4 "
            "of 6 criterion × method pairs, U_I < U_R on 1, ties 1; methods with U_I > U_R on more than half "
            "their criteria: 1 of 2 (integrated_gradients))") in text
    assert not (tmp_path / "figures").exists()  # RQ2 has no figure


def test_adversarial_tables_verdicts_and_figure(tmp_path: Path) -> None:
    records = [adversarial("fgsm", [[0.1, 0.2, 0.2], [0.1, 0.05, 0.2], [0.0, 0.0, 0.0]]),  # ties, dip, flat
               adversarial("pgd", [[-0.1, 0.1, 0.2], [0.0, 0.0, 0.3], [0.1, 0.2, 0.3]])]  # below clean first
    lines = coverage_sections(records, tmp_path)
    text = "\n".join(lines)
    assert cells(lines, "nc", "**fgsm**") == ["nc", "0.5", "+0.1", "+0.2", "+0.2", "rising"]
    assert cells(lines, "kmnc", "**fgsm**")[-1] == "no" and cells(lines, "tknp", "**fgsm**")[-1] == "no"
    assert cells(lines, "nc", "**pgd**")[-1] == "no" and cells(lines, "kmnc", "**pgd**")[-1] == "rising"
    assert cells(lines, "criterion") == ["criterion", "clean", "1%", "5%", "10%", "verdict"]
    assert cells(lines, "tknp", "**fgsm**")[2:5] == ["0", "0", "0"]
    assert ("**fgsm**: 100 correctly classified inputs, 8 successful adversarial examples, replaced per share: "
            "1, 5, 8; rising: 1 of 3 (nc).") in text
    assert ("RQ3, coverage rises with the adversarial share: held partly (rising on 3 of 6 criterion × attack "
            "curves: fgsm 1 of 3, pgd 2 of 3)") in text
    assert (tmp_path / "figures" / "coverage-adversarial-mnist-lenet.png").stat().st_size > 1000


def test_rising_hand_checked() -> None:
    assert rising(np.array([0.1, 0.2, 0.2])) and rising(np.array([0.0, 0.0, 0.3]))
    assert not rising(np.array([0.1, 0.05, 0.2]))  # a decrease
    assert not rising(np.array([0.0, 0.0, 0.0]))  # never above clean
    assert not rising(np.array([-0.1, 0.1, 0.2]))  # below the clean set first
    assert rising(np.array([0.2, 0.2])) and not rising(np.array([0.2, 0.2 - 1e-15]))  # ties only when equal


def test_evenness_table_and_undefined() -> None:
    lines = coverage_sections([evenness([[0.5, 0.25], [0.0, 0.0]], undefined=2)], Path("."))
    text = "\n".join(lines)
    assert cells(lines, "nc") == ["nc", "+0.500", "+0.250", "+0.375"]
    assert cells(lines, "kmnc") == ["kmnc", "+0.000", "+0.000", "+0.000"]
    assert cells(lines, "criterion") == ["criterion", "n = 100", "n = 500", "mean r"]
    assert "2 of 4 correlations undefined (coverage or evenness constant over the draws) and set to 0." in text


def test_evenness_table_with_adversarial_versions() -> None:
    r = np.array([[0.5, 0.25], [0.0, 0.0]])
    info = {"criteria": CRITERIA[:2], "sizes": [100, 500], "draws": 5, "undefined": 2, "versions": "cw",
            "successful": 22}
    entry = record("coverage_evenness", info, {"mean_r": r.mean(1), "pearson": r,
                                               "pearson_versions": [[0.1, 0.3], [-0.2, -0.4]],
                                               "pearson_pooled": [[0.4, 0.2], [0.0, 0.1]]}, metric="evenness")
    lines = coverage_sections([entry], Path("."))
    text = "\n".join(lines)
    assert cells(lines, "criterion") == ["criterion", "n = 100", "n = 500", "mean r", "versions mean r",
                                         "pooled mean r"]
    assert cells(lines, "nc") == ["nc", "+0.500", "+0.250", "+0.375", "+0.200", "+0.300"]
    assert cells(lines, "kmnc") == ["kmnc", "+0.000", "+0.000", "+0.000", "-0.300", "+0.050"]
    assert "2 of 12 correlations undefined" in text and "With CW versions of every subset (22 test inputs" in text


def test_reproduction_directions_all_and_none(tmp_path: Path) -> None:
    random = [[0.01, 0.02]]
    records = [pruning("layer_conductance", [0.5, 0.5], random), pruning("layer_lrp", [0.5, 0.5], random),
               diversity("saliency", [0.1, 0.1], [0.2, 0.3]), adversarial("cw", [[0.1, 0.2]])]
    text = "\n".join(coverage_sections(records, tmp_path))
    assert "every N: held for 2 of 2 attributors (layer_conductance, layer_lrp)" in text
    assert "random pixels: did not hold (U_I > U_R on 0 of 2" in text and "half their criteria: 0 of 1)" in text
    assert "adversarial share: held (rising on 1 of 1 criterion × attack curves: cw 1 of 1)" in text
    assert [direction(k, 3) for k in (3, 1, 0)] == ["held", "held partly", "did not hold"]


def test_data_sets_get_their_own_subsections(tmp_path: Path) -> None:
    records = [plain("nc", 0.5, 0.5), plain("nc", 0.25, 0.25, dataset="cifar10")]
    text = "\n".join(coverage_sections(records, tmp_path))
    assert text.index("### mnist × lenet") < text.index("### cifar10 × lenet")
    assert text.count("| nc ") == 4  # two tables per data set


def test_empty_without_coverage_records(tmp_path: Path) -> None:
    assert coverage_sections([], tmp_path) == []
    other = record("deletion", {}, {"auc": [0.1, 0.2]}, method="saliency")
    failed = pruning("layer_conductance", [0.5, 0.5], [[0.0, 0.0]], status="failed")
    assert coverage_sections([other, failed], tmp_path) == []
    assert not (tmp_path / "figures").exists()


def test_number_formats_counts_whole() -> None:
    assert number(37.0) == "37" and number(12345.0) == "12345" and number(0.1234) == "0.123"
    assert number(float("nan")) == "–"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.integers(0, 4))
def test_rising_is_scale_invariant_and_sorted_positive_curves_rise(values: list[float], power: int) -> None:
    change = np.asarray(values)
    assert rising(change * 2.0**power) == rising(change)  # scaling by a power of two is exact
    assert rising(np.sort(change)) == (max(values) > 0)
    assert not rising(-change)  # never above the clean set


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2), st.lists(st.floats(0.0, 1.0), min_size=2,
                                                                         max_size=2))
def test_diversity_bold_follows_the_larger(important: list[float], random: list[float]) -> None:
    lines = coverage_sections([diversity("m", important, random)], Path("."))
    swapped = coverage_sections([diversity("m", random, important)], Path("."))
    for name, i, r in zip(CRITERIA, important, random):
        cell, flipped = cells(lines, name)[1], cells(swapped, name)[1]
        assert cell.startswith("**") == (i > r) and cell.endswith("**") == (r > i)
        assert flipped.startswith("**") == cell.endswith("**")  # swapping U_I and U_R swaps the bold
    wins = sum(i > r for i, r in zip(important, random))
    assert cells(lines, "U_I > U_R")[1] == f"{wins} of 2"


def payload(rec: CaseRecord) -> dict[str, Any]:
    a = rec.attrs
    return {"id": f"{a['dataset']}-lenet-{a['method']}-{a['metric']}", "key": "k", "spec": a["spec"],
            "family": a["family"], "dataset": a["dataset"], "model": "lenet", "method": a["method"],
            "metric": a["metric"], "primary": a["primary"], "higher_is_better": True, "bounds": {},
            "info": json.loads(a["info"]), "outputs": {k: v.tolist() for k, v in rec.outputs.items()},
            "aggregates": {}, "sample_index": [], "label": [], "target": [],
            "timings": {"attribution_seconds": 0.0, "metric_seconds": 0.1, "forward_passes": 1,
                        "samples_per_second": 1.0},
            "trained": {"key": "m", "train_score": 1.0, "test_score": 0.99, "train_seconds": 1.0},
            "device": "cpu", "worker": "main"}


def test_write_report_includes_the_coverage_section(tmp_path: Path) -> None:
    path = tmp_path / "results.h5"
    write_environment(path, {"run": "r", "suite": "coverage", "settings": json.dumps({"seed": 0})})
    for rec in (plain("nc", 0.625, 0.625), pruning("layer_conductance", [0.5, 0.5], [[0.01, 0.02]]),
                diversity("saliency", [0.6], [0.5]), adversarial("fgsm", [[0.1, 0.2, 0.3]]),
                evenness([[0.5, 0.25]], 0)):
        write_case(path, payload(rec), "passed")
    text = write_report(tmp_path).read_text()
    assert text.index("## Coverage (DeepImportance RQ1–RQ5)") < text.index("## Methods and metrics")
    assert "every N: held for 1 of 1 attributors (layer_conductance)" in text
    assert "**0.6** vs 0.5" in text and "rising on 1 of 1" in text
    assert (tmp_path / "figures" / "coverage-pruning-mnist-lenet.png").exists()
    assert (tmp_path / "figures" / "coverage-adversarial-mnist-lenet.png").exists()
