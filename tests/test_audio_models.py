"""The ChaosMining raw-waveform audio models (seed chaosmining/audio/models.py): shapes, limits, the captum
methods in eval mode, and brief training on chaos_audio."""
from __future__ import annotations

import logging

import pytest
import torch
from captum.attr import DeepLift
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import harness.data  # registers the datasets
import harness.methods  # registers the methods
import harness.models  # noqa: F401  (registers the models)
from harness.data.chaos_audio import build_chaos_audio
from harness.models.audio import HEADS, stem_frames
from harness.models.training import build_model, train_model
from harness.specs import METHODS, MODELS, DataBundle, ParamError, RunContext
from harness.workspace import single_threaded

CPU = torch.device("cpu")
NAMES = [f"audio_{head}" for head in HEADS]
SMALL = {"transformer": {"ffn": 64}}
"""Per-head parameters that keep the tests fast (the seed's feed-forward width 2048 is the default)."""
METHOD_PARAMS = {
    "saliency": {}, "integrated_gradients": {"n_steps": 4}, "deep_lift": {}, "feature_ablation": {},
    "occlusion": {"window": 400, "stride": 400}, "smoothgrad": {"nt_samples": 2},
}
pytestmark = pytest.mark.usefixtures("one_thread")


def make(
    name: str, shape: tuple[int, ...] = (3, 1600), classes: int = 5, seed: int = 0, **params: object
) -> nn.Module:
    head = name.removeprefix("audio_")
    return build_model(MODELS.get(name), {**SMALL.get(head, {}), **params}, shape, classes, seed)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 1600), (10, 4000), (1, 512)])
def test_heads_map_waveforms_to_class_logits(name: str, shape: tuple[int, int]) -> None:
    model = make(name, shape, classes=7).eval()
    with torch.inference_mode():
        out = model(torch.randn(4, *shape))
        one = model(torch.randn(1, *shape))  # the seed's torch.squeeze would drop the batch axis here
    assert out.shape == (4, 7) and one.shape == (1, 7) and torch.isfinite(out).all()
    spec = MODELS.get(name)
    assert spec.modalities == {"audio"} and spec.description
    assert {k: spec.defaults[k] for k in ("width", "kernel", "stride", "pool")} == {
        "width": 60, "kernel": 80, "stride": 16, "pool": 4}


def test_the_seed_sizes() -> None:
    """At the paper's 10 x 16,000 input: stem 60 channels, 249 frames; TCN blocks 60, 120, 120, 4 pools."""
    tcn = make("audio_tcn", (10, 16000), 35)
    convs = [m for m in tcn.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (10, 60, 80, 16), (60, 60, 3, 1), (60, 120, 3, 1), (120, 120, 3, 1)]
    assert sum(isinstance(m, nn.MaxPool1d) for m in tcn.modules()) == 4
    assert stem_frames(16000, 80, 16, 4) == 249
    rnn, lstm = make("audio_rnn", (10, 16000), 35), make("audio_lstm", (10, 16000), 35)
    for model, cls in ((rnn, nn.RNN), (lstm, nn.LSTM)):
        layer = next(m for m in model.modules() if isinstance(m, cls))
        assert (layer.input_size, layer.hidden_size, layer.num_layers, layer.dropout) == (60, 60, 3, 0.1)
        assert layer.batch_first
    encoder = next(m for m in make("audio_transformer", (10, 16000), 35, ffn=2048).modules()
                   if isinstance(m, nn.TransformerEncoder))
    first = encoder.layers[0]
    assert len(encoder.layers) == 3 and first.self_attn.num_heads == 6 and first.self_attn.batch_first
    assert first.linear1.out_features == 2048 and first.self_attn.embed_dim == 60


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 3000), kernel=st.integers(1, 100), stride=st.integers(1, 20),
       pool=st.integers(1, 6))
def test_stem_frames_matches_the_layers(length: int, kernel: int, stride: int, pool: int) -> None:
    frames = stem_frames(length, kernel, stride, pool)
    convolved = (length - kernel) // stride + 1 if length >= kernel else 0
    if convolved < pool:  # the stem leaves nothing
        assert frames == 0
        return
    stem = nn.Sequential(nn.Conv1d(1, 1, kernel, stride), nn.MaxPool1d(pool))
    with torch.inference_mode():
        assert frames == stem(torch.zeros(1, 1, length)).shape[-1] >= 1


