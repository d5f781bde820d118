"""Per-sample similarity of two attribution maps (the sanity checks, :mod:`harness.metrics.randomisation`).

Per sample, on the flattened maps, in float64, all in [-1, 1]:

* ``spearman``: Pearson correlation of the ranks, tied values given their average rank
  (``scipy.stats.spearmanr``);
* ``pearson``; both are 0 where a map is constant (scipy: NaN);
* ``ssim``: Quantus' ``ssim`` (``quantus/functions/similarity_func.py``), i.e.
  ``skimage.metrics.structural_similarity`` of the flattened (1-D) maps with its defaults (a uniform window of
  7, K1 0.01, K2 0.03, sample covariance) and ``data_range`` = max - min over both maps: the mean over the
  D - 6 full windows; 1 where both maps are the same constant (skimage: NaN). Needs D >= 7. (Adebayo et al.
  use a 2-D SSIM on images.)

Before comparing, T divides each map by its max |.| if ``normalize`` (only SSIM depends on it) and takes |.|
if ``abs``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.metrics.sensitivity_n import pearson_rows
from harness.specs import RunContext

SIMILARITIES: tuple[str, ...] = ("spearman", "pearson", "ssim")
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03



def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..D along the last dimension of (N, D), tied values sharing their mean rank (float64)."""
    ordered, order = values.sort(dim=-1, stable=True)
    d = values.shape[-1]
    position = torch.arange(d, device=values.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = starts.roll(-1, dims=-1)
    ends[..., -1] = True
    first = torch.where(starts, position, 0).cummax(-1).values
    last = torch.where(ends, position, d).flip(-1).cummin(-1).values.flip(-1)
    return torch.empty_like(ordered, dtype=torch.float64).scatter_(-1, order, (first + last).double() / 2 + 1)


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the rows of (N, D) ``a`` and ``b``; 0 where a row is constant."""
    return pearson_rows(average_ranks(a), average_ranks(b))


def ssim_rows(a: Tensor, b: Tensor) -> Tensor:
    """1-D SSIM of the rows of (N, D) ``a`` and ``b`` as Quantus calls skimage (module docstring)."""
    a, b = a.double(), b.double()
    span = torch.maximum(a.amax(-1), b.amax(-1)) - torch.minimum(a.amin(-1), b.amin(-1))
    c1, c2 = ((SSIM_K1 * span) ** 2)[:, None], ((SSIM_K2 * span) ** 2)[:, None]

    def local(v: Tensor) -> Tensor:
        return v.unfold(-1, SSIM_WINDOW, 1).mean(-1)

    ua, ub = local(a), local(b)
    scale = SSIM_WINDOW / (SSIM_WINDOW - 1)  # sample covariance
    va, vb = scale * (local(a * a) - ua * ua), scale * (local(b * b) - ub * ub)
    vab = scale * (local(a * b) - ua * ub)
    s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return torch.where(span > 0, s.mean(-1), 1.0).clamp(-1.0, 1.0)


class Similarity:
    """sim(T(a), T(b)) per sample of a fixed reference ``a`` and maps ``b`` (module docstring), computed a
    chunk of samples at a time. Spearman ranks the reference once, and skips the normalisation (ranks do
    not change under it), as Pearson does (it is scale invariant)."""

    def __init__(self, reference: Tensor, p: dict[str, Any], ctx: RunContext) -> None:
        self.kind, self.abs, self.normalize = p["similarity"], p["abs"], p["normalize"]
        self.reference = reference.flatten(1)
        self.chunk = ctx.rows_per_chunk(self.reference.shape[1], 8, copies=12)
        if self.kind == "spearman":  # half-integer ranks are exact in float32 up to 2**23 values
            self.reference = torch.cat([self.reference.new_empty(0, self.reference.shape[1])] + [
                average_ranks(self._maps(part)).float() for part in self.reference.split(self.chunk)])

    def _maps(self, flat: Tensor) -> Tensor:
        if self.kind == "ssim":
            flat = flat.double()
            if self.normalize:
                scale = flat.abs().amax(1, keepdim=True)
                flat = flat / torch.where(scale > 0, scale, 1.0)
        return flat.abs() if self.abs else flat

    def __call__(self, other: Tensor) -> Tensor:
        flat, parts = other.flatten(1), [other.new_empty(0, dtype=torch.float64)]
        for start in range(0, len(flat), self.chunk):
            reference, maps = self.reference[start : start + self.chunk], flat[start : start + self.chunk]
            if self.kind == "spearman":
                parts.append(pearson_rows(reference, average_ranks(self._maps(maps))))
            elif self.kind == "pearson":
                parts.append(pearson_rows(self._maps(reference), self._maps(maps)))
            else:
                parts.append(ssim_rows(self._maps(reference), self._maps(maps)))
        return torch.cat(parts)
