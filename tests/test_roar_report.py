"""Report sections of the removal studies (harness.report.roar, harness.report.occlusion) on hand-made records:
tables against hand and plain-Python computation, the verdicts on constructed cases, the anomaly marking,
the figures, and the report end to end through a results file."""
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
from harness.report.occlusion import (
    entries,
    loss_gradient_rows,
    loss_gradient_section,
    mean_sd,
    observed,
    prediction,
    rises,
)
from harness.report.roar import (
    BEATS_RANDOM,
    NO_BETTER,
    PIXEL,
    Curve,
    order_section,
    retrain_curves,
    retrain_section,
    retrain_verdicts,
    roar_sections,
    separation,
)
from harness.store import CaseRecord, write_case, write_environment

T = [0.1, 0.3, 0.5]
FRACTIONS = [0.01, 0.05, 0.1]


def record(method: str, registered: str, info: dict[str, Any], outputs: dict[str, Any], *, metric: str = "",
           method_name: str = "", method_params: dict[str, Any] | None = None, dataset: str = "digits",
           status: str = "passed", per_sample: bool = False, primary: str = "auc") -> CaseRecord:
    """A CaseRecord as read_run returns it: spec and info as JSON strings, outputs as float64 arrays."""
    spec = {"method": {"name": method_name or method, "params": method_params or {}},
            "metric": {"name": registered, "params": {}}}
    attrs = {"dataset": dataset, "model": "cnn", "method": method, "metric": metric or registered,
             "family": "loss_gradient" if registered == "loss_gradient_occlusion" else "roar", "status": status,
             "primary": primary, "higher_is_better": False, "info": json.dumps(info), "spec": json.dumps(spec)}
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in outputs.items()}
    n = next(iter(arrays.values())).shape[0] if per_sample else 0
    index = np.arange(n)
    return CaseRecord(attrs, arrays, index, index, index)


def retrain(method: str, mode: str, accuracy: list[list[float]], base: list[float], **kw: Any) -> CaseRecord:
    info = {"thresholds": kw.pop("thresholds", T), "mode": mode, "level": "pixel", "repeats": len(accuracy)}
    acc = np.asarray(accuracy)
    return record(method, mode, info, {"accuracy": acc, "base_accuracy": base, "auc": acc.mean(1)}, **kw)


def flat(method: str, mode: str, means: list[float], sd: float = 0.01, base: float = 0.9, **kw: Any) -> CaseRecord:
    """Three repeats at ``means`` − sd, ``means``, ``means`` + sd: mean ``means``, sd (ddof 1) exactly ``sd``."""
    acc = [[m + d for m in means] for d in (-sd, 0.0, sd)]
    return retrain(method, mode, acc, [base - sd, base, base + sd], **kw)


def verdict_rows(records: list[CaseRecord]) -> tuple[dict[str, list[str]], str]:
    rows, text = retrain_verdicts(retrain_curves(entries(records, ["roar", "kar"])))
    return {row[0]: row[1:] for row in rows}, text


def test_mean_sd_matches_plain_python() -> None:
    values = np.array([[0.5, 0.2], [0.7, 0.1], [0.9, 0.6]])
    mean, sd = mean_sd(values)
    for k in range(2):
        column = [float(v) for v in values[:, k]]
        assert mean[k] == pytest.approx(statistics.mean(column))
        assert sd[k] == pytest.approx(statistics.stdev(column))
    one = mean_sd(np.array([[0.3, 0.4]]))
    np.testing.assert_array_equal(one[1], [0.0, 0.0])  # one repeat: no spread measured


def test_rises_tolerates_the_spread() -> None:
    # 0.50 -> 0.52 rises 0.02 within sd 0.01 + 0.015; 0.52 -> 0.60 rises 0.08 beyond 0.015 + 0.01
    assert rises(np.array([0.5, 0.52, 0.6]), np.array([0.01, 0.015, 0.01])) == [1]
    assert rises(np.array([0.9, 0.5, 0.5]), np.zeros(3)) == []


def test_separation_hand_checked() -> None:
    base = Curve("random", "random", np.array(T), np.array([[0.80, 0.70, 0.60], [0.80, 0.70, 0.60]]))
    # method sd 0: gaps 0.3, 0.05, 0.0 against the random sd 0: two of three fractions strictly below
    method = Curve("m", "m", np.array(T), np.array([[0.5, 0.65, 0.6]]))
    assert separation(method, base, below=True) == (2, 3)
    assert separation(method, base, below=False) == (0, 3)
    shifted = Curve("m", "m", np.array([0.3, 0.5, 0.9]), np.array([[0.65, 0.6, 0.1]]))
    assert separation(shifted, base, below=True) == (1, 2)  # only the two shared fractions count


