"""LeRF / MoRF without retraining against a plain loop, and its properties."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.specs import METRICS, DataBundle, MetricInputs, ParamError, RunContext

CTX = RunContext(device=torch.device("cpu"), seed=0, batch_size=5)


def _case(n: int = 6, seed: int = 0) -> tuple[nn.Module, DataBundle, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 4)).eval()
    x_train = torch.randn((20, 2, 5, 5), generator=g)
    data = DataBundle(x_train=x_train, y_train=torch.zeros(20, dtype=torch.long), x_test=x_train[:1],
                      y_test=torch.zeros(1, dtype=torch.long), num_classes=4)
    x = torch.randn((n, 2, 5, 5), generator=g)
    attributions = torch.randn((n, 2, 5, 5), generator=g)
    return model, data, x, attributions


def _run(model: nn.Module, data: DataBundle, x: torch.Tensor, a: torch.Tensor, **params: object):
    inputs = MetricInputs(model=model, x=x, target=torch.zeros(len(x), dtype=torch.long), attributions=a, data=data)
    return METRICS.get("pixel_perturbation").compute(inputs, CTX, **params)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_against_a_plain_loop(order: str) -> None:
    model, data, x, a = _case()
    fractions = [0.04, 0.2, 0.52]
    result = _run(model, data, x, a, order=order, fractions=fractions)
    mean = data.x_train.double().mean(dim=(0, 2, 3)).float()
    for i in range(len(x)):
        with torch.no_grad():
            probs = model(x[i:i + 1]).softmax(dim=1)[0]
        c = int(probs.argmax())
        score = a[i].abs().amax(dim=0).flatten()
        order_index = sorted(range(25), key=lambda j: (-float(score[j]), j) if order == "morf"
                             else (float(score[j]), j))
        for f_index, f in enumerate(fractions):
            k = math.floor(f * 25 + 1e-9)
            changed = x[i].clone()
            for j in order_index[:k]:
                changed[:, j // 5, j % 5] = mean
            with torch.no_grad():
                p = model(changed[None]).softmax(dim=1)[0, c]
            expected = abs(float(probs[c]) - float(p)) / float(probs[c]) * 100
            assert float(result.outputs["relative_change"][i, f_index]) == pytest.approx(expected, rel=1e-4,
                                                                                         abs=1e-4)
    torch.testing.assert_close(result.outputs["mean_change"], result.outputs["relative_change"].mean(dim=1))
    assert result.higher_is_better is (order == "morf")
    assert not result.problems()


@given(st.integers(0, 10**6), st.floats(0.1, 10.0))
@settings(max_examples=15, deadline=None)
def test_bounds_and_scale_invariance(seed: int, scale: float) -> None:
    model, data, x, a = _case(n=3, seed=seed)
    one = _run(model, data, x, a)
    scaled = _run(model, data, x, a * scale)
    assert bool((one.outputs["relative_change"] >= 0).all())
    torch.testing.assert_close(one.outputs["relative_change"], scaled.outputs["relative_change"])


def test_removing_nothing_changes_nothing() -> None:
    model, data, x, a = _case()
    result = _run(model, data, x, a, fractions=[0.01])  # floor(0.01 * 25) = 0 pixels
    assert float(result.outputs["relative_change"].abs().max()) == 0.0


@pytest.mark.parametrize("bad", [{"fractions": []}, {"fractions": [1.5]}, {"order": "most"}])
def test_bad_parameters(bad: dict[str, object]) -> None:
    model, data, x, a = _case()
    with pytest.raises(ParamError, match=next(iter(bad))):
        _run(model, data, x, a, **bad)
