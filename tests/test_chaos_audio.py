"""chaos_audio: the ChaosMining audio conditions (arXiv 2406.12150; seed create_audio_data.py)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.io import wavfile
from scipy.signal import stft
from sklearn.linear_model import LogisticRegression
from torchaudio.functional import resample

import harness.data  # noqa: F401  (registers the datasets)
from harness.data import chaos_audio
from harness.data.chaos_audio import (
    CONDITIONS,
    MAX_WORDS,
    POOL,
    SPEECH_COMMANDS_WORDS,
    ambient_pool,
    read_recording,
    structured_background,
    synth_words,
    vocabulary,
)
from harness.specs import DATASETS, DataBundle, ParamError, resolve_params

SMALL = {"channels": 4, "length": 2000, "n_train": 48, "n_test": 32}
pytestmark = pytest.mark.usefixtures("one_thread")


def build(seed: int = 0, **given_params: object) -> DataBundle:
    spec = DATASETS.get("chaos_audio")
    params = resolve_params("dataset chaos_audio", {**SMALL, **given_params}, spec.defaults, spec.choices)
    return spec.build(seed, **params)


def background(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, channels - 1, T): every channel but the word's."""
    return x[~mask[..., 0]].view(len(x), x.shape[1] - 1, x.shape[2])


def neighbour_correlation(x: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1])


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_builds(condition: str) -> None:
    bundle = build(1, condition=condition)
    assert bundle.x_train.shape == (48, 4, 2000) and bundle.x_test.shape == (32, 4, 2000)
    assert bundle.x_train.dtype == bundle.x_test.dtype == torch.float32
    assert bundle.y_train.dtype == bundle.y_test.dtype == torch.int64
    for x in (bundle.x_train, bundle.x_test):
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert bundle.num_classes == 10 and 0 <= int(bundle.y_test.min()) and int(bundle.y_test.max()) < 10
    assert bundle.mask_test.dtype == torch.bool and bundle.mask_test.shape == (32, 4, 1)
    assert (bundle.mask_test.sum(dim=(1, 2)) == 1).all(), "exactly one foreground channel per sample"
    assert DATASETS.get("chaos_audio").modality == "audio" and DATASETS.get("chaos_audio").has_mask


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), condition=st.sampled_from(CONDITIONS), channels=st.integers(2, 5),
       length=st.integers(400, 1500))
def test_the_word_channel_is_the_word_alone_zero_padded(
    seed: int, condition: str, channels: int, length: int
) -> None:
    """The seed overwrites the word's channel (``sample[:, pos] = fg``): no background there, exact zeros
    around the word (it lasts 45-75 % of the clip); every other channel is background, never exactly 0."""
    bundle = build(seed, condition=condition, channels=channels, length=length, n_train=2, n_test=24)
    x, mask = bundle.x_test, bundle.mask_test
    word = x[mask[..., 0]]  # (n, T)
    zeros = (word == 0).float().mean(dim=1)
    assert ((zeros >= 0.3) & (zeros <= 0.7)).all(), "silence: before, between (15 % of each slot), after"
    assert (background(x, mask) != 0).float().mean() > 0.999
    found = (x == 0).float().mean(dim=2) > 0.2  # the channel with the padding is the masked one
    assert torch.equal(found, mask[..., 0])


def test_fixed_position_is_channel_0_and_random_positions_vary() -> None:
    assert build(2, condition="SBFP").mask_test[:, 0, 0].all()
    positions = build(2, condition="RBRP", n_test=300).mask_test[..., 0].int().argmax(dim=1)
    counts = torch.bincount(positions, minlength=4)
    assert (counts > 40).all(), f"RP draws every channel about equally often: {counts.tolist()}"


def test_word_channel_is_exactly_the_synthesised_word() -> None:
    """Independent replay: the test stream is the second child of Generator(seed); labels, then the words."""
    bundle = build(3, condition="RBRP", words=7)
    rng = np.random.default_rng(3).spawn(2)[1]
    labels = rng.integers(0, 7, 32)
    words = synth_words(rng, labels, vocabulary(7), length=2000, sample_rate=16000)
    assert np.array_equal(labels, bundle.y_test.numpy())
    assert torch.equal(bundle.x_test[bundle.mask_test[..., 0]], torch.from_numpy(words))


