"""``report.md`` from a results file: per data set × model, methods × metrics with bootstrap CIs."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from harness.report.attribench import attribench_sections
from harness.report.coverage import coverage_sections
from harness.report.figures import example_grid
from harness.report.ground_truth import condition_tables, reproduction_section, selection_section
from harness.report.roar import roar_sections
from harness.report.snr import snr_section
from harness.report.stats import bootstrap_mean_ci
from harness.store import CaseRecord, read_examples, read_run

ENV_KEYS = ("python", "torch", "captum", "numpy", "platform", "cpu", "threads", "cuda", "workers", "created")


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "nan"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def model_line(attrs: Mapping[str, Any]) -> str:
    """How well the case's model fits: accuracy, or R^2 and MAE for regression."""
    trained = f"(trained in {attrs['model_train_seconds']:.1f} s)."
    if attrs.get("model_score_name", "accuracy") == "r2":
        return (f"Model (regression): train R² {attrs['model_train_score']:.3f}, test R² "
                f"{attrs['model_test_score']:.3f}, test MAE {attrs['model_test_mae']:.4f} {trained}")
    return (f"Model: train accuracy {attrs['model_train_score']:.3f}, test accuracy "
            f"{attrs['model_test_score']:.3f} {trained}")


def score_table(records: Sequence[CaseRecord]) -> str:
    """Methods (rows) × metrics (columns): mean [95% CI] of the primary output; best mean per column bold."""
    methods = _ordered(r.attrs["method"] for r in records)
    metrics = _ordered(r.attrs["metric"] for r in records)
    stats = {(r.attrs["method"], r.attrs["metric"]): bootstrap_mean_ci(r.primary_values) for r in records}
    higher = {r.attrs["metric"]: bool(r.attrs["higher_is_better"]) for r in records}
    best: dict[str, set[str]] = {}
    for metric in metrics:
        means = {m: stats[(m, metric)][0] for m in methods if (m, metric) in stats}
        finite = [v for v in means.values() if np.isfinite(v)]
        if len(finite) > 1:
            top = max(finite) if higher[metric] else min(finite)
            best[metric] = {m for m, v in means.items() if v == top}  # ties: every best method is bold
    rows = []
    for method in methods:
        row = [method]
        for metric in metrics:
            if (method, metric) not in stats:
                row.append("")
                continue
            mean, lo, hi = stats[(method, metric)]
            cell = _fmt(mean)
            row.append((f"**{cell}**" if method in best.get(metric, ()) else cell) + f" [{_fmt(lo)}, {_fmt(hi)}]")
        rows.append(row)
    headers = ["method"] + [f"{m} {'↑' if higher[m] else '↓'}" for m in metrics]
    return tabulate(rows, headers=headers, tablefmt="github")


