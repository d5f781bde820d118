"""ROAR / KAR: ranking with ties, streamed alteration, and the retraining protocol against a plain loop."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.metrics import roar
from harness.specs import METRICS, DataBundle, MetricInputs, ParamError, RunContext

CTX = RunContext(device=torch.device("cpu"), seed=0, batch_size=7)


def test_ranks_hand_checked_with_ties() -> None:
    scores = torch.tensor([[0.5, 2.0, 0.5, -1.0]])
    # ties between positions 0 and 2: the one listed first in tie_order ranks first
    assert roar.ranks(scores, torch.tensor([2, 0, 1, 3])).tolist() == [[2, 0, 1, 3]]
    assert roar.ranks(scores, torch.tensor([0, 1, 2, 3])).tolist() == [[1, 0, 2, 3]]


@given(st.integers(1, 5), st.integers(1, 30), st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_ranks_are_a_permutation_ordered_by_score(n: int, positions: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n, positions), generator=g).float()  # many ties
    tie_order = torch.randperm(positions, generator=g)
    rank = roar.ranks(scores, tie_order)
    assert torch.equal(rank.sort(dim=1).values, torch.arange(positions).expand(n, -1))
    for row, r in zip(scores, rank):
        by_rank = row[r.argsort()]
        assert bool((by_rank[:-1] >= by_rank[1:]).all())


def test_position_scores_levels() -> None:
    a = torch.tensor([[[[1.0, -3.0]], [[-2.0, 1.0]]]])  # (1, 2, 1, 2)
    assert roar.position_scores(a, "pixel", "max_abs").tolist() == [[2.0, 3.0]]
    assert roar.position_scores(a, "pixel", "mean").tolist() == [[-0.5, -1.0]]
    assert roar.position_scores(a, "value", "max_abs").tolist() == [[1.0, 3.0, 2.0, 1.0]]


def test_alter_roar_and_kar_are_complements() -> None:
    x = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    rank = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    fill = torch.tensor([-1.0, -2.0])
    removed = roar.alter(x, roar.removal_mask(rank, 1, "roar"), "pixel", fill)
    kept = roar.alter(x, roar.removal_mask(rank, 1, "kar"), "pixel", fill)
    # sample 0: pixel 0 removed (every channel); sample 1: pixel 3 removed
    assert removed[0, :, 0, 0].tolist() == [-1.0, -2.0] and removed[1, :, 1, 1].tolist() == [-1.0, -2.0]
    changed_roar, changed_kar = removed != x, kept != x
    assert torch.equal(changed_roar, ~changed_kar)
    assert int(changed_roar.sum()) == 2 * 2  # one pixel, two channels, two samples


def _bundle(n_train: int = 23, n_test: int = 11, shape: tuple[int, ...] = (2, 4, 4)) -> DataBundle:
    g = torch.Generator().manual_seed(3)
    return DataBundle(
        x_train=torch.randn((n_train, *shape), generator=g), y_train=torch.randint(0, 3, (n_train,), generator=g),
        x_test=torch.randn((n_test, *shape), generator=g), y_test=torch.randint(0, 3, (n_test,), generator=g),
        num_classes=3,
    )


def _explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A fixed, label-dependent attribution with ties: x rounded, shifted by the label."""
    return torch.round(x * 2) + target.view(-1, 1, 1, 1).float()


def test_streamed_alteration_equals_direct(tmp_path: Path) -> None:
    data = _bundle()
    p = {"level": "pixel", "pixel_aggregation": "max_abs", "chunk": 4}
    tie_order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    roar.write_ranks(tmp_path, data, _explain, p, tie_order, torch.device("cpu"))
    fill = roar.channel_mean(data.x_train)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        rank = roar.ranks(roar.position_scores(_explain(x, y), "pixel", "max_abs"), tie_order)
        for count, mode in ((5, "roar"), (5, "kar"), (0, "roar")):
            direct = roar.alter(x, roar.removal_mask(rank, count, mode), "pixel", fill)
            streamed = roar.altered_split(x, tmp_path, split, count, mode, p, fill)
            assert torch.equal(direct, streamed)


class _Constant(nn.Module):
    """Predicts class ``k`` everywhere; which k is derived from the bundle it was 'trained' on."""

    def __init__(self, k: int, classes: int) -> None:
        super().__init__()
        self.k, self.classes = k, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.k), self.classes).float()


