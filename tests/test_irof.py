"""IROF / IIOF against an independent per-sample, per-step loop, hand-checked cases, properties, Quantus.

The reference below ranks segments with NumPy (float64 segment means, a stable sort) and sends one perturbed
image at a time through the model. It takes the SLIC labels from ``slic_segments`` and the fully masked
baseline from ``masked_baseline``, which ``test_segmentation.py`` and ``test_maskers.py`` check on their own.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import harness.metrics  # noqa: F401  (registers the metrics)
from harness.metrics.irof import segment_curve
from harness.metrics.maskers import MASKERS, masked_baseline
from harness.segmentation import slic_segments
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext

SEED = 3
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=20, deadline=None)
SLIC = {"n_segments": 12}  # about 9 segments on 16 x 16 images: steps > S + 1 repeat k, steps < S skip some
Case = tuple[nn.Module, Tensor, Tensor, Tensor]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread


def smooth_images(n: int, channels: int, seed: int) -> Tensor:
    """Blobs (SLIC on pixel noise merges everything into one segment): 4 x 4 noise upscaled to 16 x 16."""
    small = torch.rand(n, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 0.5


def make_case(n: int = 3, seed: int = 0, channels: int = 3) -> Case:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(64, 4)
        )
    x = smooth_images(n, channels, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return model, x, torch.randint(0, 4, (n,), generator=g), torch.randn(x.shape, generator=g)


def run(name: str, model: nn.Module, x: Tensor, target: Tensor, attr: Tensor, batch_size: int = 256,
        memory_mb: int = 1024, **params: Any) -> MetricResult:
    ctx = RunContext(device=CPU, seed=SEED, batch_size=batch_size, memory_mb=memory_mb)
    return METRICS.get(name).compute(MetricInputs(model, x, target, attr), ctx, **params)


def fully_masked(x: Tensor, masker: str) -> Tensor:
    return masked_baseline(x, masker, RunContext(device=CPU, seed=SEED).generator())


def target_outputs(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        out = model.eval()(x)
    return out.gather(1, target[:, None])[:, 0], out.softmax(1).gather(1, target[:, None])[:, 0]


def reference(case: Case, name: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """One image, one step, one forward pass at a time (``params`` as passed to the metric)."""
    model, x, target, attr = case
    n, steps = x.shape[0], params["steps"]
    base = fully_masked(x, params.get("masker", "constant")).numpy()
    logits, probs, rows = np.zeros((n, steps)), np.zeros((n, steps)), 0
    model.eval()
    for i in range(n):
        seg = slic_segments(x[i: i + 1], params["n_segments"], slic_zero=True)[0, 0].numpy()
        pixel = attr[i].numpy().astype(np.float64).mean(axis=0)
        count = seg.max() + 1
        means = np.array([pixel[seg == s].mean() for s in range(count)])
        order = np.argsort(-means if params.get("order", "morf") == "morf" else means, kind="stable")
        ks = np.floor(np.linspace(0.0, 1.0, steps) * count + 1e-9).astype(int)
        rows += len(set(ks.tolist()))
        for s, k in enumerate(ks):
            chosen = np.isin(seg, order[:k])[None]  # (1, H, W): every channel of the pixel
            fill, keep = (x[i].numpy(), base[i]) if name == "iiof" else (base[i], x[i].numpy())
            with torch.no_grad():
                out = model(torch.from_numpy(np.where(chosen, fill, keep))[None])[0]
            logits[i, s], probs[i, s] = float(out[target[i]]), float(out.softmax(0)[target[i]])
    original = probs[:, -1:] if name == "iiof" else probs[:, :1]
    area = np.trapezoid(probs / original, dx=1.0 / (steps - 1), axis=1)
    return {"curve_logits": logits, "curve_softmax": probs, "auc_logits": logits.mean(1),
            "auc_softmax": probs.mean(1), "rows": np.array(rows),
            "auc_normalised" if name == "iiof" else "aoc_normalised": area if name == "iiof" else 1 - area}


@pytest.mark.parametrize(("masker", "steps"), [("constant", 15), ("random", 7), ("blur", 11)])
@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("name", ["irof", "iiof"])
def test_matches_loop_reference(name: str, order: str, masker: str, steps: int) -> None:
    case = make_case()
    params = {"order": order, "masker": masker, "steps": steps, **SLIC}
    got = run(name, *case, batch_size=5, **params)  # chunks of 5 rows split samples
    want = reference(case, name, params)
    for key, value in want.items():
        if key != "rows":
            np.testing.assert_allclose(got.outputs[key].numpy(), value, atol=1e-5, rtol=1e-5, err_msg=key)
    assert got.forward_passes == int(want["rows"])  # one row per distinct perturbed input
    assert got.problems() == []


def test_forward_passes_are_the_distinct_inputs() -> None:
    """k = floor(t * S) over 15 steps: S + 1 distinct values when S < 14; the rows the model really sees."""
    model, x, target, attr = make_case(n=4)
    counted = RowCounter(model)
    got = run("irof", counted, x, target, attr, steps=15, **SLIC)
    segments = got.outputs["segments"]
    assert bool((segments < 14).all())
    assert got.forward_passes == counted.rows == int((segments + 1).sum())
    assert counted.rows < 4 * 15


class RowCounter(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def linear_case() -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    """Logit 0 = x . (1, 2, 3, 4) on a 2 x 2 image of ones, logit 1 = 0; segments {0, 1}, {2}, {3}.

    Attribution w * x: segment means 1.5, 3, 4, so MoRF removes segment 2 (pixel 3), then 1, then 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    x = torch.ones(1, 1, 2, 2)
    segments = torch.tensor([[[[0, 0], [1, 2]]]])
    return model, x, torch.tensor([0]), x * model[1].weight[0].detach().reshape(1, 1, 2, 2), segments


