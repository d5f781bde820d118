"""The singing-voice task of the loss-gradient study (arXiv 2207.07769): front end, synthetic and Jamendo
data, the seed's CNN, and frame-level evaluation (median filter, AUROC, threshold scores)."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from captum.attr import DeepLift
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.io import wavfile
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from harness.data.melspec import (
    BLOCKLEN,
    CENTRE,
    FLOOR,
    band_stats,
    centred_excerpts,
    frame_labels,
    log_mel,
    magnitude_spectrogram,
    mel_filterbank,
    normalise,
    random_excerpts,
)
from harness.data.singing import assemble, build_jamendo, build_singing_voice, read_audio, read_lab
from harness.data.singing_synth import SAMPLE_RATE, _phrases, synth_song, voice
from harness.metrics.frames import (
    THRESHOLDS,
    auroc,
    best_threshold,
    median_filter,
    median_window,
    threshold_scores,
)
from harness.models.mnist_cnn import SigmoidPair
from harness.models.spectrogram import build_spectrogram_cnn
from harness.models.training import build_model, train_model
from harness.specs import DATASETS, MODELS, DataBundle, ParamError, resolve_params

pytestmark = pytest.mark.usefixtures("one_thread")
PROPERTIES = settings(max_examples=60, deadline=None)
TINY = {"n_songs_train": 2, "n_songs_test": 2, "song_seconds": 4.0, "snr_db": 0.0, "train_excerpts": 64,
        "test_hop": 7}
TINY_CNN = {"channels": [4, 4, 4, 4], "hidden": [8, 8], "dropout": 0.0, "head": "auto"}


# ---- front end --------------------------------------------------------------------------------------------


def seed_filterbank(sample_rate: int, frame_len: int, bands: int, fmin: float, fmax: float) -> np.ndarray:
    """The seed's ``create_mel_filterbank`` as its plain loop (independent reference)."""
    bins = frame_len // 2 + 1
    out = np.zeros((bins, bands))
    min_mel, max_mel = 1127 * np.log1p(fmin / 700.0), 1127 * np.log1p(fmax / 700.0)
    peaks_mel = min_mel + np.arange(bands + 2) * (max_mel - min_mel) / (bands + 1)
    peaks_hz = 700 * (np.exp(peaks_mel / 1127) - 1)
    freqs = np.linspace(0, sample_rate / 2.0, bins)
    peaks_bin = np.searchsorted(freqs, peaks_hz)
    for b in range(bands):
        lh, _, rh = peaks_hz[b : b + 3]
        lb, tb, rb = peaks_bin[b : b + 3]
        for j in range(lb, tb):
            out[j, b] = (freqs[j] - lh) / (tb - lb)
        for j in range(tb, rb):
            out[j, b] = (rh - freqs[j]) / (rb - tb)
        if rb > lb:
            out[lb:rb, b] /= out[lb:rb, b].sum()
    return out


@pytest.mark.parametrize("args", [(22050, 1024, 80, 27.5, 8000.0), (16000, 512, 40, 50.0, 7000.0)])
def test_mel_filterbank_is_the_seeds(args: tuple[int, int, int, float, float]) -> None:
    bank = mel_filterbank(*args).numpy()
    np.testing.assert_allclose(bank, seed_filterbank(*args), rtol=1e-12, atol=1e-15)
    sums = bank.sum(axis=0)
    assert np.allclose(sums[sums > 0], 1.0) and (bank >= 0).all()


def test_magnitude_spectrogram_matches_a_numpy_framing() -> None:
    """The seed's ``audio.spectrogram``: symmetric Hann (np.hanning), hop 315, no centring."""
    samples = np.random.default_rng(0).standard_normal(5000)
    frames = (len(samples) - 1024) // 315 + 1
    ref = np.stack([np.abs(np.fft.rfft(samples[i * 315 : i * 315 + 1024] * np.hanning(1024)))
                    for i in range(frames)])
    got = magnitude_spectrogram(torch.from_numpy(samples))
    assert got.shape == (frames, 513)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-9)
    assert magnitude_spectrogram(torch.zeros(1000)).shape == (0, 513)


