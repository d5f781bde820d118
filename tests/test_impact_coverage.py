"""Impact Coverage and its adversarial patches: hand-checked cases, plain-loop references, the patch training
(a trained patch beats its random start), the per-model cache (patches trained once), determinism, errors."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import harness.data  # registers the data sets
import harness.metrics  # registers the metrics
import harness.models  # noqa: F401  (registers the models)
from harness.cache import canonical_json
from harness.metrics.impact_coverage import coverage_iou, draw_placements
from harness.metrics.patches import paste, patch_side, train_patches, window_mask
from harness.models.training import build_model, train_model
from harness.specs import (
    DATASETS,
    METRICS,
    MODELS,
    DataBundle,
    MetricInputs,
    MetricResult,
    ParamError,
    RunContext,
)
from tests.small_cases import make_case

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest, and steadiest, on one thread
CPU = torch.device("cpu")
SEED = 5
FAST = {"epochs": 1, "batch_size": 32}


class Artifacts:
    """``MetricInputs.artifact`` in memory: ``make()`` once per identity, counting the builds."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Tensor]] = {}
        self.builds: list[Mapping[str, Any]] = []

    def __call__(self, identity: Mapping[str, Any], make: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor]:
        key = canonical_json(dict(identity))
        if key not in self.store:
            self.builds.append(dict(identity))
            self.store[key] = {k: v.clone() for k, v in make().items()}
        return dict(self.store[key])


class MaxModel(nn.Module):
    """Two classes: 1 when some input value exceeds 0.5, else 0 (a bright patch flips class 0 to 1)."""

    def forward(self, x: Tensor) -> Tensor:
        top = x.flatten(1).amax(1)
        return torch.stack([0.5 - top, top - 0.5], 1)


class ConstantModel(nn.Module):
    """Always class 0: no patch flips it."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


class Recording:
    """An explainer returning ``make(x)``, remembering the targets it was asked for."""

    def __init__(self, make: Callable[[Tensor], Tensor]) -> None:
        self.make = make
        self.targets: list[Tensor] = []

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        self.targets.append(target.clone())
        return self.make(x)


def context(seed: int = SEED, batch_size: int = 256) -> RunContext:
    return RunContext(device=CPU, seed=seed, batch_size=batch_size)


def max_setup(n: int = 5, value: float = 0.2) -> tuple[MaxModel, Tensor, Tensor, DataBundle]:
    """Test images of constant ``value`` (class 0); training images in [0, 1], so patches lie in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    x_train = torch.rand((40, 1, 8, 8), generator=g)
    y_train = (x_train.flatten(1).amax(1) > 0.5).long()
    x = torch.full((n, 1, 8, 8), value)
    y = torch.zeros(n, dtype=torch.long)
    return MaxModel(), x, y, DataBundle(x_train, y_train, x, y, num_classes=2)


def run(model: nn.Module, x: Tensor, target: Tensor, data: DataBundle, explain: Callable[[Tensor, Tensor], Tensor],
        artifact: Artifacts | None = None, ctx: RunContext | None = None, **params: Any) -> MetricResult:
    inputs = MetricInputs(model, x, target, torch.zeros_like(x), explain=explain, data=data,
                          artifact=artifact if artifact is not None else Artifacts())
    return METRICS.get("impact_coverage").compute(inputs, ctx or context(), **{**FAST, **params})


# -- hand-checked --------------------------------------------------------------------------------------------

def test_attribution_equal_to_the_patch_scores_one_and_its_negative_zero() -> None:
    model, x, y, data = max_setup()
    on_patch = Recording(lambda xp: (xp != 0.2).float())
    result = run(model, x, y, data, on_patch)
    assert result.outputs["flipped"].tolist() == [1.0] * 5  # a [0, 1] patch over 0.5 flips class 0 to 1
    assert result.outputs["impact_coverage"].tolist() == [1.0] * 5
    assert torch.equal(on_patch.targets[0], torch.ones(5, dtype=torch.long))  # the patch's class, not the label
    assert result.info["patch_class"] == [1] * 5 and result.info["patch_success_rate"] == 1.0
    assert result.info["patch_side"] == 2 and result.info["k"] == 4  # floor(sqrt(0.1 * 64)) = 2
    off_patch = run(model, x, y, data, lambda xp, t: -(xp != 0.2).float())
    assert off_patch.outputs["impact_coverage"].tolist() == [0.0] * 5
    assert result.problems() == [] and off_patch.problems() == []