HAND = {  # steps = 7 over S = 3 segments: k = floor(s / 2) = 0, 0, 1, 1, 2, 2, 3
    ("irof", "morf"): [10.0, 10.0, 6.0, 6.0, 3.0, 3.0, 0.0],
    ("irof", "lerf"): [10.0, 10.0, 7.0, 7.0, 4.0, 4.0, 0.0],
    ("iiof", "morf"): [0.0, 0.0, 4.0, 4.0, 7.0, 7.0, 10.0],
    ("iiof", "lerf"): [0.0, 0.0, 3.0, 3.0, 6.0, 6.0, 10.0],
}


@pytest.mark.parametrize(("name", "order"), list(HAND))
def test_hand_checked_linear_model(name: str, order: str) -> None:
    model, x, target, attr, segments = linear_case()
    ctx = RunContext(device=CPU, seed=0)
    curves, count = segment_curve(model, x, target, attr, segments, torch.zeros_like(x), 7, order=order,
                                  insert=name == "iiof", ctx=ctx)
    assert torch.equal(curves.logits, torch.tensor([HAND[name, order]])) and count.tolist() == [3]
    assert curves.forward_passes == 4  # k = 0, 1, 2, 3 once each


def test_hand_checked_normalised_area() -> None:
    """Softmax curve (1/2, 1/4, 0): trapezoid over [0, 1] of the ratio (1, 1/2, 0) is 1/2."""
    from harness.metrics.irof import normalised_area

    curve = torch.tensor([[0.5, 0.25, 0.0]])
    assert normalised_area(curve, insert=False).item() == pytest.approx(0.5)
    assert normalised_area(curve.flip(1), insert=True).item() == pytest.approx(0.5)
    assert math.isfinite(normalised_area(torch.tensor([[0.0, 0.5]]), insert=False).item())  # p(x) underflowed


@pytest.mark.parametrize(("name", "order", "better"), [
    ("irof", "morf", False), ("irof", "lerf", True), ("iiof", "morf", True), ("iiof", "lerf", False),
])
def test_direction(name: str, order: str, better: bool) -> None:
    assert run(name, *make_case(n=1), order=order, steps=3, **SLIC).higher_is_better is better


@pytest.mark.parametrize("name", ["irof", "iiof"])
def test_batch_invariance(name: str) -> None:
    case = make_case(n=4)
    settings_ = [(1, 1024), (7, 1024), (10_000, 1024), (10_000, 1)]  # 1 MiB: 16 rows of 3 x 16 x 16
    results = [run(name, *case, batch_size=b, memory_mb=m, steps=11, masker="random", **SLIC)
               for b, m in settings_]
    for other in results[1:]:
        assert other.forward_passes == results[0].forward_passes
        for key, value in results[0].outputs.items():
            assert torch.allclose(other.outputs[key], value, atol=1e-6), key


cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16), "name": st.sampled_from(["irof", "iiof"]),
    "order": st.sampled_from(["morf", "lerf"]), "masker": st.sampled_from(MASKERS),
    "steps": st.integers(2, 12),
    "n_segments": st.integers(1, 20), "activation": st.sampled_from(["softmax", "logits"]),
})


@PROPERTIES
@given(cases)
def test_bounds_shapes_and_endpoints(drawn: dict[str, Any]) -> None:
    params = {k: v for k, v in drawn.items() if k not in ("seed", "name")}
    name, (model, x, target, attr) = drawn["name"], make_case(n=2, seed=drawn["seed"])
    got = run(name, model, x, target, attr, **params)
    assert got.problems() == []
    assert got.outputs["curve_softmax"].shape == (2, params["steps"]) and got.outputs["auc"].shape == (2,)
    start, end = (x, fully_masked(x, params["masker"]))[:: -1 if name == "iiof" else 1]
    for column, inputs in ((0, start), (-1, end)):
        logit, prob = target_outputs(model, inputs, target)
        assert torch.allclose(got.outputs["curve_logits"][:, column], logit, atol=1e-5)
        assert torch.allclose(got.outputs["curve_softmax"][:, column], prob, atol=1e-6)
    chosen = "auc_softmax" if params["activation"] == "softmax" else "auc_logits"
    assert torch.equal(got.outputs["auc"], got.outputs[chosen])
    if name == "irof":
        assert bool((got.outputs["aoc_normalised"] <= 1.0).all())
    else:
        assert bool((got.outputs["auc_normalised"] >= 0.0).all())


@PROPERTIES
@given(cases, st.integers(1, 50))
def test_invariant_to_positive_scaling(drawn: dict[str, Any], scale: int) -> None:
    """One channel and integer attributions keep every segment mean exact, so scaling changes no order."""
    params = {k: v for k, v in drawn.items() if k not in ("seed", "name")}
    model, x, target, _ = make_case(n=2, seed=drawn["seed"], channels=1)
    attr = torch.randint(-20, 20, x.shape, generator=torch.Generator().manual_seed(drawn["seed"])).float()
    first = run(drawn["name"], model, x, target, attr, **params)
    second = run(drawn["name"], model, x, target, scale * attr, **params)
    for key, value in first.outputs.items():
        assert torch.equal(second.outputs[key], value), key


