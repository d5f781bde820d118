"""Network-wide coverage criteria: top-k patterns (TKNP), TensorFuzz clusters (CC), NeuraL-Coverage (NLC).

* ``tknp`` (Ma et al., "DeepGauge", ASE 2018): an input's pattern is the tuple, over the traced layers in
  build order, of each layer's top-``k`` neuron *set* (:func:`harness.coverage.neuron.top_k_indices`, ties to
  the lower index, stored sorted). Coverage = distinct patterns; ratio = patterns / min(|D|, 10000)
  (seed-systems.md §3.2; the seed code orders each layer's indices by activation instead, and clips every
  ratio at 1). Merge: union of the pattern sets.
* ``cc`` (Odena et al., "TensorFuzz: Debugging neural networks with coverage-guided fuzzing", ICML 2019):
  each input's trace, all layers concatenated, is compared in input order with the stored entries; it becomes
  a new entry iff its Euclidean distance to every entry exceeds ``threshold``. Coverage = entries;
  ratio = entries / |D|. (The seed keeps one set per layer, compares *squared* distances with the threshold,
  and does not count the first input; this follows the brief: one concatenated trace, L2, every entry.)
  CC depends on input order. ``a.merge(b)`` means "a's inputs, then b's": it feeds b's *inputs* in order
  through a's rule, so the merged value equals one pass over shard a then shard b exactly. Feeding only b's
  entries would not: an input b rejected near one of its own entries may be admitted once a's entries have
  rejected that entry (1-D, threshold 1: a = [0], b = [0.9, 1.8] gives 2 entries in one pass, 1 by entries).
  So each criterion keeps its inputs (|D| x neurons, in the traces' dtype): the memory price of exactness.
  Distances: squared, as |x|^2 + |y|^2 - 2 x.y in float64 (a matmul), so a decision can differ between
  batchings only for a distance within ~1e-12 (relative) of the threshold.
* ``nlc`` (Yuan et al., "Revisiting neuron coverage for DNN testing: A layer-wise and distribution-aware
  criterion", ICSE 2023, NeuraL-Coverage): per layer the running mean and (population) covariance of the
  traces, combined by Chan et al.'s parallel update (exact up to float64 rounding); coverage =
  sum over layers of mean |covariance| (mean over all neurons^2 entries, as github JoshuaQSH/Wisdom).
  The seed only accepts a batch into a layer's estimate if it raises that layer's norm (a fuzzing gain test),
  which makes the value depend on batching; this keeps the plain running statistics. ratio = coverage.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.coverage.neuron import POSITIVE_K, LayerCriterion, register, resolved, top_k_indices

TKNP_RATIO_CAP = 10000
"""TKNP's ratio divides by min(|D|, this) (Wisdom's normalisation)."""
ROWS = 512
"""CC admits inputs in blocks of this many rows (bounds the rows x rows distance matrix)."""
ENTRY_BLOCK = 4096
"""CC compares a block of inputs with this many stored entries at a time."""
DEEPGAUGE = "Ma et al., DeepGauge: Multi-granularity testing criteria for deep learning systems, ASE 2018"
TENSORFUZZ = "Odena et al., TensorFuzz: Debugging neural networks with coverage-guided fuzzing, ICML 2019"
NEURAL_COVERAGE = ("Yuan et al., Revisiting neuron coverage for DNN testing: A layer-wise and distribution-aware "
                   "criterion, ICSE 2023 (github Yuanyuan-Yuan/NeuraL-Coverage)")


class TopKPatterns(LayerCriterion):
    """TKNP (DeepGauge): distinct network-wide top-k patterns."""

    name = "tknp"
    params = ("k",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def _reset(self) -> None:
        width = sum(min(self.k, n) for n in self.layers.values())
        self.patterns = torch.zeros((0, width), dtype=torch.long, device=self.device)

    def _update(self, values: list[Tensor]) -> None:
        rows = torch.cat([top_k_indices(v, self.k).sort(dim=1).values for v in values], dim=1)
        self._add(rows)

    def _add(self, rows: Tensor) -> None:
        self.patterns = torch.unique(torch.cat([self.patterns, rows]), dim=0)

    def _merge(self, other: TopKPatterns) -> None:
        self._add(other.patterns)

    def _coverage(self) -> float:
        return float(self.patterns.shape[0])

    def _ratio(self, coverage: float) -> float:
        return coverage / min(self.inputs, TKNP_RATIO_CAP) if self.inputs else 0.0


def greedy_cover(candidate: Tensor, near: Tensor) -> Tensor:
    """Which rows the sequential rule admits: row i (a candidate) is admitted iff no earlier admitted row j
    has ``near[i, j]`` (only j < i is read). Decided by rounds instead of a loop over rows: a row whose earlier
    neighbours include an admitted one is rejected; a row whose earlier neighbours are all decided and
    rejected is admitted. The first undecided row is always decided, so this ends after at most N rounds
    (usually a few)."""
    near = torch.tril(near, diagonal=-1) & candidate[None, :]
    admitted = torch.zeros_like(candidate)
    undecided = candidate.clone()
    while bool(undecided.any()):
        blocked = (near & admitted[None, :]).any(dim=1)
        waiting = (near & undecided[None, :]).any(dim=1)
        admitted |= undecided & ~blocked & ~waiting
        undecided &= ~blocked & waiting
    return admitted


def squared_distances(rows: Tensor, others: Tensor) -> Tensor:
    """(R, O) squared Euclidean distances in float64, |x|^2 + |y|^2 - 2 x.y clipped at 0."""
    x, y = rows.double(), others.double()
    return ((x * x).sum(dim=1)[:, None] + (y * y).sum(dim=1)[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)


class ClusterCoverage(LayerCriterion):
    """CC (TensorFuzz): entries of the nearest-neighbour cover of the concatenated traces (module docstring)."""

    name = "cc"
    params = ("threshold",)

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def _reset(self) -> None:
        self.entries = torch.zeros((0, sum(self.layers.values())), device=self.device)
        self.seen: list[Tensor] = []

    def _update(self, values: list[Tensor]) -> None:
        traces = torch.cat(values, dim=1)
        self.seen.append(traces)
        for start in range(0, traces.shape[0], ROWS):
            self._admit(traces[start:start + ROWS])

    def _admit(self, rows: Tensor) -> None:
        limit = self.threshold ** 2
        far = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        for start in range(0, self.entries.shape[0], ENTRY_BLOCK):
            far &= (squared_distances(rows, self.entries[start:start + ENTRY_BLOCK]) > limit).all(dim=1)
        admitted = greedy_cover(far, squared_distances(rows, rows) <= limit)
        self.entries = torch.cat([self.entries.to(rows.dtype), rows[admitted]])

    def merge(self, other: Any) -> None:
        """Feed ``other``'s inputs, in order, through this criterion's rule (module docstring)."""
        for traces in list(self.mergeable(other).seen):
            self.seen.append(traces)
            for start in range(0, traces.shape[0], ROWS):
                self._admit(traces[start:start + ROWS])
            self.inputs += int(traces.shape[0])

    def _coverage(self) -> float:
        return float(self.entries.shape[0])

    def _ratio(self, coverage: float) -> float:
        return coverage / self.inputs if self.inputs else 0.0


def moments_dtype(device: torch.device) -> torch.dtype:
    """float64 for the running moments, except where the device has none (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


class NeuralCoverage(LayerCriterion):
    """NLC (NeuraL-Coverage): sum over layers of the mean absolute running covariance."""

    name = "nlc"

    def _reset(self) -> None:
        dtype = moments_dtype(self.device)
        self.mean = {layer: torch.zeros(n, dtype=dtype, device=self.device) for layer, n in self.layers.items()}
        self.m2 = {layer: torch.zeros((n, n), dtype=dtype, device=self.device) for layer, n in self.layers.items()}

    def _update(self, values: list[Tensor]) -> None:
        for layer, v in zip(self.layers, values, strict=True):
            x = v.to(self.mean[layer].dtype)
            mean = x.mean(dim=0)
            centred = x - mean
            self._combine(layer, self.inputs, x.shape[0], mean, centred.T @ centred)

    def _combine(self, layer: str, count: int, extra: int, mean: Tensor, m2: Tensor) -> None:
        """Chan, Golub & LeVeque's pairwise update of (count, mean, M2) with another part's statistics."""
        total = count + extra
        delta = mean - self.mean[layer]
        self.mean[layer] = self.mean[layer] + delta * (extra / total)
        self.m2[layer] = self.m2[layer] + m2 + torch.outer(delta, delta) * (count * extra / total)

    def _merge(self, other: NeuralCoverage) -> None:
        if other.inputs:
            for layer in self.layers:
                self._combine(layer, self.inputs, other.inputs, other.mean[layer], other.m2[layer])

    def covariance(self, layer: str) -> Tensor:
        """The layer's population covariance over every input seen (zeros before any)."""
        return self.m2[layer] / max(self.inputs, 1)

    def _coverage(self) -> float:
        return float(sum(self.covariance(layer).abs().mean() for layer in self.layers)) if self.inputs else 0.0


TOP_DEFAULTS = {"k": 10}
CC_DEFAULTS = {"threshold": 10.0}

register("tknp", lambda **p: TopKPatterns(**resolved("tknp", p, TOP_DEFAULTS, {"k": POSITIVE_K})),
         TOP_DEFAULTS, "TKNP: distinct network-wide patterns of each layer's top-k neurons", DEEPGAUGE)
register("cc", lambda **p: ClusterCoverage(**resolved("cc", p, CC_DEFAULTS, {
    "threshold": (lambda t: 0.0 <= t < float("inf"), "a finite threshold >= 0")})),
    CC_DEFAULTS, "CC: traces farther than the threshold from every stored one (TensorFuzz)", TENSORFUZZ)
register("nlc", lambda **p: NeuralCoverage(**resolved("nlc", p, {}, {})), {},
         "NLC: sum over layers of the mean absolute covariance of the traces", NEURAL_COVERAGE)
