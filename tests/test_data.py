"""Every registered dataset passes the common contracts; digits and pasted_digits have their own checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import harness.data  # noqa: F401  (registers the datasets)
from harness.specs import DATASETS, DataBundle, ParamError, resolve_params

SMALL: dict[str, dict[str, object]] = {
    "pasted_digits": {"n_train": 96, "n_test": 48}, "chaos_vision": {"n_train": 96, "n_test": 48},
    "chaos_audio": {"length": 2000, "n_train": 48, "n_test": 16}, "symbolic": {"n_samples": 400},
    "mnist": {"n_train": 200, "n_test": 100},
    **{n: {"n_train": 64, "n_test": 32} for n in ("fashion_mnist", "cifar10", "cifar100", "svhn")},
    **{n: {"n_train": 32, "n_test": 16, "size": 64} for n in ("imagenette", "places365", "caltech256")},
}
"""Small parameters per dataset so the common contracts stay fast."""


def build(name: str, seed: int = 0, **given: object) -> DataBundle:
    spec = DATASETS.get(name)
    params = resolve_params(f"dataset {name}", {**SMALL.get(name, {}), **given}, spec.defaults, spec.choices)
    try:
        return spec.build(seed, **params)
    except FileNotFoundError as err:
        if params.get("data_root") == "":  # torchvision-backed data sets read files that are not here
            pytest.skip(str(err))
        raise


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: the 8x8 digits in [0, 1], flattened, and their labels."""
    digits = load_digits()
    return (digits.images / 16.0).reshape(len(digits.images), -1), digits.target


def match(crops: torch.Tensor, pool: np.ndarray) -> np.ndarray:
    """Index of the pool image each crop equals (up to float error); asserts that one exists."""
    dist = torch.cdist(crops.flatten(1).double(), torch.from_numpy(pool).double())
    best, index = dist.min(dim=1)
    assert float(best.max()) < 1e-5, "a pasted object is not one of the load_digits images"
    return index.numpy()


# ---- contracts for every registered dataset ---------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS.names())
def test_spec_metadata(name: str) -> None:
    spec = DATASETS.get(name)
    assert spec.name == name and spec.description and spec.modality in {"image", "tabular", "audio"}
    assert set(spec.choices) <= set(spec.defaults)
    for key, options in spec.choices.items():
        assert spec.defaults[key] in options


@pytest.mark.parametrize("name", DATASETS.names())
def test_shapes_dtypes_ranges(name: str) -> None:
    bundle = build(name)
    assert bundle.x_train.dtype == bundle.x_test.dtype == torch.float32
    assert bundle.task == DATASETS.get(name).task
    assert bundle.x_train.shape[1:] == bundle.x_test.shape[1:] == bundle.input_shape
    assert len(bundle.x_train) == len(bundle.y_train) > 0 and len(bundle.x_test) == len(bundle.y_test) > 0
    assert torch.isfinite(bundle.x_train).all() and torch.isfinite(bundle.x_test).all()
    if bundle.task == "classification":
        assert bundle.y_train.dtype == bundle.y_test.dtype == torch.int64
        for y in (bundle.y_train, bundle.y_test):
            assert 0 <= int(y.min()) and int(y.max()) < bundle.num_classes
    else:  # regression: float targets (N,), one model output
        assert bundle.y_train.dtype == bundle.y_test.dtype == torch.float32 and bundle.num_classes == 1
        assert bundle.y_train.ndim == 1 and torch.isfinite(bundle.y_train).all()
    assert set(bundle.truth_test) == set(DATASETS.get(name).truths)
    for truth in bundle.truth_test.values():
        assert truth.shape == bundle.x_test.shape and torch.isfinite(truth).all()
    if bundle.mask_test is not None:
        assert bundle.mask_test.dtype == torch.bool and DATASETS.get(name).has_mask
        # images: one mask channel; tabular: per feature; sequences: per channel (time axis 1)
        expected = {
            "image": (len(bundle.x_test), 1, *bundle.input_shape[1:]),
            "tabular": (len(bundle.x_test), *bundle.input_shape),
            "audio": (len(bundle.x_test), bundle.input_shape[0], 1),
        }[DATASETS.get(name).modality]
        assert bundle.mask_test.shape == expected
        assert bundle.mask_test.flatten(1).any(dim=1).all(), "every test sample has some relevant input"
    assert DataBundle.from_arrays(bundle.arrays()).input_shape == bundle.input_shape


@pytest.mark.parametrize("name", DATASETS.names())
def test_deterministic_for_a_seed_and_varies_across_seeds(name: str) -> None:
    first, again, other = build(name, 3).arrays(), build(name, 3).arrays(), build(name, 4).arrays()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["y_test"], other["y_test"]) or not torch.equal(first["x_test"], other["x_test"])


@pytest.mark.parametrize("name", DATASETS.names())
def test_unknown_parameter_is_rejected(name: str) -> None:
    with pytest.raises(ParamError, match="no_such_parameter"):
        build(name, no_such_parameter=1)