def test_retrain_table_numbers(tmp_path: Path) -> None:
    records = [retrain("saliency", "roar", [[0.6, 0.4, 0.2], [0.8, 0.5, 0.3]], [0.9, 0.95]),
               retrain("saliency", "kar", [[0.3, 0.5, 0.7], [0.5, 0.5, 0.9]], [0.9, 0.95])]
    text = "\n".join(retrain_section(records, tmp_path))
    row = next(ln for ln in text.splitlines() if ln.startswith("| saliency") and "ROAR" in ln)
    # mean of (0.6, 0.8) = 0.7, sd = 0.1414; (0.4, 0.5): 0.45, 0.0707; (0.2, 0.3): 0.25, 0.0707; base 0.925
    for cell in ("0.925 ± 0.035", "0.700 ± 0.141", "0.450 ± 0.071", "0.250 ± 0.071"):
        assert cell in row
    kar = next(ln for ln in text.splitlines() if ln.startswith("| saliency") and "KAR" in ln)
    assert "0.400 ± 0.141" in kar and "0.800 ± 0.141" in kar
    assert "| 10% " in text and "(pixel level, R = 2)" in text
    assert (tmp_path / "figures" / "roar-digits-cnn.png").stat().st_size > 1000


def test_verdicts_on_constructed_methods() -> None:
    records = [
        flat("random", "roar", [0.80, 0.70, 0.60]), flat("random", "kar", [0.40, 0.50, 0.60]),
        flat("smoothgrad_sq", "roar", [0.50, 0.40, 0.30]), flat("smoothgrad_sq", "kar", [0.70, 0.80, 0.85]),
        flat("saliency", "roar", [0.79, 0.66, 0.50]),  # within the spread at 10%: does not separate
        flat("bumpy", "roar", [0.50, 0.70, 0.30]),  # +0.20 from 10% to 30%, spread 0.02
        flat("sobel", "roar", [0.50, 0.515, 0.30]),  # +0.015 within the spread 0.02: still non-increasing
    ]
    rows, text = verdict_rows(records)
    assert rows["random"] == ["yes", "baseline", "baseline", "—"]
    assert rows["smoothgrad_sq"] == ["yes", "yes", "yes", "beats Random"]
    assert rows["saliency"] == ["yes", "no (2 of 3 fractions)", "–", "no better"]
    assert rows["bumpy"][0] == "no (10%→30%: +0.200)" and rows["bumpy"][1] == "no (2 of 3 fractions)"
    assert rows["sobel"][:2] == ["yes", "yes"]
    assert "**Reproduction.** Methods with ROAR accuracy non-increasing: 4 of 5 (random, smoothgrad_sq, saliency, sobel);" in text
    assert "below Random at every fraction (ROAR): 2 of 4 (smoothgrad_sq, sobel)" in text
    assert "above Random at every fraction (KAR): 1 of 1 (smoothgrad_sq)" in text
    assert "predicted to beat Random (Hooker et al.): held for 1 of 1 (smoothgrad_sq)" in text
    assert "predicted to be no better than Random (Hooker et al.): held for 1 of 1 (saliency)" in text
    assert "KAR less discriminative than ROAR (1 vs 2 methods separated): held" in text


def test_verdict_counts_the_base_and_a_failed_prediction() -> None:
    records = [flat("random", "roar", [0.8, 0.7, 0.6]),
               flat("vargrad", "roar", [0.79, 0.7, 0.6]),  # does not beat Random: prediction fails
               flat("saliency", "roar", [0.3, 0.2, 0.1], base=0.2),  # beats Random, but rises from the base
               flat("saliency", "kar", [0.3, 0.2, 0.1], base=0.2), flat("random", "kar", [0.3, 0.2, 0.1])]
    rows, text = verdict_rows(records)
    assert rows["saliency"][0] == "no (0%→10%: +0.100)" and rows["saliency"][1] == "yes"
    assert rows["saliency"][2] == "no (0 of 3 fractions)"
    assert "predicted to beat Random (Hooker et al.): held for 0 of 1" in text
    assert "predicted to be no better than Random (Hooker et al.): held for 0 of 1" in text
    assert "KAR less discriminative than ROAR (0 vs 1 methods separated): held" in text


