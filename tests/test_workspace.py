"""The workspace: data sets, models and attributions built once, cached by spec, reused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cache import Cache
from harness.cases import Case, expand
from harness.models import training
from harness.suite import load_suite
from harness.workspace import Workspace, repeat_seed

SUITE = """
[suite]
samples = 5
target = "{target}"

[datasets.pasted]
dataset = "pasted_digits"
canvas = 12
n_train = 200
n_test = 40

[models.mlp]
hidden = [16]
[models.mlp.training]
epochs = 2

[methods.saliency]
[methods.random]

[metrics.deletion]
steps = 4
"""


def cases(tmp_path: Path, target: str = "label") -> list[Case]:
    path = tmp_path / f"{target}.toml"
    path.write_text(SUITE.format(target=target))
    return expand(load_suite(path))


def test_model_is_trained_once_and_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = cases(tmp_path)[0]
    first = Workspace(Cache(tmp_path / "cache"), torch.device("cpu")).model(case)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(training, "train_model", no_training)
    again = Workspace(Cache(tmp_path / "cache"), torch.device("cpu")).model(case)
    assert again.key == first.key and again.test_score == first.test_score
    for name, tensor in first.module.state_dict().items():
        assert torch.equal(tensor, again.module.state_dict()[name])
    assert not again.module.training


def test_attributions_shared_and_keyed_by_method(tmp_path: Path) -> None:
    saliency, random = cases(tmp_path)
    workspace = Workspace(Cache(tmp_path / "cache"), torch.device("cpu"))
    a = workspace.attributions(saliency)
    assert a.values.shape == a.x.shape == (5, 1, 12, 12)
    assert a.mask is not None and a.mask.shape == (5, 1, 12, 12) and a.mask.dtype == torch.bool
    assert torch.equal(a.target, a.label) and a.sample_index.tolist() == list(range(5))
    fresh = Workspace(Cache(tmp_path / "cache"), torch.device("cpu")).attributions(saliency)
    assert torch.equal(fresh.values, a.values) and fresh.seconds == a.seconds
    other = workspace.attributions(random)
    assert not torch.equal(other.values, a.values)
    assert len(list((tmp_path / "cache" / "attributions").glob("*/spec.json"))) == 2


def test_prediction_target(tmp_path: Path) -> None:
    case = cases(tmp_path, target="prediction")[0]
    workspace = Workspace(Cache(tmp_path / "cache"), torch.device("cpu"))
    a = workspace.attributions(case)
    with torch.inference_mode():
        predicted = workspace.model(case).module(a.x).argmax(1)
    assert torch.equal(a.target, predicted)


def test_fit_repeats_train_from_their_own_seed_and_are_cached(tmp_path: Path) -> None:
    case = cases(tmp_path)[0]
    workspace = Workspace(Cache(tmp_path / "cache"), torch.device("cpu"))
    bundle = workspace.dataset(case)
    trained = workspace.model(case).module.state_dict()
    zero = workspace.fit(case, bundle, {"derived": "unaltered"})
    one = workspace.fit(case, bundle, {"derived": "unaltered"}, repeat=1)
    # repeat 0 on the unaltered data is the case's own model, bit for bit; repeat 1 is another model
    assert all(torch.equal(trained[k], v) for k, v in zero.state_dict().items())
    assert not all(torch.equal(trained[k], v) for k, v in one.state_dict().items())
    again = Workspace(Cache(tmp_path / "cache"), torch.device("cpu")).fit(case, bundle, {"derived": "unaltered"}, 1)
    assert all(torch.equal(one.state_dict()[k], v) for k, v in again.state_dict().items())
    assert len(list((tmp_path / "cache" / "derived_models").glob("*/spec.json"))) == 2
    assert repeat_seed(0, 0) == 0 and len({repeat_seed(0, r) for r in range(1, 50)}) == 49
    with pytest.raises(ValueError, match="repeat"):
        workspace.fit(case, bundle, {}, repeat=-1)


def test_store_is_written_once_per_identity(tmp_path: Path) -> None:
    case = cases(tmp_path)[0]
    workspace = Workspace(Cache(tmp_path / "cache"), torch.device("cpu"))
    calls: list[str] = []

    def write(folder: Path) -> None:
        calls.append(folder.name)
        (folder / "data.txt").write_text("x")

    first = workspace.store(case, {"what": "a"}, write)
    assert (first / "data.txt").read_text() == "x"
    assert workspace.store(case, {"what": "a"}, write) == first and len(calls) == 1
    assert workspace.store(case, {"what": "b"}, write) != first and len(calls) == 2
