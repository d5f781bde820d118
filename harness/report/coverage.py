"""Report sections of the coverage study: DeepImportance's research questions RQ1–RQ5 (family ``coverage``).

Source: Gerasimou, Eniser, Sen & Cakan, "Importance-Driven Deep Learning System Testing", ICSE 2020, and its
PyTorch port github JoshuaQSH/Wisdom (seed-systems.md §3.3). The records are those of
:mod:`harness.metrics.coverage` (``coverage``: RQ5 and the plain coverage; ``coverage_pruning``: RQ1) and
:mod:`harness.metrics.coverage_rq` (``coverage_diversity``: RQ2; ``coverage_adversarial``: RQ3;
``coverage_evenness``: RQ4), whose docstrings define every output. The seed's expected directions, checked in
the computed "Reproduction" paragraph: pruning an attributor's top-N neurons hurts accuracy more than pruning N
random neurons (RQ1); noise on the important pixels covers more than noise on random pixels (RQ2); coverage
rises with the share of adversarial inputs (RQ3). RQ4 and RQ5 are reported without a prediction. Figures are
written under ``run_dir/figures``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from harness.report.occlusion import Entry, counted, entries, fmt, mean_sd, paragraph, pct, table
from harness.store import CaseRecord

STUDIES = ("coverage", "coverage_pruning", "coverage_diversity", "coverage_adversarial", "coverage_evenness")
INTRO = (
    "DeepImportance's experiments (Gerasimou et al., ICSE 2020; seed-systems.md §3.3). *Coverage*: each "
    "criterion built on the training traces, covering the test inputs (figures as the criterion computes them; "
    "*ratio*: the normalised value the seed compares: TKNP / min(|D|, 10000); LSC, DSC, MDSC, CC / |D|; the "
    "others are ratios already). *RQ5*: build time, time to cover the test set (traces, predictions, sharded "
    "update and merge) and inputs per second. *RQ1*: accuracy drop from zeroing the attributor's global top-N "
    "neurons versus the mean ± sd (ddof = 1) of R random draws of N neurons; *hurts more than random*: the drop "
    "is above the random mean + sd at every N. *RQ2*: normalised coverage of original + noise on the top "
    "pixels by the method's |relevance| (U_I) versus original + noise on random pixels (U_R); the larger in "
    "bold. *RQ3*: normalised coverage change (cov − cov₀) / cov₀ (the difference where cov₀ = 0) as successful "
    "adversarial examples replace a share of correctly classified inputs; *rising*: the change at the largest "
    "share is above 0 and the curve from the clean set (change 0) through every share never decreases (ties "
    "allowed). *RQ4*: Pearson r of coverage with Pielou's evenness of the predicted labels over random "
    "subsets, per subset size. Figures: RQ1 the drop per attributor (solid) with its random mean (dashed) and "
    "± sd band; RQ3 the change per criterion from the clean set at share 0. In the Reproduction paragraph an expected direction *held* where it held for "
    "every item counted, *held partly* for some, *did not hold* for none.")


def named(items: Sequence[Entry], key: Callable[[Entry], str]) -> list[str]:
    """``key(entry)`` of each entry, with its metric instance appended where two entries share it."""
    counts = Counter(key(e) for e in items)
    return [key(e) if counts[key(e)] == 1 else f"{key(e)} · {e.metric}" for e in items]


def direction(held: int, total: int) -> str:
    """``held`` (all), ``held partly`` (some) or ``did not hold`` (none) of ``total``."""
    return "held" if held == total else "did not hold" if held == 0 else "held partly"


def number(value: float) -> str:
    """Integral values (counts such as TKNP, CC) whole; others to three significant digits."""
    return f"{value:.0f}" if np.isfinite(value) and value == round(value) and abs(value) < 1e7 else fmt(value)


def signed(value: float) -> str:
    """A change with its sign to three significant digits; ``0`` for no change."""
    return "0" if value == 0 else fmt(value) if not np.isfinite(value) else f"{value:+.3g}"


def _scalar(entry: Entry, name: str) -> float:
    return float(np.asarray(entry.outputs[name]).reshape(-1)[0])


def coverage_tables(group: Sequence[Entry]) -> list[str]:
    """The plain coverage of the test set and the RQ5 cost table, a row per ``coverage`` case."""
    plain, cost = [], []
    for e in group:
        criterion, cov, ratio = str(e.info.get("criterion", "?")), _scalar(e, "coverage"), _scalar(e, "ratio")
        extra = {k: v for k, v in e.info.get("figures", {}).items() if k not in ("coverage", "ratio")}
        plain.append([criterion, e.metric, str(e.info.get("test_inputs", "?")), number(cov), fmt(ratio),
                      ", ".join(f"{k} {number(float(v))}" for k, v in extra.items()) or "–"])
        rate = _scalar(e, "throughput")
        cost.append([criterion, e.metric, number(cov), fmt(ratio), fmt(_scalar(e, "build_seconds")),
                     fmt(_scalar(e, "update_seconds")), f"{rate:,.0f}" if rate >= 1000 else fmt(rate)])
    return ["", "Coverage of the test set:", "",
            table(plain, ["criterion", "instance", "test inputs", "coverage", "ratio", "other figures"]), "",
            "RQ5, cost:", "",
            table(cost, ["criterion", "instance", "coverage", "ratio", "build s", "run s", "inputs/s"])]


def pruning_verdict(drop: np.ndarray, random: np.ndarray) -> tuple[int, int]:
    """(values of N where ``drop`` (K,) is above the random mean + sd (``random`` (R, K), ddof 1), K)."""
    mean, sd = mean_sd(random)
    return int(np.sum(np.asarray(drop).reshape(-1) > mean + sd)), int(mean.size)


def figure_name(kind: str, dataset: str, model: str) -> str:
    """A figure's path relative to the report: ``figures/coverage-<kind>-<dataset>-<model>.png``."""
    return f"figures/coverage-{kind}-{dataset}-{model}.png"


