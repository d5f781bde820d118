"""Report sections with attribench's statistics (:mod:`harness.report.statistics`), per data set × model:
every method against Random (table, heat map), Krippendorff's α of the per-sample rankings, inter-metric
Spearman correlation (table, heat map), CLES, and the bootstrap convergence of the median (table, plot).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import ScalarFormatter
from tabulate import tabulate

from harness.report import statistics as stat
from harness.report.statistics import Correction
from harness.store import CaseRecord

BASELINE = "random"
ALPHA = 0.01
"""Significance level after correction (attribench's)."""
Key = tuple[str, str]
"""(method, metric)."""
Pair = tuple[np.ndarray, np.ndarray, int]
"""Scores of a method and of the baseline on the samples both have; the larger of their sample counts."""


@dataclass
class Group:
    """The per-sample primary outputs of one data set × model, oriented (larger = better)."""
    dataset: str
    model: str
    methods: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    cells: dict[Key, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def aligned(self, keys: Sequence[Key]) -> tuple[np.ndarray, int]:
        """(samples, len(keys)) scores on the sample indices all keys have; the largest key's sample count."""
        common = reduce(np.intersect1d, [self.cells[k][0] for k in keys])
        columns = [self.cells[k][1][np.intersect1d(self.cells[k][0], common, return_indices=True)[1]]
                   for k in keys]
        return np.stack(columns, axis=1), max(self.cells[k][0].size for k in keys)

    def against(self, baseline: str) -> tuple[list[str], dict[tuple[int, int], Pair]]:
        """The methods but the baseline, and a :data:`Pair` per (method row, metric column) with both."""
        methods, pairs = [m for m in self.methods if m != baseline], {}
        for j, metric in enumerate(self.metrics):
            present = self.methods_of(metric, exclude=baseline)
            if (baseline, metric) in self.cells and present:
                values, total = self.aligned([(baseline, metric)] + [(m, metric) for m in present])
                pairs.update({(methods.index(m), j): (values[:, k + 1], values[:, 0], total)
                              for k, m in enumerate(present)})
        return methods, pairs

    def methods_of(self, metric: str, exclude: str = "") -> list[str]:
        return [m for m in self.methods if (m, metric) in self.cells and m != exclude]

    def stem(self, what: str) -> str:
        return f"figures/attribench-{self.dataset}-{self.model}-{what}.png"

    @property
    def title(self) -> str:
        return f"{self.dataset} × {self.model}"


def _f(value: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(value) else f"{value:.{digits}g}"


def _used(used: int, total: int) -> str:
    return f"{used}" if used == total else f"{used} of {total}"


def _table(rows: list[list[str]], headers: Sequence[str]) -> str:
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True)


def group_records(records: Sequence[CaseRecord]) -> list[Group]:
    """Passed records by data set × model; outputs that are not one value per sample are skipped."""
    groups: dict[Key, Group] = {}
    for record in records:
        a = record.attrs
        if a.get("status", "passed") != "passed":
            continue
        group = groups.setdefault((a["dataset"], a["model"]), Group(a["dataset"], a["model"]))
        values, index = np.asarray(record.primary_values, dtype=np.float64), np.asarray(record.sample_index)
        if index.size == 0 or values.shape != index.shape:
            group.skipped.append(f"`{a['method']}` · `{a['metric']}` (output `{a['primary']}` of shape "
                                 f"{values.shape} for {index.size} samples)")
            continue
        for names, name in ((group.methods, a["method"]), (group.metrics, a["metric"])):
            if name not in names:
                names.append(name)
        group.cells[(a["method"], a["metric"])] = (index, stat.orient(values, bool(a["higher_is_better"])))
    return list(groups.values())


def attribench_sections(records: Sequence[CaseRecord], run_dir: Path, *,
                        correction: Correction = "bonferroni", baseline: str = BASELINE) -> list[str]:
    """Markdown lines of the statistics section; figures written under ``run_dir / "figures"``."""
    groups = group_records(records)
    empty = [g.title for g in groups if not g.methods]  # e.g. feature selection: one value per run
    groups = [g for g in groups if g.methods]
    if not groups:
        return []
    name = "Bonferroni" if correction == "bonferroni" else "Benjamini-Hochberg FDR"
    lines = ["", "## Statistics (attribench)", "",
             ("On the primary per-sample output of each metric, oriented so that larger is better (metrics "
              "where lower is better are negated). Samples are matched by test-set index: where the methods "
              "(or metrics) compared ran on different samples only the common ones are used; NaN scores are "
              "dropped per pair (tests, CLES) or per sample (α, correlation). A count \"k of n\": k of n "
              f"samples were usable. Significance: p < {ALPHA} after {name} correction over the methods of "
              "each metric (as attribench).")]
    if empty:
        lines += ["", f"No per-sample scores, left out: {', '.join(empty)}."]
    for group in groups:
        lines += ["", f"### {group.title}"]
        if group.skipped:
            lines += ["", "Not one value per sample, left out: " + "; ".join(group.skipped) + "."]
        if len(group.methods) < 2:
            lines += ["", f"{len(group.methods)} method with per-sample scores: nothing to compare."]
            continue
        lines += vs_baseline(group, run_dir, correction, baseline)
        lines += agreement(group)
        lines += correlation(group, run_dir)
        lines += effect_sizes(group, baseline)
        lines += convergence(group, run_dir)
    return lines


def vs_baseline(group: Group, run_dir: Path, correction: Correction, baseline: str) -> list[str]:
    """One-sided Wilcoxon tests of each method against the baseline, per metric; table and heat map."""
    lines = ["", "#### Methods against Random", ""]
    if baseline not in group.methods:
        return lines + [f"No `{baseline}` method in this group: the tests against Random are skipped."]
    lines += [("One-sided Wilcoxon signed-rank test of the per-sample differences method − Random (H1: "
               "the method is better); effect = median difference (in the metric's units, > 0 = better than "
               "Random). Table: the median differences, **bold** where significant; p-values below it.")]
    methods, pairs = group.against(baseline)
    tests = {key: stat.signed_rank_vs_baseline(x, y) for key, (x, y, _) in pairs.items()}
    effect, pvalue = (np.full((len(methods), len(group.metrics)), np.nan) for _ in range(2))
    for (i, j), test in tests.items():
        effect[i, j], pvalue[i, j] = test.effect, test.pvalue
    adjusted = np.stack([stat.correct_pvalues(column, correction) for column in pvalue.T], axis=1)
    significant = np.nan_to_num(adjusted, nan=1.0) < ALPHA
    cells = [[m, *["" if not np.isfinite(e) else f"**{_f(e)}**" if s else _f(e) for e, s in zip(*row)]]
             for m, *row in zip(methods, effect, significant)]
    rows = [[group.metrics[j], methods[i], _used(tests[(i, j)].n, pairs[(i, j)][2]), _f(effect[i, j]),
             _f(pvalue[i, j]), _f(adjusted[i, j])] for i, j in sorted(tests, key=lambda key: key[::-1])]
    skipped = [m for j, m in enumerate(group.metrics) if not np.isfinite(effect[:, j]).any()]
    lines += ["", _table(cells, ["method", *group.metrics]),
              *(["", f"No {baseline} or no other method on: {', '.join(skipped)}."] if skipped else []),
              "", "<details><summary>Tests</summary>", "",
              _table(rows, ["metric", "method", "samples", "median difference", "p", "p corrected"]), "",
              "</details>"]
    if tests:
        scale = np.max(np.abs(np.nan_to_num(effect)), axis=0)
        norm = np.where(np.isfinite(effect), np.divide(effect, scale, out=np.zeros_like(effect),
                                                       where=scale > 0), np.nan)
        heatmap(norm, methods, group.metrics, run_dir / group.stem("vs-random"),
                f"{group.title}: effect vs {baseline}", grey=~significant)
        lines += ["", f"![Effect sizes against Random, {group.title}]({group.stem('vs-random')})", "",
                  ("Heat map: median difference divided by the largest |median difference| of its metric "
                   "(1 = the metric's largest effect); grey cells marked n.s. are not significant.")]
    return lines


def agreement(group: Group) -> list[str]:
    """Krippendorff's α of the per-sample rankings of the methods, per metric."""
    rows = []
    for metric in group.metrics:
        methods = group.methods_of(metric)
        if len(methods) < 2:
            rows.append([metric, str(len(methods)), "", "– (fewer than 2 methods)"])
            continue
        values, total = group.aligned([(m, metric) for m in methods])
        complete = stat.complete_rows(values).shape[0]
        alpha = stat.ranking_alpha(values)
        reason = "" if np.isfinite(alpha) else (" (fewer than 2 samples)" if complete < 2 else " (all tied)")
        rows.append([metric, str(len(methods)), _used(complete, total), _f(alpha) + reason])
    return ["", "#### Agreement of the samples on the ranking", "",
            ("Krippendorff's α (ordinal) with the samples as coders and the methods as units: each sample "
             "ranks the methods by score (ties share their mean rank). 1 = every sample ranks the methods "
             "alike, 0 = chance; below about 0.67 the ranking of methods depends much on the sample."), "",
            _table(rows, ["metric", "methods", "samples", "α"])]


def correlation(group: Group, run_dir: Path) -> list[str]:
    """Inter-metric Spearman correlation per method over the samples, averaged over the methods."""
    lines = ["", "#### Correlation between metrics", ""]
    if len(group.metrics) < 2:
        return lines + ["Fewer than 2 metrics with per-sample scores: no correlation."]
    per_method, used = [], []
    for method in group.methods:
        if all((method, m) in group.cells for m in group.metrics):
            values, total = group.aligned([(method, m) for m in group.metrics])
            per_method.append(values)
            used.append(f"{method} {_used(stat.complete_rows(values).shape[0], total)}")
    if not per_method:
        return lines + ["No method has scores for every metric: no correlation."]
    corr = stat.mean_spearman(per_method)
    heatmap(corr, group.metrics, group.metrics, run_dir / group.stem("metric-correlation"),
            f"{group.title}: mean Spearman ρ")
    return lines + [
        ("Spearman ρ between the metrics over the samples of one method (lower-is-better metrics negated, "
         f"so ρ > 0 means the metrics agree), averaged over the {len(per_method)} methods with every metric. "
         "Samples per method: " + ", ".join(used) + "."), "",
        _table([[m, *[_f(v, 2) for v in row]] for m, row in zip(group.metrics, corr)], ["", *group.metrics]),
        "", f"![Inter-metric correlation, {group.title}]({group.stem('metric-correlation')})"]


def effect_sizes(group: Group, baseline: str) -> list[str]:
    """CLES of every method against the baseline, and of the best method against the runner-up."""
    lines = ["", "#### Common-language effect size", "",
             ("CLES(A, B) = P(A scores better than B) + ½ P(tie) over all pairs of an A sample and a B "
              "sample: 0.5 = no difference, 1 = A always better. *paired*: the share of samples on which A "
              "beats B (ties half), as attribench's CLES plot.")]
    if baseline in group.methods:
        methods, pairs = group.against(baseline)
        table = np.full((len(methods), len(group.metrics)), np.nan)
        for (i, j), (x, y, _) in pairs.items():
            table[i, j] = stat.cles(x, y)
        rows = [[m, *[_f(v, 2) if np.isfinite(v) else "" for v in row]] for m, row in zip(methods, table)]
        lines += ["", f"Against `{baseline}` (A = the row's method, B = {baseline}):", "",
                  _table(rows, ["method", *group.metrics])]
    else:
        lines += ["", f"No `{baseline}` method: CLES against Random skipped."]
    rows = []
    for metric in group.metrics:
        methods = group.methods_of(metric, exclude=baseline)
        if len(methods) < 2:
            continue
        values, total = group.aligned([(m, metric) for m in methods])
        medians = [np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else -np.inf for c in values.T]
        first, second = np.argsort(-np.array(medians), kind="stable")[:2]
        x, y = values[:, first], values[:, second]
        pairs = int(np.sum(np.isfinite(x) & np.isfinite(y)))
        rows.append([metric, methods[first], methods[second], _f(stat.cles(x, y), 2),
                     _f(stat.paired_cles(x, y), 2), _used(pairs, total)])
    if rows:
        lines += ["", "Best against runner-up (by median score, Random excluded):", "",
                  _table(rows, ["metric", "A (best)", "B (runner-up)", "CLES", "paired", "samples"])]
    return lines


def convergence(group: Group, run_dir: Path) -> list[str]:
    """Bootstrap CI width of the median against the sample count, per metric (largest over the methods)."""
    widths: dict[str, tuple[list[int], np.ndarray]] = {}
    for metric in group.metrics:
        values, _ = group.aligned([(m, metric) for m in group.methods_of(metric)])
        sizes = stat.sample_sizes(values.shape[0])
        w = stat.median_ci_widths(values, sizes).reshape(len(sizes), -1) if sizes else np.empty((0, 0))
        if np.isfinite(w).any():
            widths[metric] = (sizes, np.nanmax(np.where(np.isfinite(w), w, -np.inf), axis=1))
    if not widths:
        return []
    columns = sorted({s for sizes, _ in widths.values() for s in sizes})
    rows = [[metric, *[_f(w[sizes.index(s)]) if s in sizes else "" for s in columns]]
            for metric, (sizes, w) in widths.items()]
    convergence_plot(widths, run_dir / group.stem("convergence"), f"{group.title}: CI width of the median")
    return ["", "#### Convergence of the median", "",
            ("Width of the 95% percentile-bootstrap CI of the median score with m samples (m drawn with "
             "replacement from all samples, 1,000 resamples), the largest over the methods, in the metric's "
             "units. Where it has stopped shrinking, more samples change little. The plot shows it relative "
             "to the smallest m, with 1/√m (the rate of a well-behaved median) dashed."), "",
            _table(rows, ["metric", *[f"m = {s}" for s in columns]]), "",
            f"![Convergence of the median, {group.title}]({group.stem('convergence')})"]


def _save(fig: plt.Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def heatmap(values: np.ndarray, rows: Sequence[str], columns: Sequence[str], out: Path, title: str,
            grey: np.ndarray | None = None) -> None:
    """``values`` on [-1, 1], each cell annotated; ``grey`` cells (not significant) grey and marked n.s."""
    grey = np.zeros(values.shape, dtype=bool) if grey is None else grey
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.7 * len(columns)), max(2.5, 1.2 + 0.45 * len(rows))))
    ax.imshow(np.where(grey, 1.0, np.nan), cmap="Greys", vmin=0, vmax=4, aspect="auto")
    image = ax.imshow(np.where(grey, np.nan, values), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        text = "" if not np.isfinite(value) else "n.s." if grey[i, j] else f"{value:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if not grey[i, j] and abs(value) > 0.6 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    _save(fig, out)


def convergence_plot(widths: Mapping[str, tuple[list[int], np.ndarray]], out: Path, title: str) -> None:
    """CI width relative to the smallest m against m (log-log), a line per metric."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for metric, (sizes, w) in widths.items():
        if w[0] > 0:  # a zero width (e.g. a constant median) has no place on a log scale
            ax.plot(sizes, np.where(w > 0, w / w[0], np.nan), marker="o", ms=3, lw=1, label=metric)
    sizes = max((s for s, _ in widths.values()), key=len)
    ax.plot(sizes, np.sqrt(sizes[0] / np.asarray(sizes)), "k--", lw=1, label="1/√m")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("samples m", fontsize=8)
    ax.set_ylabel("CI width / width at smallest m", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title, fontsize=9)
    _save(fig, out)
