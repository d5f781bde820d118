"""Adversarial patches (Brown et al., "Adversarial patch", arXiv 1712.09665, 2017) for Impact Coverage.

A patch is a square of side p, one per class, that makes the model predict its class wherever it is pasted.
Training follows attribench (Gevaert et al., Machine Learning 2024, ``attribench/functional/
_train_adversarial_patches.py``): the patch starts as U[lo, hi] noise, lo and hi the smallest and largest
value of the training inputs; each epoch pastes it on every training image at a random position of its own
(one draw per image and class) and takes Adam steps (lr 0.05, no weight decay) on the cross-entropy towards
the patch's class, clamping the patch to [lo, hi] after every step, so that it stays a valid input; after 5
epochs the patch of the epoch with the lowest mean loss is kept. All classes train at once, a batch of B
images giving K x B rows (chunked under the batch budget, gradients accumulated before the step): the
classes' losses are summed, and as Adam acts element-wise that is exactly K independent trainings.
Differences from attribench: the training images are reshuffled each epoch (attribench: data-loader order);
positions span every valid corner 0..S-p (attribench's ``randint(0, S - p)`` never reaches the last one);
the best patch is a copy (attribench keeps a reference, the final patch, when training on the CPU).

Determinism: every random number (initial patches, orders, positions) comes from one CPU generator, and the
training runs on one CPU thread (as model training, :func:`harness.workspace.single_threaded`), so the
patches depend only on the seed, the data and the parameters (on a GPU, up to its arithmetic; the batch budget
``max_rows`` only splits the classes of a step into chunks, which changes the result by rounding at most).
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.workspace import single_threaded


def patch_side(height: int, width: int, fraction: float) -> int:
    """Side of the square patch covering ``fraction`` of an H x W image: floor(sqrt(fraction * H * W)),
    at least 1 and at most min(H, W) (attribench: int(sqrt(fraction * S^2)) for S x S images)."""
    side = math.floor(math.sqrt(fraction * height * width) + 1e-9)
    return max(1, min(side, height, width))


def window_mask(n: int, height: int, width: int, side: int, rows: Tensor, cols: Tensor) -> Tensor:
    """(n, H, W) bool: the side x side square with top-left corner (rows[i], cols[i]) in sample i."""
    r = torch.arange(height, device=rows.device)[None, :] - rows[:, None]  # (n, H)
    c = torch.arange(width, device=cols.device)[None, :] - cols[:, None]  # (n, W)
    inside_r, inside_c = (r >= 0) & (r < side), (c >= 0) & (c < side)
    return (inside_r[:, :, None] & inside_c[:, None, :]).view(n, height, width)


def paste(x: Tensor, patches: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``x`` (n, C, H, W) with ``patches[i]`` (n, C, p, p) replacing the window at (rows[i], cols[i]) in
    every channel; differentiable in ``patches``."""
    n, channels, height, width = x.shape
    side = patches.shape[-1]
    r = (torch.arange(height, device=x.device)[None, :] - rows[:, None]).clamp(0, side - 1)  # (n, H)
    c = (torch.arange(width, device=x.device)[None, :] - cols[:, None]).clamp(0, side - 1)  # (n, W)
    placed = patches.gather(2, r[:, None, :, None].expand(n, channels, height, side))
    placed = placed.gather(3, c[:, None, None, :].expand(n, channels, height, width))
    inside = window_mask(n, height, width, side, rows, cols)[:, None]
    return torch.where(inside, placed, x)


class TrainedPatches(NamedTuple):
    patches: Tensor
    """(K, C, p, p), one per class, within [lo, hi] of the training inputs."""
    loss: Tensor
    """(K,) the kept epoch's mean cross-entropy towards each patch's class (inf after 0 epochs)."""
    success: Tensor
    """(K,) share of the training images of another class that the patch, pasted at a random position,
    makes the model assign to its class (attribench's validation ``percent_successful``)."""


