"""Minimal subset deletion / insertion against a per-sample, per-step loop, hand-checked cases, properties.

The reference below sorts pixels with NumPy, walks the grid one k at a time for one sample at a time and
stops at the first hit, sending one perturbed input at a time through the model. It takes the fully masked
baseline from ``masked_baseline`` (checked in ``test_maskers.py``).
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
from harness.metrics.maskers import MASKERS, masked_baseline
from harness.specs import METRICS, MetricInputs, MetricResult, ParamError, RunContext

SEED = 3
CPU = torch.device("cpu")
PROPERTIES = settings(max_examples=20, deadline=None)
NAMES = ["minimal_subset_deletion", "minimal_subset_insertion"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread
Case = tuple[nn.Module, Tensor, Tensor, Tensor]


def make_case(n: int = 4, seed: int = 2) -> Case:
    """A random-weight CNN on (3, 8, 8) images (seed 2 flips early, late and never; seed 0 never flips)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 4)
        )
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((n, 3, 8, 8), generator=g) * 2 - 0.5
    return model, x, torch.randint(0, 4, (n,), generator=g), torch.randn(x.shape, generator=g)


def run(name: str, model: nn.Module, x: Tensor, target: Tensor, attr: Tensor, batch_size: int = 256,
        memory_mb: int = 1024, **params: Any) -> MetricResult:
    ctx = RunContext(device=CPU, seed=SEED, batch_size=batch_size, memory_mb=memory_mb)
    return METRICS.get(name).compute(MetricInputs(model, x, target, attr), ctx, **params)