def pruning_table(group: Sequence[Entry], run_dir: Path, name: str, title: str
                  ) -> tuple[list[str], tuple[list[str], int]]:
    """RQ1: attributor × N (drop vs random mean ± sd), the verdicts, the figure ``run_dir / name``;
    (lines, (attributors that hurt more than random, attributors))."""
    labels = named(group, lambda e: str(e.info.get("attributor", e.metric)))
    ns = sorted({int(n) for e in group for n in e.info.get("ns", [])})
    rows, held = [], []
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (e, label) in enumerate(zip(group, labels)):
        x, drop, (mean, sd) = [int(n) for n in e.info["ns"]], e.outputs["drop"].reshape(-1), mean_sd(
            e.outputs["random_drop"])
        hits, total = pruning_verdict(drop, e.outputs["random_drop"])
        cells = {n: f"{d:.3f} vs {m:.3f} ± {s:.3f}" for n, d, m, s in zip(x, drop, mean, sd)}
        hurts = total > 0 and hits == total
        held += [label] if hurts else []
        rows.append([label, f"{_scalar(e, 'clean_accuracy'):.3f}", *[cells.get(n, "") for n in ns],
                     "hurts more than random" if hurts else f"no ({hits} of {total} N)"])
        colour = plt.get_cmap("tab10")(i % 10)
        ax.plot(x, drop, marker="o", ms=3, color=colour, label=label)
        ax.plot(x, mean, ls="--", lw=1, color=colour, label=f"{label}: random")
        ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, lw=0)
    ax.set_xticks(ns)
    _save(fig, ax, Path(run_dir) / name, f"{title}: RQ1 pruning", "neurons zeroed N", "accuracy drop")
    lines = ["", "RQ1, accuracy drop from pruning N neurons (attributor vs random mean ± sd):", "",
             f"![RQ1 pruning, {title}]({name})", "",
             table(rows, ["attributor", "clean accuracy", *[f"N = {n}" for n in ns], "verdict"])]
    return lines, (held, len(group))


