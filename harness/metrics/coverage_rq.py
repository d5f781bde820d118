"""DeepImportance's input-level research questions as metrics (family ``coverage``; seed-systems.md §3.3).

Sources: Gerasimou et al., "Importance-Driven Deep Learning System Testing", ICSE 2020; github JoshuaQSH/Wisdom.
Every criterion registered in :mod:`harness.coverage` (or those named in ``criteria``) is built once on the
training traces (``surprise_layers``: the layers LSC, DSC and MDSC read; [] = the last traced layer;
``lsc_lower``, ``lsc_upper``, ``dsc_*``, ``mdsc_*``: their bucket ranges, as in the metric ``coverage``) and
compared by its normalised ``ratio`` (the seed's: TKNP / min(|D|, 10000); LSC, DSC, MDSC,
CC / |D|; the others are ratios already). The ratio of LSC, DSC and MDSC counts every bucket hit, in range
or not, so their bounds move it only through ``lower``'s shift of the bucket grid. Pixel-unit magnitudes
(noise std, attack ε) are scaled by the data's range ``hi − lo`` (the training minimum and maximum), so 0.5
means half the range of a [0, 1] image whatever the normalisation.

* ``coverage_diversity`` (RQ2; uses the case's attribution method): per test image Gaussian noise (std 0.5,
  clamped to the range) on the top 2% of input positions by |relevance| (U_I) or on a random 2% excluding
  them (U_R); coverage of original + U_I versus original + U_R. Expected: U_I higher. ``wins`` per criterion:
  1 if U_I covers more, ½ on a tie, 0 otherwise (primary: its mean).
* ``coverage_adversarial`` (RQ3): of ``samples`` correctly classified inputs, replace a share (1..10%) by
  successful adversarial examples (FGSM ε 0.3; PGD ε 0.3, α 0.1, 20 steps; CW c 1, 50 steps, lr 0.01);
  normalised coverage change (cov − cov₀) / cov₀. Expected: rising with the share; ``rises`` = 1 where the
  change at the largest share is positive.
* ``coverage_evenness`` (RQ4): random test subsets of each size with Dirichlet(½) class proportions (so the
  predictions' evenness varies; a size is capped at half the test set, so that the subsets differ); Pielou's
  J = H / log k of the predicted labels; Pearson r of coverage with J per criterion and size (0 where either is
  constant, counted in ``info``). ``versions`` = "cw" (or "fgsm", "pgd") adds the seed's adversarial versions:
  the test set is attacked once (labels: the true ones; settings as RQ3's), every drawn subset is also scored
  with each input replaced by its adversarial example where the attack succeeded (evenness of that version's
  predictions); ``pearson_versions`` is r over the versions alone and ``pearson_pooled`` over originals and
  versions together (the seed's correlation over all its subsets).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.coverage import workflow
from harness.metrics.minimal_subset import predicted_class
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

REFERENCE = ("Gerasimou et al., Importance-Driven Deep Learning System Testing, ICSE 2020; github JoshuaQSH/Wisdom "
             "(Torch4DeepImportance); Pielou 1966 (evenness)")
COMMON = {"criteria": [], "train_samples": 2000, "surprise_layers": [], **workflow.SURPRISE_BOUNDS,
          **{f"idc_{k}": v for k, v in workflow.IDC_DEFAULTS.items()}}
DIVERSITY_DEFAULTS = MappingProxyType({**COMMON, "test_samples": 100, "fraction": 0.02, "std": 0.5})
ATTACK_SETTINGS = {"eps": 0.3, "alpha": 0.1, "steps": 20, "c": 1.0, "cw_steps": 50, "lr": 0.01, "cw_binary_steps": 1}
"""The attacks' settings (the seed's), shared by RQ3 and RQ4's adversarial versions."""
ADVERSARIAL_DEFAULTS = MappingProxyType({
    **COMMON, "attack": "fgsm", "samples": 100, "shares": [0.01 * k for k in range(1, 11)], **ATTACK_SETTINGS,
})
EVENNESS_DEFAULTS = MappingProxyType({**COMMON, "sizes": [100, 500, 1000], "draws": 5, "concentration": 0.5,
                                      "versions": "", **ATTACK_SETTINGS})
