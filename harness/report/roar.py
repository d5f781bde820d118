"""Report sections of the removal studies: ROAR / KAR (remove and retrain), LeRF / MoRF and ROAD (removal
without retraining), and the loss-gradient occlusion study (:mod:`harness.report.occlusion`).

Sources (seed-systems.md §4–5): Hooker et al., "A benchmark for interpretability methods in deep neural
networks", NeurIPS 2019 (ROAR / KAR; expected: ROAR accuracy non-increasing in the fraction removed; most
methods no better than a random ranking, SmoothGrad-squared and VarGrad clearly better; KAR less
discriminative); Samek et al., "Evaluating the visualization of what a deep neural network has learned", IEEE
TNNLS 2017 (LeRF / MoRF; expected MoRF ≫ LeRF for a sensible method); Rong et al., "A consistent and efficient
evaluation strategy for attribution methods" (ROAD), ICML 2022 (expected: removing the least relevant inputs
first keeps the probability up, so the LeRF AUC is above the MoRF AUC). Figures under ``run_dir/figures``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from harness.report.occlusion import (
    Entry,
    counted,
    entries,
    fmt,
    grouped,
    labels,
    loss_gradient_section,
    mean_sd,
    paragraph,
    pct,
    pm,
    rises,
    table,
)
from harness.report.stats import bootstrap_mean_ci
from harness.store import CaseRecord

BASELINE, CONTROL = "random", "sobel"
BEATS_RANDOM = frozenset({"smoothgrad_sq", "vargrad", *(f"{noise}_{base}" for noise in ("sg_sq", "vargrad")
                                                      for base in ("gradient", "ig", "guided_backprop"))})
"""Registered methods that clearly beat Random under ROAR in Hooker et al.: SmoothGrad-squared and VarGrad (of
the gradient, IG, Guided Backprop; :mod:`harness.methods.roar_methods` and :mod:`harness.methods.attribench`)."""
NO_BETTER = frozenset({"saliency", "integrated_gradients", "guided_backprop", "smoothgrad", "smoothgrad_ig",
                       "smoothgrad_guided_backprop"})
"""Registered methods no better than Random under ROAR in Hooker et al.: the base methods and their SmoothGrad."""
MODES = ("roar", "kar")
ORDERS = {"morf": "MoRF", "lerf": "LeRF"}


@dataclass(frozen=True)
class Curve:
    """One method's curve: ``values`` (rows = repeats or samples, columns = the fractions ``x``)."""
    label: str
    method_name: str
    x: np.ndarray
    values: np.ndarray
    base: np.ndarray | None = None

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        return mean_sd(self.values)


def separation(curve: Curve, baseline: Curve, below: bool) -> tuple[int, int]:
    """(fractions where ``curve`` is below (``below``) or above the baseline's mean by more than the sum of
    both standard deviations, fractions both have)."""
    common, i, j = np.intersect1d(curve.x, baseline.x, return_indices=True)
    (m, s), (bm, bs) = curve.stats, baseline.stats
    gap = (bm[j] - m[i]) if below else (m[i] - bm[j])
    return int(np.sum(gap > s[i] + bs[j])), common.size


def style(method_name: str, colour: int) -> dict[str, object]:
    """Random dashed black, Sobel dotted, every other method solid; a method's colour is its index (tab20,
    so up to 20 methods get distinct colours)."""
    if method_name == BASELINE:
        return {"color": "black", "ls": "--"}
    return {"color": plt.get_cmap("tab20")(colour % 20), "ls": ":" if method_name == CONTROL else "-"}


def plot(panels: dict[str, list[Curve]], out: Path, ylabel: str, title: str, band: bool) -> None:
    """A panel per key, a line per curve (its mean; ``band``: ± 1 sd); a curve with ``base`` starts (ROAR) or
    ends (KAR) at the base mean, drawn at 0 removed / 100% kept."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.6, 3.4), squeeze=False)
    colours = {label: i for i, label in enumerate(dict.fromkeys(c.label for cs in panels.values() for c in cs))}
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for curve in curves:
            (mean, sd), x = curve.stats, curve.x
            if curve.base is not None:
                (bm, bs), start = mean_sd(curve.base), name != "KAR"
                x = np.r_[0.0, x] if start else np.r_[x, 1.0]
                mean, sd = (np.r_[bm, mean], np.r_[bs, sd]) if start else (np.r_[mean, bm], np.r_[sd, bs])
            kw = style(curve.method_name, colours[curve.label])
            ax.plot(x, mean, marker="o", ms=3, lw=1.2, label=curve.label, **kw)
            if band and np.any(sd > 0):
                ax.fill_between(x, mean - sd, mean + sd, color=kw["color"], alpha=0.12, lw=0)
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.set_xlabel(f"fraction {'kept' if name == 'KAR' else 'removed'}", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _figure(kind: str, dataset: str, model: str, index: int) -> str:
    return f"figures/{kind}-{dataset}-{model}{'' if index == 0 else f'-{index + 1}'}.png"


def _indexed(groups: dict[tuple, list[Entry]]) -> list[tuple[int, tuple, list[Entry]]]:
    """Each group with its index among the groups of its data set × model (for distinct figure names)."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for key, group in groups.items():
        index = seen[key[:2]] = seen.get(key[:2], -1) + 1
        out.append((index, key, group))
    return out