def reference(case: Case, name: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Per sample the smallest k (P if none), and the rows needed: N originals plus each scan's rows."""
    model, x, _, attr = case
    n, steps = x.shape[0], params.get("steps", 100)
    a = attr.numpy().astype(np.float64).reshape(n, x.shape[1], -1)
    scores = a.mean(axis=1) if params.get("pixel_aggregation", "mean") == "mean" else np.abs(a).max(axis=1)
    num_pixels = scores.shape[1]
    pixels = x.numpy().reshape(a.shape)
    base = masked_baseline(x, params.get("masker", "constant"), RunContext(device=CPU, seed=SEED).generator())
    base_pixels = base.numpy().reshape(a.shape)
    insert = name.endswith("insertion")
    grid = sorted({math.floor(j * num_pixels / steps + 1e-9) for j in range(steps + 1)})
    grid = [k for k in grid if (k > 0 or insert) and k < num_pixels]
    counts, rows = np.full(n, num_pixels), n
    model.eval()

    def predict(row: np.ndarray) -> int:
        with torch.no_grad():
            return int(model(torch.from_numpy(row).reshape(x.shape[1:])[None]).argmax(1))

    for i in range(n):
        original = predict(pixels[i])
        ranked = np.argsort(-scores[i], kind="stable")
        for k in grid:
            chosen = np.zeros(num_pixels, dtype=bool)
            chosen[ranked[:k]] = True
            fill, keep = (pixels[i], base_pixels[i]) if insert else (base_pixels[i], pixels[i])
            rows += 1
            if (predict(np.where(chosen, fill, keep)) == original) == insert:
                counts[i] = k
                break
    return counts, rows


@pytest.mark.parametrize(("masker", "steps", "aggregation"), [
    ("constant", 10, "mean"), ("random", 100, "max_abs"), ("blur", 30, "mean"),  # 100 steps: 64 distinct k
])
@pytest.mark.parametrize("name", NAMES)
def test_matches_loop_reference(name: str, masker: str, steps: int, aggregation: str) -> None:
    case = make_case(n=5)
    params = {"masker": masker, "steps": steps, "pixel_aggregation": aggregation}
    counts, floor = reference(case, name, params)
    got = run(name, *case, batch_size=7, **params)  # waves of up to 7 rows
    assert got.outputs["count"].tolist() == counts.tolist()
    assert torch.equal(got.outputs["fraction"], torch.tensor(counts / 64.0, dtype=torch.float32))
    assert got.outputs["found"].tolist() == (counts < 64).astype(float).tolist()
    assert got.info["rows_needed"] == floor and floor <= got.forward_passes <= 2 * floor
    assert got.problems() == []


@pytest.mark.parametrize("name", NAMES)
def test_one_row_per_wave_needs_exactly_the_floor(name: str) -> None:
    case = make_case(n=3)
    counts, floor = reference(case, name, {"steps": 20})
    got = run(name, *case, batch_size=1, steps=20)  # one row per forward pass: no overshoot
    assert got.outputs["count"].tolist() == counts.tolist()
    assert got.forward_passes == got.info["rows_needed"] == floor


def test_forward_passes_are_the_rows_the_model_sees() -> None:
    model, x, target, attr = make_case(n=5)
    for name in NAMES:
        for batch_size in (1, 16, 1000):
            counted = RowCounter(model)
            got = run(name, counted, x, target, attr, batch_size=batch_size, steps=50)
            assert got.forward_passes == counted.rows >= got.info["rows_needed"]


class RowCounter(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def linear_case(bias: float) -> Case:
    """Logit 0 = x . (1, 2, 3, 4) on a 2 x 2 image of ones, logit 1 = ``bias``; attribution w * x."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, bias]))
    x = torch.ones(1, 1, 2, 2)
    return model, x, torch.tensor([0]), x * model[1].weight[0].detach().reshape(1, 1, 2, 2)


@pytest.mark.parametrize(("name", "bias", "count", "found"), [
    # bias 4.5 < 10: class 0. Deleting x3 leaves 6 > 4.5, then x2 leaves 3 < 4.5: a flip at k = 2.
    ("minimal_subset_deletion", 4.5, 2, 1.0),
    # Keeping x3 alone gives 4 < 4.5, x3 and x2 give 7 > 4.5: restored at k = 2.
    ("minimal_subset_insertion", 4.5, 2, 1.0),
    # bias -1: even x0 alone (1 > -1) keeps class 0, so no deletion below P flips it: P = 4.
    ("minimal_subset_deletion", -1.0, 4, 0.0),
    # The fully masked input (0 > -1) is already class 0: k = 0.
    ("minimal_subset_insertion", -1.0, 0, 1.0),
])
def test_hand_checked_linear_model(name: str, bias: float, count: int, found: float) -> None:
    got = run(name, *linear_case(bias), steps=4)  # grid k = 0, 1, 2, 3, 4
    assert got.outputs["count"].tolist() == [count] and got.outputs["found"].tolist() == [found]
    assert got.outputs["fraction"].tolist() == [count / 4]
    assert not got.higher_is_better and got.primary == "fraction"


def test_equal_logits_keep_the_first_class() -> None:
    """A model with all outputs equal predicts class 0 everywhere (torch.argmax: the first maximum)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    x, target = torch.rand(2, 1, 2, 2), torch.tensor([2, 1])
    deletion = run("minimal_subset_deletion", model, x, target, torch.randn(x.shape), batch_size=1, steps=4)
    insertion = run("minimal_subset_insertion", model, x, target, torch.randn(x.shape), batch_size=1,
                    steps=4)
    assert deletion.outputs["count"].tolist() == [4, 4] and insertion.outputs["count"].tolist() == [0, 0]
    assert deletion.forward_passes == 2 + 2 * 3 and insertion.forward_passes == 2 + 2


@pytest.mark.parametrize("name", NAMES)
def test_batch_invariance(name: str) -> None:
    case = make_case(n=6)
    settings_ = [(1, 1024), (3, 1024), (7, 1024), (10_000, 1024), (10_000, 1)]
    results = [run(name, *case, batch_size=b, memory_mb=m, steps=40, masker="random") for b, m in settings_]
    for other in results[1:]:
        assert other.info["rows_needed"] == results[0].info["rows_needed"] == results[0].forward_passes
        for key, value in results[0].outputs.items():
            assert torch.equal(other.outputs[key], value), key


cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16), "name": st.sampled_from(NAMES), "masker": st.sampled_from(MASKERS),
    "pixel_aggregation": st.sampled_from(["mean", "max_abs"]), "steps": st.integers(1, 80),
})