def test_predictions_cover_the_roar_methods() -> None:
    assert {"sg_sq_ig", "vargrad_guided_backprop", "smoothgrad_sq"} <= BEATS_RANDOM
    assert {"saliency", "smoothgrad_ig", "guided_backprop"} <= NO_BETTER and not BEATS_RANDOM & NO_BETTER
    rows, _ = verdict_rows([flat("random", "roar", [0.8, 0.7, 0.6]), flat("vargrad_ig", "roar", [0.5, 0.4, 0.3]),
                            flat("sobel", "roar", [0.5, 0.4, 0.3])])
    assert rows["vargrad_ig"][3] == "beats Random" and rows["sobel"][3] == "—"


def test_one_repeat_is_strict_and_no_random_is_said() -> None:
    rows, text = verdict_rows([retrain("saliency", "roar", [[0.5, 0.5001, 0.3]], [0.9])])
    assert rows["saliency"][0].startswith("no (10%→30%") and rows["saliency"][1] == "–"
    assert "Random at every fraction" not in text


def pixel(method: str, order: str, change: list[float], fractions: list[float] = FRACTIONS) -> CaseRecord:
    curves = np.outer(change, np.linspace(0.5, 1.5, len(fractions)))  # per-sample mean = change
    info = {"fractions": fractions, "order": order}
    return record(method, "pixel_perturbation", info, {"relative_change": curves, "mean_change": change},
                  metric=f"pp_{order}", per_sample=True, primary="mean_change")


def test_lerf_morf_table_and_reproduction(tmp_path: Path) -> None:
    records = [pixel("saliency", "morf", [30.0, 50.0, 40.0, 60.0]), pixel("saliency", "lerf", [1.0, 2.0, 3.0, 2.0]),
               pixel("random", "morf", [5.0, 6.0, 5.0, 6.0]), pixel("random", "lerf", [6.0, 5.0, 6.0, 5.0]),
               pixel("weak", "morf", [1.0, 9.0, 1.0, 9.0]), pixel("weak", "lerf", [5.0, 5.0, 5.0, 5.0])]
    text = "\n".join(order_section(records, tmp_path, PIXEL))
    lines = text.splitlines()
    row = next(ln for ln in lines if ln.startswith("| saliency"))
    # MoRF mean 45, LeRF mean 2; paired differences 29, 48, 37, 58: mean 43, smallest 29 > 0
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["45", "2"] and cells[3].startswith("43 [") and cells[4] == "yes"
    assert float(cells[3].split("[")[1].split(",")[0]) >= 29.0
    weak = [c.strip() for c in next(ln for ln in lines if ln.startswith("| weak")).strip("|").split("|")]
    assert weak[3].startswith("0 [") and weak[4] == "no"  # differences -4, 4, -4, 4
    assert "**Reproduction.** Methods other than Random with MoRF − LeRF > 0 (CI above 0): 1 of 2 (saliency)" in text
    assert "Random (expected near 0): random 0 [" in text and "], CI contains 0." in text
    assert [c.strip() for c in next(ln for ln in lines if ln.startswith("| random")).split("|")][5] == "baseline"
    assert (tmp_path / "figures" / "pixel_perturbation-digits-cnn.png").stat().st_size > 1000


def road(method: str, order: str, auc: list[float]) -> CaseRecord:
    prob = np.outer(auc, [1.0, 1.0])
    info = {"fractions": [0.1, 0.5], "order": order}
    return record(method, "road", info, {"probability": prob, "correct": prob > 0.5, "auc": auc},
                  metric=f"road_{order}", per_sample=True)


def test_road_table_pairs_samples_and_writes_figure(tmp_path: Path) -> None:
    morf = road("ig", "morf", [0.2, 0.3, 0.1])
    lerf = road("ig", "lerf", [0.9, 0.8, 0.7, 0.6])  # a fourth sample without a MoRF partner: left out
    lines = "\n".join(roar_sections([morf, lerf], tmp_path)).splitlines()
    row = [c.strip() for c in next(ln for ln in lines if ln.startswith("| ig")).strip("|").split("|")]
    # AUC MoRF 0.2, LeRF 0.75 (all four samples); paired LeRF − MoRF on samples 0-2: 0.7, 0.5, 0.6 -> 0.6
    assert row[1:3] == ["0.2", "0.75"] and row[3].startswith("0.6 [") and row[4] == "yes"
    assert "## ROAD" in "\n".join(lines) and "## ROAR" not in "\n".join(lines)
    assert (tmp_path / "figures" / "road-digits-cnn.png").stat().st_size > 1000


