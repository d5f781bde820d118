"""Test generation for the coverage experiments (harness.coverage.attacks) and LeNet-5 (harness.models.lenet):
FGSM by hand on a linear model, PGD and CW (fixed c and the binary search over c) against plain per-sample
loops (CW's Adam written out), the eps-ball and box, attacks on a trained tiny model, determinism, the RQ2
noise positions, and LeNet against a restatement of the seed's class."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional as F

import harness.models  # noqa: F401  (registers the models)
from harness.coverage.attacks import (
    ATTACK_DEFAULTS,
    attack,
    cw,
    fgsm,
    important_noise,
    noise_at,
    pgd,
    position_count,
    random_noise,
    random_positions,
    top_positions,
)
from harness.coverage.base import coverage_layers
from harness.data.digits import load_digit_images
from harness.models.training import build_model
from harness.specs import MODELS, ParamError
from harness.workspace import single_threaded

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread
CPU = torch.device("cpu")
WIDE = {"lo": -100.0, "hi": 100.0}  # a box no test input reaches: no clipping


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_model(features: int = 6, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).double().eval()


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    """An MLP trained on the 8x8 digits (about 0.3 s on one thread, ~96% test accuracy) and 100 correctly
    classified test digits in [0, 1]."""
    x, y = load_digit_images(8)
    order = torch.randperm(len(y), generator=gen(0))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    with single_threaded(CPU):
        for _ in range(150):
            loss = F.cross_entropy(model(x[train]), y[train])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        right = test[model(x[test]).argmax(1) == y[test]]
    assert len(right) > 0.9 * len(test)
    return model, x[right[:100]], y[right[:100]]


def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


# ---- FGSM ------------------------------------------------------------------------------------------------


def test_fgsm_on_a_linear_model_is_the_hand_computed_step() -> None:
    """Logits Wx + b: grad_x CE = W^T (softmax - onehot(y)); FGSM adds eps * sign of it (Goodfellow 2015)."""
    model = linear_model()
    x = torch.randn(5, 6, generator=gen(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    weight = model[1].weight.detach().numpy()
    logits = x.numpy() @ weight.T + model[1].bias.detach().numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y.numpy()]) @ weight
    adv, ok = fgsm(model, x, y, 0.3, **WIDE)
    np.testing.assert_allclose(adv.numpy(), x.numpy() + 0.3 * np.sign(grad), rtol=0, atol=1e-12)
    assert torch.equal(ok, model(adv).argmax(1) != y)


def test_fgsm_scales_eps_per_channel_and_clips_to_the_box() -> None:
    """eps in pixel units: a normalised step of eps / std_c per channel; the result stays in [lo_c, hi_c]."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).double().eval()
    x = torch.rand(7, 2, 3, 3, generator=gen(2), dtype=torch.float64)
    y = torch.arange(7) % 4
    adv, _ = fgsm(model, x, y, 0.1, scale=[2.0, 0.5], **WIDE)
    step = (adv - x).abs()
    assert torch.allclose(step[:, 0], torch.full_like(step[:, 0], 0.2))
    assert torch.allclose(step[:, 1], torch.full_like(step[:, 1], 0.05))
    lo, hi = [0.0, 0.2], [1.0, 0.9]
    clipped, _ = fgsm(model, x, y, 0.5, lo=lo, hi=hi)
    for c in range(2):
        assert clipped[:, c].min() >= lo[c] and clipped[:, c].max() <= hi[c]
        assert ((clipped[:, c] == lo[c]) | (clipped[:, c] == hi[c])).float().mean() > 0.2


# ---- PGD -------------------------------------------------------------------------------------------------


