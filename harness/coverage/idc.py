"""Importance-driven coverage (IDC): distinct combinations of clustered activations of important neurons.

Gerasimou, Eniser, Sen, Cakan, "Importance-Driven Deep Learning System Testing", ICSE 2020 (code:
DeepImportance/deepimportance_code_release; PyTorch port github JoshuaQSH/Wisdom, ``src/wisdom.py``);
seed-systems.md §3.1. Given important neurons j = 1..m (:mod:`harness.coverage.relevance`):

* build: k-means of each neuron's training activations (a convolution channel averaged over space, as
  :func:`harness.coverage.base.layer_traces` gives them) into k_j clusters: k fixed (default 2), or with
  ``silhouette`` the k in ``k_range`` (inclusive) of best silhouette score on a seeded subsample of at most
  2,000 training rows, then k-means on every row; k_j is capped by the neuron's distinct values (a dead
  neuron has one cluster). scikit-learn KMeans, ``n_init`` 10, ``random_state`` = seed; centroids sorted.
* update: each test input maps to the tuple (nearest centroid of neuron j)_j; the state is the set of
  distinct tuples (a tensor of unique rows; merging is the union) and the input count n.
* compute: IDC = |distinct tuples| / prod_j k_j; max_attainable = min(1, n / prod_j k_j).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from torch import Tensor

from harness.coverage.base import CRITERIA, Criterion, CriterionSpec, Traces, check_traces
from harness.specs import ParamError, resolve_params

Neuron = tuple[str, int]
N_INIT = 10
SILHOUETTE_ROWS = 2000
UPDATE_ROWS = 65536
"""Test rows mapped to centroids at once (bounds the (rows, m, k) distance tensor)."""
DEFAULTS: dict[str, Any] = {"neurons": [], "k": 2, "silhouette": False, "k_range": [2, 9], "seed": 0}


def _kmeans(values: np.ndarray, k: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(values.reshape(-1, 1))


def best_k(values: np.ndarray, k_range: tuple[int, int], seed: int) -> int:
    """The k in k_range (inclusive, capped by the distinct values) of best silhouette score of k-means on
    ``values``, the smallest on ties; 1 when fewer than two distinct values (Gerasimou et al. 2020)."""
    distinct = len(np.unique(values))
    best, score = (1 if distinct < 2 else k_range[0]), -math.inf
    for k in range(k_range[0], min(k_range[1], distinct, len(values) - 1) + 1):
        labels = _kmeans(values, k, seed).labels_
        if len(np.unique(labels)) < 2:
            continue
        value = silhouette_score(values.reshape(-1, 1), labels)
        if value > score:
            best, score = k, value
    return min(best, max(distinct, 1))


def centroids(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted k-means centroids of one neuron's activations, k capped by the distinct values."""
    k = min(k, len(np.unique(values)))
    return np.sort(_kmeans(values, k, seed).cluster_centers_.reshape(-1))