def test_log_mel_floor_and_shape() -> None:
    spect = log_mel(torch.zeros(SAMPLE_RATE))
    assert spect.shape == ((SAMPLE_RATE - 1024) // 315 + 1, 80) and spect.dtype == torch.float32
    assert torch.allclose(spect, torch.full_like(spect, float(np.log(FLOOR))))


def test_frame_labels_follow_the_seeds_alignment() -> None:
    segments = [(0.0, 0.1, False), (0.1, 0.35, True), (0.35, 0.5, False), (0.2, 0.25, False)]
    got = frame_labels(segments, 40, fps=70)
    expect = []
    for i in range(40):  # plain loop: the last segment covering i / fps wins
        label = 0
        for start, end, sing in segments:
            if start <= i / 70 < end:
                label = int(sing)
        expect.append(label)
    assert got.tolist() == expect


def test_centred_excerpts_pad_and_centre() -> None:
    spect = torch.arange(20.0).reshape(10, 2)
    labels = torch.arange(10) % 2
    x, y = centred_excerpts(spect, labels, 3, torch.tensor([-1.0, -2.0]))
    assert x.shape == (4, 1, BLOCKLEN, 2) and y.tolist() == [0, 1, 0, 1]
    for n, c in enumerate([0, 3, 6, 9]):
        rows = x[n, 0]
        assert torch.equal(rows[CENTRE], spect[c])
        assert torch.equal(rows[CENTRE - c : CENTRE - c + 10], spect)
        assert (rows[: CENTRE - c] == torch.tensor([-1.0, -2.0])).all()
        assert (rows[CENTRE - c + 10 :] == torch.tensor([-1.0, -2.0])).all()


def test_random_excerpts_are_windows_labelled_by_their_centre() -> None:
    spects = [torch.randn(130, 3), torch.randn(200, 3), torch.randn(50, 3)]  # the last is too short
    labels = [torch.randint(0, 2, (len(s),)) for s in spects]
    x, y = random_excerpts(spects, labels, 40, np.random.default_rng(0))
    assert x.shape == (40, 1, BLOCKLEN, 3)
    windows = [(s[i : i + BLOCKLEN], lab[i + CENTRE]) for s, lab in zip(spects, labels)
               for i in range(len(s) - BLOCKLEN + 1)]
    for excerpt, label in zip(x[:, 0], y):
        assert any(torch.equal(excerpt, w) and int(label) == int(lw) for w, lw in windows)
    assert len({tuple(e.flatten()[:3].tolist()) for e in x[:, 0]}) == 40  # without replacement


# ---- synthetic data ---------------------------------------------------------------------------------------


def tiny(seed: int = 0, **given_params: object) -> DataBundle:
    spec = DATASETS.get("singing_voice")
    params = resolve_params("dataset singing_voice", {**TINY, **given_params}, spec.defaults)
    return spec.build(seed, **params)


def test_synthetic_build_shapes_groups_and_determinism() -> None:
    bundle, again, other = tiny(3), tiny(3), tiny(4)
    frames = (int(4.0 * SAMPLE_RATE) - 1024) // 315 + 1
    per_song = len(range(0, frames, 7))
    assert bundle.x_train.shape == (64, 1, 115, 80) and bundle.x_test.shape == (2 * per_song, 1, 115, 80)
    assert bundle.x_train.dtype == torch.float32 and bundle.y_train.dtype == torch.int64
    assert bundle.num_classes == 2 and set(bundle.y_test.tolist()) <= {0, 1}
    assert bundle.groups_test.tolist() == [0] * per_song + [1] * per_song
    assert all(torch.equal(a, b) for a, b in zip(bundle.arrays().values(), again.arrays().values()))
    assert not torch.equal(bundle.x_test, other.x_test)
    # test songs do not depend on the number of training songs
    assert torch.equal(tiny(3, n_songs_train=3).y_test, bundle.y_test)


def test_voice_sounds_exactly_inside_its_labelled_segments() -> None:
    rng = np.random.default_rng(7)
    n = int(10.0 * SAMPLE_RATE)
    spans = _phrases(np.random.default_rng(1), 10.0)
    phrases = [(int(a * SAMPLE_RATE), min(n, int(b * SAMPLE_RATE))) for a, b in spans]
    sung = voice(rng, n, phrases, 0.5, 50, np.array([0, 2, 4, 5, 7, 9, 11]))
    inside = np.zeros(n, dtype=bool)
    for a, b in phrases:
        inside[a:b] = True
    assert not sung[~inside].any()
    power = np.convolve(sung.astype(np.float64) ** 2, np.ones(2205), "same")  # 0.1 s windows
    assert (power[inside][2205:-2205] > 0).all() and len(spans) >= 1


def test_voice_frames_carry_more_energy_in_the_formant_bands() -> None:
    """Frames labelled voice are louder between 250 Hz and 3.5 kHz (where the formants lie) than the rest,
    and more so the louder the voice is mixed."""
    freqs = 700 * (np.exp(np.linspace(1127 * np.log1p(27.5 / 700), 1127 * np.log1p(8000 / 700), 82)[1:-1]
                          / 1127) - 1)
    band = torch.from_numpy((freqs > 250) & (freqs < 3500))

    def gap(seed: int, snr_db: float) -> float:
        audio, segments = synth_song(np.random.default_rng(seed), 12.0, snr_db)
        spect = log_mel(torch.from_numpy(audio))
        labels = frame_labels(segments, len(spect)).bool()
        energy = spect[:, band].exp().mean(dim=1).log()  # log mean band energy per frame
        return float(energy[labels].mean() - energy[~labels].mean())

    gaps = [gap(seed, 0.0) for seed in range(3)]
    assert min(gaps) > 0.15, gaps
    assert gap(0, -10.0) < gaps[0] < gap(0, 10.0)


def test_a_tiny_cnn_learns_the_synthetic_task() -> None:
    """Two tiny CNNs (4 channels) trained for 3 epochs on 384 excerpts of 4 songs detect the voice in 2 unseen
    songs well above chance (tiny models vary from seed to seed, hence two)."""
    bundle = tiny(0, n_songs_train=4, song_seconds=10.0, snr_db=6.0, train_excerpts=384, test_hop=8)
    scores = []
    for seed in range(2):
        model = build_model(MODELS.get("spectrogram_cnn"), TINY_CNN, bundle.input_shape, 2, seed)
        train_model(model, bundle, {"epochs": 3, "batch_size": 32, "lr": 2e-3}, seed, torch.device("cpu"),
                    logging.getLogger("tests.singing"))
        with torch.inference_mode():
            scores.append(float(auroc(model(bundle.x_test).softmax(dim=1)[:, 1], bundle.y_test)))
    assert min(scores) > 0.6 and sum(scores) / 2 > 0.75, scores


def test_normalisation_uses_the_training_songs_only() -> None:
    gen = torch.Generator().manual_seed(0)
    train = [(torch.randn(300, 4, generator=gen) * 2 + 5, torch.zeros(300, dtype=torch.int64))]
    test = [(torch.randn(150, 4, generator=gen) + 100, torch.ones(150, dtype=torch.int64))]
    bundle = assemble(train, test, train_excerpts=50, test_hop=10, rng=np.random.default_rng(0))
    frames = train[0][0].double()
    mean, std = frames.mean(dim=0), frames.std(dim=0)
    expect = ((test[0][0].double() - mean) / std).float()
    assert torch.allclose(bundle.x_test[3, 0, CENTRE], expect[30], atol=1e-5)
    pad = ((np.log(FLOOR) - mean) / std).float()
    assert torch.allclose(bundle.x_test[0, 0, 0], pad, atol=1e-5)
    assert torch.equal(bundle.groups_test, torch.zeros(15, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least 2 frames"):
        band_stats([torch.zeros(1, 4)])


def test_bad_parameters_name_the_value() -> None:
    with pytest.raises(ParamError, match="test_hop"):
        build_singing_voice(0, **{**TINY, "test_hop": 0})
    with pytest.raises(ParamError, match="song_seconds"):
        build_singing_voice(0, **{**TINY, "song_seconds": 1.0})
    with pytest.raises(ParamError, match="choices: 'test', 'valid'"):
        build_jamendo(0, data_root="x", train_excerpts=10, test_hop=1, test_split="train")


# ---- Jamendo loader ---------------------------------------------------------------------------------------


def fake_jamendo(root: Path) -> dict[str, tuple[np.ndarray, list[tuple[float, float, bool]]]]:
    """Two short songs (an int16 16 kHz mono and a float32 22.05 kHz stereo WAV) with .lab files."""
    folder = root / "jamendo"
    for sub in ("audio", "labels", "filelists"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    t16, t22 = np.arange(3 * 16000) / 16000, np.arange(int(2.5 * SAMPLE_RATE)) / SAMPLE_RATE
    song_a = (8000 * np.sin(2 * np.pi * 440 * t16) * (t16 > 1.0)).astype(np.int16)
    song_b = (0.3 * rng.standard_normal((len(t22), 2))).astype(np.float32)
    wavfile.write(folder / "audio" / "a song.wav", 16000, song_a)
    wavfile.write(folder / "audio" / "b.wav", SAMPLE_RATE, song_b)
    labs = {"a song": [(0.0, 1.0, False), (1.0, 3.0, True)], "b": [(0.0, 0.8, True), (0.8, 2.5, False)]}
    for name, segments in labs.items():
        lines = [f"{a} {b} {'sing' if s else 'nosing'}" for a, b, s in segments]
        (folder / "labels" / f"{name}.lab").write_text("\n".join(lines) + "\n\n")
    (folder / "filelists" / "train").write_text("a song.wav\n")
    (folder / "filelists" / "valid").write_text("b.wav\n")
    (folder / "filelists" / "test").write_text("\nb.wav\n")
    return {"a song": (song_a, labs["a song"]), "b": (song_b, labs["b"])}


def test_jamendo_reads_a_local_folder(tmp_path: Path) -> None:
    songs = fake_jamendo(tmp_path)
    bundle = build_jamendo(0, data_root=str(tmp_path), train_excerpts=20, test_hop=4, test_split="test")
    test_frames = (int(2.5 * SAMPLE_RATE) - 1024) // 315 + 1
    centres = list(range(0, test_frames, 4))
    assert bundle.x_train.shape == (20, 1, 115, 80) and bundle.x_test.shape == (len(centres), 1, 115, 80)
    assert bundle.groups_test.tolist() == [0] * len(centres) and bundle.num_classes == 2
    assert bundle.y_test.tolist() == [int(c / 70 < 0.8) for c in centres]  # "0.0 0.8 sing" first
    # the training song is sung from 1 s on (frame 70): its excerpts' labels say so at their centres
    audio = tmp_path / "jamendo" / "audio"
    song_a, song_b = read_audio(audio / "a song.wav"), read_audio(audio / "b.wav")
    assert len(song_a) == 3 * SAMPLE_RATE  # resampled from 16 kHz
    assert torch.allclose(song_b, torch.from_numpy(songs["b"][0].mean(axis=1)))  # channels averaged
    spect_a = log_mel(song_a)
    labels_a = frame_labels(read_lab(tmp_path / "jamendo" / "labels" / "a song.lab"), len(spect_a))
    mean, std = band_stats([spect_a])
    windows = normalise(spect_a, mean, std).unfold(0, BLOCKLEN, 1).transpose(1, 2)
    for x, y in zip(bundle.x_train[:, 0], bundle.y_train):
        start = int((windows - x).abs().flatten(1).amax(dim=1).argmin())
        assert torch.allclose(windows[start], x, atol=1e-5) and int(y) == int(labels_a[start + CENTRE])
    # statistics of the training song only, applied to the test song
    expect = normalise(log_mel(song_b), mean, std)[centres]
    assert torch.allclose(bundle.x_test[:, 0, CENTRE], expect, atol=1e-4)
    valid = build_jamendo(0, data_root=str(tmp_path), train_excerpts=20, test_hop=4, test_split="valid")
    assert torch.equal(valid.x_test, bundle.x_test)


def test_jamendo_missing_folder_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"jamendo.*2585988"):
        build_jamendo(0, data_root=str(tmp_path), train_excerpts=10, test_hop=1, test_split="test")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "jamendo" / "audio")):
        build_jamendo(0, data_root=str(tmp_path), train_excerpts=10, test_hop=1, test_split="test")
    with pytest.raises(FileNotFoundError, match="zenodo"):
        build_jamendo(0, data_root="", train_excerpts=10, test_hop=1, test_split="test")


def test_lab_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.lab"
    path.write_text("0.0 1.5 sing\n1.5 2.0 nosing\n")
    assert read_lab(path) == [(0.0, 1.5, True), (1.5, 2.0, False)]
    path.write_text("0.0 1.5 singing\n")
    with pytest.raises(ValueError, match="x.lab:1"):
        read_lab(path)


def test_registered_specs() -> None:
    assert DATASETS.get("singing_voice").modality == DATASETS.get("jamendo").modality == "image"
    assert MODELS.get("spectrogram_cnn").modalities == frozenset({"image"})


# ---- model ------------------------------------------------------------------------------------------------


def test_seed_architecture_at_the_seed_input() -> None:
    model = build_spectrogram_cnn((1, 115, 80), 2, channels=[64, 32, 128, 64], hidden=[256, 64], dropout=0.5,
                                  head="auto")
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 32, 128, 64]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(64 * 11 * 7, 256), (256, 64), (64, 1)]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model) == 3
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in model) == 6
    assert isinstance(model[-1], SigmoidPair) and not any(isinstance(m, torch.nn.ZeroPad2d) for m in model)
    weight = convs[1].weight.flatten(1)  # orthogonal rows (32 x 576)
    assert torch.allclose(weight @ weight.T, torch.eye(32), atol=1e-5)
    modules = list(model.modules())
    assert len(modules) == len({id(m) for m in modules})
    assert not any(getattr(m, "inplace", False) for m in modules)


