"""mnist_cnn: the loss-gradient study's MNIST CNN (arXiv 2207.07769) against a re-statement of the seed's
``Net``, its sigmoid head against PyTorch's BCE, any input size, and the seed's training recipe on MNIST
0/1."""
from __future__ import annotations

import logging

import pytest
import torch
from captum.attr import DeepLift
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import harness.data  # registers the datasets
import harness.models  # noqa: F401  (registers the models)
from harness.models.mnist_cnn import SigmoidPair, build_mnist_cnn
from harness.models.training import build_model, train_model
from harness.specs import DATASETS, MODELS, DataBundle, ParamError, resolve_params

CPU = torch.device("cpu")
LOG = logging.getLogger("tests.mnist_cnn")
SEED_RECIPE = {"optimizer": "adadelta", "lr": 1.0, "lr_gamma": 0.7, "batch_size": 64}
SMALL = {"channels": [8, 16], "hidden": 32}
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
]


def build(
    num_classes: int = 10, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0, **params: object
) -> nn.Module:
    return build_model(MODELS.get("mnist_cnn"), params, shape, num_classes, seed).eval()


class SeedNet(nn.Module):
    """``Net`` of github VinodS7/investigate-gradients ``src/train_mnist.py``, restated (logits, no
    log-softmax)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def mnist01() -> DataBundle:
    spec = DATASETS.get("mnist")
    return spec.build(0, **resolve_params("dataset mnist", {"classes": [0, 1]}, spec.defaults, spec.choices))


# ---- architecture ---------------------------------------------------------------------------------------


def test_default_is_the_seed_net_at_28x28() -> None:
    model = build(10)
    reference = SeedNet(10).eval()
    ours = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    theirs = [reference.conv1, reference.conv2, reference.fc1, reference.fc2]
    for mine, seed in zip(ours, theirs, strict=True):
        assert mine.weight.shape == seed.weight.shape
        seed.load_state_dict(mine.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 1_199_882  # PyTorch's MNIST example net
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout,
                                        nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_widths_shrink_the_model_and_inputs_may_have_channels() -> None:
    model = build(3, (3, 28, 28), channels=[4, 6, 5], hidden=7)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 4), (4, 6), (6, 5)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5 * 11 * 11, 7), (7, 3)]


@settings(max_examples=20, deadline=None)
@given(channels=st.integers(1, 3), height=st.integers(1, 34), width=st.integers(1, 34),
       sigmoid=st.booleans())
def test_any_input_size_gives_finite_logits(channels: int, height: int, width: int, sigmoid: bool) -> None:
    head = "sigmoid" if sigmoid else "softmax"
    model = build(2 if sigmoid else 4, (channels, height, width), channels=[3, 4], hidden=5, head=head)
    with torch.inference_mode():
        out = model(torch.randn(2, channels, height, width))
    assert out.shape == (2, 2 if sigmoid else 4) and torch.isfinite(out).all()
    if height >= 6 and width >= 6:  # no padding needed: valid convolutions and the pool, as the seed
        flat = next(m for m in model if isinstance(m, nn.Linear)).in_features
        assert flat == 4 * ((height - 4) // 2) * ((width - 4) // 2)
        assert all(m.padding == (0, 0) for m in model if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    ("given", "num_classes", "message"),
    [
        ({"head": "sigmoid"}, 10, "head 'sigmoid' needs num_classes == 2.*got num_classes 10"),
        ({"head": "tanh"}, 10, "'head' = 'tanh' is not valid; choices: 'softmax', 'sigmoid'"),
        ({"channels": []}, 10, "channels non-empty"),
        ({"hidden": 0}, 10, "hidden=0"),
    ],
)
def test_bad_parameters_are_rejected(given: dict[str, object], num_classes: int, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        build(num_classes, **given)
    with pytest.raises(ParamError, match="needs \\(C, H, W\\) inputs"):
        build_mnist_cnn((784,), 10, channels=[4], hidden=4, head="softmax")


# ---- the sigmoid head -----------------------------------------------------------------------------------


def test_sigmoid_head_is_the_seeds_bce() -> None:
    """Logits (0, z): softmax = sigmoid(z), cross-entropy = BCE with logits on z, same input gradients."""
    model = build(2, head="sigmoid", seed=3, **SMALL)
    assert isinstance(model[-1], SigmoidPair) and model[-2].out_features == 1
    x = torch.randn(16, 1, 28, 28, requires_grad=True)
    y = torch.arange(16) % 2
    logits = model(x)
    z = model[:-1](x)[:, 0]
    assert torch.equal(logits[:, 0], torch.zeros(16)) and torch.equal(logits[:, 1], z)
    assert torch.allclose(logits.softmax(1)[:, 1], torch.sigmoid(z), atol=1e-7)
    assert torch.equal(logits.argmax(1), (z > 0).long())
    ours = F.cross_entropy(logits, y, reduction="none")
    bce = F.binary_cross_entropy_with_logits(z, y.float(), reduction="none")
    assert torch.allclose(ours, bce, atol=1e-6)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x, retain_graph=True)
    (grad_bce,) = torch.autograd.grad(bce.sum(), x)
    assert torch.allclose(grad_ours, grad_bce, atol=1e-6, rtol=1e-4)


def test_sigmoid_pair_ties_go_to_class_zero_like_the_seeds_round() -> None:
    z = torch.tensor([[-2.0], [0.0], [3.0]])
    assert SigmoidPair()(z).tolist() == [[0.0, -2.0], [0.0, 0.0], [0.0, 3.0]]
    assert SigmoidPair()(z).argmax(1).tolist() == torch.sigmoid(z[:, 0]).round().long().tolist() == [0, 0, 1]


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_deeplift_runs_on_both_heads(head: str) -> None:
    model = build(2, (1, 12, 12), head=head, channels=[3, 4], hidden=6)
    x = torch.randn(4, 1, 12, 12)
    attr = DeepLift(model).attribute(x, baselines=0.0, target=torch.tensor([0, 1, 1, 0]))
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    assert not any(getattr(m, "inplace", False) for m in model.modules())


# ---- the seed's recipe on MNIST 0/1 -------------------------------------------------------------------


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_seed_recipe_learns_mnist_zero_one(mnist01: DataBundle, head: str) -> None:
    assert mnist01.num_classes == 2 and len(mnist01.x_train) == 800
    model = build(2, head=head, **SMALL)
    report = train_model(model, mnist01, {**SEED_RECIPE, "epochs": 2}, 0, CPU, LOG)
    assert report.test_score > 0.97 and report.train_score > 0.97 and not model.training


def test_training_with_dropout_is_seeded_and_leaves_the_global_rng_alone(mnist01: DataBundle) -> None:
    """Dropout draws from a global RNG: train_model seeds (and restores) it, so training repeats exactly."""
    models = [build(2, seed=1, **SMALL) for _ in range(3)]
    settings_ = {**SEED_RECIPE, "epochs": 1}
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = train_model(models[0], mnist01, settings_, 5, CPU, LOG)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)  # another global state before the run must not matter
    again = train_model(models[1], mnist01, settings_, 5, CPU, LOG)
    other = train_model(models[2], mnist01, settings_, 6, CPU, LOG)
    sd = [m.state_dict() for m in models]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0]) and first.losses == again.losses
    assert not torch.equal(sd[0]["7.weight"], sd[2]["7.weight"]) and first.losses != other.losses
