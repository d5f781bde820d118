"""Impact Coverage: does the attribution of an adversarially patched image cover the patch? (images only)

Definition (Lin, Shafiee, Bochkarev, St. Jules, Wang, Wong, "Do explanations reflect decisions? A
machine-centric strategy to quantify the performance of explainability algorithms", arXiv 1910.07387, 2019;
as in attribench: Gevaert et al.,
"Evaluating feature attribution methods in the image domain", Machine Learning 2024,
``attribench/functional/metrics/_impact_coverage.py``; patches after Brown et al. 2017):

1. Per class c, an adversarial square patch of side p = floor(sqrt(``patch_fraction`` * H * W)) (10% of
   the image) is trained on the case's training split (:mod:`harness.metrics.patches`: Adam, lr 0.05,
   5 epochs, clamped to the data range). The patches depend only on the trained model, the data and the
   training parameters: they are made once per model and cached (``MetricInputs.artifact``).
2. Per test sample with label y (the case's target: the label, or the prediction under the suite's
   ``target = "prediction"``), up to ``max_tries`` placements are tried: try t pastes the patch of class
   c_t at a uniformly random position (all channels replaced), c_t cycling through a random permutation of
   the classes other than y. A placement *flips* the sample when the model predicts c_t on the patched image
   and did not predict c_t on the clean one. The first flipping placement is kept; a sample that no try
   flips keeps its last try (attribench's rule: it is still scored, with a logged warning).
3. The case's method attributes the patched image to the **patch's class** c (attribench's ``targets``:
   the decision the patch caused), not the stored attribution of the clean image nor its label.
4. Pixel scores: channel mean of the signed attribution (``pixel_aggregation`` ``mean``; or ``max_abs``);
   the k = p^2 highest-scoring pixels (ties to the lower flat index) form the top-k set T, and
   impact_coverage = |T ∩ patch| / |T ∪ patch| = h / (2k - h), h = |T ∩ patch|.

Outputs per sample: ``impact_coverage`` (in [0, 1], higher is better) and ``flipped`` (1 if the kept
placement flips the prediction, else 0). attribench scores every sample, flipped or not, so the primary
output does too; a report that wants Impact Coverage on flipped samples only (the definition's intent)
must keep the samples with ``flipped`` = 1 (``info["patch_success_rate"]`` is their share).

Family: localisation. Like the mask metrics it scores the attribution against a region known to drive the
decision, here made so (the patch) rather than given by the data set, so it needs no ``mask``.

Differences from attribench, which pastes one patch at one position on a whole batch per try, patches taken
in file-listing order (cycled across batches, including the label's own, which can never count): here each
sample draws its own classes (never its label) and positions, so its result does not depend on its batch;
positions span every valid corner. Patches train on the training split (``train_samples`` > 0: a random
subset of that size) with a ``batch_size`` of 64; attribench's scripts train on the evaluation split with a
batch size given on the command line. attribench ranks the raw attribution elements (its pixel-level maps
are channel-aggregated beforehand) with an unstable argsort; ties here go to the lower index.

Randomness: placements come from per-sample CPU streams (:func:`harness.metrics.rows.sample_generators`,
offset ``PLACE_OFFSET``), the patches from ``ctx.generator(TRAIN_OFFSET)``: results do not depend on the
batch budget. ``forward_passes`` counts the clean and patched rows of step 2 (tries run in blocks, so up to twice the
rows of trying one at a time), not the patch training (done
once per model, on a copy of the model), nor the rows the method itself runs (``explain``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from harness.metrics.patches import paste, patch_side, train_patches, window_mask
from harness.metrics.perturbation import eval_mode, pixel_scores, top_order
from harness.metrics.rows import sample_generators
from harness.specs import (
    METRICS,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

log = logging.getLogger("harness")

NAME = "impact_coverage"
FORMAT = 1
"""Layout and recipe of the cached patches; part of their identity (bump to rebuild them)."""
TRAIN_OFFSET = 0x1C0F
PLACE_OFFSET = 0x1C10
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "patch_fraction": 0.1, "epochs": 5, "lr": 0.05, "batch_size": 64, "train_samples": 0, "max_tries": 50,
    "pixel_aggregation": "mean",
})
CHOICES: Mapping[str, tuple[Any, ...]] = MappingProxyType({"pixel_aggregation": ("mean", "max_abs")})
REFERENCE = (
    "Lin et al., Do explanations reflect decisions?, arXiv 1910.07387, 2019; Gevaert et al., Evaluating "
    "feature attribution methods in the image domain, Machine Learning 2024 (attribench); Brown et al., "
    "Adversarial patch, arXiv 1712.09665, 2017"
)


class Placement(NamedTuple):
    """The kept placement per sample: patch class, top-left corner, whether it flips the prediction."""

    classes: Tensor
    rows: Tensor
    cols: Tensor
    flipped: Tensor
    forward_passes: int


def impact_coverage(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """IoU of the top-k attributed pixels of a patched image with its adversarial patch (module docstring)."""
    p = resolve(params)
    x, label = inputs.x, inputs.target
    _check(inputs)
    n, _, height, width = x.shape
    side = patch_side(height, width, p["patch_fraction"])
    cached = model_patches(inputs, ctx, p, side)
    patches = cached["patches"]
    place = placements(inputs.model, x, label, patches, p["max_tries"], ctx)
    patched = paste(x, patches[place.classes], place.rows, place.cols)
    explain = inputs.explain
    assert explain is not None  # checked by _check
    attr = explain(patched, place.classes).detach().to(x.device)
    if attr.shape != x.shape:
        raise ValueError(f"{NAME}: explain returned shape {list(attr.shape)} for inputs {list(x.shape)}")
    mask = window_mask(n, height, width, side, place.rows, place.cols).flatten(1)
    iou = coverage_iou(pixel_scores(attr, p["pixel_aggregation"]), mask)
    rate = float(place.flipped.float().mean()) if n else 0.0
    if n and rate < 1.0:
        log.warning("%s: %d of %d samples flipped by no patch in %d tries; they are scored with their last "
                    "try (see the flipped output)", NAME, n - int(place.flipped.sum()), n, p["max_tries"])
    dtype = torch.promote_types(attr.dtype, torch.float32)
    return MetricResult(
        outputs={"impact_coverage": iou.to(dtype), "flipped": place.flipped.to(dtype)},
        primary="impact_coverage", higher_is_better=True,
        bounds={"impact_coverage": (0.0, 1.0), "flipped": (0.0, 1.0)}, forward_passes=place.forward_passes,
        info={"patch_success_rate": rate, "patch_side": side, "k": side * side,
              "patch_class": place.classes.tolist(), "patch_train_success": cached["success"].tolist(),
              "explained_rows": n,
              "unflipped": "scored with the last try (attribench); keep flipped == 1 to exclude them"},
    )


def coverage_iou(scores: Tensor, mask: Tensor) -> Tensor:
    """|top-k ∩ mask| / |top-k ∪ mask| per row, k = |mask| (the same in every row), ties to the lower index."""
    k = int(mask[0].sum()) if len(mask) else 0
    hits = mask.gather(1, top_order(scores, k)).sum(1).double()
    return hits / (2 * k - hits)


def model_patches(inputs: MetricInputs, ctx: RunContext, p: Mapping[str, Any], side: int) -> dict[str, Tensor]:
    """The case's model's ``patches`` (K, C, p, p) with their training ``loss`` and ``success`` (K,) each,
    from ``inputs.artifact`` (trained on first use), on the input's device."""
    data = inputs.data
    assert data is not None and inputs.artifact is not None  # checked by _check
    identity = {
        "metric": NAME, "format": FORMAT, "seed": ctx.seed, "side": side,
        **{key: p[key] for key in ("epochs", "lr", "batch_size", "train_samples")},
    }

    def make() -> dict[str, Tensor]:
        x_train, y_train = data.x_train, data.y_train
        if p["train_samples"]:
            keep = torch.randperm(len(x_train), generator=ctx.generator(TRAIN_OFFSET + 1))[: p["train_samples"]]
            x_train, y_train = x_train[keep], y_train[keep]
        trained = train_patches(
            inputs.model, x_train.to(inputs.x.dtype), y_train, data.num_classes, side=side,
            epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], generator=ctx.generator(TRAIN_OFFSET),
            device=ctx.device, max_rows=ctx.rows_per_chunk(math.prod(inputs.x.shape[1:])),
        )
        return {"patches": trained.patches.cpu(), "loss": trained.loss, "success": trained.success}

    cached = inputs.artifact(identity, make)
    patches = cached["patches"].to(inputs.x.device, inputs.x.dtype)
    if patches.shape != (data.num_classes, inputs.x.shape[1], side, side):
        raise ValueError(f"{NAME}: cached patches have shape {list(patches.shape)}, expected "
                         f"{[data.num_classes, inputs.x.shape[1], side, side]}")
    return {**cached, "patches": patches}


