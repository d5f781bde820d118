"""Surprise-adequacy coverage: LSC, DSC and MDSC over class-conditional layer traces.

Definitions (``x`` = an input's trace: the chosen layers' traces concatenated in the order of ``layers``;
``c`` = its class, the label the caller passes, normally the model's prediction; training traces grouped by
the labels given to ``build``):

* **LSA** (Kim, Feldt & Yoo, "Guiding deep learning system testing using surprise adequacy", ICSE 2019;
  code github coinse/sadl): ``-log p_c(x)`` with ``p_c`` the Gaussian KDE of class ``c``'s training traces,
  with ``scipy.stats.gaussian_kde``'s semantics: Scott's factor ``n_c ** (-1 / (d + 4))`` times the unbiased
  sample covariance (full), evaluated here as a log-sum-exp over the whitened training points, chunked.
  Neurons whose (population) variance is below ``min_var`` within any class of at least two traces are
  dropped first (sadl drops the union over classes so the covariances stay invertible; a class of one trace,
  all of whose variances are 0, would drop every neuron and is left out of the rule). A class whose
  covariance is still singular (e.g. ``n_c <= d``) has no KDE (sadl would crash; NeuraL-Coverage swaps in an
  sklearn KDE of bandwidth 0.2): its inputs get no LSA.
* **DSA** (same paper): ``a`` = the nearest training trace of class ``c`` (Euclidean), ``dist_a = |x - a|``,
  ``dist_b`` = distance from ``a`` to the nearest training trace of any other class, DSA = dist_a / dist_b.
  No neurons are dropped (as sadl). **[seed bug]** NeuraL-Coverage measures ``dist_b`` from ``x`` instead of
  from ``a``; this follows the paper and sadl.
* **MDSA** (Kim, Ju, Feldt & Yoo, "Reducing DNN labelling cost by surprise adequacy: an industrial
  case study for autonomous driving", ESEC/FSE 2020): ``sqrt((x - mu_c)^T S_c^+ (x - mu_c))``, ``mu_c``
  and ``S_c`` the class mean and covariance (divided by ``n_c``, as NeuraL-Coverage's estimator) after the
  LSA neuron filter, ``S^+`` the Moore-Penrose pseudo-inverse (NeuraL-Coverage inverts, which fails or
  explodes on a singular covariance, e.g. ``n_c <= d``); classes of fewer than two traces have none.

Coverage. Surprise values are cut into buckets of width ``hyper`` starting at ``lower``: bucket
``floor((SA - lower) / hyper)`` (with the default ``lower`` 0, ``floor(SA / hyper)``). (The seed,
NeuraL-Coverage, keeps ``int(SA / hyper)``, which truncates toward 0 and so merges (-hyper, hyper) into
bucket 0 for a negative LSA; DSA and MDSA are never negative.) The state is the set of buckets hit and
counts of inputs, so merging is a set union and sums: exact. ``compute`` gives

* ``coverage``: buckets hit among the ``n = ceil((upper - lower) / hyper)`` buckets covering
  ``[lower, upper)``, over n (when ``hyper`` does not divide the range the last bucket runs past ``upper``:
  the n buckets cover ``[lower, lower + n * hyper)``). This is sadl's surprise coverage (``get_sc(lower,
  upper, k, sa)``: buckets between a lower and an upper bound), except that sadl takes the least SA of the
  test set as ``lower``, which a stream cannot know, so here it is a parameter; and sadl's ``np.digitize``
  also counts the regions below and above the range, so its value can exceed 1, while here they count in
  ``below`` / ``above``. Defaults: ``lower`` 0 for all three; ``upper`` LSC 2000 (sadl's default U), DSC
  2.0 (the paper's U for DSA), MDSC 100 (ours: no bound was published; 10 buckets of the seed's width 10).
  LSA = -log density is negative wherever the class density exceeds 1 (low-dimensional or tightly
  clustered traces): with ``lower`` 0 such inputs cover nothing, so give LSC a negative ``lower`` there.
* ``buckets``: every distinct bucket hit, inside the range or not: the seed's value (NeuraL-Coverage's
  ``len(coverage_set)``) when ``lower`` is 0 (another ``lower`` shifts the grid by ``lower mod hyper``).
* ``ratio``: ``buckets / |D|``, as the seed normalises LSC / DSC / MDSC to compare criteria (seed-systems.md
  §3.2); at most 1, since an input hits one bucket. The bounds change it only through that grid shift.
* ``below`` / ``above``: inputs whose SA lies below ``lower`` / past the last bucket (at or above ``upper``
  when ``hyper`` divides the range); they hit buckets outside the n (which count in ``buckets`` only).
* ``inputs`` (``|D|``) and ``undefined``: inputs without a finite SA (their class has no statistics, or
  DSA's ``dist_b`` is 0); they hit no bucket but count in ``|D|``. Each input counts in exactly one of
  ``below``, ``above``, ``undefined`` or the n buckets.

Defaults: ``hyper`` LSC 10, DSC 0.1, MDSC 10 (the seed's), ``min_var`` 1e-5 (sadl's ``var_threshold``);
``layers`` [] = the last layer of the training traces (dict order: the model's definition order); several
layers are concatenated in the order given. Everything runs in float64 on the traces' device, batched per
class (a loop over the classes present, never over inputs), distances chunked by :data:`CHUNK_ELEMENTS`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from harness.coverage.base import CRITERIA, Criterion, CriterionSpec, Traces, check_traces
from harness.specs import ParamError, resolve_params

CHUNK_ELEMENTS = 1 << 24
"""Most (test row, training trace) pairs held at once (128 MiB of float64)."""
Stats = dict[int, tuple[Tensor, ...]]


class SurpriseCoverage:
    """Bucket state shared by the three criteria; subclasses define the class statistics and the SA."""

    name = ""
    filters = True
    """Whether low-variance neurons are dropped before fitting (LSA, MDSA; not DSA)."""

    def __init__(self, hyper: float, upper: float, layers: list[str] | tuple[str, ...] = (),
                 min_var: float = 1e-5, lower: float = 0.0) -> None:
        if not lower < upper:
            raise ValueError(f"{self.name}: lower = {lower!r} must be below upper = {upper!r} (the buckets "
                             "cover [lower, upper))")
        self.hyper, self.upper, self.layers, self.min_var = hyper, upper, tuple(layers), min_var
        self.lower = lower
        self.n_buckets = max(1, math.ceil((upper - lower) / hyper - 1e-9))
        self._layout: dict[str, int] | None = None
        self._keep: Tensor | None = None
        self._stats: Stats = {}
        self.hits: set[int] = set()
        self.inputs = 0
        self.undefined = 0
        self.below = 0
        self.above = 0

    def build(self, train: Traces, labels: Tensor) -> None:
        """Fit the class statistics on the training traces, grouped by ``labels``."""
        check_traces(self.name, train)
        names = list(self.layers) or list(train)[-1:]
        missing = [n for n in names if n not in train]
        if not names or missing:
            raise ValueError(f"{self.name}: layers {missing or names} not in the traces; got {list(train)}")
        self._layout = {n: int(train[n].shape[1]) for n in names}
        x = self._features(train)
        labels = labels.to(x.device).long().reshape(-1)
        if len(labels) != len(x) or len(x) == 0:
            raise ValueError(f"{self.name}: {len(x)} training traces and {len(labels)} labels")
        self._keep = _kept_neurons(x, labels, self.min_var) if self.filters else torch.ones(
            x.shape[1], dtype=torch.bool, device=x.device)
        if not self._keep.any():
            raise ValueError(f"{self.name}: every neuron has a within-class variance below min_var="
                             f"{self.min_var}; lower it")
        x = x[:, self._keep]
        self._stats = self._fit(x, labels)
        absent = sorted(set(labels.unique().tolist()) - set(self._stats))
        if absent:
            warnings.warn(f"{self.name}: classes {absent} have no usable statistics (too few or degenerate "
                          "training traces); their inputs get no surprise value", stacklevel=2)

    def surprise(self, traces: Traces, labels: Tensor) -> Tensor:
        """Each input's surprise adequacy, (N,) float64 on the traces' device; NaN where undefined."""
        if self._layout is None or self._keep is None:
            raise RuntimeError(f"{self.name}: build() before update()")
        check_traces(self.name, traces, self._layout)
        x = self._features(traces)[:, self._keep]
        labels = labels.to(x.device).long().reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"{self.name}: {len(x)} traces and {len(labels)} labels")
        out = torch.full((len(x),), math.nan, dtype=torch.float64, device=x.device)
        for label in labels.unique().tolist():
            if label in self._stats:
                rows = labels == label
                out[rows] = self._surprise(x[rows], label)
        return out

    def update(self, traces: Traces, labels: Tensor) -> None:
        """Add the buckets that these inputs' surprise values hit."""
        sa = self.surprise(traces, labels)
        finite = torch.isfinite(sa)
        self.inputs += len(sa)
        self.undefined += int((~finite).sum())
        buckets = torch.floor((sa[finite] - self.lower) / self.hyper)  # lower 0: bitwise floor(sa / hyper)
        self.below += int((buckets < 0).sum())
        self.above += int((buckets >= self.n_buckets).sum())
        self.hits.update(int(b) for b in buckets.unique().tolist())

    def merge(self, other: Criterion) -> None:
        """Absorb another shard's buckets and count (same criterion, parameters and training traces)."""
        if not (isinstance(other, SurpriseCoverage) and type(other) is type(self)
                and _key(other) == _key(self)):
            raise ValueError(f"{self.name}: cannot merge a differently made criterion {other!r}")
        self.hits |= other.hits
        self.inputs += other.inputs
        self.undefined += other.undefined
        self.below += other.below
        self.above += other.above

    def empty(self) -> SurpriseCoverage:
        """A copy sharing the fitted statistics, with no buckets hit."""
        copy = type(self)(self.hyper, self.upper, self.layers, self.min_var, self.lower)
        copy._layout, copy._keep, copy._stats = self._layout, self._keep, self._stats
        return copy

    def compute(self) -> dict[str, float]:
        """Coverage of [lower, upper), the seed's bucket count and ratio, inputs out of range (module
        docstring)."""
        inside = sum(1 for b in self.hits if 0 <= b < self.n_buckets)
        return {
            "coverage": inside / self.n_buckets, "buckets": float(len(self.hits)),
            "ratio": len(self.hits) / self.inputs if self.inputs else 0.0,
            "inputs": float(self.inputs), "undefined": float(self.undefined),
            "below": float(self.below), "above": float(self.above),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(hyper={self.hyper}, lower={self.lower}, upper={self.upper}, "
                f"layers={list(self.layers)})")

    def _features(self, traces: Traces) -> Tensor:
        assert self._layout is not None
        return torch.cat([traces[n].to(torch.float64) for n in self._layout], dim=1)

    def _fit(self, x: Tensor, labels: Tensor) -> Stats:
        raise NotImplementedError

    def _surprise(self, x: Tensor, label: int) -> Tensor:
        raise NotImplementedError


class LSC(SurpriseCoverage):
    """Likelihood-based surprise coverage (Kim et al., ICSE 2019); module docstring."""

    name = "lsc"

    def _fit(self, x: Tensor, labels: Tensor) -> Stats:
        stats: Stats = {}
        d = x.shape[1]
        for label in labels.unique().tolist():
            points = x[labels == label]
            n = len(points)
            if n < 2:
                continue
            centred = points - points.mean(dim=0)
            cov = centred.T @ centred / (n - 1)
            chol, info = torch.linalg.cholesky_ex(cov)
            if int(info) != 0 or not torch.isfinite(chol).all():
                continue
            chol = chol * n ** (-1.0 / (d + 4))  # Scott's factor, as scipy.stats.gaussian_kde
            white = torch.linalg.solve_triangular(chol, points.T, upper=False).T
            log_norm = -math.log(n) - 0.5 * d * math.log(2 * math.pi) - torch.log(torch.diagonal(chol)).sum()
            stats[label] = (chol, white, (white * white).sum(dim=1), log_norm)
        return stats

    def _surprise(self, x: Tensor, label: int) -> Tensor:
        chol, white, sq_white, log_norm = self._stats[label]
        z = torch.linalg.solve_triangular(chol, x.T, upper=False).T
        parts = []
        for rows in _row_chunks(len(z), len(white)):
            zc = z[rows]
            sq = ((zc * zc).sum(dim=1, keepdim=True) + sq_white[None] - 2.0 * zc @ white.T).clamp_min(0.0)
            parts.append(torch.logsumexp(-0.5 * sq, dim=1))
        return -(torch.cat(parts) + log_norm)


class DSC(SurpriseCoverage):
    """Distance-based surprise coverage (Kim et al., ICSE 2019); module docstring."""

    name = "dsc"
    filters = False

    def _fit(self, x: Tensor, labels: Tensor) -> Stats:
        stats: Stats = {}
        for label in labels.unique().tolist():
            own = labels == label
            others = x[~own]
            if len(others):
                _, gap = _nearest(x[own], others)
            else:
                gap = torch.full((int(own.sum()),), math.nan, dtype=x.dtype, device=x.device)
            stats[label] = (x[own], gap)
        return stats

    def _surprise(self, x: Tensor, label: int) -> Tensor:
        points, gap = self._stats[label]
        index, dist_a = _nearest(x, points)
        dsa = dist_a / gap[index]  # a zero gap (a trace shared by two classes) gives inf or NaN: undefined
        return torch.where(torch.isfinite(dsa), dsa, torch.full_like(dsa, math.nan))


class MDSC(SurpriseCoverage):
    """Mahalanobis-distance surprise coverage (Kim et al., ESEC/FSE 2020); module docstring."""

    name = "mdsc"

    def _fit(self, x: Tensor, labels: Tensor) -> Stats:
        stats: Stats = {}
        for label in labels.unique().tolist():
            points = x[labels == label]
            if len(points) < 2:
                continue
            mean = points.mean(dim=0)
            centred = points - mean
            stats[label] = (mean, torch.linalg.pinv(centred.T @ centred / len(points), hermitian=True))
        return stats

    def _surprise(self, x: Tensor, label: int) -> Tensor:
        mean, precision = self._stats[label]
        diff = x - mean
        return ((diff @ precision) * diff).sum(dim=1).clamp_min(0.0).sqrt()


def _row_chunks(rows: int, width: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    return [slice(s, min(rows, s + step)) for s in range(0, rows, step)]


def _nearest(x: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the nearest row of ``points`` for each row of ``x`` (first on ties) and the exact distance
    to it (found on the expanded squared distance, then recomputed directly)."""
    sq_points = (points * points).sum(dim=1)
    chunks = [(sq_points[None] - 2.0 * x[rows] @ points.T).argmin(dim=1)
              for rows in _row_chunks(len(x), len(points))]
    index = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long, device=x.device)
    return index, torch.linalg.vector_norm(x - points[index], dim=1)


def _kept_neurons(x: Tensor, labels: Tensor, min_var: float) -> Tensor:
    """Neurons whose population variance is at least ``min_var`` within every class of >= 2 traces."""
    keep = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
    for label in labels.unique().tolist():
        points = x[labels == label]
        if len(points) >= 2:
            keep &= points.var(dim=0, correction=0) >= min_var
    return keep


def _key(c: SurpriseCoverage) -> tuple[Any, ...]:
    return (c.hyper, c.lower, c.upper, c.layers, c.min_var, c._layout)


def _maker(cls: type[SurpriseCoverage], defaults: Mapping[str, Any]) -> Callable[..., Criterion]:
    where = f"coverage criterion {cls.name}"

    def make(**params: Any) -> Criterion:
        p = resolve_params(where, params, defaults)
        for key in ("hyper", "lower", "upper", "min_var"):
            value = p.get(key, 0.0)
            if not math.isfinite(value) or (key == "hyper" and value <= 0) or (key == "min_var" and value < 0):
                rule = {"hyper": " and > 0", "min_var": " and >= 0"}.get(key, "")
                raise ParamError(f"{where}: parameter {key!r} = {value!r} must be finite{rule}")
        if not p["lower"] < p["upper"]:
            raise ParamError(f"{where}: parameter 'lower' = {p['lower']!r} must be below 'upper' = "
                             f"{p['upper']!r} (the buckets cover [lower, upper))")
        if not all(isinstance(n, str) for n in p["layers"]):
            raise ParamError(f"{where}: parameter 'layers' = {p['layers']!r} must be a list of layer names "
                             "([] = the last traced layer)")
        return cls(**p)
    return make


_SPECS = (
    (LSC, {"hyper": 10.0, "lower": 0.0, "upper": 2000.0, "layers": [], "min_var": 1e-5},
     "Likelihood-based surprise coverage: buckets of -log class-conditional Gaussian KDE density",
     "Kim, Feldt & Yoo, Guiding deep learning system testing using surprise adequacy, ICSE 2019"),
    (DSC, {"hyper": 0.1, "lower": 0.0, "upper": 2.0, "layers": []},
     "Distance-based surprise coverage: buckets of nearest same-class / nearest other-class distance ratio",
     "Kim, Feldt & Yoo, Guiding deep learning system testing using surprise adequacy, ICSE 2019"),
    (MDSC, {"hyper": 10.0, "lower": 0.0, "upper": 100.0, "layers": [], "min_var": 1e-5},
     "Mahalanobis-distance surprise coverage: buckets of the Mahalanobis distance to the class mean",
     "Kim, Ju, Feldt & Yoo, Reducing DNN labelling cost by surprise adequacy, ESEC/FSE 2020 (industry)"),
)
for _cls, _defaults, _description, _reference in _SPECS:
    CRITERIA.add(_cls.name, CriterionSpec(
        _cls.name, make=_maker(_cls, MappingProxyType(_defaults)), defaults=MappingProxyType(_defaults),
        description=_description, reference=_reference, version=1,
    ))
