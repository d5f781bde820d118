"""The coverage workflows (metrics coverage, coverage_pruning, RQ2-RQ4) on a tiny CNN against plain loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.coverage import workflow
from harness.coverage.base import CRITERIA, coverage_layers, layer_traces
from harness.metrics import coverage_rq
from harness.specs import METRICS, DataBundle, MetricInputs, ParamError, RunContext

CTX = RunContext(device=torch.device("cpu"), seed=0, batch_size=16)


class Wrapped(nn.Module):
    """Stands in for the harness's row counter, which keeps the network as ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 12), nn.ReLU(),
                         nn.Linear(12, 3)).eval()


def _data() -> DataBundle:
    g = torch.Generator().manual_seed(1)
    return DataBundle(x_train=torch.randn((60, 1, 8, 8), generator=g), y_train=torch.randint(0, 3, (60,), generator=g),
                      x_test=torch.randn((40, 1, 8, 8), generator=g), y_test=torch.randint(0, 3, (40,), generator=g),
                      num_classes=3)


def _inputs(explain=None) -> MetricInputs:
    data = _data()
    return MetricInputs(model=Wrapped(_net()), x=data.x_test, target=data.y_test, attributions=torch.empty(0),
                        data=data, explain=explain)


def test_layer_names_are_the_networks_own() -> None:
    net = _net()
    assert workflow.unwrap(Wrapped(net)) is net and workflow.unwrap(net) is net
    traces = workflow.traces_of(Wrapped(net), _data().x_test, CTX)
    assert list(traces) == coverage_layers(net) == ["0", "3"]


@pytest.mark.parametrize("name", sorted(set(CRITERIA.names()) - {"idc"}))
def test_every_criterion_through_the_metric_merges_like_one_pass(name: str) -> None:
    params = {"layers": ["3"]} if name in ("lsc", "mdsc") else {}
    result = METRICS.get("coverage").compute(_inputs(), CTX, criterion=name, criterion_params=params, shards=3)
    assert result.info["criterion"] == name and not result.problems()
    built = workflow.build_criteria(_inputs(), CTX, [name], {name: params}, 2000)[0]
    x = _data().x_test
    traces = layer_traces(_net(), x, ["0", "3"])
    labels = _net()(x).argmax(dim=1)
    one = workflow.covered(built, traces, labels, 1)
    assert float(result.outputs["coverage"][0]) == pytest.approx(one["coverage"], rel=1e-9)


def test_idc_through_the_metric() -> None:
    result = METRICS.get("coverage").compute(_inputs(), CTX, criterion="idc", idc_layer_index=0, idc_m=2,
                                             shards=2)
    figures = result.info["figures"]
    assert figures["total"] == 4 and 0 < figures["coverage"] <= figures["max_attainable"] <= 1


def test_unknown_criterion_names_the_choices() -> None:
    with pytest.raises(ParamError, match="nope.*choices: .*kmnc"):
        METRICS.get("coverage").compute(_inputs(), CTX, criterion="nope")


def test_pruning_against_a_plain_loop() -> None:
    from harness.coverage.relevance import neuron_relevance

    result = METRICS.get("coverage_pruning").compute(_inputs(), CTX, attributor="layer_activation", ns=[2, 5],
                                                     random_draws=2)
    net, data = _net(), _data()
    relevance = {layer: neuron_relevance(net, layer, data.x_train, data.y_train, "layer_activation", 16)
                 for layer in ["0", "3"]}
    ranked = sorted(((float(v), -li, -i, layer, i) for li, (layer, values) in enumerate(relevance.items())
                     for i, v in enumerate(values)), reverse=True)
    for j, n in enumerate([2, 5]):
        chosen = {(layer, i) for *_, layer, i in ranked[:n]}
        hooks = []
        for layer in {layer for layer, _ in chosen}:
            index = [i for lay, i in chosen if lay == layer]

            def zero(module, inputs, output, index=index):
                output = output.clone()
                output[:, index] = 0
                return output
            hooks.append(dict(net.named_modules())[layer].register_forward_hook(zero))
        with torch.no_grad():
            pruned = float((net(data.x_test).argmax(1) == data.y_test).double().mean())
        for h in hooks:
            h.remove()
        with torch.no_grad():
            clean = float((net(data.x_test).argmax(1) == data.y_test).double().mean())
        assert float(result.outputs["drop"][0, j]) == pytest.approx(clean - pruned)
    assert result.outputs["random_drop"].shape == (2, 2) and not result.problems()


def test_pielou_hand_checked() -> None:
    assert coverage_rq.pielou(torch.tensor([0, 1, 2, 0, 1, 2]), 3) == pytest.approx(1.0)
    assert coverage_rq.pielou(torch.tensor([1, 1, 1]), 3) == 0.0
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert coverage_rq.pielou(torch.tensor([0, 0, 0, 1]), 2) == pytest.approx(expected)