def occlusion(variant: str, order: str, replacement: str, score: list[list[float]], clean: list[float],
              fractions: list[float] = T) -> CaseRecord:
    info = {"fractions": fractions, "order": order, "replacement": replacement, "score_name": "accuracy",
            "models": len(clean)}
    change = (np.asarray(score) - np.asarray(clean)[:, None]).mean(1)
    params = {} if variant == "random" else {"variant": variant}
    return record(f"lg_{variant}", "loss_gradient_occlusion", info,
                  {"score": score, "clean_score": clean, "change": change},
                  method_name="random" if variant == "random" else "loss_gradient", method_params=params,
                  metric=f"lgo_{order}_{replacement}", primary="change")


def test_loss_gradient_table_marks_the_anomaly() -> None:
    clean = [0.90, 0.92]
    records = [
        # Δ per replica: (0.05, 0.03), (0.02, -0.02), (-0.1, -0.12): means 0.04 (sd 0.014: bold), 0 (no), -0.11
        occlusion("grad_orig", "negative", "image_max", [[0.95, 0.92, 0.80], [0.95, 0.90, 0.80]], clean),
        occlusion("grad_inp", "negative", "mean", [[0.80, 0.70, 0.60], [0.82, 0.72, 0.62]], clean),
        occlusion("abs_grad", "positive", "dataset_min", [[0.89, 0.89, 0.90], [0.93, 0.91, 0.93]], clean),
        occlusion("random", "positive", "mean", [[0.85, 0.80, 0.70], [0.87, 0.82, 0.72]], clean),
    ]
    text = "\n".join(loss_gradient_section(records))
    lines = text.splitlines()
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in lines
            if ln.startswith("| ")}
    orig = rows["grad_orig"]
    assert orig[:4] == ["grad_orig", "negative", "image_max", "0.910 ± 0.014"]
    assert orig[4:7] == ["**0.040 ± 0.014**", "0.000 ± 0.028", "-0.110 ± 0.014"]
    assert orig[7:] == ["improves", "mixed"]
    assert rows["grad_inp"][7:] == ["degrades", "lowers"] and "**" not in "".join(rows["grad_inp"])
    assert rows["abs_grad"][7] == "—" and rows["abs_grad"][8] == "mixed"
    assert rows["random"][7:] == ["degrades", "lowers"]
    assert "### digits × cnn: accuracy, R = 2" in text
    assert "raised the score above clean beyond the replica spread: 1 of 3 (grad_orig/negative/image_max), so the headline finding held" in text
    assert "predicted to improve: raises at every fraction on 0 of 1" in text
    assert "predicted to degrade: lowers at every fraction on 2 of 2" in text
    assert "random degraded monotonically" in text and "on 1 of 1 (positive/mean)" in text


def test_loss_gradient_without_anomaly_and_one_replica() -> None:
    records = [occlusion("grad_inp", "positive", "mean", [[0.90, 0.80, 0.70]], [0.90]),
               occlusion("random", "negative", "mean", [[0.80, 0.85, 0.70]], [0.90])]  # rises 0.05, R = 1
    text = "\n".join(loss_gradient_section(records))
    assert "**" not in text.split("### ")[1].split("**Reproduction")[0]
    assert "spread: 0 of 1, so the headline finding did not hold" in text
    assert "random degraded monotonically (below clean at every fraction, non-increasing in the fraction " \
           "within the spread) on 0 of 1." in text


def test_loss_gradient_duplicate_rows_are_told_apart() -> None:
    a = occlusion("grad_orig", "positive", "custom", [[0.9, 0.9, 0.9]], [0.9])
    b = record("lg_grad_orig", "loss_gradient_occlusion", json.loads(a.attrs["info"]), a.outputs,
               method_name="loss_gradient", method_params={"variant": "grad_orig"}, metric="lgo_custom_2")
    rows = loss_gradient_rows(entries([a, b], ["loss_gradient_occlusion"]))
    assert [r.replacement for r in rows] == ["custom (lgo_positive_custom)", "custom (lgo_custom_2)"]


def test_predictions_from_the_study() -> None:
    assert prediction("grad_orig", "negative", "image_max") == "improves"
    assert prediction("grad_orig", "positive", "image_min") == "improves"
    assert prediction("grad_inp", "positive", "mean") == "improves"
    assert prediction("grad_inp", "negative", "mean") == "degrades"
    assert prediction("random", "positive", "image_max") == "degrades"
    assert prediction("grad_orig", "negative", "mean") == "—" and prediction("abs_grad", "positive", "mean") == "—"


def test_sections_empty_without_study_records(tmp_path: Path) -> None:
    assert roar_sections([], tmp_path) == []
    other = record("saliency", "deletion", {}, {"auc": [0.1, 0.2]}, per_sample=True)
    failed = flat("random", "roar", [0.8, 0.7, 0.6], status="failed")
    assert roar_sections([other, failed], tmp_path) == []
    assert not (tmp_path / "figures").exists()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6), st.floats(-0.5, 0.5))