def plain_pgd(model: nn.Module, x: Tensor, y: Tensor, start: Tensor, eps: Tensor, alpha: Tensor, steps: int,
              lo: float, hi: float) -> Tensor:
    """Madry et al. 2018 one input at a time, written out."""
    out = []
    for xi, si, yi in zip(x, start, y, strict=True):
        adv = si.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            F.cross_entropy(model(adv[None]), yi[None]).backward()
            with torch.no_grad():
                adv = adv + alpha * adv.grad.sign()
                adv = torch.minimum(torch.maximum(adv, xi - eps), xi + eps).clamp(lo, hi)
        out.append(adv.detach())
    return torch.stack(out)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_equals_a_plain_per_sample_loop(random_start: bool) -> None:
    model = small_net()
    x = torch.rand(6, 3, 2, 2, generator=gen(3), dtype=torch.float64)
    y = torch.arange(6) % 3
    scale = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(1, 3, 1, 1)
    eps, alpha = 0.05 * scale, 0.02 * scale
    start = x
    if random_start:
        start = (x + eps * (torch.rand(x.shape, generator=gen(9), dtype=x.dtype) * 2 - 1)).clamp(0, 1)
    expected = plain_pgd(model, x, y, start, eps[0], alpha[0], 4, 0.0, 1.0)
    adv, ok = pgd(model, x, y, 0.05, 0.02, 4, random_start, gen(9), lo=0.0, hi=1.0, scale=[1.0, 2.0, 4.0],
                  batch_size=4)
    assert torch.allclose(adv, expected, atol=1e-12)
    assert torch.equal(ok, model(adv).argmax(1) != y)


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(0.0, 0.5), alpha=st.floats(0.01, 0.5), steps=st.integers(0, 5), seed=st.integers(0, 99),
       lo=st.floats(-1.0, 0.3), width=st.floats(0.2, 2.0))
def test_pgd_stays_in_the_eps_ball_and_the_box(eps: float, alpha: float, steps: int, seed: int, lo: float,
                                               width: float) -> None:
    model = small_net(seed % 3)
    x = (lo + width * torch.rand(5, 3, 2, 2, generator=gen(seed), dtype=torch.float64))
    adv, _ = pgd(model, x, torch.arange(5) % 3, eps, alpha, steps, True, gen(seed), lo=lo, hi=lo + width)
    assert (adv - x).abs().max() <= eps + 1e-12
    assert adv.min() >= lo and adv.max() <= lo + width