def test_random_background_is_clipped_quarter_gaussian() -> None:
    """RB = clip(0.25 N(0, 1), -1, 1) (the seed's ``np.clip(np.random.normal(0, 1, ...) * 0.25, -1, 1)``)."""
    bundle = build(4, condition="RBRP", n_test=64)
    noise = background(bundle.x_test, bundle.mask_test).flatten().double()
    assert abs(float(noise.mean())) < 0.003 and abs(float(noise.std()) - 0.25) < 0.003
    assert float(noise.abs().max()) <= 1.0
    assert stats.kstest(noise[:20000].numpy(), "norm", args=(0, 0.25)).pvalue > 1e-3
    assert abs(neighbour_correlation(background(bundle.x_test, bundle.mask_test))) < 0.02, "white"


def test_ambient_recordings_are_scaled_by_their_99th_percentile() -> None:
    pool = ambient_pool(np.random.default_rng(0), 6, 8000, 16000)
    assert pool.shape == (6, 8000) and pool.dtype == np.float32
    assert np.allclose(np.quantile(np.abs(pool), 0.99, axis=1), 1.0, atol=1e-3)
    crops = structured_background(np.random.default_rng(0), 20, 3, 2000, 16000)
    assert crops.shape == (20, 3, 2000) and np.abs(crops).max() <= 1.0
    assert 0.001 < np.mean(np.abs(crops) == 1.0) < 0.05, "about 1 % of the samples clip at +-1"


def test_structured_background_is_structured() -> None:
    bundle = build(5, condition="SBRP")
    sb = background(bundle.x_test, bundle.mask_test)
    assert neighbour_correlation(sb) > 0.3, "coloured, not white"
    envelope = sb.abs().unfold(2, 200, 200).mean(dim=3)  # (n, c, 10): slow swells and drops vary the level
    assert float((envelope.std(dim=2) / envelope.mean(dim=2)).mean()) > 0.05


def windows(x: torch.Tensor, width: int = 16) -> dict[bytes, int]:
    """Every ``width``-sample window of each row of (rows, T) -> the row it came from."""
    rows = x.unfold(1, width, 1).contiguous().numpy()
    return {w.tobytes(): r for r in range(len(rows)) for w in rows[r]}


def test_train_and_test_backgrounds_come_from_different_recordings() -> None:
    """The seed crops train backgrounds from rfcx's train folder and test ones from its test folder."""
    bundle = build(6, condition="SBFP", n_train=40, n_test=40)
    train_rows, test_rows = bundle.x_train[:, 1:].flatten(0, 1), bundle.x_test[:, 1:].flatten(0, 1)
    train = windows(train_rows)
    probes = [(r, w.tobytes()) for r, row in enumerate(test_rows.unfold(1, 16, 97).numpy()) for w in row]
    assert not any(w in train for _, w in probes), "no test crop overlaps a training crop"
    probes = [(r, w.tobytes()) for r, row in enumerate(train_rows.unfold(1, 16, 97).numpy()) for w in row]
    assert any(w in train and train[w] != r for r, w in probes), (
        f"training crops share the {POOL} training recordings, so some overlap: the probe can see overlaps"
    )


def test_deterministic_and_test_set_independent_of_n_train() -> None:
    first, again, other = (build(seed, condition="SBRP").arrays() for seed in (7, 7, 8))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["x_test"], other["x_test"])
    bigger = build(7, condition="SBRP", n_train=60).arrays()
    assert all(torch.equal(first[k], bigger[k]) for k in ("x_test", "y_test", "mask_test"))


def test_vocabulary_is_fixed_and_distinct() -> None:
    full, ten = vocabulary(MAX_WORDS), vocabulary(10)
    assert np.array_equal(full.contour[:10], ten.contour) and np.array_equal(full.weight[:10], ten.weight)
    rows = zip(full.contour, full.level, full.weight, strict=True)
    keys = {(tuple(c[w > 0]), tuple(lv[w > 0])) for c, lv, w in rows}
    assert len(keys) == MAX_WORDS and set((full.weight > 0).sum(axis=1)) <= {2, 3}


def spectral_features(x: torch.Tensor) -> np.ndarray:
    """Log-magnitude STFT of the word channel, averaged over 8 time slices."""
    _, _, z = stft(x[:, 0].numpy(), nperseg=128)
    s = np.log1p(np.abs(z))
    return np.stack([part.mean(axis=2) for part in np.array_split(s, 8, axis=2)], axis=2).reshape(len(x), -1)


def test_words_are_learnable_but_not_trivial() -> None:
    """A linear model on spectral features separates the 10 words well above chance but not perfectly."""
    bundle = build(9, channels=1, length=4000, n_train=600, n_test=300)
    clf = LogisticRegression(max_iter=500).fit(spectral_features(bundle.x_train), bundle.y_train.numpy())
    score = clf.score(spectral_features(bundle.x_test), bundle.y_test.numpy())
    assert 0.5 < score < 0.99, score
    assert np.bincount(bundle.y_train.numpy(), minlength=10).min() > 30


