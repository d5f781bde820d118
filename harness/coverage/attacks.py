"""Test generation for coverage experiments: adversarial attacks (RQ3/RQ4) and important-versus-random noise
(RQ2) of DeepImportance (Gerasimou et al., ICSE 2020; seed-systems.md §3.3; seed github JoshuaQSH/Wisdom).

* :func:`fgsm` (Goodfellow et al., "Explaining and harnessing adversarial examples", ICLR 2015):
  x' = clip(x + eps * sign(grad_x CE(f(x), y))).
* :func:`pgd` (Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018):
  L-inf projected gradient ascent on the cross-entropy from an optional uniform random start in the eps-ball;
  each step x <- clip(proj_eps(x + alpha * sign(grad))).
* :func:`cw` (Carlini & Wagner, "Towards evaluating the robustness of neural networks", S&P 2017), the
  untargeted L2 attack: x'(w) = lo + (hi - lo) (tanh w + 1) / 2, minimise ||x' - x||^2 +
  c max(Z_y - max_{j != y} Z_j, -kappa) with Adam; returns the successful iterate of least L2 per input (the
  input itself where none succeeded). ``binary_steps`` = 1 keeps c fixed (the seed, via torchattacks); more
  runs the paper's binary search over c (§V; their nn_robust_attacks ``l2_attack.py``): one c per input,
  raised tenfold until a round succeeds, then bisected between the largest failing and least succeeding c.

Units. The harness's images are normalised, x_n = (x_p - mean) / std per channel, so the caller passes the
box [lo, hi] of valid *normalised* values (per channel: lo_c = (0 - mean_c) / std_c, hi_c = (1 - mean_c) /
std_c) and ``scale`` = 1 / std per channel. ``eps``, ``alpha`` and the noise ``std`` are in pixel units
([0, 1] images): a pixel step of eps is a normalised step of eps * scale_c in channel c. ``lo``, ``hi`` and
``scale`` are floats or one value per channel (dimension 1 of x). Defaults are the seed's: FGSM eps 0.3;
PGD eps 0.3, alpha 0.1, 20 steps; CW c 1, 50 steps, lr 0.01, kappa 0, binary_steps 1 (fixed c); noise on 2%
of positions, std 0.5.

Every attack runs on x's device, in chunks of ``batch_size`` rows, with the model in eval mode (its mode is
restored afterwards) and gradients taken with respect to the input only; it returns the adversarial inputs
and a bool mask of success (prediction != y). Randomness (PGD's start, the noise) is drawn on the CPU from the
given generator and moved, so results are the same on every device.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from harness.metrics.perturbation import eval_mode
from harness.specs import ParamError, resolve_params

Bound = float | Sequence[float] | Tensor
"""A float, or one value per channel (dimension 1 of the inputs)."""
ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.3},
    "pgd": {"eps": 0.3, "alpha": 0.1, "steps": 20, "random_start": True},
    "cw": {"c": 1.0, "steps": 50, "lr": 0.01, "kappa": 0.0, "binary_steps": 1},
}
"""The seed's hyper-parameters (seed-systems.md §3.3) per attack."""
TANH_LIMIT = 1.0 - 1e-6
"""|tanh w| is kept below this when mapping inputs on the box's faces to w (finite atanh)."""
CW_UPPER = 1e10
"""CW's initial upper bound on c: an input's c is bisected once its bound falls below this, else raised tenfold
(Carlini & Wagner's ``l2_attack.py``)."""


# ---- helpers ---------------------------------------------------------------------------------------------


def per_channel(value: Bound, x: Tensor, name: str) -> Tensor:
    """``value`` as a tensor broadcastable to x: a scalar, or (1, C, 1, ...) from one value per channel."""
    t = torch.as_tensor(value, dtype=x.dtype).to(x.device)
    if t.ndim == 0:
        return t
    channels = x.shape[1] if x.ndim > 1 else 1
    if t.ndim != 1 or len(t) != channels:
        raise ParamError(f"{name} must be a float or one value per channel ({channels}), got shape "
                         f"{list(t.shape)}")
    return t.view(1, channels, *([1] * (x.ndim - 2)))


def _box(x: Tensor, lo: Bound, hi: Bound) -> tuple[Tensor, Tensor]:
    low, high = per_channel(lo, x, "lo"), per_channel(hi, x, "hi")
    if not bool((low < high).all()):
        raise ParamError(f"the box needs lo < hi, got lo={lo}, hi={hi}")
    return low, high