def test_pgd_is_deterministic_given_the_generator() -> None:
    model = small_net()
    x = torch.rand(4, 3, 2, 2, generator=gen(4), dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    runs = [pgd(model, x, y, steps=2, generator=gen(s), lo=0.0, hi=1.0)[0] for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    with pytest.raises(ParamError, match="generator"):
        pgd(model, x, y, lo=0.0, hi=1.0)


# ---- CW --------------------------------------------------------------------------------------------------


def plain_cw(model: nn.Module, x: Tensor, y: Tensor, c: float, steps: int, lr: float,
             kappa: float) -> tuple[Tensor, float]:
    """Carlini & Wagner 2017 (L2, untargeted, fixed c) on one input in the box [0, 1], Adam written out
    (Kingma & Ba 2015: betas 0.9, 0.999, eps 1e-8). Returns the least-L2 misclassified iterate and its squared
    L2, or (x, inf)."""
    w = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    best, best_l2 = x, math.inf
    for t in range(1, steps + 1):
        w.requires_grad_(True)
        adv = (torch.tanh(w) + 1) / 2
        logits = model(adv[None])[0]
        l2 = (adv - x).pow(2).sum()
        others = torch.cat([logits[:y], logits[y + 1:]])
        objective = l2 + c * torch.clamp(logits[y] - others.max(), min=-kappa)
        (grad,) = torch.autograd.grad(objective, w)
        with torch.no_grad():
            if int(logits.argmax()) != int(y) and float(l2) < best_l2:
                best, best_l2 = adv.detach(), float(l2)
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            w = w.detach() - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return best, best_l2


def plain_cw_search(model: nn.Module, x: Tensor, y: Tensor, c: float, steps: int, lr: float, kappa: float,
                    binary_steps: int) -> tuple[Tensor, list[float], list[bool]]:
    """Carlini & Wagner's binary search over c (S&P 2017 §V) on one input, in Python floats: each round a fresh
    :func:`plain_cw` at c; success sets upper = min(upper, c), failure lower = max(lower, c); c becomes
    (lower + upper) / 2 once upper < 1e10, else (failure) 10 c. Returns the least-L2 success of all rounds (or
    x), the c of every round and whether each round succeeded."""
    lower, upper, best, best_l2 = 0.0, 1e10, x, math.inf
    consts, hits = [], []
    for _ in range(binary_steps):
        adv, l2 = plain_cw(model, x, y, c, steps, lr, kappa)
        consts.append(c)
        hits.append(math.isfinite(l2))
        if l2 < best_l2:
            best, best_l2 = adv, l2
        if hits[-1]:
            upper = min(upper, c)
        else:
            lower = max(lower, c)
        c = (lower + upper) / 2 if upper < 1e10 else (c if hits[-1] else c * 10)
    return best, consts, hits


def previous_cw(model: nn.Module, x: Tensor, y: Tensor, c: float, steps: int, lr: float, kappa: float,
                batch_size: int) -> tuple[Tensor, Tensor]:
    """The batched fixed-c loop of harness.coverage.attacks.cw before binary_steps, copied (box [0, 1]; run under
    no_grad, gradients enabled around the objective, as there)."""
    outs, oks = [], []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        w = torch.atanh((xb * 2 - 1).clamp(-(1.0 - 1e-6), 1.0 - 1e-6)).requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=lr)
        best, best_l2 = xb.clone(), torch.full((len(xb),), math.inf, dtype=xb.dtype)
        for _ in range(steps):
            with torch.enable_grad():
                adv = 0.0 + 1.0 * (torch.tanh(w) + 1) / 2
                logits = model(adv)
                own = F.one_hot(yb, logits.shape[1]).bool()
                l2 = (adv - xb).flatten(1).pow(2).sum(dim=1)
                other = logits.masked_fill(own, -math.inf).amax(dim=1)
                margin = torch.clamp(logits[own] - other, min=-kappa)
                w.grad = torch.autograd.grad((l2 + c * margin).sum(), w)[0]
                optimizer.step()
            with torch.no_grad():
                better = (logits.argmax(dim=1) != yb) & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best[better] = adv[better].detach()
        outs.append(best)
        oks.append(torch.isfinite(best_l2))
    return torch.cat(outs), torch.cat(oks)


def test_cw_equals_a_plain_per_sample_loop() -> None:
    model = small_net(1)
    x = torch.rand(8, 3, 2, 2, generator=gen(5), dtype=torch.float64)
    y = model(x).argmax(1)
    adv, ok = cw(model, x, y, c=5.0, steps=40, lr=0.05, kappa=0.1, lo=0.0, hi=1.0, batch_size=3)
    expected = torch.stack([plain_cw(model, xi, yi, 5.0, 40, 0.05, 0.1)[0] for xi, yi in zip(x, y, strict=True)])
    assert torch.allclose(adv, expected, atol=1e-9)
    assert ok.any() and not ok.all() and torch.equal(ok, (adv != x).flatten(1).any(1))
    assert torch.equal(adv[~ok], x[~ok]) and (model(adv[ok]).argmax(1) != y[ok]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cw_with_one_binary_step_is_the_fixed_c_attack_bitwise(dtype: torch.dtype) -> None:
    """binary_steps=1 (the default) keeps the seed's fixed-c attack: the same iterates, bit for bit."""
    model = small_net(1).to(dtype)
    x = torch.rand(8, 3, 2, 2, generator=gen(5), dtype=dtype)
    y = model(x).argmax(1)
    with torch.no_grad():
        expected, expected_ok = previous_cw(model, x, y, 5.3, 40, 0.05, 0.1, 3)
    adv, ok = cw(model, x, y, c=5.3, steps=40, lr=0.05, kappa=0.1, lo=0.0, hi=1.0, batch_size=3)
    assert torch.equal(adv, expected) and torch.equal(ok, expected_ok) and ok.any() and not ok.all()
    assert torch.equal(cw(model, x, y, 5.3, 40, 0.05, 0.1, 1, lo=0.0, hi=1.0, batch_size=3)[0], expected)


def test_cw_binary_search_equals_a_plain_per_sample_search() -> None:
    """c0 = 5: half the inputs succeed in round 1 (c halves), the rest fail (c x10), then bisection; batched
    (chunks of 3) it matches the per-input search in Python floats."""
    model = small_net(1)
    x = torch.rand(8, 3, 2, 2, generator=gen(5), dtype=torch.float64)
    y = model(x).argmax(1)
    adv, ok = cw(model, x, y, c=5.0, steps=40, lr=0.05, kappa=0.1, binary_steps=4, lo=0.0, hi=1.0, batch_size=3)
    runs = [plain_cw_search(model, xi, yi, 5.0, 40, 0.05, 0.1, 4) for xi, yi in zip(x, y, strict=True)]
    assert torch.allclose(adv, torch.stack([r[0] for r in runs]), atol=1e-6)
    assert torch.equal(ok, torch.tensor([any(r[2]) for r in runs]))
    first = torch.tensor([r[2][0] for r in runs])
    assert first.any() and (ok & ~first).any(), "some inputs succeed at c0, some only after c is raised"
    assert {r[1][1] for r in runs if r[2][0]} == {2.5} and {r[1][1] for r in runs if not r[2][0]} == {50.0}
    assert ok.all() and (model(adv).argmax(1) != y).all()


def test_cw_binary_search_finds_what_a_small_fixed_c_misses() -> None:
    """c = 1e-3 flips only inputs next to the boundary in one round; the search raises c (x10 a round) until
    every input flips. Round 1 is the fixed-c attack, so its successes are kept; and the least-L2 result over
    all rounds is no farther from x than one round at the input's final c."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()
    x = torch.rand(10, 8, generator=gen(8), dtype=torch.float64)
    y = model(x).argmax(1)
    fixed, ok_fixed = cw(model, x, y, c=1e-3, steps=30, lr=0.05, lo=0.0, hi=1.0)
    found, ok_found = cw(model, x, y, c=1e-3, steps=30, lr=0.05, binary_steps=7, lo=0.0, hi=1.0)
    assert ok_fixed.sum() < len(x) // 2 and ok_found.all() and not (ok_fixed & ~ok_found).any()
    assert ((found - x).norm(dim=1) <= (fixed - x).norm(dim=1) + 1e-12)[ok_fixed].all()
    compared = 0
    for i in range(len(x)):
        final_c = plain_cw_search(model, x[i], y[i], 1e-3, 30, 0.05, 0.0, 7)[1][-1]
        single, ok_single = cw(model, x[i:i + 1], y[i:i + 1], c=final_c, steps=30, lr=0.05, lo=0.0, hi=1.0)
        if ok_single[0] and ok_found[i]:
            compared += 1
            assert (found[i] - x[i]).norm() <= (single[0] - x[i]).norm() + 1e-9
    assert compared >= 5


def test_cw_binary_steps_is_checked_and_dispatched() -> None:
    model = small_net(1)
    x = torch.rand(4, 3, 2, 2, generator=gen(5), dtype=torch.float64)
    y = model(x).argmax(1)
    assert ATTACK_DEFAULTS["cw"]["binary_steps"] == 1
    direct = cw(model, x, y, c=5.0, steps=5, binary_steps=3, lo=0.0, hi=1.0)
    via = attack("cw", model, x, y, lo=0.0, hi=1.0, c=5.0, steps=5, binary_steps=3)
    assert torch.equal(direct[0], via[0]) and torch.equal(direct[1], via[1])
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ParamError, match=r"cw binary_steps = .* is not valid; valid values: integers >= 1"):
            cw(model, x, y, binary_steps=bad, lo=0.0, hi=1.0)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="parameter 'binary_steps' = 2.0 has type float, expected int"):
        attack("cw", model, x, y, lo=0.0, hi=1.0, binary_steps=2.0)


def test_cw_maps_the_box_by_tanh() -> None:
    """Per-channel box: every iterate stays inside (tanh's range), inputs on its faces included."""
    model = small_net(2)
    lo, hi = [-1.0, 0.0, 2.0], [1.0, 0.5, 6.0]
    low, high = torch.tensor(lo).view(1, 3, 1, 1).double(), torch.tensor(hi).view(1, 3, 1, 1).double()
    x = low + (high - low) * torch.rand(6, 3, 2, 2, generator=gen(6), dtype=torch.float64)
    x[:, :, 0, 0] = low[:, :, 0, 0]
    adv, ok = cw(model, x, torch.arange(6) % 3, c=5.0, steps=30, lr=0.1, lo=lo, hi=hi)
    assert ok.any() and (adv >= low).all() and (adv <= high).all()


# ---- on a trained model ----------------------------------------------------------------------------------


def test_attacks_raise_the_loss_and_mostly_succeed(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Seed defaults on [0, 1] digits: FGSM and PGD flip nearly all inputs, CW (50 Adam steps of lr 0.01) most;
    PGD's loss beats FGSM's; CW's successful perturbations are far smaller in L2 than FGSM's."""
    model, x, y = trained
    clean = loss(model, x, y).mean()
    adv_fgsm, ok_fgsm = fgsm(model, x, y, lo=0.0, hi=1.0)
    adv_pgd, ok_pgd = pgd(model, x, y, generator=gen(0), lo=0.0, hi=1.0)
    adv_cw, ok_cw = cw(model, x, y, lo=0.0, hi=1.0)
    l_fgsm, l_pgd, l_cw = (loss(model, a, y).mean() for a in (adv_fgsm, adv_pgd, adv_cw))
    assert clean < 0.5 and l_cw > clean and l_fgsm > 10 * clean and l_pgd > l_fgsm
    assert ok_fgsm.float().mean() >= 0.9 and ok_pgd.float().mean() >= 0.95 and ok_cw.float().mean() >= 0.5
    both = ok_fgsm & ok_cw
    norm = {k: (a - x).flatten(1).norm(dim=1)[both] for k, a in (("fgsm", adv_fgsm), ("cw", adv_cw))}
    assert both.sum() >= 30 and (norm["cw"] < norm["fgsm"]).all()
    assert (adv_pgd - x).abs().max() <= 0.3 + 1e-6 and adv_pgd.min() >= 0 and adv_pgd.max() <= 1


def test_attacks_leave_the_model_and_its_gradients_alone() -> None:
    model = small_net().train().requires_grad_(True)
    x = torch.rand(4, 3, 2, 2, generator=gen(7), dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fgsm(model, x, y, lo=0.0, hi=1.0)
    pgd(model, x, y, steps=2, generator=gen(0), lo=0.0, hi=1.0)
    cw(model, x, y, steps=2, lo=0.0, hi=1.0)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(12, 3)).double()
    runs = [fgsm(dropout, x, y, lo=0.0, hi=1.0)[0] for _ in range(2)]
    assert torch.equal(*runs), "dropout active: the model was not in eval mode"


def test_attack_dispatch_checks_parameters(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    x, y = x[:8], y[:8]
    direct = pgd(model, x, y, 0.2, generator=gen(3), lo=0.0, hi=1.0)
    assert torch.equal(attack("pgd", model, x, y, lo=0.0, hi=1.0, generator=gen(3), eps=0.2)[0], direct[0])
    assert torch.equal(attack("cw", model, x, y, lo=0.0, hi=1.0)[0], cw(model, x, y, lo=0.0, hi=1.0)[0])
    assert ATTACK_DEFAULTS["fgsm"] == {"eps": 0.3} and ATTACK_DEFAULTS["cw"]["steps"] == 50
    with pytest.raises(ParamError, match="'deepfool' is not known; choices: 'fgsm', 'pgd', 'cw'"):
        attack("deepfool", model, x, y, lo=0.0, hi=1.0)
    with pytest.raises(ParamError, match="unknown parameter 'alpha'; valid parameters: eps"):
        attack("fgsm", model, x, y, lo=0.0, hi=1.0, alpha=0.1)
    with pytest.raises(ParamError, match=r"eps = -0.1 is not valid; valid values: eps >= 0"):
        fgsm(model, x, y, -0.1, lo=0.0, hi=1.0)
    with pytest.raises(ParamError, match="lo < hi"):
        fgsm(model, x, y, lo=1.0, hi=0.0)
    with pytest.raises(ParamError, match=r"one value per channel \(1\)"):
        fgsm(model, x, y, lo=0.0, hi=1.0, scale=[1.0, 2.0])
    with pytest.raises(ParamError, match="c = 0.0 is not valid"):
        cw(model, x, y, c=0.0, lo=0.0, hi=1.0)


# ---- noise on important versus random positions ----------------------------------------------------------


def test_position_count_follows_the_seed() -> None:
    assert position_count(32 * 32, 0.02) == 20 and position_count(28 * 28, 0.02) == 15
    assert position_count(10, 0.02) == 1 and position_count(10, 1.0) == 10
    with pytest.raises(ParamError, match="2k <= 10; valid values: 0 < fraction <= 0.5"):
        position_count(10, 0.6, exclusive=True)
    with pytest.raises(ParamError, match="fraction = 0.0 is not valid"):
        position_count(10, 0.0)


def test_important_noise_changes_exactly_the_top_pixels_on_every_channel() -> None:
    """Hand-made relevance: image 0's top pixels are (0, 1) and (2, 2); relevance is |.| summed over
    channels, so a large negative value counts."""
    x = torch.full((2, 3, 4, 4), 0.5)
    relevance = torch.zeros(2, 3, 4, 4)
    relevance[0, 0, 0, 1], relevance[0, 2, 2, 2], relevance[0, 1, 3, 3] = 5.0, -6.0, 1.0
    relevance[1, :, 1, 0] = 1.0
    relevance[1, 0, 0, 0] = 2.5
    out = important_noise(x, relevance, fraction=2 / 16, std=0.1, lo=-10.0, hi=10.0, generator=gen(0))
    changed = (out != x).any(dim=1)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[0, 0, 1] = expected[0, 2, 2] = expected[1, 1, 0] = expected[1, 0, 0] = True
    assert torch.equal(changed, expected) and (out != x).sum(dim=1)[expected].eq(3).all()
    assert torch.equal(top_positions(x, relevance, 2 / 16)[0], torch.tensor([10, 1]))


@pytest.mark.parametrize("layout", ["same", "one_channel", "no_channel"])
def test_relevance_layouts_agree(layout: str) -> None:
    x = torch.rand(3, 2, 5, 5, generator=gen(1))
    relevance = torch.randn(3, 1, 5, 5, generator=gen(2))
    given_as = {"same": relevance.expand(3, 2, 5, 5), "one_channel": relevance, "no_channel": relevance[:, 0]}
    assert torch.equal(top_positions(x, given_as[layout], 0.2), top_positions(x, relevance, 0.2))
    with pytest.raises(ParamError, match="does not fit inputs"):
        top_positions(x, torch.zeros(3, 4, 4), 0.2)


def test_noise_is_the_generators_gaussian_times_std_and_scale() -> None:
    x = torch.zeros(2, 2, 3, 3)
    positions = torch.tensor([[0, 4], [8, 3]])
    out = noise_at(x, positions, 0.5, lo=-50.0, hi=50.0, scale=[2.0, 10.0], generator=gen(3))
    noise = torch.randn((2, 2, 2), generator=gen(3)) * 0.5 * torch.tensor([2.0, 10.0]).view(1, 2, 1)
    flat = out.flatten(2)
    for i in range(2):
        assert torch.allclose(flat[i][:, positions[i]], noise[i])
    assert int((flat != 0).sum()) == 8


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), side=st.integers(2, 9), fraction=st.floats(0.01, 0.5), seed=st.integers(0, 999))
def test_random_positions_never_overlap_the_top_ones(n: int, side: int, fraction: float, seed: int) -> None:
    x = torch.rand(n, 3, side, side, generator=gen(seed))
    relevance = torch.randn(n, 3, side, side, generator=gen(seed + 1))
    top = top_positions(x, relevance, fraction)
    rand = random_positions(x, relevance, fraction, gen(seed))
    assert rand.shape == top.shape == (n, position_count(side * side, fraction))
    for i in range(n):
        assert len(set(rand[i].tolist())) == rand.shape[1]
        assert not set(rand[i].tolist()) & set(top[i].tolist())
    out = random_noise(x, relevance, fraction, 0.3, lo=-5.0, hi=5.0, generator=gen(seed))
    changed = (out != x).any(dim=1).flatten(1)
    assert not changed.gather(1, top).any()
    assert torch.equal(out, random_noise(x, relevance, fraction, 0.3, lo=-5.0, hi=5.0, generator=gen(seed)))


def test_random_positions_are_spread_over_the_rest() -> None:
    """Every non-top position is drawn about equally often (a uniform choice without replacement)."""
    x, relevance = torch.zeros(4000, 1, 3, 3), torch.arange(9.0).view(1, 1, 3, 3).expand(4000, 1, 3, 3)
    counts = torch.bincount(random_positions(x, relevance, 2 / 9, gen(4)).flatten(), minlength=9)
    assert counts[7:].sum() == 0 and (counts[:7] - 8000 / 7).abs().max() < 0.1 * 8000 / 7


def test_noise_takes_the_box_and_generator_positionally() -> None:
    x, relevance = torch.rand(2, 1, 5, 5, generator=gen(7)), torch.rand(2, 1, 5, 5, generator=gen(8))
    for noisy in (important_noise, random_noise):
        assert torch.equal(noisy(x, relevance, 0.2, 0.5, -1.0, 2.0, gen(1)),
                           noisy(x, relevance, fraction=0.2, lo=-1.0, hi=2.0, generator=gen(1)))
        with pytest.raises(ParamError, match="needs a generator"):
            noisy(x, relevance)


def test_noise_is_clipped_to_the_image_range() -> None:
    """Normalised MNIST range per channel; large noise lands on the range's ends, never beyond."""
    lo, hi = [-0.5, -2.0], [1.5, 0.25]
    x = torch.zeros(6, 2, 6, 6)
    relevance = torch.rand(6, 2, 6, 6, generator=gen(5))
    for noisy in (important_noise, random_noise):
        out = noisy(x, relevance, 0.25, 50.0, lo=lo, hi=hi, scale=[2.0, 4.0], generator=gen(6))
        for c in range(2):
            values = out[:, c][out[:, c] != 0]
            assert len(values) > 0 and values.min() >= lo[c] and values.max() <= hi[c]
            assert ((values == lo[c]) | (values == hi[c])).float().mean() > 0.9


# ---- LeNet-5 ---------------------------------------------------------------------------------------------


class SeedLeNet(nn.Module):
    """``LeNet`` of github JoshuaQSH/Wisdom ``models_info/train_from_scratch/models/lenet.py``, restated for
    C-channel 32x32 inputs."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(channels, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(out)))))


@pytest.mark.parametrize("channels", [1, 3])
def test_lenet_is_the_seeds_network(channels: int) -> None:
    model = build_model(MODELS.get("lenet"), {}, (channels, 32, 32), 10, seed=0).eval()
    seed = SeedLeNet(channels, 10).eval()
    seed.load_state_dict(model.state_dict())
    x = torch.randn(4, channels, 32, 32, generator=gen(channels))
    assert torch.allclose(model(x), seed(x), atol=1e-6)
    assert coverage_layers(model) == ["conv1", "conv2", "fc1", "fc2"]
    assert not any(getattr(m, "inplace", False) for m in model.modules())


@pytest.mark.parametrize(("side", "flat"), [(28, 16 * 4 * 4), (32, 16 * 5 * 5), (40, 16 * 7 * 7), (64, 16 * 13 * 13)])
def test_lenet_computes_the_flattened_size(side: int, flat: int) -> None:
    model = build_model(MODELS.get("lenet"), {}, (1, side, side), 7, seed=0).eval()
    assert model.fc1.in_features == flat and model(torch.zeros(2, 1, side, side)).shape == (2, 7)


def test_lenet_widths_and_errors() -> None:
    model = build_model(MODELS.get("lenet"), {"channels": [4, 8], "hidden": [10]}, (3, 32, 32), 5, seed=0)
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [4, 8]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [10, 5]
    with pytest.raises(ParamError, match="needs \\(C, H, W\\) inputs"):
        build_model(MODELS.get("lenet"), {}, (20,), 5, seed=0)
    with pytest.raises(ParamError, match="widths must be positive"):
        build_model(MODELS.get("lenet"), {"channels": [0, 16]}, (1, 32, 32), 5, seed=0)
