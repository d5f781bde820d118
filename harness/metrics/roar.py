"""ROAR and KAR: remove (or keep) what a method ranks first, retrain a fresh model, and test it.

Definition (Hooker, Erhan, Kindermans & Kim, "A Benchmark for Interpretability Methods in Deep Neural
Networks", NeurIPS 2019; PyTorch port github saurabheights/ROAR; seed-systems.md §4):

1. The case's trained model attributes every training and test image for its label, once; each image's
   inputs are ranked, highest score first, and the ranks are stored on disk (HDF5, written and read chunk by
   chunk, never all in memory: the port's "attribution data set").
2. Ranking ``level``: ``pixel`` ranks the H·W pixels by one score each (``max_abs``: the largest |a| over
   channels, the port's; ``mean``: the channel mean of the signed attribution), and removes all channels of
   a pixel; ``value`` ranks all C·H·W values by |a| (or a, ``pixel_aggregation`` ``mean``), the original's.
   Ties are broken by one fixed random permutation of the positions (from the run's seed), so flat maps
   (Sobel, Guided Backprop zeros) remove scattered, not top-left, inputs.
3. For each threshold t: ROAR replaces the top ``floor(t · P)`` ranked inputs of every train and test image
   by the per-channel mean of the training images; KAR keeps the top ``floor(t · P)`` and replaces the rest
   (the issue's and seed-systems' convention: Hooker's KAR at "fraction t removed" is ours at ``1 - t``).
4. A fresh model of the case's architecture and recipe is trained on the altered training set (through
   ``fit``, cached, so an interrupted run resumes) and its accuracy measured on the altered test set.
5. ``repeats`` R: each repeat retrains from its own seed (initial weights and batch order); repeat 0 is the
   case's seed. The base accuracy of repeat r is a model of seed r trained on the unaltered data (repeat 0:
   the case's model itself), tested on the unaltered test set.

Outputs (first axis: repeat): ``accuracy`` (R, T), ``base_accuracy`` (R,), ``auc`` (R,) = mean accuracy over
the thresholds (primary; ROAR: lower is better, i.e. the removed inputs carried the information; KAR: higher
is better). A Random ranking (method ``random``) is the baseline a method must beat, Sobel a
model-independent control.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from harness.models.training import accuracy
from harness.specs import (
    METRICS,
    DataBundle,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    fractions_param,
    resolve_params,
)

DEFAULTS = MappingProxyType({
    "thresholds": [0.1, 0.3, 0.5, 0.7, 0.9], "level": "pixel", "pixel_aggregation": "max_abs",
    "repeats": 1, "chunk": 1024,
})
CHOICES = MappingProxyType({"level": ("pixel", "value"), "pixel_aggregation": ("max_abs", "mean")})
TIE_OFFSET = 0x70A2
"""``RunContext.generator`` offset of the tie-breaking permutation."""
UNALTERED: Mapping[str, Any] = MappingProxyType({"derived": "unaltered"})
"""``fit`` identity of a model retrained on the case's own data (shared by every method and protocol)."""
RANKS_FILE = "ranks.h5"


