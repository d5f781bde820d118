"""The loss-gradient occlusion study in the report, and the parsing of study records shared with
:mod:`harness.report.roar`.

Source: Subramanian et al., "Anomalous behaviour of loss gradient based interpretability methods", arXiv
2207.07769 (seed-systems.md §5; code github VinodS7/investigate-gradients). Inputs ranked by the gradient g of
the loss with the true label are occluded, the most positive (order ``positive``) or the most negative
(``negative``) first, by a replacement value r; the score (accuracy or AUROC) is compared with the un-occluded
score, averaged over independently trained models. First-order reason for a change: ΔL ≈ Σ_{i∈S} g_i (r_i − x_i).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tabulate import tabulate

from harness.store import CaseRecord

STUDY = "loss_gradient_occlusion"
IMPROVES = frozenset({("grad_orig", "negative", "image_max"), ("grad_orig", "positive", "image_min"),
                      ("grad_inp", "positive", "mean")})
"""(variant, order, replacement) whose occlusion lowers the loss to first order (seed-systems.md §5)."""
DEGRADES = frozenset({("grad_inp", "negative", "mean")})
"""(variant, order, replacement) whose occlusion raises the loss to first order; ``random`` always does."""


@dataclass(frozen=True)
class Entry:
    """One passed case of a study: where it ran, what ranked the inputs, and its outputs."""
    dataset: str
    model: str
    method: str
    """The suite's method instance (the report's row label)."""
    method_name: str
    """The registered method (``random``, ``sobel``, ``loss_gradient``, ...)."""
    method_params: Mapping[str, Any]
    metric: str
    name: str
    """The registered metric (``roar``, ``kar``, ``pixel_perturbation``, ``road``, ...)."""
    info: Mapping[str, Any]
    outputs: Mapping[str, np.ndarray]
    sample_index: np.ndarray
    """Test-set indices of a per-sample case (empty for one that is not per sample)."""


def entries(records: Iterable[CaseRecord], names: Iterable[str]) -> list[Entry]:
    """The passed records whose registered metric (``spec["metric"]["name"]``) is one of ``names``, in order."""
    wanted, out = set(names), []
    for record in records:
        a = record.attrs
        spec = json.loads(a.get("spec") or "{}")
        name = spec.get("metric", {}).get("name")
        if a.get("status", "passed") != "passed" or name not in wanted:
            continue
        method = spec.get("method", {})
        out.append(Entry(a["dataset"], a["model"], a["method"], method.get("name", a["method"]),
                         method.get("params", {}), a["metric"], name, json.loads(a.get("info") or "{}"),
                         {k: np.asarray(v, dtype=np.float64) for k, v in record.outputs.items()},
                         np.asarray(record.sample_index)))
    return out


def grouped(items: Iterable[Entry], setting: Callable[[Entry], Hashable]) -> dict[tuple[Any, ...], list[Entry]]:
    """Entries by (data set, model, ``setting(entry)``), in the order they first appear."""
    out: dict[tuple[Any, ...], list[Entry]] = {}
    for entry in items:
        out.setdefault((entry.dataset, entry.model, setting(entry)), []).append(entry)
    return out


def labels(items: Sequence[Entry], key: Callable[[Entry], Hashable]) -> list[str]:
    """The method of each entry, with its metric instance appended where two entries share ``key``."""
    counts: dict[Hashable, int] = {}
    for entry in items:
        counts[key(entry)] = counts.get(key(entry), 0) + 1
    return [e.method if counts[key(e)] == 1 else f"{e.method} · {e.metric}" for e in items]


def mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof = 1) over the first axis (repeats or replicas); the deviation is 0
    with a single row (no spread measured)."""
    values = np.asarray(values, dtype=np.float64)
    sd = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), np.asarray(sd)


def rises(mean: np.ndarray, sd: np.ndarray) -> list[int]:
    """Indices i of the steps i → i + 1 of a curve that should not rise where it rises by more than the
    spread of both points: mean[i + 1] − mean[i] > sd[i] + sd[i + 1]."""
    mean, sd = np.asarray(mean), np.asarray(sd)
    return [int(i) for i in np.flatnonzero(np.diff(mean) > sd[:-1] + sd[1:])]