ATTACKS = ("fgsm", "pgd", "cw")
VERSIONS = ("", *ATTACKS)
"""RQ4's subset versions: none, or every subset also with its inputs replaced by the attack's successful
adversarial examples (the seed's "CW versions")."""
NOISE_OFFSET, ATTACK_OFFSET, SUBSET_OFFSET = 0xC0F2, 0xC0F3, 0xC0F4


def _setup(name: str, inputs: MetricInputs, ctx: RunContext, p: dict[str, Any]) -> list[workflow.Built]:
    names = list(p["criteria"]) or workflow.all_criteria()
    unknown = [n for n in names if n not in workflow.CRITERIA]
    if unknown:
        raise ParamError(f"metric {name}: unknown criteria {unknown}; choices: {', '.join(workflow.CRITERIA.names())}")
    idc = {k[len("idc_"):]: v for k, v in p.items() if k.startswith("idc_")}
    surprise = {"layers": list(p["surprise_layers"])} if p["surprise_layers"] else {}
    params = {n: workflow.surprise_params(f"metric {name}", n, p, surprise) for n in workflow.SURPRISE}
    return workflow.build_criteria(inputs, ctx, names, params, p["train_samples"], idc)


def ratios(built: list[workflow.Built], model: Any, x: Tensor, ctx: RunContext) -> Tensor:
    """(C,) normalised coverage of the inputs ``x`` by every built criterion (one pass, labels predicted)."""
    traces = workflow.traces_of(model, x, ctx)
    labels = predicted_class(model, x, ctx)
    values = [workflow.covered(b, traces, labels, 1) for b in built]
    return torch.tensor([v.get("ratio", v["coverage"]) for v in values], dtype=torch.float64)


def data_range(inputs: MetricInputs) -> tuple[float, float]:
    assert inputs.data is not None
    return float(inputs.data.x_train.min()), float(inputs.data.x_train.max())