def _check(name: str, value: float, ok: bool, valid: str) -> None:
    if not ok or not math.isfinite(value):
        raise ParamError(f"{name} = {value!r} is not valid; valid values: {valid}")


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """d/dx of the summed cross-entropy (per-row gradients independent of the chunk)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


@torch.no_grad()
def _missed(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return model(x).argmax(dim=1) != y


def _chunked(
    fn: Callable[..., tuple[Tensor, Tensor]], batch_size: int, *tensors: Tensor
) -> tuple[Tensor, Tensor]:
    """Run ``fn`` on row chunks of ``tensors`` and concatenate its two outputs."""
    if batch_size < 1:
        raise ParamError(f"batch_size = {batch_size} is not valid; valid values: integers >= 1")
    parts = [fn(*chunk) for chunk in zip(*(t.split(batch_size) for t in tensors), strict=True)]
    if not parts:
        return tensors[0].clone(), torch.zeros(0, dtype=torch.bool, device=tensors[0].device)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ---- attacks ---------------------------------------------------------------------------------------------


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, eps: float = 0.3, *, lo: Bound, hi: Bound,
    scale: Bound = 1.0, batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """FGSM (Goodfellow et al. 2015): ``(clip(x + eps * scale * sign(grad_x CE), lo, hi), success)``."""
    _check("fgsm eps", eps, eps >= 0, "eps >= 0 (pixel units)")
    low, high = _box(x, lo, hi)
    step = eps * per_channel(scale, x, "scale")

    def run(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        adv = torch.clamp(xb + step * _input_gradient(model, xb, yb).sign(), low, high)
        return adv, _missed(model, adv, yb)

    with eval_mode(model):
        return _chunked(run, batch_size, x.detach(), y)


def pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float = 0.3, alpha: float = 0.1, steps: int = 20,
    random_start: bool = True, generator: torch.Generator | None = None, *, lo: Bound, hi: Bound,
    scale: Bound = 1.0, batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """L-inf PGD (Madry et al. 2018): from x (or x + U[-eps, eps], clipped, if ``random_start``), ``steps``
    times x' <- clip(x + clamp(x' + alpha * sign(grad) - x, -eps, eps), lo, hi), eps and alpha times
    ``scale``; returns the last iterate and its success. The start is drawn on the CPU from ``generator``."""
    _check("pgd eps", eps, eps >= 0, "eps >= 0 (pixel units)")
    _check("pgd alpha", alpha, alpha > 0, "alpha > 0 (pixel units)")
    _check("pgd steps", steps, isinstance(steps, int) and steps >= 0, "integers >= 0")
    if random_start and generator is None:
        raise ParamError("pgd: random_start=True needs a generator (e.g. ctx.generator(offset))")
    low, high = _box(x, lo, hi)
    factor = per_channel(scale, x, "scale")
    radius, step = eps * factor, alpha * factor
    x = x.detach()
    start = x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        start = torch.clamp(x + radius * noise, low, high)

    def run(xb: Tensor, sb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        adv = sb
        for _ in range(steps):
            moved = adv + step * _input_gradient(model, adv, yb).sign()
            adv = torch.clamp(xb + torch.clamp(moved - xb, -radius, radius), low, high)
        return adv, _missed(model, adv, yb)

    with eval_mode(model):
        return _chunked(run, batch_size, x, start, y)


def _next_c(c: Tensor, hit: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One binary-search update of the per-input c (Carlini & Wagner 2017, §V): a round that succeeded
    (``hit``) lowers the upper bound to c, one that failed raises the lower bound to c; c becomes the bounds'
    midpoint where the upper bound is known (< :data:`CW_UPPER`), else c stays (success) or grows tenfold."""
    upper = torch.where(hit, torch.minimum(upper, c), upper)
    lower = torch.where(hit, lower, torch.maximum(lower, c))
    grown = torch.where(hit, c, c * 10)
    return torch.where(upper < CW_UPPER, (lower + upper) / 2, grown), lower, upper