def timing_table(records: Sequence[CaseRecord]) -> str:
    rows = [
        [r.attrs["method"], r.attrs["metric"], len(r.sample_index), _fmt(r.attrs["attribution_seconds"]),
         _fmt(r.attrs["metric_seconds"]), int(r.attrs["forward_passes"]), _fmt(r.attrs["samples_per_second"]),
         r.attrs["device"]]
        for r in records
    ]
    headers = ["method", "metric", "samples", "attribution s", "metric s", "forward passes", "samples/s", "device"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _environment(env: dict[str, Any]) -> str:
    rows = [[k, env[k]] for k in ENV_KEYS if k in env]
    return tabulate(rows, headers=["", ""], tablefmt="github")


def suite_order(env: dict[str, Any], records: Sequence[CaseRecord]) -> list[CaseRecord]:
    """Records in the suite's order (data sets, models, methods, metrics), whatever order they arrived in."""
    order = json.loads(env.get("order", "{}"))
    rank = {
        field: {name: i for i, name in enumerate(order.get(section, []))}
        for field, section in (("dataset", "datasets"), ("model", "models"), ("method", "methods"),
                               ("metric", "metrics"))
    }

    def key(record: CaseRecord) -> tuple[Any, ...]:
        return tuple((rank[f].get(record.attrs[f], len(rank[f])), record.attrs[f]) for f in rank)

    return sorted(records, key=key)


def legend(records: Sequence[CaseRecord]) -> str:
    """What each method and metric instance of the run is: registered name and resolved parameters."""
    rows: dict[tuple[str, str], list[str]] = {}
    for record in records:
        spec = json.loads(record.attrs["spec"])
        for kind in ("method", "metric"):
            entry = spec.get(kind, {})
            params = ", ".join(f"{k}={v}" for k, v in sorted(entry.get("params", {}).items()))
            primary = f"`{record.attrs['primary']}`" if kind == "metric" else ""
            rows.setdefault((kind, record.attrs[kind]), [kind, record.attrs[kind], entry.get("name", "?"),
                                                         params, primary])
    ordered = sorted(rows.values(), key=lambda row: row[0] != "method")  # methods first, each in suite order
    return tabulate(ordered, headers=["", "name", "registered as", "parameters", "primary output"],
                    tablefmt="github")


def family_tables(records: Sequence[CaseRecord]) -> list[str]:
    """One methods × metrics table per metric family, families in the order they first appear."""
    families = _ordered(r.attrs["family"] for r in records)
    lines: list[str] = []
    for family in families:
        lines += ["", f"### {family}", "", score_table([r for r in records if r.attrs["family"] == family])]
    return lines


def render(
    env: dict[str, Any], records: Sequence[CaseRecord], figures: dict[tuple[str, str], str] | None = None,
    statistics: Sequence[str] = (),
) -> str:
    """The markdown report; ``figures`` maps (data set, model) to a figure path relative to the report;
    ``statistics`` are the lines of the statistics sections (:func:`harness.report.attribench`)."""
    figures = figures or {}
    records = suite_order(env, records)
    passed = [r for r in records if r.attrs["status"] == "passed"]
    failed = [r for r in records if r.attrs["status"] != "passed"]
    settings = json.loads(env.get("settings", "{}"))
    lines = [
        f"# xaiharness report: run `{env.get('run', '?')}`",
        "",
        (f"Suite `{env.get('suite', '?')}`, seed {settings.get('seed', '?')}, up to "
         f"{settings.get('samples', '?')} test samples per case, attribution target: "
         f"{settings.get('target', '?')}. {len(records)} cases recorded: {len(passed)} passed, "
         f"{len(failed)} failed."),
        "",
        ("Scores are the mean of each case's primary per-sample output with its 95% percentile-bootstrap "
         "confidence interval (2,000 resamples). ↑ higher is better, ↓ lower is better; the best mean per "
         "metric is in bold. Per-sample values and curves are in `results.h5`."),
    ]
    groups: dict[tuple[str, str], list[CaseRecord]] = defaultdict(list)
    for record in passed:
        groups[(record.attrs["dataset"], record.attrs["model"])].append(record)
    for (dataset, model), group in groups.items():
        first = group[0].attrs
        lines += [
            "", f"## {dataset} × {model}", "",
            model_line(first),
            *family_tables(group), "", "<details><summary>Timing</summary>", "", timing_table(group), "",
            "</details>",
        ]
        if (dataset, model) in figures:
            lines += ["", f"![Example attributions, {dataset} × {model}]({figures[(dataset, model)]})",
                      "", ("Example attribution maps (mean |attribution| over channels, each map scaled to its "
                      "own maximum); the green box is the ground-truth region where the data set has one.")]
    lines += [*condition_tables(passed), *selection_section(passed), *reproduction_section(passed),
              *statistics]
    if records:
        lines += ["", "## Methods and metrics", "", legend(records)]
    if failed:
        lines += ["", "## Failed cases", ""]
        lines += [f"- `{r.attrs['id']}`: {r.attrs['message']}" for r in failed]
    lines += ["", "## Environment", "", _environment(env), ""]
    return "\n".join(lines)


def write_figures(run_dir: Path, env: dict[str, Any], records: Sequence[CaseRecord]) -> dict[tuple[str, str], str]:
    """``figures/<dataset>-<model>.png`` for every data set × model with example maps; their paths."""
    examples = read_examples(run_dir / "results.h5")
    out: dict[tuple[str, str], str] = {}
    pairs = _ordered((r.attrs["dataset"], r.attrs["model"]) for r in suite_order(env, records))
    for dataset, model in pairs:
        methods = _ordered(r.attrs["method"] for r in suite_order(env, records)
                           if (r.attrs["dataset"], r.attrs["model"]) == (dataset, model))
        maps = {m: examples[f"{dataset}-{model}-{m}"] for m in methods if f"{dataset}-{model}-{m}" in examples}
        name = f"figures/{dataset}-{model}.png"
        if example_grid(maps, methods, run_dir / name, f"{dataset} × {model}"):
            out[(dataset, model)] = name
    return out


def write_report(path: Path | str) -> Path:
    """Regenerate ``report.md`` (and its figures) next to the results file of a run; returns its path."""
    env, records = read_run(path)
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    passed = [r for r in records if r.attrs["status"] == "passed"]
    figures = write_figures(run_dir, env, passed)
    statistics = attribench_sections(suite_order(env, passed), run_dir)
    statistics += snr_section(suite_order(env, passed), run_dir)  # Sensitivity-n SNR study (report/snr.py)
    statistics += roar_sections(suite_order(env, passed), run_dir)  # removal studies (report/roar.py)
    statistics += coverage_sections(suite_order(env, passed), run_dir)  # DeepImportance RQ1-RQ5 (report/coverage.py)
    out = run_dir / "report.md"
    out.write_text(render(env, records, figures, statistics))
    return out


def summary_rows(records: Sequence[CaseRecord]) -> list[list[str]]:
    """Short rows for the terminal: case id, primary output, mean."""
    return [
        [r.attrs["id"], f"{r.attrs['primary']} {'↑' if r.attrs['higher_is_better'] else '↓'}",
         _fmt(float(np.mean(r.primary_values)))]
        for r in records if r.attrs["status"] == "passed"
    ]
