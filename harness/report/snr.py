"""The Sensitivity-n SNR study of attribench: how much of a (Seg-)Sensitivity-n score is the random subsets?

Source: Gevaert et al., "Evaluating feature attribution methods in the image domain", Machine Learning 2024
(seed-systems.md §2): Sensitivity-n and Seg-Sensitivity-n are repeated 100 times per sample with fresh random
subsets; SNR = mean² / variance; finding: Seg-Sensitivity-n has a higher SNR than Sensitivity-n on
high-resolution images. The computation follows the paper's code (arnegevaert/benchmark-general-imaging):
``scripts/sens_n_variance/run_experiment.py`` reruns both metrics ``iterations`` times on the stored
attributions of every method, and ``scripts/sens_n_variance/plot.py`` takes, per (sample, method), the mean
and pandas' ``std()`` (ddof = 1) over the iterations, SNR = mean² / std², and pools every (sample, method)
value of a data set into one boxplot per metric on a log scale. (An older ``scripts/plot/snr_plot.py`` used
``np.std`` with ddof = 0 across the columns of one run and is marked "TODO this is not correct!" there.)

Here, per case of the registered metric ``sensitivity_n`` (pixel) or ``seg_sensitivity_n`` (segment) with
``repeats`` > 1, from its ``repeats`` output (N, R): :func:`sample_snr` per sample. A sample whose R scores
are all equal (variance 0: e.g. a constant attribution, which correlates 0 with every subset) has no defined
SNR (attribench divides by zero); it is skipped and counted ("k of n" samples). Summaries are medians of
the per-sample values, per method and pooled over the methods as attribench's boxplot; :func:`verdict`
checks the paper's finding on those pooled medians.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats
from tabulate import tabulate

from harness.cache import Cache, default_cache_dir
from harness.recorder import EXAMPLE_SIDE
from harness.report.statistics import paired_cles
from harness.store import CaseRecord, read_examples

KINDS = {"sensitivity_n": "pixel", "seg_sensitivity_n": "segment"}
"""Registered metric name → which version of the metric it is."""
FIGURE = "figures/snr.png"
HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable here (needs ≥ 2 image sizes)"


def sample_snr(repeats: np.ndarray) -> np.ndarray:
    """Per-sample SNR = mean² / variance (ddof = 1, as pandas' ``std`` in attribench) over the R repeats of
    ``repeats`` (N, R); NaN where the variance is 0 or a repeat is not finite."""
    repeats = np.asarray(repeats, dtype=np.float64)
    if repeats.ndim != 2 or repeats.shape[1] < 2:
        raise ValueError(f"SNR needs (samples, repeats >= 2) scores, got shape {repeats.shape}")
    mean, var = np.mean(repeats, axis=1), np.var(repeats, axis=1, ddof=1)
    ok = np.isfinite(var) & (var > 0)
    return np.divide(mean**2, var, out=np.full_like(mean, np.nan), where=ok)


@dataclass(frozen=True)
class ImageSize:
    height: int | None = None
    width: int | None = None
    channels: int | None = None

    @property
    def pixels(self) -> int | None:
        return self.height * self.width if self.height and self.width else None

    def __str__(self) -> str:
        if not self.pixels:
            return "size unknown"
        channels = "?" if self.channels is None else self.channels
        return f"{self.height}×{self.width}, {channels} channel{'' if channels == 1 else 's'}"


@dataclass(frozen=True)
class Cell:
    """One case of the study: per-sample SNR (NaN: skipped) of a method under a pixel or segment metric."""
    dataset: str
    model: str
    method: str
    metric: str
    kind: str
    repeats: int
    sample_index: np.ndarray
    snr: np.ndarray
    units: float = float("nan")
    """Segment cases: the median number of SLIC segments per image (pixel cases: NaN)."""


def study_cells(records: Sequence[CaseRecord]) -> list[Cell]:
    """The passed cases of ``sensitivity_n`` / ``seg_sensitivity_n`` (by the registered name in the case
    spec) with more than one repeat per sample."""
    cells = []
    for record in records:
        a = record.attrs
        name = json.loads(a.get("spec") or "{}").get("metric", {}).get("name")
        repeats = record.outputs.get("repeats")
        if a.get("status") != "passed" or name not in KINDS or repeats is None or repeats.ndim != 2:
            continue
        if repeats.shape[1] > 1:
            segments = json.loads(a.get("info") or "{}").get("segments") or [np.nan]
            cells.append(Cell(a["dataset"], a["model"], a["method"], a["metric"], KINDS[name],
                              repeats.shape[1], np.asarray(record.sample_index), sample_snr(repeats),
                              float(np.median(segments))))
    return cells


def image_sizes(
    records: Sequence[CaseRecord], run_dir: Path, cache_root: Path | None = None
) -> dict[str, ImageSize]:
    """Input size per data set: the ``input_shape`` the recorder stores with every per-sample case; for
    results written before it did, from the run's cached data set (``x_test``; the cache at ``cache_root``,
    default the user cache), else H × W of the stored example maps where the recorder did not pool them
    (channels unknown), else unknown."""
    cache = Cache(cache_root or default_cache_dir())
    try:
        examples = read_examples(run_dir)
    except FileNotFoundError:
        examples = {}
    out: dict[str, ImageSize] = {}
    for record in records:
        dataset = record.attrs["dataset"]
        if dataset in out and out[dataset].channels is not None:
            continue
        stored = json.loads(record.attrs.get("input_shape") or "[]")
        if stored:
            out[dataset] = ImageSize(*stored[-2:], stored[0]) if len(stored) == 3 else ImageSize()
            continue
        spec = json.loads(record.attrs.get("spec") or "{}").get("model", {}).get("dataset")
        data = cache.entry("datasets", spec) / "data.pt" if spec else None
        if data is not None and data.exists():
            shape = torch.load(data, map_location="cpu", weights_only=True, mmap=True)["x_test"].shape[1:]
            out[dataset] = ImageSize(*shape[-2:], shape[0]) if len(shape) == 3 else ImageSize()
            continue
        maps = examples.get(f"{dataset}-{record.attrs['model']}-{record.attrs['method']}", {}).get("input")
        if maps is not None and maps.ndim == 3 and max(maps.shape[1:]) < EXAMPLE_SIDE:
            out[dataset] = ImageSize(*maps.shape[1:])
        out.setdefault(dataset, ImageSize())
    return out


@dataclass(frozen=True)
class Verdict:
    outcome: str
    line: str


def verdict(groups: Sequence[tuple[str, int | None, float, float]]) -> Verdict:
    """The paper's finding on (name, pixels per image, median pixel SNR, median segment SNR) per data set ×
    model: with ≥ 2 distinct known image sizes it holds when the segment SNR exceeds the pixel SNR on every
    group of the largest size *and* the gap log10(segment / pixel) grows with the image size (Spearman ρ of
    gap against pixels > 0). Groups without a known size or a positive finite median on both sides are left
    out."""
    usable = [(n, p, np.log10(seg / pix)) for n, p, pix, seg in groups
              if p and np.isfinite(pix) and np.isfinite(seg) and pix > 0 and seg > 0]
    sizes = sorted({p for _, p, _ in usable})
    if len(sizes) < 2:
        return Verdict(UNTESTABLE, f"**Verdict: {UNTESTABLE}**: {len(sizes)} image size with both SNRs.")
    largest = [(n, g) for n, p, g in usable if p == sizes[-1]]
    higher = all(g > 0 for _, g in largest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # equal gaps: ρ undefined (NaN)
        rho = float(stats.spearmanr([p for _, p, _ in usable], [g for _, _, g in usable]).statistic)
    grows = bool(np.isfinite(rho) and rho > 0)
    outcome = HOLDS if higher and grows else FAILS
    gaps = ", ".join(f"{n} {10**g:.3g}×" for n, _, g in sorted(usable, key=lambda u: u[1]))
    parts = [(f"segment SNR {'above' if higher else 'not above'} pixel SNR on the largest images "
              f"({', '.join(n for n, _ in largest)})"),
             f"the gap {'grows' if grows else 'does not grow'} with image size (Spearman ρ = {rho:.2f})"]
    return Verdict(outcome, f"**Verdict: the finding {outcome}**: {'; '.join(parts)}. Median segment / "
                            f"pixel SNR, smallest to largest image: {gaps}.")


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _cell(values: np.ndarray) -> str:
    used, total = int(np.isfinite(values).sum()), values.size
    median = _median(values)
    text = "–" if not np.isfinite(median) else f"{median:.3g}"
    return text if used == total else f"{text} ({used} of {total})"


def _pooled(cells: Sequence[Cell], kind: str) -> np.ndarray:
    return np.concatenate([c.snr for c in cells if c.kind == kind] or [np.empty(0)])


def _paired(cells: Sequence[Cell]) -> float:
    """Share of (sample, method) pairs with segment SNR > pixel SNR (ties half), matched by sample index."""
    pixel, segment = [], []
    for p in (c for c in cells if c.kind == "pixel"):
        for s in (c for c in cells if c.kind == "segment" and c.method == p.method):
            _, i, j = np.intersect1d(p.sample_index, s.sample_index, return_indices=True)
            pixel.append(p.snr[i])
            segment.append(s.snr[j])
    return paired_cles(np.concatenate(segment), np.concatenate(pixel)) if pixel else float("nan")


def group_table(cells: Sequence[Cell]) -> str:
    """Methods × (median pixel SNR, median segment SNR, their ratio), plus all methods pooled."""
    rows = []
    methods = list(dict.fromkeys(c.method for c in cells))
    chosen_by = [*((m, [c for c in cells if c.method == m]) for m in methods), ("all methods", list(cells))]
    for name, chosen in chosen_by:
        pixel, segment = _pooled(chosen, "pixel"), _pooled(chosen, "segment")
        ratio = _median(segment) / _median(pixel) if _median(pixel) > 0 else float("nan")
        share = _paired(chosen)
        rows.append([name, _cell(pixel), _cell(segment), "–" if not np.isfinite(ratio) else f"{ratio:.3g}",
                     "–" if not np.isfinite(share) else f"{share:.2f}"])
    headers = ["method", "pixel SNR", "segment SNR", "segment / pixel", "P(segment > pixel)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def boxplot(groups: Mapping[str, Sequence[Cell]], out: Path) -> None:
    """Per-sample SNR (every method pooled, as attribench) per data set × model (the keys of ``groups`` label
    the x axis), pixel and segment side by side, log scale; non-positive values cannot be shown there and are
    left out of the figure."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(groups) + 1.5), 3.8))
    colours = {"pixel": "tab:blue", "segment": "tab:orange"}
    for k, kind in enumerate(colours):
        data = [(v := _pooled(cells, kind))[np.isfinite(v) & (v > 0)] for cells in groups.values()]
        positions = [i * 3 + k for i in range(len(groups))]
        parts = ax.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.8,
                           patch_artist=True, flierprops={"markersize": 2}, medianprops={"color": "black"})
        for box in parts["boxes"]:
            box.set_facecolor(colours[kind])
        ax.plot([], [], "s", color=colours[kind], label=f"{kind} (Sensitivity-n)" if kind == "pixel"
                else f"{kind} (Seg-Sensitivity-n)")
    ax.set_xticks([i * 3 + 0.5 for i in range(len(groups))], list(groups), rotation=20, ha="right",
                  fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("per-sample SNR = mean² / variance", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def snr_section(records: Sequence[CaseRecord], run_dir: Path, cache_root: Path | None = None) -> list[str]:
    """Markdown lines of the SNR study (empty when the run has no repeated Sensitivity-n cases); the boxplot
    written to ``run_dir / FIGURE``."""
    cells = study_cells(records)
    if not cells:
        return []
    sizes = image_sizes(records, Path(run_dir), cache_root)
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(f"{cell.dataset} × {cell.model}", []).append(cell)
    lines = ["", "## Sensitivity-n SNR (attribench)", "",
             ("Sensitivity-n (random pixel subsets) and Seg-Sensitivity-n (random SLIC segment subsets) "
              "repeated R times per sample with fresh subsets; per sample SNR = mean² / variance of the R "
              "scores (variance with ddof = 1, as attribench's study). Samples whose R scores are all equal "
              "have no SNR and are skipped (\"k of n\"). Cells: the median SNR over the samples; *all "
              "methods* pools every (sample, method) value, as attribench's boxplot. P(segment > pixel): the "
              "share of (sample, method) pairs where the segment SNR is higher (ties half). Paper's finding: "
              "Seg-Sensitivity-n has the higher SNR on high-resolution images.")]
    by_size = sorted(groups.items(), key=lambda item: sizes[item[1][0].dataset].pixels or np.inf)
    summary, points = [], []
    for name, group in by_size:
        size, repeats = sizes[group[0].dataset], ", ".join(map(str, sorted({c.repeats for c in group})))
        pixel, segment = _median(_pooled(group, "pixel")), _median(_pooled(group, "segment"))
        segments = _median(np.array([c.units for c in group if c.kind == "segment"]))
        points.append((name, size.pixels, pixel, segment))
        summary.append([name, str(size), _fmt(segments), repeats, _fmt(pixel), _fmt(segment),
                        _fmt(segment / pixel if pixel > 0 else float("nan"))])
        lines += ["", f"### {group[0].dataset} ({size}) × {group[0].model}", "",
                  f"R = {repeats} repeats; SLIC segments per image (median): {_fmt(segments)}.", "",
                  group_table(group)]
    boxplot({f"{name}\n{sizes[g[0].dataset]}": g for name, g in by_size}, Path(run_dir) / FIGURE)
    lines += ["", "### Summary", "",
              tabulate(summary, headers=["data set × model", "image", "segments", "R", "median pixel SNR",
                                         "median segment SNR", "segment / pixel"],
                       tablefmt="github", disable_numparse=True),
              "", verdict(points).line, "", f"![Per-sample SNR]({FIGURE})", "",
              ("Boxplot: per-sample SNR, all methods pooled, log scale (values ≤ 0 and skipped samples not "
               "shown). Data sets from the smallest image to the largest.")]
    return lines


def _fmt(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.3g}"
