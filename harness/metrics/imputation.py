"""Noisy linear imputation (ROAD), batched over images and channels on the inputs' device.

Definition (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022,
§4; reference code github tleemann/road_evaluation ``road/imputations.py`` ``NoisyLinearImputer``, also
Quantus 0.6 ``quantus.functions.perturb_func.noisy_linear_imputation``):

Every removed pixel takes the weighted mean of its 8 neighbours, direct neighbours weight 1/6 and diagonal
ones 1/12 (the reference's ``neighbors_weights``); known neighbours enter with their values, removed ones as
unknowns solved jointly. For removed pixel i with in-image neighbours N(i) the equation is

    d_i u_i - sum_{j in N(i), removed} w_ij u_j = sum_{j in N(i), known} w_ij x_j,
    d_i = sum_{j in N(i)} w_ij,

one sparse linear system per image and channel. Then ``noise`` * N(0, 1) is added to the removed pixels only
(reference: ``noise`` = 0.01, one draw per channel and pixel); known pixels keep their values exactly.

How the reference treats the edge cases, followed here:

- Borders: neighbours outside the image are dropped and the diagonal shrinks to the in-image weights
  (``sum_neighbors`` starts at 1 and loses each invalid offset's weight), i.e. the mean is renormalised over
  the neighbours that exist (a corner pixel averages its 3 neighbours with weights 1/6, 1/6, 1/12 over 5/12).
- Removed pixels whose neighbours are all removed are ordinary unknowns of the joint system; a removed
  region is filled from the known pixels around it (a discrete harmonic interpolation). The system is
  solvable whenever the image keeps at least one known pixel (each 8-connected removed region then borders a
  known one). With every pixel removed the reference's matrix is singular (scipy's ``spsolve`` warns and
  returns NaN); :func:`linear_imputation` raises ``ValueError`` instead.

Solver. The matrix D - W restricted to the removed pixels is symmetric and, under the condition above,
positive definite (an irreducibly diagonally dominant M-matrix), so all N * C systems are solved at once by
Jacobi-preconditioned conjugate gradients on the full (H, W) grid (``dtype``, default float64): unknowns
live at the removed pixels (zero elsewhere), the stencil is a separable [1, 2, 1] x [1, 2, 1] box over a
zero-padded copy (slices only: the same on every device), and every dot product is per system. Start: each
system's removed pixels at the mean of its known pixels (exact for a constant image).

Convergence: stop when every removed pixel of a system differs from the weighted mean of its neighbours (the
residual scaled by 1/d_i) by at most ``tol`` (default 1e-9) times the largest magnitude of the system's known
values (so the criterion does not depend on the units of x), checked every :data:`CHECK_EVERY` iterations. A
system that has converged is frozen at that iterate (and dropped from the batch once half the batch has), so
its result does not depend on which systems share its batch (bitwise on the CPU, tested). The error is then
at most ``T * tol * max|known|``, T the longest expected time for the neighbour-weighted random walk to leave
a removed region (about (3/4) r^2 steps for a disc of radius r). Measured against ``spsolve`` on a 224 x 224
photo in [0, 1] with the central half removed (r ~ 89; ~340 iterations): 1.1e-7 (4e-7 at ``tol`` 1e-8, 3e-5
at 1e-6). Iterations grow with the width of the largest removed region (scattered random holes: ~30 at
224 x 224). Not converging within ``max_iter`` (default 20 * (H + W) + 200) raises ``RuntimeError``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DIRECT, DIAGONAL = 1.0 / 6.0, 1.0 / 12.0
"""Neighbour weights of the reference (``neighbors_weights``): 4 * 1/6 + 4 * 1/12 = 1."""
CHECK_EVERY = 8
"""Iterations between convergence checks (each costs one device synchronisation)."""


def neighbour_sum(u: Tensor) -> Tensor:
    """``sum_j w_ij u_j`` over the in-image neighbours j of every pixel of ``u`` (..., H, W): the reference's
    stencil with zero padding, as eight shifted slices of one padded copy."""
    h, w = u.shape[-2:]
    p = F.pad(u, (1, 1, 1, 1))
    direct = p[..., :h, 1:w + 1] + p[..., 2:, 1:w + 1] + p[..., 1:h + 1, :w] + p[..., 1:h + 1, 2:]
    diagonal = p[..., :h, :w] + p[..., :h, 2:] + p[..., 2:, :w] + p[..., 2:, 2:]
    return direct.mul_(DIRECT).add_(diagonal, alpha=DIAGONAL)


def linear_imputation(
    x: Tensor, removed: Tensor, *, tol: float = 1e-9, max_iter: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Noise-free linear imputation of ``x`` (N, C, H, W) at ``removed`` (N, H, W) bool (True: impute),
    every channel; returns a new tensor like ``x`` with known pixels unchanged (module docstring: Rong et
    al. 2022). ``dtype`` is the solver's precision; ``max_iter`` defaults to 20 * (H + W) + 200."""
    _check(x, removed)
    if max_iter is not None and max_iter < 1:
        raise ValueError(f"noisy linear imputation: max_iter = {max_iter} must be at least 1")
    n, c, h, w = x.shape
    if n * c == 0 or not bool(removed.any()):
        return x.clone()
    full = removed.flatten(1).all(1)
    if bool(full.any()):
        raise ValueError(
            f"noisy linear imputation: every pixel of image {int(full.nonzero()[0])} is removed; the system "
            "has no known pixel to interpolate from (the reference's matrix is singular)"
        )
    mask = removed.to(device=x.device, dtype=dtype)[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w)
    values = x.to(dtype).reshape(n * c, 1, h, w)
    limit = max_iter if max_iter is not None else 20 * (h + w) + 200
    solved, _ = _conjugate_gradients(values, mask, tol, limit)
    return torch.where(removed[:, None].to(x.device), solved.reshape(n, c, h, w).to(x.dtype), x)