@PROPERTIES
@given(st.integers(0, 2**16), st.booleans())
def test_perfect_attribution_beats_random(seed: int, insert: bool) -> None:
    """Equal-size segments and a linear model: ranking by w * x removes (reveals) the k segments of least
    (most) remaining logit for every k, so its curve lies below (above) that of any other ranking."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.cat([torch.randn(1, 16, generator=g), torch.zeros(1, 16)]))
        model[1].bias.zero_()
    x = torch.rand(1, 1, 4, 4, generator=g) + 0.1
    segments = (torch.randperm(16, generator=g) % 4).reshape(1, 1, 4, 4)
    perfect = x * model[1].weight[0].detach().reshape(1, 1, 4, 4)
    ctx, target, base = RunContext(device=CPU, seed=0), torch.tensor([0]), torch.zeros_like(x)
    curves = [
        segment_curve(model, x, target, attr, segments, base, 5, order="morf", insert=insert, ctx=ctx)[0]
        for attr in (perfect, torch.randn(x.shape, generator=g))
    ]
    best, other = (c.logits for c in curves)
    assert bool((best >= other - 1e-5).all() if insert else (best <= other + 1e-5).all())


@pytest.mark.parametrize("softmax", [True, False])
def test_agrees_with_quantus_irof(softmax: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus 0.6 ``IROF`` removes one segment per step and returns ``S - trapz(p_1 / p_0, ..., p_S / p_0)``
    with ``dx = 1`` (no point for the intact image), p = softmax or logit of the target.

    Ours with ``steps = S + 1`` has k = 0..S, so Quantus' curve is ours without its first point divided by
    it, and Quantus' score = S * aoc_normalised + (1 + p_1 / p_0) / 2 (the first trapezoid it leaves out).
    Quantus segments with its own SLIC; it is patched to ours. It ranks segments with an unstable
    ``np.argsort`` (no ties here) and its mask broadcasting needs one channel. ``np.trapz`` is gone in
    numpy 2.4; ``np.trapezoid`` is the same function under its new name.
    """
    quantus = pytest.importorskip("quantus")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)

    def ours(img: np.ndarray, segmentation_method: str) -> np.ndarray:
        image = torch.from_numpy(np.moveaxis(img, -1, 0)).float()[None]
        return slic_segments(image, **SLIC, slic_zero=True)[0, 0].numpy()

    monkeypatch.setattr(quantus.helpers.utils, "get_superpixel_segments", ours)
    model, x, target, attr = make_case(n=3, seed=1, channels=1)
    model.eval()
    metric = quantus.IROF(normalise=False, abs=False, perturb_baseline=0.0, disable_warnings=True,
                          return_aggregate=False)
    for i in range(3):
        part = slice(i, i + 1)
        count = int(slic_segments(x[part], **SLIC, slic_zero=True).max()) + 1
        got = run("irof", model, x[part], target[part], attr[part], steps=count + 1, masker="constant",
                  **SLIC)
        curve = got.outputs["curve_softmax" if softmax else "curve_logits"][0].double().numpy()
        ratio = curve[1:] / curve[0]
        theirs = metric(model=model, x_batch=x[part].numpy(), y_batch=target[part].numpy(),
                        a_batch=attr[part].numpy(), softmax=softmax, device="cpu", channel_first=True)
        assert theirs[0] == pytest.approx(count - np.trapezoid(ratio), rel=1e-5, abs=1e-5)
        if softmax:
            aoc = got.outputs["aoc_normalised"][0].item()
            assert theirs[0] == pytest.approx(count * aoc + (1 + ratio[0]) / 2, rel=1e-4, abs=1e-4)


def test_leaves_inputs_and_modes_alone() -> None:
    model, x, target, attr = make_case()
    model = nn.Sequential(nn.Dropout(0.5), model)
    model.train()
    model[1][0].eval()
    modes = [m.training for m in model.modules()]
    copies = [t.clone() for t in (x, target, attr)]
    got = run("iiof", model, x, target, attr, steps=5, masker="blur", **SLIC)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip((x, target, attr), copies, strict=True))
    for value in got.outputs.values():
        assert not value.is_inference() and not value.requires_grad


def test_spec_metadata() -> None:
    for name in ("irof", "iiof"):
        spec = METRICS.get(name)
        assert spec.family == "faithfulness" and spec.modalities == {"image"}
        assert spec.tasks == {"classification"}
        assert spec.defaults["n_segments"] == 100 and spec.defaults["slic_zero"] is True
        assert spec.defaults["steps"] == 100 and "Rieger" in spec.reference and "Gevaert" in spec.reference


@pytest.mark.parametrize(("params", "match"), [
    ({"order": "sideways"}, "'sideways' is not valid; choices: 'morf', 'lerf'"),
    ({"masker": "smudge"}, "'smudge' is not valid; choices: 'constant', 'random', 'blur'"),
    ({"activation": "relu"}, "'relu' is not valid; choices: 'softmax', 'logits'"),
    ({"steps": 1}, "'steps' = 1 must be at least 2"), ({"steps": 2.5}, "2.5"),
    ({"n_segments": 0}, "'n_segments' = 0"), ({"compactness": 0.0}, "'compactness' = 0.0"),
    ({"slic_zero": "yes"}, "'yes'"), ({"colour": 1}, "unknown parameter 'colour'"),
])
@pytest.mark.parametrize("name", ["irof", "iiof"])
def test_bad_params_name_the_value(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        run(name, *make_case(n=1), **params)


def test_bad_inputs_name_the_problem() -> None:
    model, x, target, attr = make_case(n=2)
    with pytest.raises(ValueError, match=r"attributions shape \[2, 3, 16\]"):
        run("irof", model, x, target, attr[..., 0])
    with pytest.raises(ValueError, match="attribution scores contain NaN"):
        run("iiof", model, x, target, attr.clone().fill_(math.nan), **SLIC)
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        run("irof", model, x[:, 0], target, attr[:, 0])