def test_iou_of_hand_placed_masks() -> None:
    mask = window_mask(1, 4, 4, 2, torch.tensor([1]), torch.tensor([1])).flatten(1)  # pixels 5, 6, 9, 10
    assert mask.nonzero()[:, 1].tolist() == [5, 6, 9, 10]
    half = torch.zeros(1, 16)
    half[0, [5, 6, 0, 1]] = 1.0  # two of the four top pixels on the patch: 2 / (4 + 4 - 2)
    assert coverage_iou(half, mask).tolist() == pytest.approx([1 / 3])
    tied = torch.zeros(1, 16)  # all tied: the top 4 are pixels 0-3, none on the patch
    assert coverage_iou(tied, mask).tolist() == [0.0]


def test_unflippable_samples_are_scored_and_marked() -> None:
    _, x, y, data = max_setup(n=3, value=0.2)
    result = run(ConstantModel(), x, y, data, lambda xp, t: torch.rand_like(xp), max_tries=7)
    assert result.outputs["flipped"].tolist() == [0.0] * 3
    assert result.forward_passes == 3 + 3 * 7  # clean rows, then every sample in every try
    assert result.info["patch_success_rate"] == 0.0 and result.problems() == []


# -- references ----------------------------------------------------------------------------------------------

def test_paste_and_mask_match_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(1)
    x, patches = torch.randn((6, 3, 9, 7), generator=g), torch.randn((6, 3, 3, 3), generator=g)
    rows, cols = torch.randint(0, 7, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    expected, mask = x.clone(), torch.zeros((6, 9, 7), dtype=torch.bool)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        expected[i, :, r:r + 3, c:c + 3] = patches[i]
        mask[i, r:r + 3, c:c + 3] = True
    assert torch.equal(paste(x, patches, rows, cols), expected)
    assert torch.equal(window_mask(6, 9, 7, 3, rows, cols), mask)


def loop_iou(attr: np.ndarray, mask: np.ndarray) -> list[float]:
    """Channel mean, stable descending order, top-k as a set, |T ∩ M| / |T ∪ M|."""
    out = []
    for a, m in zip(attr, mask, strict=True):
        scores = a.mean(0).ravel()
        patch = set(np.flatnonzero(m.ravel()).tolist())
        top = set(np.argsort(-scores, kind="stable")[: len(patch)].tolist())
        out.append(len(top & patch) / len(top | patch))
    return out


def test_metric_matches_a_plain_loop_on_its_own_placements() -> None:
    _, x, target, _ = make_case("cnn3", n=6, seed=2)
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))  # random weights: patches flip some
    with torch.no_grad():
        model[1].weight.copy_(torch.randn((10, 3 * 16 * 16), generator=g) * 0.05)
    data = DataBundle(torch.rand((30, 3, 16, 16), generator=g), torch.randint(0, 10, (30,), generator=g), x,
                      target, num_classes=10)
    attr = torch.randn_like(x).round(decimals=1)  # coarse values: ties, broken by the lower index
    seen: list[Tensor] = []

    def explain(xp: Tensor, t: Tensor) -> Tensor:
        seen.append(xp.clone())
        return attr

    cache = Artifacts()
    result = run(model, x, target, data, explain, cache, max_tries=12)  # tries in blocks of 1, 2, 4, 5
    patches = next(iter(cache.store.values()))["patches"]
    side = patch_side(16, 16, 0.1)
    assert side == 5 and patches.shape == (10, 3, 5, 5)
    classes, rows, cols = draw_placements(context(), target, 10, 12, 12, 12)
    expected, mask, flipped = x.clone(), torch.zeros((6, 16, 16), dtype=torch.bool), []
    with torch.no_grad():
        for i in range(6):
            clean = int(model(x[i:i + 1]).argmax())
            for t in range(12):  # one try at a time; the first that flips is kept, else the last
                c, r, col = int(classes[i, t]), int(rows[i, t]), int(cols[i, t])
                image = x[i].clone()
                image[:, r:r + side, col:col + side] = patches[c]
                if int(model(image[None]).argmax()) == c != clean:
                    break
            flipped.append(float(int(model(image[None]).argmax()) == c != clean))
            expected[i], mask[i, r:r + side, col:col + side] = image, True
    assert result.outputs["flipped"].tolist() == flipped and 0 < sum(flipped) < 6, flipped  # both kinds
    assert torch.equal(seen[0], expected)
    assert result.outputs["impact_coverage"].tolist() == pytest.approx(loop_iou(attr.numpy(), mask.numpy()))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(2, 8), st.integers(0, 2**31 - 1), st.floats(0.1, 10.0))