def fmt(value: float, digits: int = 3) -> str:
    """``digits`` significant digits; ``–`` for NaN."""
    return "–" if not np.isfinite(value) else f"{value:.{digits}g}"


def pm(mean: float, sd: float) -> str:
    """``mean ± sd`` to three decimals (accuracies, AUROCs and their changes)."""
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(mean) else "–"


def pct(fraction: float) -> str:
    """A fraction of the inputs as a percentage: 0.1 → ``10%``."""
    return f"{100 * fraction:g}%"


def table(rows: list[list[str]], headers: Sequence[str]) -> str:
    """A GitHub markdown table of preformatted cells."""
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True)


def paragraph(parts: Sequence[str]) -> str:
    """The "Reproduction" paragraph: the findings joined, the first capitalised."""
    text = "; ".join(parts)
    return f"**Reproduction.** {text[:1].upper()}{text[1:]}."


def counted(names: Sequence[str], total: int) -> str:
    """"k of n (a, b)"."""
    return f"{len(names)} of {total}" + (f" ({', '.join(names)})" if names else "")


def variant(entry: Entry) -> str:
    """The ranking of a loss-gradient row: the ``variant`` of ``loss_gradient``, else the registered method."""
    return str(entry.method_params.get("variant", entry.method_name)) if entry.method_name == "loss_gradient" \
        else entry.method_name


def prediction(name: str, order: str, replacement: str) -> str:
    """The first-order prediction of seed-systems.md §5 for a row: ``improves``, ``degrades`` or ``—``."""
    if name == "random" or (name, order, replacement) in DEGRADES:
        return "degrades"
    return "improves" if (name, order, replacement) in IMPROVES else "—"


def observed(change: np.ndarray) -> str:
    """``raises`` when the mean occluded score is above clean at every fraction, ``lowers`` when below at
    every fraction, ``mixed`` otherwise (a fraction with no change counts as mixed)."""
    return "raises" if np.all(change > 0) else "lowers" if np.all(change < 0) else "mixed"


@dataclass(frozen=True)
class Row:
    """One (variant, order, replacement) of a loss-gradient group: score − clean per replica and fraction."""
    variant: str
    order: str
    replacement: str
    fractions: list[float]
    change: np.ndarray
    """(R, K): occluded score − clean score of each replica."""
    clean: np.ndarray

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        return mean_sd(self.change)

    @property
    def anomalies(self) -> np.ndarray:
        """(K,) bool: the occluded score is above clean by more than the replica spread (sd of the change)."""
        mean, sd = self.stats
        return mean > sd

    @property
    def prediction(self) -> str:
        return prediction(self.variant, self.order, self.replacement)

    @property
    def observed(self) -> str:
        return observed(self.stats[0])


def loss_gradient_rows(group: Sequence[Entry], loss: bool = False) -> list[Row]:
    """A :class:`Row` per entry of one data set × model; duplicates of (variant, order, replacement) get
    their metric instance appended to the replacement. ``loss``: rows of the cross-entropy DEcrease (clean
    loss − occluded loss, positive = the occluded input fits its true label better) instead of the score."""
    keys = labels(group, lambda e: (variant(e), e.info.get("order"), e.info.get("replacement")))
    rows = []
    for entry, label in zip(group, keys):
        replacement = str(entry.info.get("replacement", "?"))
        if label != entry.method:
            replacement += f" ({entry.metric})"
        if loss and "loss" not in entry.outputs:
            continue
        score, clean = (entry.outputs["score"], entry.outputs["clean_score"]) if not loss else (
            -entry.outputs["loss"], -entry.outputs["clean_loss"])
        rows.append(Row(variant(entry), str(entry.info.get("order", "?")), replacement,
                        [float(x) for x in entry.info.get("fractions", range(score.shape[1]))],
                        score - clean[:, None], -clean if loss else clean))
    return rows


def loss_gradient_table(rows: Sequence[Row], delta: str = "Δ") -> str:
    """(variant, order, replacement) × fractions: mean ± sd of score − clean; **bold** anomalies."""
    fractions = sorted({x for row in rows for x in row.fractions})
    out = []
    for row in rows:
        mean, sd = row.stats
        cells = {x: pm(m, s) if not a else f"**{pm(m, s)}**"
                 for x, m, s, a in zip(row.fractions, mean, sd, row.anomalies)}
        out.append([row.variant, row.order, row.replacement, pm(*mean_sd(row.clean)),
                    *[cells.get(x, "") for x in fractions], row.prediction, row.observed])
    headers = ["ranking", "order", "replacement", "clean", *[f"{delta} at {pct(x)}" for x in fractions],
               "first-order prediction", "observed"]
    return table(out, headers)