# ---- digits ---------------------------------------------------------------------------------------------


def test_digits_split_is_stratified_and_standardised() -> None:
    bundle = build("digits", 0)
    assert len(bundle.x_train) + len(bundle.x_test) == 1797 and len(bundle.x_test) == 360
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10 and bundle.mask_test is None
    assert abs(float(bundle.x_train.mean())) < 1e-5 and abs(float(bundle.x_train.std()) - 1.0) < 1e-5
    train_share = torch.bincount(bundle.y_train, minlength=10) / len(bundle.y_train)
    test_share = torch.bincount(bundle.y_test, minlength=10) / len(bundle.y_test)
    assert (train_share - test_share).abs().max() < 0.01


def test_digits_are_an_affine_image_of_the_raw_counts() -> None:
    bundle = build("digits", 1)
    images, labels = raw_digits()
    x = torch.cat([bundle.x_train, bundle.x_test]).flatten(1).double()
    counts = (x - x.min()) / (x.max() - x.min()) * 16.0
    assert torch.allclose(counts, counts.round(), atol=1e-4), "standardisation is one affine map"
    index = match(counts / 16.0, images)
    assert len(set(index.tolist())) == 1797, "train and test are disjoint and cover all digits"
    assert np.array_equal(labels[index], torch.cat([bundle.y_train, bundle.y_test]).numpy())


def test_digits_resize() -> None:
    bundle = build("digits", 0, size=16, test_fraction=0.5)
    assert bundle.input_shape == (1, 16, 16) and len(bundle.x_test) in (898, 899)


# ---- pasted_digits --------------------------------------------------------------------------------------


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5


def test_pasted_fixed_box_is_centred_and_holds_the_digit() -> None:
    bundle = build("pasted_digits", 0, position="fixed", canvas=20)
    box = torch.zeros(20, 20, dtype=torch.bool)
    box[6:14, 6:14] = True
    assert torch.equal(bundle.mask_test, box.expand_as(bundle.mask_test))
    images, labels = raw_digits()
    crops = unnormalise(bundle.x_test[:, :, 6:14, 6:14])
    assert np.array_equal(labels[match(crops, images)], bundle.y_test.numpy())
    background = unnormalise(bundle.x_test)[~bundle.mask_test]
    assert 0.0 <= float(background.min()) and float(background.max()) <= 1.0
    assert abs(float(background.mean()) - 0.5) < 0.05 and abs(float(background.var()) - 1 / 12) < 0.01


def test_pasted_test_objects_are_unseen_in_training() -> None:
    bundle = build("pasted_digits", 5, n_train=400, n_test=200)
    images, _ = raw_digits()
    train = set(match(unnormalise(bundle.x_train[:, :, 8:16, 8:16]), images).tolist())
    test = set(match(unnormalise(bundle.x_test[:, :, 8:16, 8:16]), images).tolist())
    assert train and test and not train & test


def test_pasted_random_positions_mark_exactly_the_object() -> None:
    bundle = build("pasted_digits", 2, position="random", canvas=16, n_test=64)
    mask = bundle.mask_test[:, 0]
    assert (mask.sum(dim=(1, 2)) == 64).all()
    rows, cols = mask.any(dim=2).int().argmax(dim=1), mask.any(dim=1).int().argmax(dim=1)
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 20, "positions vary"
    assert int(rows.max()) <= 8 and int(cols.max()) <= 8
    crops = torch.stack([unnormalise(x[:, r : r + 8, c : c + 8]) for x, r, c in zip(bundle.x_test, rows, cols)])
    assert torch.equal(unnormalise(bundle.x_test)[bundle.mask_test], crops.flatten())
    images, labels = raw_digits()
    assert np.array_equal(labels[match(crops, images)], bundle.y_test.numpy())


def test_pasted_three_channels_replicate_the_digit_over_channel_noise() -> None:
    bundle = build("pasted_digits", 0, channels=3, object_size=6, canvas=12)
    assert bundle.input_shape == (3, 12, 12) and bundle.mask_test.shape[1] == 1
    inside = bundle.x_test[:, :, 3:9, 3:9]
    assert torch.equal(inside[:, 0], inside[:, 1]) and torch.equal(inside[:, 0], inside[:, 2])
    assert not torch.equal(bundle.x_test[:, 0, :3], bundle.x_test[:, 1, :3])
    assert -1.0 <= float(bundle.x_test.min()) and float(bundle.x_test.max()) <= 1.0


def test_pasted_rejects_an_object_larger_than_the_canvas() -> None:
    with pytest.raises(ParamError, match="object_size"):
        build("pasted_digits", object_size=30, canvas=24)


def test_pasted_default_size_builds() -> None:
    """Its speed is measured in benchmarks/test_data_speed.py."""
    bundle = build("pasted_digits", 0, n_train=2000, n_test=500)
    assert bundle.x_train.shape == (2000, 1, 24, 24) and bundle.x_test.shape == (500, 1, 24, 24)