@given(st.lists(st.integers(-50, 50), min_size=3, max_size=12), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_pearson_matches_numpy(a: list[int], seed: int) -> None:
    x = torch.tensor(a, dtype=torch.float64) / 10
    y = torch.randn(len(a), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    r = coverage_rq.pearson(x, y)
    if len(set(a)) == 1:
        assert r is None
    else:
        assert r == pytest.approx(float(np.corrcoef(x.numpy(), y.numpy())[0, 1]), abs=1e-6)


def test_adversarial_replaces_the_first_inputs_by_successful_examples() -> None:
    result = METRICS.get("coverage_adversarial").compute(_inputs(), CTX, attack="fgsm", criteria=["nc", "tknc"],
                                                         samples=20, shares=[0.1, 0.5])
    info = result.info
    n = info["samples"]  # the correctly classified inputs among the test set, at most 20
    assert 0 < n <= 20
    assert info["replaced"] == [min(info["successful"], math.ceil(s * n)) for s in (0.1, 0.5)]
    assert result.outputs["coverage"].shape == (2, 3) and result.outputs["change"].shape == (2, 2)
    assert not result.problems()


def test_cw_binary_steps_reach_the_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cw_binary_steps`` is passed to the CW attack (1, the seed's fixed c, by default)."""
    from harness.coverage import attacks

    seen: list[int] = []
    real = attacks.cw

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(int(kwargs["binary_steps"]))  # type: ignore[call-overload]
        return real(*args, **kwargs)

    monkeypatch.setattr(attacks, "cw", spy)  # coverage_rq imports it when the attack runs
    spec = METRICS.get("coverage_adversarial")
    for steps in (None, 3):
        extra = {} if steps is None else {"cw_binary_steps": steps}
        result = spec.compute(_inputs(), CTX, attack="cw", criteria=["nc"], samples=8, shares=[0.5], cw_steps=3,
                              **extra)
        assert not result.problems()
    assert seen == [1, 3]
    with pytest.raises(ParamError, match="binary_steps"):
        spec.compute(_inputs(), CTX, attack="cw", criteria=["nc"], samples=8, shares=[0.5], cw_binary_steps=0)


def test_diversity_and_evenness_run_and_are_bounded() -> None:
    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x.abs()

    div = METRICS.get("coverage_diversity").compute(_inputs(explain), CTX, criteria=["nc", "kmnc"],
                                                    test_samples=20, fraction=0.1)
    assert div.outputs["wins"].shape == (2,) and not div.problems()
    even = METRICS.get("coverage_evenness").compute(_inputs(), CTX, criteria=["nc"], sizes=[10, 30], draws=4)
    assert even.outputs["pearson"].shape == (1, 2) and not even.problems()
    with pytest.raises(ParamError, match="draws"):
        METRICS.get("coverage_evenness").compute(_inputs(), CTX, draws=2)


def test_evenness_versions_against_a_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """RQ4's adversarial versions: a stand-in attack (negate the input; the odd test inputs succeed) makes the
    versions known; a plain loop over the same subset draws gives r over the originals, the versions and both.
    The originals' r is the same as without versions (the draws do not move)."""
    from harness.coverage import attacks

    def fake_cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        return -x, torch.arange(len(x)) % 2 == 1

    monkeypatch.setattr(attacks, "cw", fake_cw)
    spec, inputs = METRICS.get("coverage_evenness"), _inputs()
    settings = {"criteria": ["nc", "kmnc"], "sizes": [10, 16], "draws": 4}
    plain = spec.compute(inputs, CTX, **settings)
    got = spec.compute(inputs, CTX, versions="cw", **settings)
    torch.testing.assert_close(got.outputs["pearson"], plain.outputs["pearson"], rtol=0, atol=0)
    assert got.info["successful"] == 20 and not got.problems()

    built = coverage_rq._setup("coverage_evenness", inputs, CTX, {**coverage_rq.EVENNESS_DEFAULTS, **settings})
    x = inputs.data.x_test
    versions = torch.where((torch.arange(len(x)) % 2 == 1).view(-1, 1, 1, 1), -x, x)
    model = inputs.model
    with torch.no_grad():
        predicted, predicted_v = model(x).argmax(1), model(versions).argmax(1)
    generator = CTX.generator(coverage_rq.SUBSET_OFFSET)
    for j, size in enumerate(settings["sizes"]):
        cov, even, cov_v, even_v = [], [], [], []
        for _ in range(settings["draws"]):
            weights = coverage_rq._dirichlet(3, 0.5, generator)
            chosen = torch.multinomial(weights[predicted] + 1e-12, size, replacement=False, generator=generator)
            cov.append(coverage_rq.ratios(built, model, x[chosen], CTX))
            even.append(coverage_rq.pielou(predicted[chosen], 3))
            cov_v.append(coverage_rq.ratios(built, model, versions[chosen], CTX))
            even_v.append(coverage_rq.pielou(predicted_v[chosen], 3))
        for c in range(2):
            for key, (a, b) in {"pearson": (cov, even), "pearson_versions": (cov_v, even_v),
                                "pearson_pooled": (cov + cov_v, even + even_v)}.items():
                values = np.array([float(t[c]) for t in a])
                ref = 0.0 if np.ptp(values) == 0 or np.ptp(b) == 0 else float(np.corrcoef(values, b)[0, 1])
                assert float(got.outputs[key][c, j]) == pytest.approx(ref, abs=1e-9), (key, c, j)
    with pytest.raises(ParamError, match="'versions' = 'noise' is not valid; choices: '', 'fgsm'"):
        spec.compute(inputs, CTX, versions="noise", **settings)


def test_idc_on_voted_neurons() -> None:
    result = METRICS.get("coverage").compute(_inputs(), CTX, criterion="idc", idc_attributor="voting",
                                             idc_layer_index=1, idc_m=3,
                                             idc_voters=["layer_activation", "layer_gradient_x_activation"])
    assert result.info["figures"]["total"] == 8 and not result.problems()
