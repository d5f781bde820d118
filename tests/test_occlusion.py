"""The loss-gradient study's occlusion protocol against a plain loop: orders, replacements, replicas."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from harness.metrics import occlusion
from harness.metrics.roar import UNALTERED
from harness.specs import METRICS, DataBundle, MetricInputs, ParamError, RunContext

CTX = RunContext(device=torch.device("cpu"), seed=0, batch_size=4)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(1 * 4 * 4, 3)).eval()


def _data() -> DataBundle:
    g = torch.Generator().manual_seed(5)
    return DataBundle(
        x_train=torch.randn((30, 1, 4, 4), generator=g) + 0.3, y_train=torch.randint(0, 3, (30,), generator=g),
        x_test=torch.randn((9, 1, 4, 4), generator=g), y_test=torch.randint(0, 3, (9,), generator=g),
        num_classes=3,
    )


def _input_times_grad(model: nn.Module):
    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return grad * x.detach()
    return explain


def _inputs(data: DataBundle, fits: list[tuple[Any, int]]) -> MetricInputs:
    def fit(bundle: DataBundle, identity: Any, repeat: int = 0) -> nn.Module:
        fits.append((dict(identity), repeat))
        return _model(100 + repeat)

    return MetricInputs(model=_model(0), x=data.x_test, target=data.y_test, attributions=torch.empty(0),
                        data=data, fit=fit, explainer=_input_times_grad)


def _plain(model: nn.Module, data: DataBundle, order: str, replacement: str, value: float,
           fractions: list[float]) -> tuple[float, list[float]]:
    x, y = data.x_test, data.y_test
    a = _input_times_grad(model)(x, y)
    scores = []
    for f in [0.0, *fractions]:
        k = math.floor(f * 16 + 1e-9)
        correct = 0
        for i in range(len(x)):
            s = a[i, 0].flatten()
            ranked = sorted(range(16), key=lambda j: (-float(s[j]) if order == "positive" else float(s[j]), j))
            fill = {"mean": float(data.x_train.mean()), "dataset_min": float(data.x_train.min()),
                    "image_min": float(x[i].min()), "image_max": float(x[i].max()), "custom": value}[replacement]
            xi = x[i].clone()
            for j in ranked[:k]:
                xi[0, j // 4, j % 4] = fill
            with torch.no_grad():
                correct += int(model(xi[None]).argmax() == y[i])
        scores.append(correct / len(x))
    return scores[0], scores[1:]


@pytest.mark.parametrize("order", ["positive", "negative"])
@pytest.mark.parametrize("replacement", list(occlusion.REPLACEMENTS))
def test_against_a_plain_loop(order: str, replacement: str) -> None:
    data, fits = _data(), []
    fractions = [0.25, 0.5, 0.9]
    result = METRICS.get("loss_gradient_occlusion").compute(
        _inputs(data, fits), CTX, order=order, replacement=replacement, value=-2.5, fractions=fractions, models=2)
    for replica, model in enumerate([_model(0), _model(101)]):
        clean, scores = _plain(model, data, order, replacement, -2.5, fractions)
        assert float(result.outputs["clean_score"][replica]) == pytest.approx(clean)
        assert result.outputs["score"][replica].tolist() == pytest.approx(scores)
    torch.testing.assert_close(result.outputs["change"],
                               result.outputs["score"].mean(dim=1) - result.outputs["clean_score"])
    assert fits == [(dict(UNALTERED), 1)]
    assert result.info["score_name"] == "accuracy" and not result.problems()


def test_image_min_is_the_true_minimum_not_three_times_it() -> None:
    x = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    data = DataBundle(x_train=x, y_train=torch.zeros(1, dtype=torch.long), x_test=x,
                      y_test=torch.zeros(1, dtype=torch.long), num_classes=2)
    assert occlusion.replacement_values(x, data, "image_min", 0.0).flatten().tolist() == [-2.0]
    assert occlusion.replacement_values(x, data, "image_max", 0.0).flatten().tolist() == [3.0]


def test_loss_is_the_mean_cross_entropy() -> None:
    data = _data()
    result = METRICS.get("loss_gradient_occlusion").compute(_inputs(data, []), CTX, fractions=[0.5])
    with torch.no_grad():
        clean = nn.functional.cross_entropy(_model(0)(data.x_test).double(), data.y_test)
    assert float(result.outputs["clean_loss"][0]) == pytest.approx(float(clean))


@pytest.mark.parametrize("bad", [{"fractions": [0.0]}, {"models": 0}, {"replacement": "zero"},
                                 {"score": "auroc"}])
def test_bad_parameters(bad: dict[str, Any]) -> None:
    with pytest.raises(ParamError, match=next(iter(bad))):
        METRICS.get("loss_gradient_occlusion").compute(_inputs(_data(), []), CTX, **bad)