@pytest.mark.parametrize(
    ("given_params", "match"),
    [({"condition": "XXFP"}, "'condition'.*choices: 'RBFP'"),
     ({"source": "librispeech"}, "'source'.*speech_commands"),
     ({"background": "rfcx"}, "'background'.*'synthetic'"), ({"words": 1}, "'words' = 1 must be in 2..35"),
     ({"words": 36}, "'words' = 36"), ({"channels": 0}, "channels=0"), ({"length": 8}, "length=8"),
     ({"n_test": 0}, "n_test=0"), ({"sample_rate": 500}, "sample_rate = 500")],
)
def test_bad_parameters_are_rejected(given_params: dict[str, object], match: str) -> None:
    spec = DATASETS.get("chaos_audio")
    with pytest.raises(ParamError, match=match):
        spec.build(0, **{**spec.defaults, **SMALL, **given_params})


def test_speech_commands_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("torchaudio")
    folder = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    with pytest.raises(FileNotFoundError, match=f"{folder}.*Nothing is downloaded"):
        build(0, source="speech_commands", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_root=''"):
        build(0, source="speech_commands")


def test_speech_commands_without_torchaudio_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    monkeypatch.setitem(sys.modules, "torchaudio.datasets", None)
    with pytest.raises(ImportError, match=r"xaiharness\[audio\]"):
        build(0, source="speech_commands", data_root="/nowhere")


def fake_speech_commands(root: Path) -> None:
    """A tiny Speech Commands v0.02 tree: training clips quiet (< 0.1), validation clips loud (0.5)."""
    folder = root / "SpeechCommands" / "speech_commands_v0.02"
    validation = []
    for word in ("yes", "no", "zero"):
        (folder / word).mkdir(parents=True)
        for i in range(4):
            loud = i == 3
            level = 0.5 if loud else 0.05 * (i + 1) / 4
            samples = np.full(12000 if word == "no" else 16000, int(level * 32767), dtype=np.int16)
            wavfile.write(folder / word / f"spk{i}_nohash_0.wav", 16000, samples)
            if loud:
                validation.append(f"{word}/spk{i}_nohash_0.wav")
    (folder / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (folder / "testing_list.txt").write_text("")


def test_speech_commands_are_read_from_data_root(tmp_path: Path) -> None:
    pytest.importorskip("torchaudio")
    fake_speech_commands(tmp_path)
    bundle = build(0, source="speech_commands", data_root=str(tmp_path), length=20000, n_train=9, n_test=6)
    assert bundle.num_classes == 35 and bundle.x_test.shape == (6, 4, 20000)
    words = {SPEECH_COMMANDS_WORDS.index(w) for w in ("yes", "no", "zero")}
    assert set(bundle.y_train.tolist()) == words and set(bundle.y_test.tolist()) == words
    train, test = bundle.x_train[:, 0], bundle.x_test[:, 0]  # RBFP: the word in channel 0
    assert float(train.abs().max()) < 0.04, "training clips come from the training subset"
    no = bundle.y_test == SPEECH_COMMANDS_WORDS.index("no")
    assert torch.allclose(test[:, :12000], torch.tensor(0.5), atol=1e-3), "test clips: the validation subset"
    assert torch.allclose(test[~no, 12000:16000], torch.tensor(0.5), atol=1e-3)
    assert (test[no, 12000:] == 0).all() and (test[:, 16000:] == 0).all(), "zero-padded to length"
    resampled = build(0, source="speech_commands", data_root=str(tmp_path), length=20000, n_train=9, n_test=6,
                      sample_rate=8000)
    half = resampled.x_test[:, 0]  # 16 kHz -> 8 kHz: clips of 8,000 (no: 6,000) samples
    assert (half[:, 8000:] == 0).all() and (half[:, 1000:5900].abs() > 0.4).all()


def test_synthetic_vocabulary_is_as_large_as_speech_commands() -> None:
    """The speed of building is measured in benchmarks/test_data_speed.py; here the word counts agree."""
    assert len(SPEECH_COMMANDS_WORDS) == MAX_WORDS == 35


def one_signed(samples: int, rate: int, sign: float, seed: int) -> np.ndarray:
    """sign * (0.5 + 0.25 sin(2 pi 440 t) + 0.1 U[0, 1)): distinct samples, all of one sign (|x| in [0.25, 0.85])."""
    t = np.arange(samples) / rate
    return sign * (0.5 + 0.25 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.random.default_rng(seed).random(samples))


def write_ambient(root: Path) -> None:
    """Train recordings positive, test recordings negative; int16 / int32 / uint8 / float32, one at 8 kHz, one
    stereo (second channel of the other sign), one shorter than a crop (2,000 samples); a non-WAV file."""
    train, test = root / "ambient" / "train", root / "ambient" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    wavfile.write(train / "a_int16.wav", 16000, (one_signed(5000, 16000, 1, 0) * 32768).astype(np.int16))
    stereo = np.stack([one_signed(6000, 16000, 1, 1), one_signed(6000, 16000, -1, 2)], axis=1)
    wavfile.write(train / "b_stereo.wav", 16000, stereo.astype(np.float32))
    wavfile.write(train / "c_8khz.wav", 8000, (one_signed(3000, 8000, 1, 3) * 32768).astype(np.int16))
    wavfile.write(train / "d_short.wav", 16000, one_signed(1200, 16000, 1, 4).astype(np.float32))
    (train / "notes.txt").write_text("not a recording")
    wavfile.write(test / "e_float.wav", 16000, one_signed(7000, 16000, -1, 5).astype(np.float32))
    wavfile.write(test / "f_int32.wav", 16000, (one_signed(4000, 16000, -1, 6) * 2**31).astype(np.int32))
    wavfile.write(test / "g_uint8.wav", 16000, (128 + one_signed(4500, 16000, -1, 7) * 128).astype(np.uint8))


def reference(path: Path, keep: int | None = None) -> np.ndarray:
    """The seed's rule in plain numpy: first channel at 16 kHz, divided by the 99th percentile of the whole
    |recording|, clipped to [-1, 1]; the first ``keep`` samples."""
    rate, raw = wavfile.read(path)
    wave = (raw if raw.ndim == 1 else raw[:, 0]).astype(np.float64) - (128.0 if raw.dtype == np.uint8 else 0.0)
    if rate != 16000:
        wave = resample(torch.from_numpy(wave), rate, 16000).numpy()
    return np.clip(wave / np.quantile(np.abs(wave), 0.99), -1.0, 1.0)[:keep]


def source_of(crops: torch.Tensor, recordings: list[np.ndarray]) -> list[int]:
    """For each crop (rows of (m, T)) the recording it is a circular window of (a recording shorter than the
    pool is tiled); fails if a crop is a window of none."""
    crops_np, length = crops.double().numpy(), crops.shape[1]
    best = np.full(len(crops_np), np.inf)
    found = np.full(len(crops_np), -1)
    for index, ref in enumerate(recordings):
        windows = np.lib.stride_tricks.sliding_window_view(np.resize(ref, len(ref) + length - 1), length)
        distance = ((windows[None, :, :16] - crops_np[:, None, :16]) ** 2).sum(axis=2)  # match on 16 samples
        start = distance.argmin(axis=1)
        close = np.array([np.allclose(windows[s], c, atol=1e-5) for s, c in zip(start, crops_np, strict=True)])
        better = close & (distance[np.arange(len(crops_np)), start] < best)
        best[better], found[better] = distance[better, start[better]], index
    assert (found >= 0).all(), f"{int((found < 0).sum())} crops are no window of any recording"
    return found.tolist()


def test_read_recording_normalises_every_sample_type(tmp_path: Path) -> None:
    write_ambient(tmp_path)
    train, test = tmp_path / "ambient" / "train", tmp_path / "ambient" / "test"
    for path, seed, sign, step in ((train / "a_int16.wav", 0, 1, 2**-15), (test / "f_int32.wav", 6, -1, 2**-31),
                                   (test / "g_uint8.wav", 7, -1, 2**-7)):  # written at full scale, truncated
        wave = read_recording(path, 16000)
        assert wave.dtype == np.float32 and -1.0 <= wave.min() and wave.max() <= 1.0
        assert np.abs(wave - one_signed(len(wave), 16000, sign, seed)).max() <= step + 1e-7, path.name
    stereo = read_recording(train / "b_stereo.wav", 16000)
    assert np.allclose(stereo, one_signed(6000, 16000, 1, 1), atol=1e-7), "the first channel"
    resampled = read_recording(train / "c_8khz.wav", 16000)
    assert len(resampled) == 6000 and len(read_recording(train / "c_8khz.wav", 8000)) == 3000
    wavfile.write(tmp_path / "wide.wav", 16000, np.arange(100, dtype=np.int64))
    with pytest.raises(ParamError, match=r"wide\.wav.*int64.*valid: uint8, int16"):
        read_recording(tmp_path / "wide.wav", 16000)


@pytest.mark.parametrize("condition", ["SBFP", "SBRP"])
def test_recordings_are_the_background_scaled_and_clipped(tmp_path: Path, condition: str) -> None:
    """Every background channel is a crop of one recording of its split's folder, scaled by the 99th
    percentile of the whole recording and clipped (compared with plain numpy); every recording is used:
    the stereo file by its first channel, the 8 kHz one resampled, the short one tiled."""
    write_ambient(tmp_path)
    bundle = build(0, condition=condition, background="recordings", data_root=str(tmp_path))
    assert bundle.x_train.shape == (48, 4, 2000) and bundle.x_test.shape == (32, 4, 2000)
    assert (bundle.mask_test.sum(dim=(1, 2)) == 1).all()
    train_mask = torch.zeros_like(bundle.x_train[..., :1], dtype=torch.bool)
    if condition == "SBFP":
        train_mask[:, 0] = True
    else:  # the word's channel is the one zero-padded around the word
        train_mask[..., 0] = (bundle.x_train == 0).float().mean(dim=2) > 0.2
    train, test = background(bundle.x_train, train_mask), background(bundle.x_test, bundle.mask_test)
    assert (train > 0).all() and (test < 0).all(), "train crops from train files, test crops from test files"
    assert float(train.max()) == 1.0 and float(test.min()) == -1.0, "the loudest 1 % clip at +-1"
    folder = tmp_path / "ambient"
    train_refs = [reference(folder / "train" / name) for name in ("a_int16.wav", "b_stereo.wav", "c_8khz.wav",
                                                                 "d_short.wav")]
    test_refs = [reference(folder / "test" / name) for name in ("e_float.wav", "f_int32.wav", "g_uint8.wav")]
    assert set(source_of(train.flatten(0, 1), train_refs)) == {0, 1, 2, 3}
    assert set(source_of(test.flatten(0, 1), test_refs)) == {0, 1, 2}


def test_recordings_pool_is_capped_in_count_and_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most POOL recordings per split (a random subset of the folder), each cut to AMBIENT_SECONDS (the
    scale is still the whole recording's 99th percentile)."""
    write_ambient(tmp_path)
    monkeypatch.setattr(chaos_audio, "POOL", 2)
    monkeypatch.setattr(chaos_audio, "AMBIENT_SECONDS", 0.25)  # 4,000 samples at 16 kHz
    bundle = build(1, condition="SBFP", background="recordings", data_root=str(tmp_path), n_test=64)
    folder = tmp_path / "ambient" / "test"
    cut = [reference(folder / name, keep=4000) for name in ("e_float.wav", "f_int32.wav", "g_uint8.wav")]
    used = set(source_of(bundle.x_test[:, 1:].flatten(0, 1), cut))  # windows of the cut recordings, tiled
    assert len(used) == 2 and 0 in used, f"two of the three test recordings, e (7,000 samples) one: {used}"


def test_recordings_are_deterministic_per_seed(tmp_path: Path) -> None:
    write_ambient(tmp_path)
    first, again, other = (build(seed, condition="SBRP", background="recordings", data_root=str(tmp_path)).arrays()
                           for seed in (3, 3, 4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["x_test"], other["x_test"])


def test_random_background_ignores_recordings() -> None:
    """RB is noise, as in the seed, whatever ``background`` says: no folder is needed or read."""
    plain = build(2, condition="RBRP").arrays()
    given = build(2, condition="RBRP", background="recordings", data_root="/nowhere").arrays()
    assert all(torch.equal(plain[k], given[k]) for k in plain)


def test_missing_recordings_say_how_to_get_them(tmp_path: Path) -> None:
    how = "rfcx-species-audio-detection.*ffmpeg -i x.flac x.wav.*Nothing is downloaded"
    train, test = tmp_path / "ambient" / "train", tmp_path / "ambient" / "test"
    with pytest.raises(FileNotFoundError, match=f"ambient folder {re.escape(str(train))} not found.*{how}"):
        build(0, condition="SBFP", background="recordings", data_root=str(tmp_path))
    train.mkdir(parents=True)
    (train / "readme.txt").write_text("no audio here")
    with pytest.raises(FileNotFoundError, match=f"no .wav files in {re.escape(str(train))}: .*{how}"):
        build(0, condition="SBRP", background="recordings", data_root=str(tmp_path))
    wavfile.write(train / "a.wav", 16000, np.ones(3000, dtype=np.float32))
    with pytest.raises(FileNotFoundError, match=f"ambient folder {re.escape(str(test))} not found"):
        build(0, condition="SBRP", background="recordings", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_root=''"):
        build(0, condition="SBRP", background="recordings")