@PROPERTIES
@given(cases, st.integers(1, 50))
def test_bounds_and_invariance_to_positive_scaling(drawn: dict[str, Any], scale: int) -> None:
    """Integer attributions keep every pixel score exact under integer scaling, so no order changes."""
    params = {k: v for k, v in drawn.items() if k not in ("seed", "name")}
    model, x, target, _ = make_case(n=3, seed=drawn["seed"])
    attr = torch.randint(-20, 20, x.shape, generator=torch.Generator().manual_seed(drawn["seed"])).float()
    first = run(drawn["name"], model, x, target, attr, **params)
    assert first.problems() == [] and first.outputs["fraction"].shape == (3,)
    assert first.info["rows_needed"] <= first.forward_passes <= min(2 * first.info["rows_needed"],
                                                                     3 + 3 * params["steps"])
    second = run(drawn["name"], model, x, target, scale * attr, **params)
    for key, value in first.outputs.items():
        assert torch.equal(second.outputs[key], value), key


@PROPERTIES
@given(st.integers(0, 2**16), st.sampled_from(NAMES), st.integers(2, 20))
def test_perfect_attribution_beats_random(seed: int, name: str, steps: int) -> None:
    """Two classes, a linear model, constant masker 0: ranking by the contribution to the margin of the
    predicted class, (w_c - w_other) * x, masks (keeps) the k pixels of least (most) remaining margin for
    every k, so it flips (restores) the prediction no later than any other ranking."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 16, generator=g))
        model[1].bias.copy_(torch.randn(2, generator=g))
    x = torch.rand(3, 1, 4, 4, generator=g)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    weight = model[1].weight.detach()
    margin = (weight[predicted] - weight[1 - predicted]).reshape(x.shape)
    perfect = run(name, model, x, predicted, margin * x, steps=steps)
    other = run(name, model, x, predicted, torch.randn(x.shape, generator=g), steps=steps)
    assert bool((perfect.outputs["count"] <= other.outputs["count"]).all())


def test_leaves_inputs_and_modes_alone() -> None:
    model, x, target, attr = make_case()
    model = nn.Sequential(nn.Dropout(0.5), model)
    model.train()
    model[1][0].eval()
    modes = [m.training for m in model.modules()]
    copies = [t.clone() for t in (x, target, attr)]
    got = run("minimal_subset_insertion", model, x, target, attr, steps=10, masker="blur")
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip((x, target, attr), copies, strict=True))
    for value in got.outputs.values():
        assert not value.is_inference() and not value.requires_grad


def test_spec_metadata() -> None:
    for name in NAMES:
        spec = METRICS.get(name)
        assert spec.family == "faithfulness" and spec.modalities == {"image"}
        assert spec.tasks == {"classification"}
        assert spec.defaults["steps"] == 100 and "Gevaert" in spec.reference


@pytest.mark.parametrize(("params", "match"), [
    ({"masker": "smudge"}, "'smudge' is not valid; choices: 'constant', 'random', 'blur'"),
    ({"pixel_aggregation": "sum"}, "'sum' is not valid; choices: 'mean', 'max_abs'"),
    ({"steps": 0}, "'steps' = 0 must be at least 1"), ({"steps": 2.5}, "2.5"),
    ({"order": "morf"}, "unknown parameter 'order'"),
])
@pytest.mark.parametrize("name", NAMES)
def test_bad_params_name_the_value(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        run(name, *make_case(n=1), **params)


def test_bad_inputs_name_the_problem() -> None:
    model, x, target, attr = make_case(n=2)
    with pytest.raises(ValueError, match=r"attributions shape \[2, 3, 8\]"):
        run("minimal_subset_deletion", model, x, target, attr[..., 0])
    with pytest.raises(ValueError, match="attribution scores contain NaN"):
        run("minimal_subset_insertion", model, x, target, attr.clone().fill_(math.nan))
    with pytest.raises(ValueError, match=r"the model must return \(rows, classes\), got \[8\] for 2 rows"):
        run("minimal_subset_deletion", nn.Sequential(model, nn.Flatten(0)), x, target, attr, steps=3)