def diversity_table(group: Sequence[Entry]) -> tuple[list[str], tuple[int, int, int], list[str]]:
    """RQ2: criterion × method, U_I vs U_R with the larger bold, and the count of U_I > U_R per method;
    (lines, (pairs with U_I > U_R, with U_I < U_R, total), methods winning on more than half their criteria)."""
    names = named(group, lambda e: e.method)
    criteria = list(dict.fromkeys(c for e in group for c in e.info.get("criteria", [])))
    cells: dict[tuple[str, str], str] = {}
    wins, losses, total, majority, counts = 0, 0, 0, [], []
    for e, name in zip(group, names):
        pairs = list(zip(e.info.get("criteria", []), e.outputs["important"], e.outputs["random"]))
        for c, i, u in pairs:
            a, b = fmt(float(i)), fmt(float(u))
            cells[(c, name)] = f"**{a}** vs {b}" if i > u else f"{a} vs **{b}**" if u > i else f"{a} vs {b}"
        won, size = sum(int(i > u) for _, i, u in pairs), len(pairs)
        wins, losses, total = wins + won, losses + sum(int(u > i) for _, i, u in pairs), total + size
        counts.append(f"{won} of {size}")
        majority += [name] if 2 * won > size else []
    rows = [[c, *[cells.get((c, n), "") for n in names]] for c in criteria] + [["U_I > U_R", *counts]]
    lines = ["", "RQ2, normalised coverage with noise on important (U_I) vs random (U_R) pixels:", "",
             table(rows, ["criterion", *names])]
    return lines, (wins, losses, total), majority


def rising(change: np.ndarray) -> bool:
    """RQ3 verdict of one criterion's change (S,) over the shares: positive at the largest share and
    non-decreasing from the clean set (change 0), ties allowed."""
    curve = np.r_[0.0, np.asarray(change, dtype=np.float64)]
    return bool(curve[-1] > 0 and np.all(np.diff(curve) >= 0))


def adversarial_tables(group: Sequence[Entry], run_dir: Path, name: str, title: str
                       ) -> tuple[list[str], list[tuple[str, int, int]]]:
    """RQ3: per attack instance a criterion × share table of the change with the verdicts, and the figure
    ``run_dir / name`` with a panel per attack; (lines, [(attack, rising criteria, criteria)])."""
    labels = named(group, lambda e: str(e.info.get("attack", e.metric)))
    fig, axes = plt.subplots(1, len(group), figsize=(4.4 * len(group) + 2.0, 3.6), squeeze=False)
    lines = ["", "RQ3, normalised coverage change as adversarial examples replace a share of the inputs:", "",
             f"![RQ3 adversarial share, {title}]({name})"]
    counts = []
    for ax, e, label in zip(axes[0], group, labels):
        shares, criteria = [float(s) for s in e.info.get("shares", [])], list(e.info.get("criteria", []))
        verdicts = [rising(row) for row in e.outputs["change"]]
        rows = [[c, fmt(float(clean)), *[signed(float(v)) for v in row], "rising" if ok else "no"]
                for c, clean, row, ok in zip(criteria, e.outputs["coverage"][:, 0], e.outputs["change"], verdicts)]
        up = [c for c, ok in zip(criteria, verdicts) if ok]
        counts.append((label, len(up), len(criteria)))
        replaced = ", ".join(str(int(r)) for r in e.info.get("replaced", []))
        lines += ["", (f"**{label}**: {e.info.get('samples', '?')} correctly classified inputs, "
                       f"{e.info.get('successful', '?')} successful adversarial examples, replaced per share: "
                       f"{replaced}; rising: {counted(up, len(criteria))}."), "",
                  table(rows, ["criterion", "clean", *[pct(s) for s in shares], "verdict"])]
        for j, (c, row) in enumerate(zip(criteria, e.outputs["change"])):
            ax.plot([0.0, *[100 * s for s in shares]], np.r_[0.0, row], marker="o", ms=2, lw=1, label=c,
                    color=plt.get_cmap("tab20")(j % 20))
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(label, fontsize=9)
    _save(fig, axes[0][-1], Path(run_dir) / name, f"{title}: RQ3", "adversarial share (%)", "normalised coverage change")
    return lines, counts