@pytest.mark.parametrize("name", NAMES)
def test_too_short_inputs_are_rejected(name: str) -> None:
    with pytest.raises(ParamError, match="input length 127 is too short.*at least 128 samples"):
        make(name, (10, 127))
    with pytest.raises(ParamError, match=r"needs \(channels, samples\) inputs"):
        make(name, (1, 8, 8))
    if name != "audio_tcn":  # the shortest input the stem takes: 80 + 16 * 3 samples -> one frame
        assert make(name, (2, 128)).eval()(torch.randn(2, 2, 128)).shape == (2, 5)


def test_tcn_limits_and_transformer_heads() -> None:
    with pytest.raises(ParamError, match="conv block 1 gets 1 frames"):
        make("audio_tcn", (2, 128))
    make("audio_tcn", (2, 512))  # 7 frames: conv, skip the pool, conv, conv
    with pytest.raises(ParamError, match="divisible by heads 7"):
        make("audio_transformer", heads=7)
    x = torch.randn(2, 3, 1600)
    plain, placed = make("audio_transformer").eval(), make("audio_transformer", positional=True).eval()
    with torch.inference_mode():  # same weights (same seed), a sinusoidal table added to the frames
        assert placed(x).shape == (2, 5) and not torch.allclose(plain(x), placed(x))


@pytest.mark.parametrize("name", NAMES)
def test_deeplift_friendly(name: str) -> None:
    modules = [m for _, m in make(name).named_modules(remove_duplicate=False)]
    assert len(modules) == len({id(m) for m in modules}), "a module instance is reused"
    assert not any(getattr(m, "inplace", False) for m in modules)


def test_lstm_is_deterministic_and_transformer_keeps_samples_apart() -> None:
    """The seed starts its LSTM from torch.randn and runs its encoder with batch_first=False on (N, T, d), so
    the batch mixes; here each sample's logits do not depend on the run or on its batch mates."""
    x = torch.randn(5, 3, 1600, generator=torch.Generator().manual_seed(0))
    for name in ("audio_lstm", "audio_transformer"):
        model = make(name).eval()
        with torch.inference_mode():
            batch, again, alone = model(x), model(x), model(x[:1])
        assert torch.equal(batch, again) and torch.allclose(batch[:1], alone, atol=1e-5)


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_in_eval_mode(name: str, method: str) -> None:
    model = make(name, seed=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain = METHODS.get(method).build(model, RunContext(device=CPU, seed=0), **METHOD_PARAMS[method])
    x = torch.randn(3, 3, 1600, generator=torch.Generator().manual_seed(2))
    attributions = explain(x, torch.tensor([0, 1, 4]))
    assert attributions.shape == x.shape and torch.isfinite(attributions).all()
    assert attributions.abs().sum() > 0
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_deeplift_sums_to_the_output_difference_on_the_conv_head() -> None:
    """DeepLIFT's summation-to-delta holds where every non-linearity is a hooked module (the TCN). The RNN /
    LSTM cells and the attention softmax run inside fused ops that captum cannot hook, so there DeepLift
    falls back to gradients and the sum misses f(x) - f(0) (checked when written: deltas ~0.01-1)."""
    model = make("audio_tcn", seed=1).eval().double()
    x = torch.randn(4, 3, 1600, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3])
    attributions = DeepLift(model).attribute(x, baselines=0.0, target=target)
    with torch.inference_mode():
        diff = (model(x) - model(torch.zeros_like(x)))[torch.arange(4), target]
    assert torch.allclose(attributions.flatten(1).sum(1), diff, atol=1e-8, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN RNN backward in eval mode)")
@pytest.mark.parametrize("name", ["audio_rnn", "audio_lstm"])
def test_recurrent_input_gradients_in_eval_mode_on_cuda(name: str) -> None:
    model = make(name).cuda().eval()
    x = torch.randn(2, 3, 1600, device="cuda", requires_grad=True)
    model(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.fixture(scope="module")
def words() -> DataBundle:
    with single_threaded(CPU):  # module fixtures start before the function-scoped one_thread
        return build_chaos_audio(0, condition="RBFP", channels=3, length=1600, n_train=800, n_test=200, words=5)


@pytest.mark.parametrize("name", NAMES)
def test_brief_training_beats_chance(words: DataBundle, name: str) -> None:
    """5 epochs on 800 waveforms of 5 words (chance 0.2) reached 0.78-0.91 test accuracy when written."""
    model = make(name, words.input_shape, words.num_classes)
    settings_ = {"epochs": 5, "batch_size": 64, "lr": 3e-3}
    report = train_model(model, words, settings_, 0, CPU, logging.getLogger("tests.audio"))
    assert report.test_score > 0.5, report
    assert not model.training