def _inputs(data: DataBundle, tmp_path: Path, fits: list[tuple[DataBundle, dict[str, Any], int]]) -> MetricInputs:
    def fit(bundle: DataBundle, identity: Any, repeat: int = 0) -> nn.Module:
        fits.append((bundle, dict(identity), repeat))
        # a deterministic function of the training data, so the metric's accuracy reflects the alteration
        return _Constant(int(bundle.x_train.sum().abs() * 1000) % data.num_classes, data.num_classes)

    def store(identity: Any, write: Any) -> Path:
        folder = tmp_path / "store"
        if not folder.exists():
            folder.mkdir()
            write(folder)
        return folder

    return MetricInputs(
        model=_Constant(1, data.num_classes), x=data.x_test, target=data.y_test, attributions=torch.empty(0),
        data=data, fit=fit, explainer=lambda model: _explain, store=store, method={"name": "fixed"},
    )


@pytest.mark.parametrize("mode", ["roar", "kar"])
def test_protocol_against_a_plain_loop(mode: str, tmp_path: Path) -> None:
    data, fits = _bundle(), []
    thresholds = [0.25, 0.5]
    result = METRICS.get(mode).compute(_inputs(data, tmp_path, fits), CTX, thresholds=thresholds, repeats=2,
                                       chunk=5)
    # plain loop: rank every image, replace pixels one by one, "retrain", score
    tie_order = torch.randperm(16, generator=CTX.generator(roar.TIE_OFFSET))
    fill = roar.channel_mean(data.x_train)
    expected = torch.zeros(2, 2, dtype=torch.float64)
    for j, t in enumerate(thresholds):
        count = math.floor(t * 16)
        altered = {}
        for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            out = x.clone()
            for i in range(len(x)):
                rank = roar.ranks(roar.position_scores(_explain(x[i:i + 1], y[i:i + 1]), "pixel", "max_abs"),
                                  tie_order)[0]
                for pos in range(16):
                    if (rank[pos] < count) == (mode == "roar"):
                        out[i, :, pos // 4, pos % 4] = fill
            altered[split] = out
        k = int(altered["train"].sum().abs() * 1000) % 3
        expected[:, j] = float((data.y_test == k).double().mean())
    torch.testing.assert_close(result.outputs["accuracy"], expected)
    assert result.outputs["base_accuracy"][0] == float((data.y_test == 1).double().mean())
    assert result.higher_is_better is (mode == "kar") and result.primary == "auc"
    torch.testing.assert_close(result.outputs["auc"], expected.mean(dim=1))
    # one unaltered retraining (repeat 1; repeat 0 is the case's model) + thresholds x repeats
    repeats = [(ident.get("threshold"), r) for _, ident, r in fits]
    assert repeats == [(None, 1), (0.25, 0), (0.25, 1), (0.5, 0), (0.5, 1)]
    assert fits[0][1] == dict(roar.UNALTERED) and fits[0][0] is data
    assert all(ident["method"] == {"name": "fixed"} and ident["protocol"] == mode for _, ident, _ in fits[1:])
    assert not result.problems()


def test_value_level_counts_every_value(tmp_path: Path) -> None:
    data, fits = _bundle(), []
    result = METRICS.get("roar").compute(_inputs(data, tmp_path, fits), CTX, thresholds=[0.5], level="value")
    assert result.info["positions"] == 32 and result.info["counts"] == [16]
    changed = (fits[0][0].x_test != data.x_test).flatten(1).sum(dim=1)
    assert bool((changed == 16).all())


@pytest.mark.parametrize("bad", [{"thresholds": []}, {"thresholds": [0.0]}, {"thresholds": [1.0]},
                                 {"repeats": 0}, {"level": "pixels"}])
def test_bad_parameters_name_the_value(bad: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ParamError, match=next(iter(bad))):
        METRICS.get("roar").compute(_inputs(_bundle(), tmp_path, []), CTX, **bad)


def test_needs_images(tmp_path: Path) -> None:
    data = _bundle(shape=(8,))
    with pytest.raises(ValueError, match="image data"):
        METRICS.get("kar").compute(_inputs(data, tmp_path, []), CTX)