@torch.no_grad()
def placements(
    model: nn.Module, x: Tensor, label: Tensor, patches: Tensor, max_tries: int, ctx: RunContext
) -> Placement:
    """Step 2 of the module docstring, in rounds over the samples not flipped yet: round r runs the next
    2^r tries of each (1, 2, 4, ... : few rounds, at most twice the rows of one try per round), and keeps a
    sample's first flipping try, as trying one at a time would."""
    n, _, height, width = x.shape
    num_classes, side = patches.shape[0], patches.shape[-1]
    classes, rows, cols = draw_placements(ctx, label.cpu(), num_classes, height - side + 1, width - side + 1,
                                          max_tries)
    classes, rows, cols = classes.to(x.device), rows.to(x.device), cols.to(x.device)
    chunk = ctx.rows_per_chunk(math.prod(x.shape[1:]))
    kept = torch.zeros(n, dtype=torch.long, device=x.device)
    flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    with eval_mode(model):
        clean = torch.cat([model(part).argmax(1) for part in x.split(chunk)]) if n else kept
        passes, start, block = n, 0, 1
        while start < max_tries and not bool(flipped.all()):
            active = (~flipped).nonzero()[:, 0]
            block = min(block, max_tries - start)
            sample = active.repeat_interleave(block)
            tried = torch.arange(start, start + block, device=x.device).repeat(len(active))
            c = classes[sample, tried]
            pred = torch.cat([
                model(paste(x[s], patches[k], rows[s, t], cols[s, t])).argmax(1)
                for s, t, k in zip(sample.split(chunk), tried.split(chunk), c.split(chunk), strict=True)
            ])
            hit = ((pred == c) & (clean[sample] != c)).view(len(active), block)
            kept[active] = start + torch.where(hit.any(1), hit.int().argmax(1), block - 1)
            flipped[active] = hit.any(1)
            passes += len(sample)
            start, block = start + block, 2 * block
    pick = kept[:, None]
    return Placement(classes.gather(1, pick)[:, 0], rows.gather(1, pick)[:, 0], cols.gather(1, pick)[:, 0],
                     flipped, passes)