def retrain_curves(group: Sequence[Entry]) -> dict[str, list[Curve]]:
    """ROAR and KAR curves of one data set × model × level: accuracy (R, T) with the base accuracy (R,)."""
    mode = [str(e.info.get("mode", e.name)) for e in group]
    names = labels(group, lambda e: (e.method, e.info.get("mode", e.name)))
    return {m.upper(): [Curve(n, e.method_name, np.asarray(e.info.get("thresholds"), dtype=np.float64),
                              e.outputs["accuracy"], e.outputs["base_accuracy"])
                        for e, n, k in zip(group, names, mode) if k == m] for m in MODES}


def monotone(curve: Curve) -> str:
    """``yes``, or ``no (a→b: +d, ...)`` naming the steps of a ROAR curve (from the base accuracy at 0) that
    rise by more than the sum of the two sds."""
    (m, s), (bm, bs) = curve.stats, mean_sd(curve.base)
    x, mean, sd = np.r_[0.0, curve.x], np.r_[bm, m], np.r_[bs, s]
    steps = [f"{pct(x[i])}→{pct(x[i + 1])}: +{mean[i + 1] - mean[i]:.3f}" for i in rises(mean, sd)]
    return f"no ({', '.join(steps)})" if steps else "yes"


def versus(curve: Curve | None, baseline: Curve | None, below: bool) -> str:
    """``yes`` when ``curve`` separates from Random at every shared fraction, ``no (k of n fractions)``, else
    ``baseline`` (Random's own row) or ``–`` (no curve, or no Random)."""
    if curve is None or baseline is None or curve is baseline:
        return "baseline" if curve is not None and curve is baseline else "–"
    hits, total = separation(curve, baseline, below)
    return "yes" if total and hits == total else f"no ({hits} of {total} fractions)"


def retrain_verdicts(curves: dict[str, list[Curve]]) -> tuple[list[list[str]], str]:
    """The verdict rows (method, ROAR non-increasing, ROAR below Random, KAR above Random, prediction) of one
    group and its reproduction paragraph, computed from those rows."""
    baseline = {m: next((c for c in cs if c.method_name == BASELINE), None) for m, cs in curves.items()}
    rows = []
    for label in dict.fromkeys(c.label for cs in curves.values() for c in cs):
        roar, kar = (next((c for c in curves[m] if c.label == label), None) for m in ("ROAR", "KAR"))
        name = next(c for c in (roar, kar) if c is not None).method_name
        expected = "beats Random" if name in BEATS_RANDOM else "no better" if name in NO_BETTER else "—"
        rows.append([label, monotone(roar) if roar else "–", versus(roar, baseline["ROAR"], below=True),
                     versus(kar, baseline["KAR"], below=False), expected])
    return rows, _retrain_text(rows)


def _retrain_text(rows: Sequence[list[str]]) -> str:
    def which(column: int, rows: Sequence[list[str]] = rows) -> tuple[list[str], int]:
        tested = [r for r in rows if r[column] not in ("–", "baseline")]
        return [r[0] for r in tested if r[column] == "yes"], len(tested)

    parts = [f"methods with ROAR accuracy non-increasing: {counted(*which(1))}"]
    separated = {"ROAR": which(2), "KAR": which(3)}
    for mode, where in (("ROAR", "below"), ("KAR", "above")):
        if separated[mode][1]:
            parts.append(f"{where} Random at every fraction ({mode}): {counted(*separated[mode])}")
    for expected, claim in (("beats Random", "beat Random"), ("no better", "be no better than Random")):
        chosen = [r for r in rows if r[4] == expected and r[2] not in ("–", "baseline")]
        held = [r[0] for r in chosen if (r[2] == "yes") == (expected == "beats Random")]
        if chosen:
            parts.append(f"predicted to {claim} (Hooker et al.): held for {counted(held, len(chosen))}")
    if separated["ROAR"][1] and separated["KAR"][1]:
        roar, kar = len(separated["ROAR"][0]), len(separated["KAR"][0])
        outcome = "held" if kar < roar else "not shown (equal counts)" if kar == roar else "did not hold"
        parts.append(f"KAR less discriminative than ROAR ({kar} vs {roar} methods separated): {outcome}")
    return paragraph(parts)