def train_patches(
    model: nn.Module, x_train: Tensor, y_train: Tensor, num_classes: int, *, side: int, epochs: int, lr: float,
    batch_size: int, generator: torch.Generator, device: torch.device, max_rows: int,
) -> TrainedPatches:
    """One patch per class trained on (x_train, y_train) (CPU tensors) as the module docstring says; at most
    ``max_rows`` rows go through the model at once. The model is copied (eval mode, frozen), not changed."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    n, channels, height, width = x_train.shape
    lo, hi = float(x_train.min()), float(x_train.max())
    init = torch.rand((num_classes, channels, side, side), generator=generator, dtype=x_train.dtype)
    patches = (init * (hi - lo) + lo).to(device).requires_grad_()
    optimizer = torch.optim.Adam([patches], lr=lr, weight_decay=0.0)
    best = patches.detach().clone()
    best_loss = torch.full((num_classes,), math.inf, dtype=torch.float64)
    with single_threaded(device):
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = torch.zeros(num_classes, dtype=torch.float64)
            for start in range(0, n, batch_size):
                xb = x_train[order[start:start + batch_size]].to(device)
                corners = torch.randint(0, height - side + 1, (num_classes, len(xb)), generator=generator)
                across = torch.randint(0, width - side + 1, (num_classes, len(xb)), generator=generator)
                optimizer.zero_grad()
                for classes in _class_chunks(num_classes, len(xb), max_rows):
                    losses = _class_losses(frozen, xb, patches, classes, corners, across)
                    losses.sum().backward()
                    total[classes] += losses.detach().double().cpu() * len(xb)
                optimizer.step()
                with torch.no_grad():
                    patches.clamp_(lo, hi)
            epoch_loss = total / n
            better = epoch_loss < best_loss
            best[better.to(device)] = patches.detach()[better.to(device)]
            best_loss = torch.where(better, epoch_loss, best_loss)
        success = _success(frozen, x_train, y_train, best, generator, device, max_rows)
    return TrainedPatches(best, best_loss.float(), success)


def _class_chunks(num_classes: int, rows_per_class: int, max_rows: int) -> list[Tensor]:
    step = max(1, max_rows // max(1, rows_per_class))
    return [torch.arange(s, min(num_classes, s + step)) for s in range(0, num_classes, step)]


def _class_losses(
    model: nn.Module, xb: Tensor, patches: Tensor, classes: Tensor, corners: Tensor, across: Tensor
) -> Tensor:
    """Mean cross-entropy towards each class of ``classes`` of xb with that class's patch, (len(classes),)."""
    b, k = len(xb), len(classes)
    device = xb.device
    rows = paste(xb.repeat(k, 1, 1, 1), patches[classes.to(device)].repeat_interleave(b, 0),
                 corners[classes].flatten().to(device), across[classes].flatten().to(device))
    target = classes.to(device).repeat_interleave(b)
    return F.cross_entropy(model(rows), target, reduction="none").view(k, b).mean(1)


@torch.no_grad()
def _success(
    model: nn.Module, x: Tensor, y: Tensor, patches: Tensor, generator: torch.Generator, device: torch.device,
    max_rows: int,
) -> Tensor:
    num_classes, _, side, _ = patches.shape
    n, _, height, width = x.shape
    rows = torch.randint(0, height - side + 1, (num_classes, n), generator=generator)
    cols = torch.randint(0, width - side + 1, (num_classes, n), generator=generator)
    hits = torch.zeros(num_classes)
    others = torch.zeros(num_classes)
    step = max(1, max_rows)
    for c in range(num_classes):
        for start in range(0, n, step):
            xb, yb = x[start:start + step].to(device), y[start:start + step].to(device)
            sl = slice(start, start + len(xb))
            patched = paste(xb, patches[c].expand(len(xb), *patches.shape[1:]), rows[c, sl].to(device),
                            cols[c, sl].to(device))
            other = yb != c
            hits[c] += float(((model(patched).argmax(1) == c) & other).sum())
            others[c] += float(other.sum())
    return hits / others.clamp_min(1.0)