def coverage_diversity(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """RQ2: coverage of original + noise on important pixels versus original + noise on random pixels."""
    from harness.coverage.attacks import important_noise, random_noise

    p = resolve_params("metric coverage_diversity", params, DIVERSITY_DEFAULTS)
    if inputs.explain is None or inputs.data is None:
        raise ValueError("coverage_diversity: needs the case's method (explain) and its data set")
    built = _setup("coverage_diversity", inputs, ctx, p)
    x = workflow.subset(inputs.data.x_test, p["test_samples"]).to(ctx.device)
    y = workflow.subset(inputs.data.y_test, p["test_samples"]).to(ctx.device)
    relevance = inputs.explain(x, y)
    lo, hi = data_range(inputs)
    std = p["std"] * (hi - lo)
    important = important_noise(x, relevance, p["fraction"], std, lo, hi, ctx.generator(NOISE_OFFSET))
    randomised = random_noise(x, relevance, p["fraction"], std, lo, hi, ctx.generator(NOISE_OFFSET + 1))
    with_important = ratios(built, inputs.model, torch.cat([x, important]), ctx)
    with_random = ratios(built, inputs.model, torch.cat([x, randomised]), ctx)
    wins = (with_important > with_random).double() + 0.5 * (with_important == with_random).double()
    positive = (0.0, None)
    return MetricResult(
        outputs={"important": with_important, "random": with_random, "wins": wins},
        primary="wins", higher_is_better=True,
        bounds={"important": positive, "random": positive, "wins": (0.0, 1.0)},
        info={"criteria": [b.name for b in built], "fraction": p["fraction"], "std": p["std"],
              "test_inputs": len(x)},
    )


def adversarial_examples(inputs: MetricInputs, x: Tensor, y: Tensor, p: dict[str, Any], ctx: RunContext
                         ) -> tuple[Tensor, Tensor]:
    """(adversarial inputs, success mask) by the chosen attack, ε and α in units of the data range."""
    from harness.coverage.attacks import cw, fgsm, pgd

    lo, hi = data_range(inputs)
    scale = hi - lo
    if p["attack"] == "fgsm":
        return fgsm(inputs.model, x, y, p["eps"] * scale, lo=lo, hi=hi)
    if p["attack"] == "pgd":
        return pgd(inputs.model, x, y, p["eps"] * scale, p["alpha"] * scale, p["steps"], lo=lo, hi=hi,
                   generator=ctx.generator(ATTACK_OFFSET))
    return cw(inputs.model, x, y, c=p["c"], steps=p["cw_steps"], lr=p["lr"], binary_steps=p["cw_binary_steps"],
              lo=lo, hi=hi)


def coverage_adversarial(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """RQ3: normalised coverage change as successful adversarial examples replace a growing share."""
    p = resolve_params("metric coverage_adversarial", params, ADVERSARIAL_DEFAULTS, {"attack": ATTACKS})
    if inputs.data is None:
        raise ValueError("coverage_adversarial: needs the case's data set")
    if not p["shares"] or not all(0 < s <= 1 for s in p["shares"]):
        raise ParamError(f"metric coverage_adversarial: shares {p['shares']!r} must be fractions in (0, 1]")
    built = _setup("coverage_adversarial", inputs, ctx, p)
    x_all, y_all = inputs.data.x_test.to(ctx.device), inputs.data.y_test.to(ctx.device)
    right = (predicted_class(inputs.model, x_all, ctx) == y_all).nonzero()[:, 0][:p["samples"]]
    x, y = x_all[right], y_all[right]
    adversarial, success = adversarial_examples(inputs, x, y, p, ctx)
    pool = adversarial[success]
    counts = [min(len(pool), math.ceil(s * len(x))) for s in p["shares"]]
    base = ratios(built, inputs.model, x, ctx)
    curves = [base]
    for count in counts:
        mixed = torch.cat([pool[:count], x[count:]])  # the first `count` originals replaced
        curves.append(ratios(built, inputs.model, mixed, ctx))
    values = torch.stack(curves, dim=1)  # (C, S + 1)
    change = (values[:, 1:] - base[:, None]) / base.clamp_min(1e-12)[:, None]
    change = torch.where(base[:, None] > 0, change, values[:, 1:] - base[:, None])
    rises = (change[:, -1] > 0).double()
    return MetricResult(
        outputs={"coverage": values, "change": change, "rises": rises},
        primary="rises", higher_is_better=True,
        bounds={"coverage": (0.0, None), "change": (None, None), "rises": (0.0, 1.0)},
        info={"criteria": [b.name for b in built], "attack": p["attack"], "shares": p["shares"],
              "replaced": counts, "samples": len(x), "successful": int(success.sum())},
    )


def pielou(labels: Tensor, classes: int) -> float:
    """Pielou's evenness J = H / log k of the label distribution (k classes; 0 for k < 2)."""
    if classes < 2 or len(labels) == 0:
        return 0.0
    share = torch.bincount(labels, minlength=classes).double() / len(labels)
    share = share[share > 0]
    return float(-(share * share.log()).sum() / math.log(classes))


def pearson(a: Tensor, b: Tensor) -> float | None:
    """Pearson's r, or None where either side is constant."""
    if len(a) < 2 or bool(a.max() == a.min()) or bool(b.max() == b.min()):
        return None
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float(a.norm() * b.norm())
    return None if denominator == 0 else float((a * b).sum()) / denominator


def coverage_evenness(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """RQ4: Pearson r of coverage with Pielou's evenness of the predictions, over random subsets (and, with
    ``versions``, over their adversarial versions)."""
    p = resolve_params("metric coverage_evenness", params, EVENNESS_DEFAULTS, {"versions": VERSIONS})
    if inputs.data is None:
        raise ValueError("coverage_evenness: needs the case's data set")
    if p["draws"] < 3:
        raise ParamError(f"metric coverage_evenness: parameter 'draws' = {p['draws']} must be at least 3")
    built = _setup("coverage_evenness", inputs, ctx, p)
    x_all = inputs.data.x_test.to(ctx.device)
    predicted = predicted_class(inputs.model, x_all, ctx).cpu()
    versions = successful = None
    if p["versions"]:
        adversarial, success = adversarial_examples(inputs, x_all, inputs.data.y_test.to(ctx.device),
                                                    {**p, "attack": p["versions"]}, ctx)
        versions = torch.where(success.view(-1, *[1] * (x_all.ndim - 1)), adversarial, x_all)
        successful = int(success.sum())
        predicted_versions = predicted_class(inputs.model, versions, ctx).cpu()
    classes = inputs.data.num_classes
    generator = ctx.generator(SUBSET_OFFSET)
    sizes = [min(s, len(x_all) // 2) for s in p["sizes"]]  # at most half the test set, so subsets differ
    kinds = ("original", "versions", "pooled") if versions is not None else ("original",)
    r = {kind: torch.zeros(len(built), len(sizes), dtype=torch.float64) for kind in kinds}
    undefined = 0
    evenness_all = []
    for j, size in enumerate(sizes):
        points: dict[str, tuple[list[Tensor], list[float]]] = {"original": ([], []), "versions": ([], [])}
        for _ in range(p["draws"]):
            weights = _dirichlet(classes, p["concentration"], generator)
            per_input = weights[predicted] + 1e-12
            chosen = torch.multinomial(per_input, size, replacement=False, generator=generator)
            points["original"][0].append(ratios(built, inputs.model, x_all[chosen.to(x_all.device)], ctx))
            points["original"][1].append(pielou(predicted[chosen], classes))
            if versions is not None:
                points["versions"][0].append(ratios(built, inputs.model, versions[chosen.to(x_all.device)], ctx))
                points["versions"][1].append(pielou(predicted_versions[chosen], classes))
        evenness_all.append(points["original"][1])
        points["pooled"] = tuple(a + b for a, b in zip(points["original"], points["versions"], strict=True))
        for kind in kinds:
            stacked = torch.stack(points[kind][0], dim=1)
            j_values = torch.tensor(points[kind][1], dtype=torch.float64)
            for c in range(len(built)):
                value = pearson(stacked[c], j_values)
                undefined += value is None
                r[kind][c, j] = 0.0 if value is None else value
    outputs = {"pearson": r["original"], "mean_r": r["original"].mean(dim=1)}
    bounds = {name: (-1.0, 1.0) for name in ("pearson", "mean_r")}
    if versions is not None:
        outputs |= {"pearson_versions": r["versions"], "pearson_pooled": r["pooled"]}
        bounds |= {"pearson_versions": (-1.0, 1.0), "pearson_pooled": (-1.0, 1.0)}
    return MetricResult(
        outputs=outputs, primary="mean_r", higher_is_better=True, bounds=bounds,
        info={"criteria": [b.name for b in built], "sizes": sizes, "draws": p["draws"], "undefined": undefined,
              "evenness": evenness_all, "versions": p["versions"], "successful": successful},
    )


def _dirichlet(classes: int, concentration: float, generator: torch.Generator) -> Tensor:
    """Dirichlet(concentration) class weights, drawn by numpy from a seed taken off the CPU generator (torch's
    Gamma sampler takes no generator)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).dirichlet([concentration] * classes))


CHOICES = {"coverage_adversarial": {"attack": ATTACKS}, "coverage_evenness": {"versions": VERSIONS}}
for _name, _compute, _defaults, _what, _method in (
    ("coverage_diversity", coverage_diversity, DIVERSITY_DEFAULTS,
     ("RQ2: coverage of original + noise on the top 2% pixels by the case's method versus original + noise on "
      "a random 2%; wins per criterion."), True),
    ("coverage_adversarial", coverage_adversarial, ADVERSARIAL_DEFAULTS,
     ("RQ3: normalised coverage change as successful FGSM / PGD / CW examples replace 1..10% of correctly "
      "classified inputs (CW: fixed c as the seed, or Carlini & Wagner's binary search over c with "
      "cw_binary_steps > 1)."), False),
    ("coverage_evenness", coverage_evenness, EVENNESS_DEFAULTS,
     ("RQ4: Pearson r of each criterion's coverage with Pielou's evenness of the predicted labels over random "
      "subsets with Dirichlet class proportions; versions = 'cw' adds the subsets' CW versions."), False),
):
    METRICS.add(_name, MetricSpec(
        name=_name, family="coverage", compute=_compute, modalities=frozenset({"image"}), reference=REFERENCE,
        needs_data=True, needs_explain=_method, per_sample=False, uses_method=_method,
        defaults=dict(_defaults), choices=CHOICES.get(_name, {}),
        description=_what,
    ))