def retrain_section(records: Sequence[CaseRecord], run_dir: Path) -> list[str]:
    """ROAR / KAR: per data set × model × level, the figure, the accuracy table and the verdicts."""
    groups = grouped(entries(records, MODES), lambda e: str(e.info.get("level", "?")))
    if not groups:
        return []
    lines = ["", "## ROAR and KAR (remove and retrain)", "",
             ("A fresh model is trained on the training set with the top-ranked fraction of inputs replaced "
              "by the data-set mean (ROAR) or with all but the top-ranked fraction replaced (KAR) and tested "
              "on the test set altered alike; *base*: retrained on unaltered data, unaltered test set. "
              "Cells: test accuracy, mean ± sd (ddof = 1) over the R retrainings. Verdicts: *non-increasing*: "
              "no step from a fraction (base at 0) to the next rises by more than the sum of the two sds; "
              "*below / above Random*: at every fraction both have, the method's mean is below (ROAR) / above "
              "(KAR) Random's by more than the sum of both sds. With R = 1 the sds are 0 and the tests are "
              "strict. Prediction: Hooker et al.'s finding for that method. Figure: the mean with a ± 1 sd "
              "band; the base accuracy drawn at 0 removed (ROAR) and at all kept (KAR); Random dashed black, "
              "Sobel dotted.")]
    for index, (dataset, model, level), group in _indexed(groups):
        curves = retrain_curves(group)
        fractions = sorted({float(x) for cs in curves.values() for c in cs for x in c.x})
        rows = [[c.label, mode, pm(*mean_sd(c.base)), *[dict(zip(c.x, map(pm, *c.stats))).get(x, "")
                                                          for x in fractions]]
                for mode, cs in curves.items() for c in cs]
        verdicts, text = retrain_verdicts(curves)
        name = _figure("roar", dataset, model, index)
        plot({k: v for k, v in curves.items() if v}, Path(run_dir) / name, "test accuracy",
             f"{dataset} × {model}", band=True)
        repeats = sorted({int(c.values.shape[0]) for cs in curves.values() for c in cs})
        lines += ["", f"### {dataset} × {model} ({level} level, R = {', '.join(map(str, repeats))})", "",
                  f"![ROAR and KAR, {dataset} × {model}]({name})", "",
                  table(rows, ["method", "", "base", *[pct(x) for x in fractions]]), "",
                  table(verdicts, ["method", "ROAR non-increasing", "ROAR below Random", "KAR above Random",
                                   "prediction"]), "", text]
    return lines


@dataclass(frozen=True)
class OrderStudy:
    """A removal study without retraining run in both orders (MoRF, LeRF) per method."""
    name: str
    title: str
    curve: str
    ylabel: str
    score: str
    larger: str
    """The order whose score should be larger for a sensible method."""
    intro: str


PIXEL = OrderStudy("pixel_perturbation", "LeRF / MoRF (pixel perturbation, no retraining)", "relative_change",
                   "mean relative change (%)", "mean_change", "morf",
                   "The top (MoRF) or bottom (LeRF) fraction of inputs of each test image set to the mean; per "
                   "sample the mean over the fractions of |p(x) − p(x̃)| / p(x) · 100 for the originally "
                   "predicted class (MoRF ↑, LeRF ↓). Expected MoRF ≫ LeRF for a sensible method.")
ROAD = OrderStudy("road", "ROAD (remove and debias, no retraining)", "probability", "mean probability", "auc",
                  "lerf", "ROAD: the most (MoRF) or least (LeRF) relevant fraction of inputs removed by noisy "
                  "linear imputation; per sample the AUC of the probability over the fractions (MoRF ↓, LeRF "
                  "↑). Expected LeRF − MoRF > 0 for a sensible method.")