def evenness_tables(group: Sequence[Entry]) -> list[str]:
    """RQ4: per case, criterion × subset size of Pearson r, the mean, and the undefined count."""
    lines = ["", "RQ4, Pearson r of coverage with Pielou's evenness of the predictions:"]
    for e in group:
        sizes, criteria = list(e.info.get("sizes", [])), list(e.info.get("criteria", []))
        rows = [[c, *[f"{v:+.3f}" for v in r], f"{m:+.3f}"]
                for c, r, m in zip(criteria, e.outputs["pearson"], e.outputs["mean_r"].reshape(-1))]
        pooled = "pearson_pooled" in e.outputs
        if pooled:  # the subsets' adversarial versions: r over them alone and over originals + versions
            for row, versions, both in zip(rows, e.outputs["pearson_versions"], e.outputs["pearson_pooled"]):
                row += [f"{float(versions.mean()):+.3f}", f"{float(both.mean()):+.3f}"]
        cells = len(criteria) * len(sizes) * (3 if pooled else 1)
        attack = e.info.get("versions", "")
        versions_text = (f" With {attack.upper()} versions of every subset ({e.info.get('successful', '?')} test "
                         "inputs replaced where the attack succeeded): mean r over the versions alone and over "
                         "originals and versions pooled (the seed's RQ4)." if pooled else "")
        extra = ["versions mean r", "pooled mean r"] if pooled else []
        lines += ["", (f"`{e.metric}`: {e.info.get('draws', '?')} draws per size; "
                       f"{e.info.get('undefined', 0)} of {cells} correlations undefined (coverage or evenness "
                       f"constant over the draws) and set to 0.{versions_text}"), "",
                  table(rows, ["criterion", *[f"n = {s}" for s in sizes], "mean r", *extra])]
    return lines


def _save(fig: plt.Figure, legend_ax: plt.Axes, out: Path, title: str, xlabel: str, ylabel: str) -> None:
    for ax in fig.axes:
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    legend_ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(title, fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90, bbox_inches="tight")  # keep the legend outside the axes
    plt.close(fig)


def reproduction(pruning: tuple[list[str], int] | None, diversity: tuple[tuple[int, int, int], list[str], int]
                 | None, adversarial: list[tuple[str, int, int]]) -> str:
    """The Reproduction paragraph of one data set × model from the RQ1–RQ3 verdicts ("" without any)."""
    parts = []
    if pruning is not None:
        held, total = pruning
        parts.append(f"RQ1, pruning the attributor's top-N neurons hurts accuracy more than random at every N: "
                     f"{direction(len(held), total)} for {len(held)} of {total} attributors"
                     + (f" ({', '.join(held)})" if held else ""))
    if diversity is not None:
        (wins, losses, total), majority, methods = diversity
        parts.append(f"RQ2, noise on important pixels covers more than noise on random pixels: "
                     f"{direction(wins, total)} (U_I > U_R on {wins} of {total} criterion × method pairs, "
                     f"U_I < U_R on {losses}, ties {total - wins - losses}; methods with U_I > U_R on more than "
                     f"half their criteria: {counted(majority, methods)})")
    if adversarial:
        up, total = sum(a[1] for a in adversarial), sum(a[2] for a in adversarial)
        each = ", ".join(f"{name} {k} of {n}" for name, k, n in adversarial)
        parts.append(f"RQ3, coverage rises with the adversarial share: {direction(up, total)} (rising on {up} of "
                     f"{total} criterion × attack curves: {each})")
    return paragraph(parts) if parts else ""


def coverage_sections(records: Sequence[CaseRecord], run_dir: Path) -> list[str]:
    """Markdown lines of the coverage study (empty without its records): per data set × model the coverage
    and RQ5 tables, RQ1–RQ4 tables, the RQ1 and RQ3 figures and the Reproduction paragraph."""
    found = entries(records, STUDIES)
    if not found:
        return []
    lines = ["", "## Coverage (DeepImportance RQ1–RQ5)", "", INTRO]
    for dataset, model in dict.fromkeys((e.dataset, e.model) for e in found):
        by = {s: [e for e in found if (e.dataset, e.model, e.name) == (dataset, model, s)] for s in STUDIES}
        title = f"{dataset} × {model}"
        lines += ["", f"### {title}"]
        lines += coverage_tables(by["coverage"]) if by["coverage"] else []
        pruning = diversity = None
        if by["coverage_pruning"]:
            part, pruning = pruning_table(by["coverage_pruning"], run_dir, figure_name("pruning", dataset, model),
                                          title)
            lines += part
        if by["coverage_diversity"]:
            part, pairs, majority = diversity_table(by["coverage_diversity"])
            lines, diversity = lines + part, (pairs, majority, len(by["coverage_diversity"]))
        adversarial: list[tuple[str, int, int]] = []
        if by["coverage_adversarial"]:
            part, adversarial = adversarial_tables(by["coverage_adversarial"], run_dir,
                                                   figure_name("adversarial", dataset, model), title)
            lines += part
        lines += evenness_tables(by["coverage_evenness"]) if by["coverage_evenness"] else []
        text = reproduction(pruning, diversity, adversarial)
        lines += ["", text] if text else []
    return lines