def draw_placements(
    ctx: RunContext, label: Tensor, num_classes: int, row_span: int, col_span: int, max_tries: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample and try: patch class (a random permutation of the classes but the label, cycled) and
    top-left corner (uniform), each (N, max_tries) long on the CPU, from per-sample streams."""
    out = []
    for g, y in zip(sample_generators(ctx, PLACE_OFFSET, len(label)), label.tolist(), strict=True):
        others = torch.tensor([c for c in range(num_classes) if c != y], dtype=torch.long)
        order = others[torch.randperm(len(others), generator=g)]
        cycle = order[torch.arange(max_tries) % len(order)]
        out.append(torch.stack([cycle, torch.randint(0, row_span, (max_tries,), generator=g),
                                torch.randint(0, col_span, (max_tries,), generator=g)]))
    if not out:
        empty = torch.zeros((0, max_tries), dtype=torch.long)
        return empty, empty, empty
    stacked = torch.stack(out)  # (N, 3, T)
    return stacked[:, 0], stacked[:, 1], stacked[:, 2]


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    p = resolve_params(f"metric {NAME}", params, DEFAULTS, CHOICES)
    if not 0.0 < p["patch_fraction"] <= 1.0:
        raise ParamError(f"metric {NAME}: parameter 'patch_fraction' = {p['patch_fraction']!r} must lie in "
                         "(0, 1]")
    if not p["lr"] > 0:
        raise ParamError(f"metric {NAME}: parameter 'lr' = {p['lr']!r} must be positive")
    for key, least in (("epochs", 0), ("batch_size", 1), ("train_samples", 0), ("max_tries", 1)):
        if p[key] < least:
            raise ParamError(f"metric {NAME}: parameter {key!r} = {p[key]!r} must be at least {least}")
    return p


def _check(inputs: MetricInputs) -> None:
    x, target, attr = inputs.x, inputs.target, inputs.attributions
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{NAME}: inputs must be floating point images (N, C, H, W), got {x.dtype} "
                         f"{list(x.shape)}")
    if target.shape != (x.shape[0],) or target.dtype != torch.long:
        raise ValueError(f"{NAME}: target must be a ({x.shape[0]},) long tensor (the labels), got "
                         f"{target.dtype} {list(target.shape)}")
    if attr.shape != x.shape:
        raise ValueError(f"{NAME}: attributions shape {list(attr.shape)} differs from input {list(x.shape)}")
    missing = [name for name, value in (("explain", inputs.explain), ("data", inputs.data),
                                        ("artifact", inputs.artifact)) if value is None]
    if missing:
        raise ValueError(f"{NAME}: needs inputs.{', inputs.'.join(missing)} (re-attribution of the patched "
                         "images, the training split for the patches, the patch cache); none was given")
    data = inputs.data
    assert data is not None
    if data.task != "classification" or data.num_classes < 2:
        raise ValueError(f"{NAME}: needs a classification data set with at least 2 classes, got "
                         f"{data.task} with {data.num_classes} output(s)")
    if tuple(data.x_train.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"{NAME}: training inputs {list(data.x_train.shape[1:])} and test inputs "
                         f"{list(x.shape[1:])} differ in shape")
    if len(target) and not 0 <= int(target.min()) <= int(target.max()) < data.num_classes:
        raise ValueError(f"{NAME}: target outside the data set's {data.num_classes} classes")


METRICS.add(NAME, MetricSpec(
    name=NAME, family="localization", compute=impact_coverage, modalities=frozenset({"image"}),
    defaults=DEFAULTS, choices=CHOICES, reference=REFERENCE, needs_explain=True, needs_data=True,
    description="IoU of the top-k attributed pixels with an adversarial patch that flips the prediction",
))