def _resolve(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    p = resolve_params(f"metric {name}", params, DEFAULTS, CHOICES)
    p["thresholds"] = fractions_param(f"metric {name}", "thresholds", p["thresholds"])
    for key in ("repeats", "chunk"):
        if p[key] < 1:
            raise ParamError(f"metric {name}: parameter {key!r} = {p[key]!r} must be at least 1")
    return p


def _image_data(name: str, inputs: MetricInputs) -> DataBundle:
    data = inputs.data
    for what in ("data", "fit", "explainer", "store"):
        if getattr(inputs, what) is None:
            raise ValueError(f"{name}: needs inputs.{what} (a needs_training metric)")
    assert data is not None
    if data.x_train.ndim != 4:
        raise ValueError(f"{name}: needs image data (N, C, H, W), got x_train of shape {list(data.x_train.shape)}")
    return data


# -- ranking ----------------------------------------------------------------------------------------------


def position_scores(attributions: Tensor, level: str, aggregation: str) -> Tensor:
    """(N, P) scores: one per pixel (``level`` pixel) or per value (``value``), highest removed first."""
    flat = attributions.flatten(2) if level == "pixel" else attributions.flatten(1)[:, None]
    if aggregation == "max_abs":
        return flat.abs().amax(dim=1)
    return flat.mean(dim=1)


def ranks(scores: Tensor, tie_order: Tensor) -> Tensor:
    """Rank of each position (0 = highest score), ties broken by ``tie_order`` (a permutation of positions:
    among equal scores, the position listed first in ``tie_order`` ranks first)."""
    permuted = scores[:, tie_order]
    order = tie_order[torch.argsort(permuted, dim=1, descending=True, stable=True)]
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def rank_dtype(positions: int) -> np.dtype:
    return np.dtype(np.uint16) if positions <= 2**16 else np.dtype(np.int32)


def write_ranks(
    folder: Path, data: DataBundle, explain: Callable[[Tensor, Tensor], Tensor], p: Mapping[str, Any],
    tie_order: Tensor, device: torch.device,
) -> None:
    """Attribute every train and test image for its label, ``chunk`` images at a time, and write their ranks
    (``train`` and ``test`` datasets, (N, P)) to ``folder/ranks.h5``."""
    positions = len(tie_order)
    with h5py.File(folder / RANKS_FILE, "w") as f:
        for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            out = f.create_dataset(split, shape=(len(x), positions), dtype=rank_dtype(positions),
                                   chunks=(min(len(x), p["chunk"]) or 1, positions))
            for start in range(0, len(x), p["chunk"]):
                xb = x[start:start + p["chunk"]].to(device)
                values = explain(xb, y[start:start + p["chunk"]].to(device))
                scores = position_scores(values, p["level"], p["pixel_aggregation"])
                out[start:start + len(xb)] = ranks(scores, tie_order.to(device)).cpu().numpy()


def read_ranks(folder: Path, split: str, chunk: int) -> Iterator[tuple[int, Tensor]]:
    """(start, ranks (n, P) long) chunk by chunk from the stored ranks of ``split``."""
    with h5py.File(folder / RANKS_FILE, "r") as f:
        stored = f[split]
        for start in range(0, stored.shape[0], chunk):
            yield start, torch.from_numpy(stored[start:start + chunk].astype(np.int64))


# -- altering -----------------------------------------------------------------------------------------------


def removal_mask(rank: Tensor, count: int, mode: str) -> Tensor:
    """True where an input is replaced: the ``count`` top-ranked (ROAR) or all but them (KAR)."""
    return rank < count if mode == "roar" else rank >= count


def alter(x: Tensor, remove: Tensor, level: str, fill: Tensor) -> Tensor:
    """``x`` (n, C, H, W) with the positions of ``remove`` ((n, H·W) pixels or (n, C·H·W) values) replaced by
    ``fill`` (C,) per channel."""
    n, channels = x.shape[:2]
    mask = remove.view(n, 1, *x.shape[2:]) if level == "pixel" else remove.view(x.shape)
    return torch.where(mask, fill.view(1, channels, *[1] * (x.ndim - 2)).to(x.dtype), x)


def altered_split(x: Tensor, folder: Path, split: str, count: int, mode: str, p: Mapping[str, Any],
                  fill: Tensor) -> Tensor:
    """The whole ``split`` altered at ``count`` ranked positions, built chunk by chunk from the stored ranks."""
    out = torch.empty_like(x)
    for start, rank in read_ranks(folder, split, p["chunk"]):
        stop = start + len(rank)
        out[start:stop] = alter(x[start:stop], removal_mask(rank, count, mode), p["level"], fill)
    return out


def channel_mean(x: Tensor) -> Tensor:
    """Per-channel mean of (N, C, ...) images, in float64 then cast back."""
    return x.double().transpose(0, 1).flatten(1).mean(dim=1).to(x.dtype)


# -- the protocol ------------------------------------------------------------------------------------------


def remove_and_retrain(mode: str, inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """ROAR (``mode`` roar) or KAR (kar) as the module docstring defines them."""
    p = _resolve(mode, params)
    data = _image_data(mode, inputs)
    assert inputs.fit is not None and inputs.explainer is not None and inputs.store is not None
    model: nn.Module = inputs.model
    positions = math.prod(data.x_train.shape[2:]) * (1 if p["level"] == "pixel" else data.x_train.shape[1])
    tie_order = torch.randperm(positions, generator=ctx.generator(TIE_OFFSET))
    ranking = {"ranking": "roar", "method": inputs.method, "level": p["level"],
               "pixel_aggregation": p["pixel_aggregation"], "seed": ctx.seed, "version": 1}
    explain = inputs.explainer(model)
    folder = inputs.store(ranking, lambda tmp: write_ranks(tmp, data, explain, p, tie_order, ctx.device))
    fill = channel_mean(data.x_train)
    counts = [math.floor(t * positions + 1e-9) for t in p["thresholds"]]
    batch = ctx.batch_size
    scores = torch.zeros(p["repeats"], len(counts), dtype=torch.float64)
    base = torch.zeros(p["repeats"], dtype=torch.float64)
    for repeat in range(p["repeats"]):
        unaltered = model if repeat == 0 else inputs.fit(data, dict(UNALTERED), repeat)
        base[repeat] = accuracy(unaltered, data.x_test, data.y_test, batch, ctx.device)
    for j, (t, count) in enumerate(zip(p["thresholds"], counts)):
        altered = DataBundle(
            x_train=altered_split(data.x_train, folder, "train", count, mode, p, fill), y_train=data.y_train,
            x_test=altered_split(data.x_test, folder, "test", count, mode, p, fill), y_test=data.y_test,
            num_classes=data.num_classes,
        )
        identity = {**ranking, "protocol": mode, "threshold": t}
        for repeat in range(p["repeats"]):
            retrained = inputs.fit(altered, identity, repeat)
            scores[repeat, j] = accuracy(retrained, altered.x_test, altered.y_test, batch, ctx.device)
    unit = (0.0, 1.0)
    return MetricResult(
        outputs={"accuracy": scores, "base_accuracy": base, "auc": scores.mean(dim=1)},
        primary="auc", higher_is_better=mode == "kar",
        bounds={"accuracy": unit, "base_accuracy": unit, "auc": unit},
        info={"thresholds": p["thresholds"], "mode": mode, "level": p["level"], "repeats": p["repeats"],
              "counts": counts, "positions": positions},
    )


def roar(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """ROAR: remove the top-ranked inputs, retrain, test (module docstring)."""
    return remove_and_retrain("roar", inputs, ctx, **params)


def kar(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """KAR: keep only the top-ranked inputs, retrain, test (module docstring)."""
    return remove_and_retrain("kar", inputs, ctx, **params)


_REFERENCE = ("Hooker et al., A Benchmark for Interpretability Methods in Deep Neural Networks, NeurIPS 2019; "
              "PyTorch port github saurabheights/ROAR")
_PARAMS = ("thresholds: fractions of inputs removed (ROAR) / kept (KAR), default 10-90%; level: pixel (the "
           "port) or value (the original); pixel_aggregation: max_abs or mean; repeats: retrainings per "
           "threshold from different seeds; chunk: images attributed / altered at a time.")
for _name, _compute, _what in (
    ("roar", roar, ("ROAR: replace the top-t ranked inputs of every train and test image by the per-channel "
                    "training mean, retrain a fresh model, test on the altered test set. Lower accuracy is better. ")),
    ("kar", kar, ("KAR: keep the top-t ranked inputs, replace the rest by the per-channel training mean, retrain, "
                  "test on the altered test set. Higher accuracy is better. ")),
):
    METRICS.add(_name, MetricSpec(
        name=_name, family="roar", compute=_compute, modalities=frozenset({"image"}), reference=_REFERENCE,
        needs_training=True, per_sample=False, defaults=dict(DEFAULTS), choices=dict(CHOICES),
        description=_what + _PARAMS,
    ))