def noisy_linear_imputation(
    x: Tensor, removed: Tensor, noise: float = 0.01, generator: torch.Generator | None = None,
    *, tol: float = 1e-9, max_iter: int | None = None, dtype: torch.dtype = torch.float64,
) -> Tensor:
    """:func:`linear_imputation` plus ``noise`` * N(0, 1) on the removed pixels (Rong et al. 2022; reference
    ``NoisyLinearImputer(noise=0.01)``). The normal draws, one per value of ``x``'s shape, come from
    ``generator`` on the CPU (in float32) and are moved to ``x``'s device."""
    out = linear_imputation(x, removed, tol=tol, max_iter=max_iter, dtype=dtype)
    if noise == 0.0:
        return out
    draws = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return out + (noise * draws) * removed[:, None].to(device=x.device, dtype=x.dtype)


def _check(x: Tensor, removed: Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"noisy linear imputation needs float images (N, C, H, W), got {x.dtype} "
                         f"{list(x.shape)}")
    if removed.dtype != torch.bool or removed.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"removed must be a bool (N, H, W) = {[x.shape[0], *x.shape[2:]]} mask, got "
                         f"{removed.dtype} {list(removed.shape)}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("noisy linear imputation: inputs contain NaN or infinite values")


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-system dot product over the grid: (B, 1, H, W) twice -> (B, 1, 1, 1)."""
    return (a * b).sum(dim=(2, 3), keepdim=True)


def _apply(padded: Tensor, p: Tensor, centre: Tensor) -> Tensor:
    """``A p = d * p - S(p) = (d + 1/3) * p - box(p) / 12`` at every pixel (meaningful at the unknowns), where
    the stencil 12 * S + 4 * identity is the separable box [1, 2, 1] x [1, 2, 1]; ``padded`` is ``p`` with a
    zero border (``p`` a view of its interior), so the box is two passes of three shifted slices."""
    rows = padded[..., :, :-2] + padded[..., :, 2:]
    rows.add_(padded[..., :, 1:-1], alpha=2.0)
    box = rows[..., :-2, :] + rows[..., 2:, :]
    box.add_(rows[..., 1:-1, :], alpha=2.0)
    return box.mul_(-1.0 / 12.0).addcmul_(centre, p)


def _conjugate_gradients(values: Tensor, mask: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Solve every system of (B, 1, H, W) ``values`` at ``mask`` (1: unknown); returns (B, 1, H, W) with the
    solution at the unknowns (other entries arbitrary), and the iterations run.

    Only the unknowns of ``r`` are kept exact (``A p`` is not masked); the preconditioned residual
    ``z = r * mask / d`` is zero elsewhere, and so are ``p`` and every update of ``u``."""
    diag = neighbour_sum(torch.ones_like(values[:1]))  # (1, 1, H, W): the in-image weights d_i
    centre = diag + 4.0 * DIAGONAL
    scale = mask * torch.where(diag > 0, 1.0 / diag, torch.zeros_like(diag))  # Jacobi, zero at known pixels
    known = values * (1.0 - mask)
    rhs = mask * neighbour_sum(known)
    start = known.sum(dim=(2, 3), keepdim=True) / (1.0 - mask).sum(dim=(2, 3), keepdim=True)  # known mean
    threshold = tol * known.abs().amax(dim=(1, 2, 3))  # (B,): a constant 0 image converges at r = 0
    u = start * mask
    r = rhs - mask * (diag * u - neighbour_sum(u))
    z = r * scale
    padded = F.pad(z, (1, 1, 1, 1))
    p, rz = padded[..., 1:-1, 1:-1], _dot(r, z)
    live = torch.ones_like(rz)  # 0 once a system has converged: it is frozen at that iterate
    out = u.clone()
    active = torch.arange(values.shape[0], device=values.device)
    tiny = torch.finfo(values.dtype).tiny
    for iteration in range(1, max_iter + 1):
        ap = _apply(padded, p, centre)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(tiny), torch.zeros_like(pap)).mul_(live)
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        torch.mul(r, scale, out=z)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz)).mul_(live)
        p.mul_(beta).add_(z)
        rz = rz_new
        if iteration % CHECK_EVERY and iteration != max_iter:
            continue
        worst = z.abs().amax(dim=(1, 2, 3))  # |r_i| / d_i at the unknowns
        done = worst <= threshold
        if bool(done.all()):
            out[active] = u
            return out, iteration
        live = (~done).to(live.dtype)[:, None, None, None]
        if 2 * int(done.sum()) >= done.numel():  # drop the converged systems from the batch
            out[active[done]] = u[done]
            keep = ~done
            active, u, r, z, padded, rz, live, scale, threshold = (
                t[keep] for t in (active, u, r, z, padded, rz, live, scale, threshold)
            )
            p = padded[..., 1:-1, 1:-1]
    relative = float((worst / threshold.clamp_min(tiny)).max()) * tol
    raise RuntimeError(
        f"noisy linear imputation: conjugate gradients did not converge in {max_iter} iterations; largest "
        f"scaled residual relative to the known values {relative:.3g} > tol {tol:g} (loosen tol or raise "
        "max_iter)"
    )

