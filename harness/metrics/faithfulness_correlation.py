"""Faithfulness Correlation: does the attribution of a random pixel subset predict the output drop?

Definition (Bhatt, Weller, Moura, "Evaluating and aggregating feature-based model explanations", IJCAI 2020,
eq. 2 "mu_F"; Quantus 0.6 ``quantus.FaithfulnessCorrelation``), per sample:

1. Units: the P pixels (tabular: features) of the input, each with the pixel score of the attribution (channel
   mean, or ``max_c |a_c|``).
2. ``runs`` (Quantus ``nr_runs``: 100) uniform random subsets S of exactly ``subset_size`` (Quantus: 224)
   units; the input with S replaced by the masker's fully masked input (every channel of a pixel).
3. Score: the Pearson correlation over the runs between ``sum_{i in S} score_i`` and
   ``f(x) - f(x masked on S)`` (target logit or softmax), the exact row-wise formula in float64, 0 when either
   side is constant. Higher is better; in [-1, 1].

This is sensitivity-n (:mod:`harness.metrics.sensitivity_n`) at the single subset size n = ``subset_size``,
computed by the same machinery (:func:`~harness.metrics.sensitivity_n.subset_correlations`), but with this
metric's own random streams (:data:`OFFSET`), so its subsets are not sensitivity-n's.

``activation`` (default ``logits``) picks the output of the primary score; the scores of both activations
are output as ``faithfulness_correlation_logits`` / ``_softmax``.

Deviations from Quantus: a subset is of pixels, all channels masked together, scored by the pixel score
(Quantus draws single values of the flattened (C, H, W) input, so for C = 1 and tabular data the two agree);
the default masker is the constant 0 (Quantus' default baseline ``"black"`` is each input's *minimum* value,
0 only for inputs whose minimum is 0); a constant side correlates 0 (Quantus / scipy: NaN); ``subset_size``
may equal the unit count (Quantus requires it smaller; every subset is then everything, and the score 0);
subsets are drawn per sample from per-sample streams (:mod:`harness.metrics.rows`), so results do not
depend on the batch, chunking or device.

``forward_passes`` = N + N * runs.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from harness.metrics.perturbation import as_pixels, pixel_scores
from harness.metrics.rows import check_inputs
from harness.metrics.sensitivity_n import CHOICES, Subsets, subset_correlations
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

NAME = "faithfulness_correlation"
DEFAULTS = MappingProxyType({
    "subset_size": 224, "runs": 100, "masker": "constant", "mask_value": 0.0, "activation": "logits",
    "pixel_aggregation": "mean",
})
REFERENCE = (
    "Bhatt, Weller, Moura, Evaluating and aggregating feature-based model explanations, IJCAI 2020; "
    "Hedstroem et al., Quantus, JMLR 2023 (FaithfulnessCorrelation)"
)
OFFSET = 0xFC0E
"""``ctx.generator`` offset of the subset streams (the random masker uses offset 0, as deletion does)."""


def _sensitivity_params(p: dict[str, Any], units: int) -> dict[str, Any]:
    """Sensitivity-n parameters of one subset size ``subset_size`` (``floor(t * units)`` with
    ``t = subset_size / units`` is exactly ``subset_size``: the machinery adds a 1e-9 slack)."""
    fraction = p["subset_size"] / units
    return {"steps": 1, "min_fraction": fraction, "max_fraction": fraction, "subsets": p["runs"],
            "repeats": 1, "masker": p["masker"], "mask_value": p["mask_value"]}


def draw_subsets(units: int, n: int, ctx: RunContext, **params: Any) -> Tensor:
    """The subsets the metric draws for ``n`` samples of ``units`` units with ``params``: (n, runs, units)
    bool."""
    p = _resolve(params, units)
    counts = torch.full((n,), units, dtype=torch.long)
    return Subsets(counts, units, _sensitivity_params(p, units), ctx, OFFSET).draw()


def faithfulness_correlation(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """Faithfulness Correlation over random pixel subsets of one size (module docstring)."""
    x = inputs.x
    check_inputs(NAME, x, inputs.target, inputs.attributions)
    width = as_pixels(x).shape[2]
    p = _resolve(params, width)
    scores = pixel_scores(inputs.attributions, p["pixel_aggregation"])
    units = torch.full((x.shape[0],), width, dtype=torch.long, device=x.device)
    correlations, passes = subset_correlations(
        inputs, ctx, _sensitivity_params(p, width), scores, None, units, OFFSET
    )
    outputs = {f"{NAME}_{activation}": value[:, 0, 0] for activation, value in correlations.items()}
    outputs = {NAME: outputs[f"{NAME}_{p['activation']}"], **outputs}
    return MetricResult(
        outputs=outputs, primary=NAME, higher_is_better=True,
        bounds={key: (-1.0, 1.0) for key in outputs}, forward_passes=passes,
        info={"subset_size": p["subset_size"], "runs": p["runs"], "units": width, "masker": p["masker"],
              "activation": p["activation"]},
    )


def _resolve(params: dict[str, Any], units: int) -> dict[str, Any]:
    p = resolve_params(NAME, params, DEFAULTS, CHOICES)
    for key, low in (("subset_size", 1), ("runs", 2)):
        if p[key] < low:
            raise ParamError(f"{NAME}: parameter {key!r} = {p[key]!r} must be at least {low}")
    if p["subset_size"] > units:
        raise ParamError(f"{NAME}: parameter 'subset_size' = {p['subset_size']!r} exceeds the {units} units "
                         "(pixels, or tabular features) of the input; choose at most that many")
    return p


METRICS.add(NAME, MetricSpec(
    name=NAME, family="faithfulness", compute=faithfulness_correlation,
    modalities=frozenset({"image", "tabular"}),
    defaults=DEFAULTS, choices=CHOICES, reference=REFERENCE,
    description="Pearson correlation of subset attribution sums with output drops, random pixel subsets "
                "of one size",
))