def test_iou_bounds_reference_and_scale_invariance(n: int, size: int, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    side = max(1, size // 3)
    rows = torch.randint(0, size - side + 1, (n,), generator=g)
    cols = torch.randint(0, size - side + 1, (n,), generator=g)
    mask = window_mask(n, size, size, side, rows, cols)
    scores = torch.randint(-3, 4, (n, 1, size, size), generator=g).float()
    iou = coverage_iou(scores.flatten(1), mask.flatten(1))
    assert iou.tolist() == pytest.approx(loop_iou(scores.numpy(), mask.numpy()))
    assert bool(((iou >= 0) & (iou <= 1)).all())
    assert torch.equal(coverage_iou(scores.flatten(1) * scale, mask.flatten(1)), iou)


# -- patch training --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, DataBundle]:
    data = DATASETS.get("digits").build(seed=0, size=8, test_fraction=0.2)
    model = build_model(MODELS.get("mlp"), {"hidden": [32]}, data.input_shape, data.num_classes, 0)
    train_model(model, data, {"epochs": 3, "batch_size": 32, "lr": 0.01}, 0, CPU, logging.getLogger("test"))
    assert float((model(data.x_test).argmax(1) == data.y_test).float().mean()) > 0.9
    return model.eval(), data


def target_probability(model: nn.Module, data: DataBundle, patches: Tensor) -> Tensor:
    """Mean softmax of each patch's class over the training images, the patch at fixed random positions."""
    g = torch.Generator().manual_seed(99)
    side = patches.shape[-1]
    out = []
    for c in range(len(patches)):
        rows = torch.randint(0, 8 - side + 1, (len(data.x_train),), generator=g)
        cols = torch.randint(0, 8 - side + 1, (len(data.x_train),), generator=g)
        patched = paste(data.x_train, patches[c].expand(len(rows), -1, -1, -1), rows, cols)
        with torch.no_grad():
            out.append(model(patched).softmax(1)[:, c].mean())
    return torch.stack(out)


def test_a_trained_patch_beats_its_random_start(digits_model: tuple[nn.Module, DataBundle]) -> None:
    model, data = digits_model
    before = [p.detach().clone() for p in model.parameters()]

    def patches(epochs: int) -> Any:
        return train_patches(model, data.x_train, data.y_train, 10, side=4, epochs=epochs, lr=0.05,
                             batch_size=64, generator=torch.Generator().manual_seed(0), device=CPU, max_rows=256)

    start, trained = patches(0), patches(3)
    lo, hi = float(data.x_train.min()), float(data.x_train.max())
    assert float(trained.patches.min()) >= lo and float(trained.patches.max()) <= hi  # clamped to the data
    raised = target_probability(model, data, trained.patches) - target_probability(model, data, start.patches)
    assert bool((raised > 0).all()) and float(raised.mean()) > 0.03, raised  # every class's score goes up
    assert float(trained.success.mean()) > 2 * float(start.success.mean())  # measured: 0.086 against 0.030
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # model untouched
    assert all(p.requires_grad for p in model.parameters())


def test_patches_are_built_once_per_model_and_parameters(digits_model: tuple[nn.Module, DataBundle]) -> None:
    model, data = digits_model
    x, y = data.x_test[:4], data.y_test[:4]
    cache = Artifacts()
    first = run(model, x, y, data, lambda xp, t: torch.rand_like(xp), cache)
    again = run(model, x, y, data, lambda xp, t: xp.abs(), cache)  # another method, same model: reused
    assert len(cache.builds) == 1
    assert cache.builds[0]["metric"] == "impact_coverage" and cache.builds[0]["epochs"] == 1
    assert first.outputs["flipped"].tolist() == again.outputs["flipped"].tolist()
    run(model, x, y, data, lambda xp, t: xp.abs(), cache, epochs=2)
    assert len(cache.builds) == 2


def test_training_rows_are_not_counted_as_forward_passes() -> None:
    class Counter(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.rows = inner, 0

        def forward(self, t: Tensor) -> Tensor:
            self.rows += len(t)
            return self.inner(t)

    inner, x, y, data = max_setup(n=4)
    counted = Counter(inner)
    result = run(counted, x, y, data, lambda xp, t: torch.rand_like(xp))
    assert counted.rows == result.forward_passes == 4 + 4  # clean rows, then one successful try each


# -- determinism ---------------------------------------------------------------------------------------------

def test_deterministic_and_independent_of_the_batch_budget(digits_model: tuple[nn.Module, DataBundle]) -> None:
    model, data = digits_model
    x, y = data.x_test[:6], data.y_test[:6]

    def saliency(xp: Tensor, t: Tensor) -> Tensor:
        xp = xp.clone().requires_grad_()
        return torch.autograd.grad(model(xp).gather(1, t[:, None]).sum(), xp)[0].abs()

    caches = [Artifacts() for _ in range(3)]
    a = run(model, x, y, data, saliency, caches[0], train_samples=300)
    b = run(model, x, y, data, saliency, caches[1], train_samples=300)
    c = run(model, x, y, data, saliency, caches[2], context(batch_size=5), train_samples=300)
    for key in ("impact_coverage", "flipped"):
        assert torch.equal(a.outputs[key], b.outputs[key])
        assert torch.allclose(a.outputs[key], c.outputs[key])
    stored = [next(iter(cache.store.values()))["patches"] for cache in caches]
    assert torch.equal(stored[0], stored[1]) and torch.allclose(stored[0], stored[2], atol=1e-5)
    prefix = run(model, x[:3], y[:3], data, saliency, caches[0], train_samples=300)  # per-sample streams
    assert torch.equal(prefix.outputs["impact_coverage"], a.outputs["impact_coverage"][:3])
    reseeded = Artifacts()
    run(model, x, y, data, saliency, reseeded, context(seed=SEED + 1), train_samples=300)
    assert not torch.allclose(next(iter(reseeded.store.values()))["patches"], stored[0])


# -- errors ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "match"), [
    ({"pixel_aggregation": "sum"}, "'sum' is not valid; choices: 'mean', 'max_abs'"),
    ({"patch_fraction": 0.0}, "'patch_fraction' = 0.0 must lie in"),
    ({"epochs": -1}, "'epochs' = -1 must be at least 0"),
    ({"max_tries": 0}, "'max_tries' = 0 must be at least 1"),
    ({"lr": 0.0}, "'lr' = 0.0 must be positive"),
    ({"steps": 3}, "unknown parameter 'steps'"),
])
def test_bad_parameters(params: dict[str, Any], match: str) -> None:
    model, x, y, data = max_setup()
    with pytest.raises(ParamError, match=match):
        run(model, x, y, data, lambda xp, t: xp, **params)


def test_bad_inputs() -> None:
    model, x, y, data = max_setup()
    ic = METRICS.get("impact_coverage")
    with pytest.raises(ValueError, match="needs inputs.explain"):
        ic.compute(MetricInputs(model, x, y, torch.zeros_like(x), data=data, artifact=Artifacts()), context())
    with pytest.raises(ValueError, match="needs inputs.data, inputs.artifact"):
        ic.compute(MetricInputs(model, x, y, torch.zeros_like(x), explain=lambda a, t: a), context())
    flat = x.flatten(1)
    with pytest.raises(ValueError, match="floating point images"):
        run(model, flat, y, data, lambda a, t: a)
    with pytest.raises(ValueError, match="explain returned shape"):
        run(model, x, y, data, lambda a, t: a[:, 0])
    one_class = DataBundle(data.x_train, torch.zeros_like(data.y_train), x, y, num_classes=1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        run(model, x, y, one_class, lambda a, t: a)
    with pytest.raises(ValueError, match="target outside"):
        run(model, x, y + 2, data, lambda a, t: a)