def cw(
    model: nn.Module, x: Tensor, y: Tensor, c: float = 1.0, steps: int = 50, lr: float = 0.01,
    kappa: float = 0.0, binary_steps: int = 1, *, lo: Bound, hi: Bound, batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Carlini-Wagner L2, untargeted (Carlini & Wagner 2017; module docstring): ``binary_steps`` rounds of
    ``steps`` Adam steps on w with x'(w) = lo + (hi - lo)(tanh w + 1)/2, each round from x with a fresh Adam;
    after each step's forward pass an iterate that is misclassified and nearer to x in L2 than the best of all
    rounds so far is kept. Round 1 uses ``c``; later rounds each input's c from the binary search (§V,
    :func:`_next_c`; c in x's dtype); ``binary_steps`` = 1 is the fixed-c attack. Returns the best iterates
    (x where none succeeded) and success. L2 is measured in x's (normalised) units."""
    _check("cw c", c, c > 0, "c > 0")
    _check("cw lr", lr, lr > 0, "lr > 0")
    _check("cw kappa", kappa, kappa >= 0, "kappa >= 0")
    _check("cw steps", steps, isinstance(steps, int) and steps >= 0, "integers >= 0")
    _check("cw binary_steps", binary_steps,
           isinstance(binary_steps, int) and not isinstance(binary_steps, bool) and binary_steps >= 1,
           "integers >= 1")
    low, high = _box(x, lo, hi)
    width = high - low

    def one_round(xb: Tensor, yb: Tensor, start: Tensor, weight: float | Tensor, best: Tensor,
                  best_l2: Tensor) -> Tensor:
        """Adam from ``start`` at c = ``weight``; updates best and best_l2 in place; returns the inputs
        misclassified at some iterate of this round."""
        w = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=lr)
        hit = torch.zeros(len(xb), dtype=torch.bool, device=xb.device)
        for _ in range(steps):
            with torch.enable_grad():
                adv = low + width * (torch.tanh(w) + 1) / 2
                logits = model(adv)
                own = F.one_hot(yb, logits.shape[1]).bool()
                l2 = (adv - xb).flatten(1).pow(2).sum(dim=1)
                other = logits.masked_fill(own, -math.inf).amax(dim=1)
                margin = torch.clamp(logits[own] - other, min=-kappa)
                w.grad = torch.autograd.grad((l2 + weight * margin).sum(), w)[0]  # no parameter gradients
                optimizer.step()
            with torch.no_grad():
                missed = logits.argmax(dim=1) != yb
                hit |= missed
                better = missed & (l2 < best_l2)
                best_l2.copy_(torch.where(better, l2, best_l2))
                best[better] = adv[better].detach()
        return hit

    def run(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        start = torch.atanh(((xb - low) / width * 2 - 1).clamp(-TANH_LIMIT, TANH_LIMIT))
        best, best_l2 = xb.clone(), torch.full((len(xb),), math.inf, dtype=xb.dtype, device=xb.device)
        const, lower, upper = torch.full_like(best_l2, c), torch.zeros_like(best_l2), torch.full_like(best_l2, CW_UPPER)
        for round_ in range(binary_steps):
            hit = one_round(xb, yb, start, c if round_ == 0 else const, best, best_l2)  # round 1: the float c
            if round_ + 1 < binary_steps:
                const, lower, upper = _next_c(const, hit, lower, upper)
        return best, torch.isfinite(best_l2)

    with eval_mode(model), torch.no_grad():
        return _chunked(run, batch_size, x.detach(), y)


ATTACKS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"fgsm": fgsm, "pgd": pgd, "cw": cw}


def attack(
    name: str, model: nn.Module, x: Tensor, y: Tensor, *, lo: Bound, hi: Bound, scale: Bound = 1.0,
    generator: torch.Generator | None = None, batch_size: int = 256, **params: Any,
) -> tuple[Tensor, Tensor]:
    """Run attack ``name`` ("fgsm", "pgd", "cw") with ``params`` checked against :data:`ATTACK_DEFAULTS`
    (:func:`~harness.specs.resolve_params`); returns (adversarial x, success)."""
    if name not in ATTACKS:
        raise ParamError(f"attack {name!r} is not known; choices: {', '.join(map(repr, ATTACKS))}")
    resolved = resolve_params(f"attack {name}", params, ATTACK_DEFAULTS[name])
    extra: dict[str, Any] = {"lo": lo, "hi": hi, "batch_size": batch_size}
    if name != "cw":
        extra["scale"] = scale
    if name == "pgd":
        extra["generator"] = generator
    return ATTACKS[name](model, x, y, **resolved, **extra)


# ---- noise on important versus random positions (RQ2) ------------------------------------------------------


def _positions(x: Tensor) -> int:
    """Input positions per input: pixels of (N, C, *spatial), features of (N, F)."""
    return math.prod(x.shape[2:]) if x.ndim > 2 else x.shape[1]


def _position_scores(x: Tensor, relevance: Tensor) -> Tensor:
    """(N, P) |relevance| per input position (a pixel: summed over channels; a feature of (N, F) inputs).
    ``relevance`` has x's shape, (N, 1, *spatial), or (N, *spatial)."""
    n, spatial = x.shape[0], (x.shape[2:] if x.ndim > 2 else x.shape[1:])
    r = relevance.detach().abs()
    if x.ndim > 2 and r.ndim == x.ndim - 1:
        r = r.unsqueeze(1)
    if x.ndim > 2 and r.ndim == x.ndim and r.shape[1] in (1, x.shape[1]) and r.shape[2:] == spatial:
        return r.sum(dim=1).reshape(n, _positions(x))
    if x.ndim == 2 and r.shape == x.shape:
        return r
    raise ParamError(f"relevance of shape {list(relevance.shape)} does not fit inputs {list(x.shape)}; give "
                     "x's shape, (N, 1, *spatial) or (N, *spatial)")