class IDC:
    """The IDC criterion (module docstring) over ``neurons`` = [(layer, index), ...]."""

    name = "idc"

    def __init__(self, neurons: Sequence[Neuron], k: int = 2, silhouette: bool = False,
                 k_range: Sequence[int] = (2, 9), seed: int = 0) -> None:
        self.neurons = [(str(layer), int(index)) for layer, index in neurons]
        self.k, self.silhouette, self.k_range, self.seed = k, silhouette, (int(k_range[0]), int(k_range[1])), seed
        self.centroids: Tensor | None = None
        """(m, max k) float32, row j the sorted centroids of neuron j padded with +inf."""
        self.ks: list[int] = []
        self.layers: dict[str, int] = {}
        self.covered: Tensor | None = None
        self.inputs = 0

    def build(self, train: Traces, labels: Tensor) -> None:
        """Cluster each important neuron's training activations (labels are not used)."""
        check_traces(self.name, train)
        missing = sorted({layer for layer, _ in self.neurons} - set(train))
        if missing:
            raise ValueError(f"idc: traces lack layers {missing}; got {sorted(train)}")
        self.layers = {layer: train[layer].shape[1] for layer, _ in self.neurons}
        for layer, index in self.neurons:
            if index >= self.layers[layer]:
                raise ValueError(f"idc: neuron ({layer!r}, {index}) out of range; layer has {self.layers[layer]}")
        values = self._gather(train).double().cpu().numpy()
        if len(values) == 0:
            raise ValueError("idc: build needs at least one training input")
        rows = np.arange(len(values))
        if self.silhouette and len(rows) > SILHOUETTE_ROWS:
            rows = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed))[:SILHOUETTE_ROWS].numpy()
        cents = []
        for j in range(len(self.neurons)):
            k = best_k(values[rows, j], self.k_range, self.seed) if self.silhouette else self.k
            cents.append(centroids(values[:, j], k, self.seed))
        self.ks = [len(c) for c in cents]
        table = torch.full((len(cents), max(self.ks)), math.inf, dtype=torch.float32)
        for j, c in enumerate(cents):
            table[j, :len(c)] = torch.as_tensor(c, dtype=torch.float32)
        device = next(iter(train.values())).device
        self.centroids = table.to(device)
        self.covered = torch.zeros((0, len(cents)), dtype=torch.long, device=device)
        self.inputs = 0

    def _gather(self, traces: Traces) -> Tensor:
        return torch.stack([traces[layer][:, index] for layer, index in self.neurons], dim=1)

    def _built(self) -> tuple[Tensor, Tensor]:
        if self.centroids is None or self.covered is None:
            raise RuntimeError("idc: call build(train traces) first")
        return self.centroids, self.covered

    def combinations(self, traces: Traces) -> Tensor:
        """(N, m) long: each input's nearest centroid per important neuron (batched argmin on the device)."""
        table, _ = self._built()
        check_traces(self.name, traces, self.layers)
        acts = self._gather(traces).float()
        table = table.to(acts.device)
        parts = [(acts[s:s + UPDATE_ROWS, :, None] - table[None]).abs().argmin(dim=2)
                 for s in range(0, len(acts), UPDATE_ROWS)]
        return torch.cat(parts) if parts else acts.new_zeros((0, len(self.neurons)), dtype=torch.long)

    def update(self, traces: Traces, labels: Tensor) -> None:
        """Add the distinct combinations of one batch of test traces (labels are not used)."""
        _, covered = self._built()
        codes = self.combinations(traces)
        self.covered = torch.unique(torch.cat([covered, codes.to(covered.device)]), dim=0)
        self.inputs += len(codes)

    def merge(self, other: Criterion) -> None:
        """Union of the covered combinations; ``other`` must be built alike (same neurons and centroids)."""
        table, covered = self._built()
        if not isinstance(other, IDC) or other.centroids is None or other.covered is None:
            raise ValueError(f"idc: can only merge a built IDC criterion, got {type(other).__name__}")
        if other.neurons != self.neurons or not torch.equal(other.centroids.to(table.device), table):
            raise ValueError("idc: merge needs a criterion built from the same training traces and neurons")
        self.covered = torch.unique(torch.cat([covered, other.covered.to(covered.device)]), dim=0)
        self.inputs += other.inputs

    def empty(self) -> IDC:
        """This criterion's clusters with no test state."""
        table, covered = self._built()
        clone = IDC(self.neurons, self.k, self.silhouette, self.k_range, self.seed)
        clone.centroids, clone.ks, clone.layers = table, list(self.ks), dict(self.layers)
        clone.covered = covered.new_zeros((0, len(self.neurons)))
        return clone

    def compute(self) -> dict[str, float]:
        """coverage, max_attainable, combinations (distinct), total (prod k_j), inputs."""
        _, covered = self._built()
        total = math.prod(self.ks)
        return {"coverage": len(covered) / total, "max_attainable": min(1.0, self.inputs / total),
                "combinations": float(len(covered)), "total": float(total), "inputs": float(self.inputs)}


def _neurons(value: Any) -> list[Neuron]:
    out: list[Neuron] = []
    for item in value:
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
        if not ok or not isinstance(item[1], int) or isinstance(item[1], bool) or item[1] < 0:
            raise ParamError(f"coverage criterion idc: neuron {item!r} is not valid; choices: (layer name, index >= 0)")
        out.append((item[0], item[1]))
    if not out or len(set(out)) != len(out):
        raise ParamError(f"coverage criterion idc: neurons = {value!r} is not valid; choices: a non-empty list of "
                         "distinct (layer, index) pairs, e.g. from harness.coverage.relevance.important_neurons")
    return out


def make_idc(**params: Any) -> IDC:
    """``make(neurons=..., k=2, silhouette=False, k_range=[2, 9], seed=0)`` -> an unbuilt :class:`IDC`."""
    p = resolve_params("coverage criterion idc", params, DEFAULTS)
    neurons = _neurons(p["neurons"])
    if p["k"] < 1:
        raise ParamError(f"coverage criterion idc: k = {p['k']!r} is not valid; choices: an integer >= 1")
    lo_hi = list(p["k_range"])
    if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 2 <= lo_hi[0] <= lo_hi[1]:
        raise ParamError(f"coverage criterion idc: k_range = {p['k_range']!r} is not valid; choices: [lo, hi], 2 <= lo <= hi")
    return IDC(neurons, p["k"], p["silhouette"], lo_hi, p["seed"])


CRITERIA.add("idc", CriterionSpec(
    name="idc", make=make_idc, defaults=dict(DEFAULTS),
    description="Importance-driven coverage: distinct combinations of k-means clusters of the important "
                "neurons' activations over prod k_j (k 2, or the best silhouette over k_range).",
    reference="Gerasimou et al., Importance-Driven Deep Learning System Testing, ICSE 2020",
))