def loss_gradient_reproduction(rows: Sequence[Row]) -> str:
    """Which of the study's claims held on these rows, from the numbers."""
    ranked = [r for r in rows if r.variant != "random"]
    anomalous = [f"{r.variant}/{r.order}/{r.replacement}" for r in ranked if r.anomalies.any()]
    parts = [(f"rows where occluding by the loss gradient raised the score above clean beyond the replica "
              f"spread: {counted(anomalous, len(ranked))}, so the headline finding "
              f"{'held' if anomalous else 'did not hold'}")]
    for claim, wanted in (("improves", "raises"), ("degrades", "lowers")):
        chosen = [r for r in rows if r.prediction == claim]
        if chosen:
            held = [f"{r.variant}/{r.order}/{r.replacement}" for r in chosen if r.observed == wanted]
            parts.append(f"predicted to {claim[:-1]}: {wanted} at every fraction on {counted(held, len(chosen))}")
    randoms = [r for r in rows if r.variant == "random"]
    if randoms:
        monotone = [f"{r.order}/{r.replacement}" for r in randoms
                    if r.observed == "lowers" and not rises(np.r_[0.0, r.stats[0]], np.r_[0.0, r.stats[1]])]
        parts.append(f"random degraded monotonically (below clean at every fraction, non-increasing in the "
                     f"fraction within the spread) on {counted(monotone, len(randoms))}")
    return paragraph(parts)


def loss_gradient_section(records: Sequence[CaseRecord]) -> list[str]:
    """Markdown lines of the loss-gradient study (empty without its records): a table per data set × model
    (and score / fractions / replica count, where a pair has several) and the reproduction paragraph."""
    groups = grouped(entries(records, [STUDY]), lambda e: (e.info.get("score_name", "score"),
                                                            e.outputs["score"].shape[0]))
    if not groups:
        return []
    lines = ["", "## Loss-gradient occlusion (Subramanian et al.)", "",
             ("Inputs ranked by the loss gradient g = ∂L/∂x with the true label (ranking: |g| `abs_grad`, g "
              "`grad_orig`, g ⊙ x `grad_inp`, ...; `random`: a random ranking) are occluded, the most positive "
              "values first (order *positive*) or the most negative first (*negative*), by the replacement; "
              "no retraining. Cells: Δ = occluded score − clean score, mean ± sd (ddof = 1) over the R "
              "independently trained replicas; *clean*: the un-occluded score. **Bold**: the occluded score "
              "is above clean by more than the replica spread (mean Δ > sd of Δ; with R = 1 any rise), the "
              "study's anomaly. First-order prediction from ΔL ≈ Σ_{i∈S} g_i (r_i − x_i): improves for "
              "(grad_orig, negative, image_max), (grad_orig, positive, image_min), (grad_inp, positive, "
              "mean); degrades for (grad_inp, negative, mean) and random. *observed*: raises / lowers = mean "
              "Δ above / below 0 at every fraction, else mixed.")]
    for (dataset, model, (score, replicas)), group in groups.items():
        rows = loss_gradient_rows(group)
        lines += ["", f"### {dataset} × {model}: {score}, R = {replicas}", "",
                  loss_gradient_table(rows), "", loss_gradient_reproduction(rows)]
        losses = loss_gradient_rows(group, loss=True)
        if losses:
            lines += ["", ("Mean cross-entropy with the true label, the quantity the first-order argument is "
                           "about (an accuracy near 1 cannot rise): −ΔL = clean loss − occluded loss, so "
                           "positive = the occluded inputs fit their labels better; **bold**: a decrease beyond "
                           "the replica spread; *clean*: the un-occluded loss; raises / lowers = −ΔL above / "
                           "below 0 at every fraction."), "", loss_gradient_table(losses, "−ΔL"), "",
                      loss_gradient_reproduction(losses).replace("raised the score above clean",
                                                                 "lowered the loss below clean")]
    return lines