def test_sigmoid_head_is_bce_and_softmax_equals_sigmoid() -> None:
    z = torch.randn(16, 1, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    logits = SigmoidPair()(z)
    assert torch.allclose(logits.softmax(dim=1)[:, 1], torch.sigmoid(z[:, 0]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.double())
    assert torch.allclose(torch.nn.functional.cross_entropy(logits, y), bce)


def test_heads_padding_and_errors() -> None:
    assert build_spectrogram_cnn((1, 115, 80), 5, **TINY_CNN)[-1].out_features == 5
    softmax = build_spectrogram_cnn((1, 115, 80), 2, **{**TINY_CNN, "head": "softmax"})
    assert softmax[-1].out_features == 2
    small = build_spectrogram_cnn((2, 8, 30), 2, **TINY_CNN).eval()
    assert isinstance(small[0], torch.nn.ZeroPad2d) and small(torch.randn(3, 2, 8, 30)).shape == (3, 2)
    with pytest.raises(ParamError, match="needs 2 classes"):
        build_spectrogram_cnn((1, 115, 80), 3, **{**TINY_CNN, "head": "sigmoid"})
    with pytest.raises(ParamError, match="choices"):
        build_spectrogram_cnn((1, 115, 80), 2, **{**TINY_CNN, "head": "tanh"})
    with pytest.raises(ParamError, match="4 positive conv widths"):
        build_spectrogram_cnn((1, 115, 80), 2, **{**TINY_CNN, "channels": [4, 4]})


def test_deeplift_runs_through_the_binary_head() -> None:
    model = build_spectrogram_cnn((1, 115, 80), 2, **TINY_CNN).eval()
    x = torch.randn(3, 1, 115, 80, generator=torch.Generator().manual_seed(0))
    attr = DeepLift(model).attribute(x, baselines=0.0, target=torch.tensor([1, 1, 0]))
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    assert attr[2].abs().sum() == 0  # the constant logit 0 has no attribution


# ---- frame evaluation -------------------------------------------------------------------------------------


def test_median_window_follows_the_seed() -> None:
    assert [median_window(h) for h in (1, 5, 6, 10, 56, 200)] == [56, 11, 9, 6, 1, 1]
    with pytest.raises(ValueError, match="at least 1"):
        median_window(0)


@PROPERTIES
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=5), frames=st.integers(1, 12),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_median_filter_is_scipys_per_group(lengths: list[int], frames: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, sum(lengths)).astype(float) if ties else rng.random(sum(lengths))
    groups = np.repeat(rng.permutation(len(lengths)), lengths)  # ids in any order, contiguous runs
    got = median_filter(torch.from_numpy(scores), torch.from_numpy(groups), frames).numpy()
    edges = np.cumsum([0, *lengths])
    expect = np.concatenate([scipy.ndimage.median_filter(scores[a:b], frames, mode="nearest")
                             for a, b in itertools.pairwise(edges)])
    np.testing.assert_array_equal(got, expect)


def test_median_filter_batches_and_checks_groups() -> None:
    scores = torch.rand(3, 20, generator=torch.Generator().manual_seed(0))
    groups = torch.tensor([0] * 8 + [1] * 12)
    batched = median_filter(scores, groups, 5)
    for row in range(3):
        assert torch.equal(batched[row], median_filter(scores[row], groups, 5))
    with pytest.raises(ValueError, match="contiguous"):
        median_filter(scores[0], torch.tensor([0, 1] * 10), 3)


@PROPERTIES
@given(n=st.integers(2, 60), seed=st.integers(0, 2**16), levels=st.sampled_from([2, 5, 1000]))
def test_auroc_matches_sklearn_with_ties(n: int, seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.integers(0, levels, n).astype(float)
    got = float(auroc(torch.from_numpy(scores), torch.from_numpy(labels)))
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@PROPERTIES
@given(scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=40),
       seed=st.integers(0, 2**16))
def test_auroc_bounds_and_sign_symmetry(scores: list[float], seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 2, len(scores))
    labels[:2] = [1, 0]
    s, y = torch.tensor(scores, dtype=torch.float64), torch.from_numpy(labels)
    value = float(auroc(s, y))
    assert 0.0 <= value <= 1.0
    assert float(auroc(-s, y)) == pytest.approx(1.0 - value, abs=1e-12)


def test_auroc_batches_hand_cases_and_one_class() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5],
                           [0.1, 0.3, 0.2, 0.4]])
    assert auroc(scores, labels).tolist() == [1.0, 0.0, 0.5, 0.75]
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.rand(5), torch.ones(5))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.99, 2.0])
def test_threshold_scores_match_sklearn(threshold: float) -> None:
    rng = np.random.default_rng(1)
    scores, labels = rng.random(200), rng.integers(0, 2, 200)
    got = threshold_scores(torch.from_numpy(scores), torch.from_numpy(labels), threshold)
    predicted = scores > threshold
    p, r, f, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    spec = ((~predicted) & (labels == 0)).sum() / (labels == 0).sum()
    expect = {"precision": p, "recall": r, "f1": f, "specificity": spec,
              "accuracy": accuracy_score(labels, predicted)}
    for name, value in expect.items():
        assert float(got[name]) == pytest.approx(value, abs=1e-12), name


def test_best_threshold_is_the_seeds_grid_search() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    accuracies = [((scores > t) == labels).mean() for t in THRESHOLDS]
    expect = THRESHOLDS[int(np.argmax(accuracies))]
    assert best_threshold(torch.from_numpy(scores), torch.from_numpy(labels)) == expect
