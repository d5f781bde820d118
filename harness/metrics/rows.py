"""Random perturbation rows: per-sample CPU random streams, and the chunked forward of generated rows.

Infidelity, sensitivity-n and max-sensitivity push many random perturbations of every sample through the
model (or the explainer). Their rows are laid out sample-major: row ``i * R + r`` is perturbation ``r`` of
sample ``i``, and a metric builds any range ``start:stop`` of them on demand, one chunk at a time.

Randomness. The numbers of row ``r`` of sample ``i`` depend only on (run seed, the metric's offset, ``i``,
``r``): never on the chunking (batch or memory budget) nor on the device. Each sample has its own CPU
generator, seeded from ``ctx.generator(offset)``; its rows are drawn in blocks whose size is fixed by the row
size alone, in order, and then moved to the input's device. (torch's CPU samplers give different numbers for
one draw of ``k * m`` values than for ``k`` draws of ``m``, hence blocks that no chunk boundary changes.)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from harness.metrics.perturbation import eval_mode
from harness.specs import RunContext

BLOCK_ELEMENTS = 2**20
"""Values per random block (4-8 MiB): a stream's block holds ``max(1, BLOCK_ELEMENTS // row_numel)`` rows."""

Draw = Callable[[int, torch.Generator, int], Tensor]
"""``draw(sample, generator, k)``: the sample's next ``k`` random rows (CPU tensor, ``k`` rows first)."""


def sample_generators(ctx: RunContext, offset: int, n: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from ``ctx.generator(offset)`` (sample ``i``'s seed is its
    ``i``-th draw)."""
    seeds = torch.randint(0, 2**62, (n,), generator=ctx.generator(offset)).tolist()
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


class SampleStreams:
    """Rows ``start:stop`` (sample-major, ``rows_per_sample`` per sample) of per-sample random streams.

    Rows must be taken in increasing order (each range starting where the previous one stopped, or later);
    a sample's block is drawn once, when first needed, and dropped when a later sample is reached.
    """

    def __init__(
        self, ctx: RunContext, offset: int, n: int, rows_per_sample: int, row_numel: int, draw: Draw
    ):
        self.generators = sample_generators(ctx, offset, n)
        self.rows_per_sample = rows_per_sample
        self.block = max(1, min(rows_per_sample, BLOCK_ELEMENTS // max(1, row_numel)))
        self.draw = draw
        self._held: tuple[int, int, Tensor] | None = None  # (sample, block index, block)
        self._drawn = [-1] * n  # last block drawn per sample

    def take(self, start: int, stop: int) -> Tensor:
        parts, row = [], start
        while row < stop:
            sample, r = divmod(row, self.rows_per_sample)
            index, within = divmod(r, self.block)
            block = self._block(sample, index)
            count = min(stop - row, block.shape[0] - within)
            parts.append(block[within : within + count])
            row += count
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _block(self, sample: int, index: int) -> Tensor:
        if self._held is not None and self._held[:2] == (sample, index):
            return self._held[2]
        if index != self._drawn[sample] + 1:
            raise RuntimeError(f"random rows must be taken in order: sample {sample} block {index} requested "
                               f"after block {self._drawn[sample]}")
        size = min(self.block, self.rows_per_sample - index * self.block)
        block = self.draw(sample, self.generators[sample], size)
        self._drawn[sample] = index
        self._held = (sample, index, block)
        return block


def row_samples(start: int, stop: int, rows_per_sample: int, device: torch.device) -> Tensor:
    """The sample index of every row ``start:stop``."""
    return torch.arange(start, stop, device=device) // rows_per_sample


class TargetOutputs(NamedTuple):
    """Target logit and softmax of every row, (N, R) each, and the rows sent through the model."""

    logits: Tensor
    softmax: Tensor
    forward_passes: int


def target_outputs(
    model: nn.Module, x: Tensor, target: Tensor, rows_per_sample: int, build: Callable[[int, int], Tensor],
    ctx: RunContext, *, copies: int = 4,
) -> TargetOutputs:
    """Forward rows ``build(start, stop)`` (each of ``x``'s sample shape) a chunk at a time, in eval mode
    under ``inference_mode``; ``build`` runs inside it. Chunks hold ``ctx.rows_per_chunk`` rows (``copies``
    buffers of a row each). Returns ordinary tensors."""
    n = x.shape[0]
    total = n * rows_per_sample
    chunk = ctx.rows_per_chunk(math.prod(x.shape[1:]), x.element_size(), copies)
    row_target = target.repeat_interleave(rows_per_sample)[:, None]
    logits, probs = [x.new_empty(0)], [x.new_empty(0)]
    with eval_mode(model), torch.inference_mode():
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            out = model(build(start, stop))
            check_logits(out, stop - start, int(row_target[start:stop].max()))
            logits.append(out.gather(1, row_target[start:stop])[:, 0])
            probs.append(out.softmax(dim=1).gather(1, row_target[start:stop])[:, 0])
    shape = (n, rows_per_sample)
    return TargetOutputs(
        torch.cat(logits).reshape(shape).clone(), torch.cat(probs).reshape(shape).clone(), total
    )


def original_outputs(model: nn.Module, x: Tensor, target: Tensor, ctx: RunContext) -> TargetOutputs:
    """Target logit and softmax of the unperturbed inputs, (N, 1) each."""
    return target_outputs(model, x, target, 1, lambda start, stop: x[start:stop], ctx)


def check_inputs(name: str, x: Tensor, target: Tensor, attributions: Tensor | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` and the problem for inputs a perturbation metric cannot use."""
    n = x.shape[0] if x.ndim else 0
    if x.ndim < 2:
        raise ValueError(f"{name}: expected a batch (N, F) or (N, C, ...), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: inputs must be floating point, got {x.dtype}")
    if target.shape != (n,) or target.dtype != torch.long:
        raise ValueError(
            f"{name}: target must be a ({n},) long tensor, got {target.dtype} {list(target.shape)}"
        )
    if attributions is not None and attributions.shape != x.shape:
        raise ValueError(
            f"{name}: attributions shape {list(attributions.shape)} differs from input {list(x.shape)}"
        )
    for what, value in (("inputs", x), ("attributions", attributions)):
        if value is not None and n and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: {what} contain NaN or infinite values")
    if n and int(target.min()) < 0:
        raise ValueError(f"{name}: target contains a negative class index {int(target.min())}")


def check_logits(out: Tensor, rows: int, top_class: int) -> None:
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(f"the model must return (rows, classes), got {list(out.shape)} for {rows} rows")
    if top_class >= out.shape[1]:
        raise ValueError(f"target class {top_class} out of range for a model with {out.shape[1]} outputs")