def test_non_increasing_curves_never_rise_and_shift_is_invariant(values: list[float], shift: float) -> None:
    curve = np.sort(values)[::-1]
    assert rises(curve, np.zeros_like(curve)) == []
    noisy = np.asarray(values)
    assert rises(noisy + shift, np.full_like(noisy, 0.01)) == rises(noisy, np.full_like(noisy, 0.01))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0, allow_subnormal=False), min_size=1, max_size=5))
def test_observed_flips_with_the_sign(change: list[float]) -> None:
    flip = {"raises": "lowers", "lowers": "raises", "mixed": "mixed"}
    assert observed(-np.asarray(change)) == flip[observed(np.asarray(change))]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_separation_is_antisymmetric(a: list[float], b: list[float]) -> None:
    x = np.array(T)
    first, second = Curve("a", "a", x, np.array([a])), Curve("b", "b", x, np.array([b]))
    assert separation(first, second, below=True) == separation(second, first, below=False)
    assert separation(first, second, below=True)[0] + separation(first, second, below=False)[0] <= 3


def payload(rec: CaseRecord) -> dict[str, Any]:
    a, n = rec.attrs, rec.sample_index.size
    return {"id": f"{a['dataset']}-cnn-{a['method']}-{a['metric']}", "key": "k", "spec": a["spec"],
            "family": a["family"], "dataset": a["dataset"], "model": "cnn", "method": a["method"],
            "metric": a["metric"], "primary": a["primary"], "higher_is_better": a["higher_is_better"],
            "bounds": {}, "info": json.loads(a["info"]), "outputs": {k: v.tolist() for k, v in rec.outputs.items()},
            "aggregates": {}, "sample_index": list(range(n)), "label": [0] * n, "target": [0] * n,
            "timings": {"attribution_seconds": 0.1, "metric_seconds": 0.1, "forward_passes": 1,
                        "samples_per_second": 1.0},
            "trained": {"key": "m", "train_score": 1.0, "test_score": 1.0, "train_seconds": 1.0},
            "device": "cpu", "worker": "main"}


def test_write_report_includes_the_sections(tmp_path: Path) -> None:
    path = tmp_path / "results.h5"
    write_environment(path, {"run": "r", "suite": "roar", "settings": json.dumps({"seed": 0})})
    for rec in (flat("random", "roar", [0.8, 0.7, 0.6]), flat("vargrad", "roar", [0.5, 0.4, 0.3]),
                pixel("vargrad", "morf", [30.0, 50.0]), pixel("vargrad", "lerf", [1.0, 2.0]),
                occlusion("grad_orig", "negative", "image_max", [[0.95, 0.9, 0.8]], [0.9])):
        write_case(path, payload(rec), "passed")
    text = write_report(tmp_path).read_text()
    order = [text.index(h) for h in ("## ROAR and KAR", "## LeRF / MoRF", "## Loss-gradient occlusion",
                                     "## Methods and metrics")]
    assert order == sorted(order)
    assert "held for 1 of 1 (vargrad)" in text and "**0.050 ± 0.000**" in text
    assert (tmp_path / "figures" / "roar-digits-cnn.png").exists()


def test_loss_table_shows_a_decrease_accuracy_cannot() -> None:
    rec = occlusion("grad_inp", "positive", "mean", [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [1.0, 1.0])
    rec.outputs["loss"] = np.array([[0.010, 0.008, 0.02], [0.012, 0.010, 0.03]])  # clean 0.02, 0.022
    rec.outputs["clean_loss"] = np.array([0.020, 0.022])
    text = "\n".join(loss_gradient_section([rec]))
    assert "spread: 0 of 1, so the headline finding did not hold" in text  # accuracy is at its ceiling
    loss_part = text.split("−ΔL at 10%")[1]
    row = next(ln for ln in loss_part.splitlines() if ln.startswith("| grad_inp"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # −ΔL per replica: (0.010, 0.012, 0.000), (0.010, 0.012, -0.008); clean loss 0.021 ± 0.001
    assert cells[3] == "0.021 ± 0.001" and cells[4] == "**0.010 ± 0.000**" and cells[5] == "**0.012 ± 0.000**"
    assert cells[6] == "-0.004 ± 0.006" and cells[-2:] == ["improves", "mixed"]
    assert "lowered the loss below clean beyond the replica spread: 1 of 1" in text