def position_count(positions: int, fraction: float, exclusive: bool = False) -> int:
    """k = max(1, floor(fraction * P)) positions, as the seed's ``max(1, int(H * W * frac))``; ``exclusive``
    (random positions outside the top k) needs 2k <= P."""
    _check("noise fraction", fraction, 0 < fraction <= 1, "0 < fraction <= 1")
    k = min(positions, max(1, math.floor(fraction * positions + 1e-9)))
    if exclusive and 2 * k > positions:
        raise ParamError(f"noise fraction = {fraction} is not valid for {positions} positions: random positions "
                         f"outside the top {k} need 2k <= {positions}; valid values: 0 < fraction <= 0.5")
    return k


def top_positions(x: Tensor, relevance: Tensor, fraction: float, exclusive: bool = False) -> Tensor:
    """(N, k) indices of each input's k positions of largest |relevance| (ties: lower index first)."""
    scores = _position_scores(x, relevance)
    k = position_count(scores.shape[1], fraction, exclusive)
    return scores.argsort(dim=1, descending=True, stable=True)[:, :k].to(x.device)


def random_positions(x: Tensor, relevance: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """(N, k) indices of k positions per input drawn uniformly without replacement among those outside its
    top k (:func:`top_positions`); the keys are drawn on the CPU from ``generator``."""
    top = top_positions(x, relevance, fraction, exclusive=True).cpu()
    keys = torch.rand((x.shape[0], _positions(x)), generator=generator)
    keys.scatter_(1, top, 2.0)  # above every U[0, 1) key: never among the k smallest
    return keys.argsort(dim=1, stable=True)[:, : top.shape[1]].to(x.device)


def _need(generator: torch.Generator | None, where: str) -> torch.Generator:
    if generator is None:
        raise ParamError(f"{where}: needs a generator (e.g. ctx.generator(offset)); got None")
    return generator


def noise_at(
    x: Tensor, positions: Tensor, std: float, *, lo: Bound, hi: Bound, scale: Bound = 1.0,
    generator: torch.Generator,
) -> Tensor:
    """x with N(0, (std * scale_c)^2) added on every channel of the given (N, k) positions, clipped to
    [lo, hi]; the noise, (N, C, k), is drawn on the CPU from ``generator``."""
    _check("noise std", std, std >= 0, "std >= 0 (pixel units)")
    low, high = _box(x, lo, hi)
    n, k = positions.shape
    channels = x.shape[1] if x.ndim > 2 else 1
    noise = torch.randn((n, channels, k), generator=generator, dtype=x.dtype).to(x.device) * std
    delta = torch.zeros((n, channels, _positions(x)), dtype=x.dtype, device=x.device)
    delta.scatter_(2, positions.unsqueeze(1).expand(n, channels, k), noise)
    return torch.clamp(x.detach() + delta.view(x.shape) * per_channel(scale, x, "scale"), low, high)


def important_noise(
    x: Tensor, relevance: Tensor, fraction: float = 0.02, std: float = 0.5, lo: Bound = 0.0, hi: Bound = 1.0,
    generator: torch.Generator | None = None, *, scale: Bound = 1.0,
) -> Tensor:
    """U_I of the seed's RQ2: Gaussian noise (``std`` in pixel units) on each input's top ``fraction`` of
    positions by |relevance|, clipped to the image range [lo, hi] (default: [0, 1] pixels)."""
    generator = _need(generator, "important_noise")
    positions = top_positions(x, relevance, fraction)
    return noise_at(x, positions, std, lo=lo, hi=hi, scale=scale, generator=generator)


def random_noise(
    x: Tensor, relevance: Tensor, fraction: float = 0.02, std: float = 0.5, lo: Bound = 0.0, hi: Bound = 1.0,
    generator: torch.Generator | None = None, *, scale: Bound = 1.0,
) -> Tensor:
    """U_R of the seed's RQ2: the same noise on a random ``fraction`` of positions outside the top ones."""
    generator = _need(generator, "random_noise")
    positions = random_positions(x, relevance, fraction, generator)
    return noise_at(x, positions, std, lo=lo, hi=hi, scale=scale, generator=generator)