def order_rows(by_order: dict[str, dict[str, Entry]], study: OrderStudy
               ) -> tuple[list[list[str]], tuple[list[str], int], list[str]]:
    """Table rows (method, mean MoRF, mean LeRF, paired difference [95% CI], as expected), the methods other
    than Random whose CI is above 0 with the count of those with both orders, and Random's difference."""
    other = "lerf" if study.larger == "morf" else "morf"
    rows, held, randoms, total = [], [], [], 0
    for label in dict.fromkeys([*by_order["morf"], *by_order["lerf"]]):
        a, b = by_order[study.larger].get(label), by_order[other].get(label)
        cells = [fmt(float(np.mean(e.outputs[study.score]))) if e else "–"
                 for e in (by_order["morf"].get(label), by_order["lerf"].get(label))]
        mean = lo = hi = float("nan")
        if a is not None and b is not None:
            _, i, j = np.intersect1d(a.sample_index, b.sample_index, return_indices=True)
            mean, lo, hi = bootstrap_mean_ci(a.outputs[study.score][i] - b.outputs[study.score][j])
        ci = f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(mean) else "– (no common samples)"
        random = (a or b) is not None and (a or b).method_name == BASELINE
        if random and np.isfinite(mean):
            randoms.append(f"{label} {ci}, CI {'contains' if lo <= 0 <= hi else 'excludes'} 0")
        elif not random and np.isfinite(mean):
            total += 1
            held += [label] if lo > 0 else []
        verdict = "baseline" if random else "–" if not np.isfinite(lo) else "yes" if lo > 0 else "no"
        rows.append([label, *cells, ci, verdict])
    return rows, (held, total), randoms


def order_section(records: Sequence[CaseRecord], run_dir: Path, study: OrderStudy) -> list[str]:
    """Per data set × model (× fractions): the curves of both orders, the table of the mean scores and their
    paired difference (95% bootstrap CI over samples), and the reproduction paragraph."""
    groups = grouped(entries(records, [study.name]), lambda e: tuple(e.info.get("fractions", ())))
    if not groups:
        return []
    other = "lerf" if study.larger == "morf" else "morf"
    diff = f"{ORDERS[study.larger]} − {ORDERS[other]}"
    lines = ["", f"## {study.title}", "",
             study.intro + (f" {diff}: the mean over samples of the paired difference (samples matched by "
                            "test-set index) with its 95% percentile-bootstrap CI; *as expected*: CI above 0. "
                            f"Figure: the mean {study.ylabel[5:]} over the samples per fraction; Random dashed "
                            "black, Sobel dotted.")]
    for index, (dataset, model, fractions), group in _indexed(groups):
        names = labels(group, lambda e: (e.method, e.info.get("order")))
        by_order = {o: {n: e for n, e in zip(names, group) if e.info.get("order") == o} for o in ORDERS}
        rows, held, randoms = order_rows(by_order, study)
        name = _figure(study.name, dataset, model, index)
        panels = {ORDERS[o]: [Curve(n, e.method_name, np.asarray(e.info.get("fractions"), dtype=np.float64),
                                    e.outputs[study.curve]) for n, e in by_order[o].items()] for o in ORDERS}
        plot({k: v for k, v in panels.items() if v}, Path(run_dir) / name, study.ylabel, f"{dataset} × {model}",
             band=False)
        parts = [f"methods other than Random with {diff} > 0 (CI above 0): {counted(*held)}"]
        text = paragraph(parts + ([f"Random (expected near 0): {'; '.join(randoms)}"] if randoms else []))
        span = f"{pct(min(fractions))}–{pct(max(fractions))}" if fractions else "?"
        lines += ["", f"### {dataset} × {model} (fractions {span}, K = {len(fractions)})", "",
                  f"![{study.title}, {dataset} × {model}]({name})", "",
                  table(rows, ["method", f"MoRF {'↑' if study.larger == 'morf' else '↓'}",
                               f"LeRF {'↑' if study.larger == 'lerf' else '↓'}", diff, "as expected"]), "", text]
    return lines


def roar_sections(records: Sequence[CaseRecord], run_dir: Path) -> list[str]:
    """Markdown lines of the ROAR / KAR, LeRF / MoRF, ROAD and loss-gradient studies (each empty without its
    records); figures written under ``run_dir / "figures"``."""
    return [*retrain_section(records, run_dir), *order_section(records, run_dir, PIXEL),
            *order_section(records, run_dir, ROAD), *loss_gradient_section(records)]
