"""ChaosMining audio data: one word among noise channels (arXiv 2406.12150, §1.4 of the seed notes).

The seed (``data_engineer/create_audio_data.py``) builds each 10 x 16,000 sample (1 s at 16 kHz) as follows:
the whole array starts as background, then the foreground channel is *overwritten* by the word alone
(``sample[:, pos] = fg_waveform``), so that channel holds no background and is exactly zero where the clip is
padded. RB: ``clip(0.25 * N(0, 1), -1, 1)`` everywhere; SB: every other channel is a 1 s crop of a random
ambient recording (Rainforest Connection ``rfcx-species-audio-detection``, train folder for training, test
folder for evaluation) divided by the 99th percentile of |recording| and clipped to [-1, 1]. FP puts the word
in channel 0, RP in a uniformly random channel. The label is the word's class (35 Speech Commands v2 words).

Here, offline by default:

* foreground ``synthetic``: a fixed vocabulary of ``words`` tonal / chirp "words" (:func:`vocabulary`):
  2 or 3 syllables, each a carrier at a class-specific formant level (400 Hz to 2.3 kHz, half-octave steps)
  gliding along a class-specific contour (flat, rise, fall, rise-fall, fall-rise, warble), voiced by
  amplitude modulation at a pitch, with a class-specific relative length. Every sample draws its pitch
  (100-250 Hz), a transposition of the whole word (+-1.5 semitones), word length (45-75 % of the clip, at
  most 1 s), onset, peak amplitude (0.3-0.9) and jitters of levels, glide depths and syllable lengths, so a
  class is a pattern, not a waveform. Frequencies are set at 16 kHz and scale with ``sample_rate``.
  ``speech_commands``: torchaudio's SPEECHCOMMANDS (v0.02) under ``data_root`` (training subset for train,
  validation subset for test, as the seed), read with scipy, resampled, zero-padded / cut to ``length``.
* background (SB) ``synthetic``: per split a pool of :data:`POOL` rain-forest-like recordings
  (:func:`ambient_pool`: coloured noise with slow swells, sparse resonant "drops", a low hum), each 4 clips
  long and scaled by its 99th-percentile amplitude; each channel is a random crop of a random recording,
  clipped to [-1, 1]. Train and test pools are different recordings, as the seed's folders are.
  ``recordings``: real ambience, the seed's rfcx audio converted to WAV, read from ``<data_root>/ambient/train``
  for the train split and ``<data_root>/ambient/test`` for the test split (:func:`recording_pool`): at most
  :data:`POOL` recordings per split (all of them if fewer, else a random subset), loaded one at a time in sorted
  name order, first channel, resampled to ``sample_rate``, each divided by the 99th percentile of its whole
  |recording| (the seed's ``max_volume``), then cut to :data:`AMBIENT_SECONDS` and tiled (repeated end to end)
  up to the longest kept recording, so a recording shorter than a crop (or than the others) wraps around
  instead of leaving silence. The crops and the clipping are the synthetic pool's (:func:`structured_background`).
  Memory of the pool: at most ``POOL * max(length, AMBIENT_SECONDS * sample_rate) * 4`` bytes (123 MB at
  16 kHz) plus one recording being read. RB conditions ignore ``background``: the seed's RB is noise.

``mask_test`` is (n_test, channels, 1), True on the foreground channel. Everything random comes from one
``numpy.random.Generator(seed)``, spawned into independent train and test streams (so the test set does not
depend on ``n_train``). Memory: x takes (n_train + n_test) * channels * length * 4 bytes; the defaults
(2,400 x 10 x 16,000) take 1.5 GB.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from harness.data.chaos_audio_synth import (
    MAX_WORDS,
    Vocabulary,
    ambient_pool,
    by_99th_percentile,
    synth_words,
    vocabulary,
)
from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

CONDITIONS = ("RBFP", "RBRP", "SBFP", "SBRP")
SOURCES = ("synthetic", "speech_commands")
BACKGROUNDS = ("synthetic", "recordings")
SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila",
    "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
"""The 35 Speech Commands v2 words, sorted as the seed sorts its labels."""
RB_STD = 0.25
POOL = 32
"""Ambient recordings per split: synthesised, or at most this many read from the split's folder."""
AMBIENT_SECONDS = 60.0
"""Of each real recording at most its first 60 s are kept (rfcx recordings are 60 s long)."""
def ambient_files(data_root: str, split: str) -> list[Path]:
    """The WAV files of ``<data_root>/ambient/<split>``, sorted by name; FileNotFoundError saying how to get
    them if there are none."""
    folder = Path(data_root).expanduser() / "ambient" / split
    how = (
        "background 'recordings' reads <data_root>/ambient/train/*.wav for the train split and "
        "<data_root>/ambient/test/*.wav for the test split. On a machine with network download the Kaggle "
        "competition data rfcx-species-audio-detection (kaggle competitions download -c "
        "rfcx-species-audio-detection), convert its FLAC files to WAV (e.g. ffmpeg -i x.flac x.wav), put its "
        "train/ files in ambient/train and its test/ files in ambient/test under data_root, or use "
        "background='synthetic'. Nothing is downloaded at run time."
    )
    if not data_root:
        raise FileNotFoundError(f"dataset chaos_audio: no ambient recordings (data_root={data_root!r}): {how}")
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset chaos_audio: ambient folder {folder} not found: {how}")
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() == ".wav" and path.is_file())
    if not files:
        raise FileNotFoundError(f"dataset chaos_audio: no .wav files in {folder}: {how}")
    return files


def read_recording(path: Path, sample_rate: int) -> np.ndarray:
    """The first channel of the WAV file ``path`` as float32, integers by their full scale (int16 / 32768,
    int32 / 2**31 (24-bit files too: scipy left-justifies them), uint8 (x - 128) / 128), floats as stored,
    resampled to ``sample_rate``."""
    from scipy.io import wavfile

    with warnings.catch_warnings():  # ffmpeg writes a LIST chunk, which scipy skips with a warning
        warnings.simplefilter("ignore", wavfile.WavFileWarning)
        try:
            rate, raw = wavfile.read(path)
        except ValueError as err:
            raise ParamError(f"dataset chaos_audio: cannot read audio file {path} as WAV: {err}") from err
    raw = raw if raw.ndim == 1 else raw[:, 0]
    if raw.dtype == np.uint8:
        wave = (raw.astype(np.float32) - 128.0) / 128.0
    elif raw.dtype in (np.int16, np.int32):
        wave = raw.astype(np.float32) / float(2 ** (8 * raw.dtype.itemsize - 1))
    elif raw.dtype in (np.float32, np.float64):
        wave = raw.astype(np.float32)
    else:
        raise ParamError(f"dataset chaos_audio: audio file {path} has samples of type {raw.dtype}; "
                         "valid: uint8, int16, int32, float32, float64")
    if len(wave) == 0:
        raise ParamError(f"dataset chaos_audio: audio file {path} is empty")
    if rate != sample_rate:
        from torchaudio.functional import resample

        wave = resample(torch.from_numpy(wave), rate, sample_rate).numpy()
    return wave


def recording_pool(
    rng: np.random.Generator, files: Sequence[Path], length: int, sample_rate: int
) -> np.ndarray:
    """(recordings, width) float32 real ambient recordings, each divided by its 99th-percentile |amplitude|,
    not yet clipped: all ``files`` if at most :data:`POOL`, else :data:`POOL` of them drawn from ``rng``;
    read one at a time in name order, cut to :data:`AMBIENT_SECONDS` and tiled up to width = the longest kept
    recording (at least ``length``)."""
    if len(files) > POOL:
        files = [files[i] for i in np.sort(rng.choice(len(files), POOL, replace=False))]
    cap = max(length, int(AMBIENT_SECONDS * sample_rate))
    pool, width = np.empty((len(files), cap), dtype=np.float32), length
    for row, path in enumerate(files):
        wave = by_99th_percentile(read_recording(path, sample_rate)[None])[0, :cap]
        pool[row], width = np.resize(wave, cap), max(width, len(wave))  # np.resize repeats the recording
    return pool[:, :width]


def structured_background(
    rng: np.random.Generator, n: int, channels: int, length: int, sample_rate: int,
    recordings: Sequence[Path] | None = None,
) -> np.ndarray:
    """(n, channels, length) float32: random crops of random recordings of a pool, clipped to [-1, 1] (the
    seed crops 1 s at a random whole second of a random file). The pool: fresh synthetic recordings, or the
    real ``recordings`` (:func:`recording_pool`)."""
    if recordings is None:
        pool = ambient_pool(rng, POOL, 4 * length, sample_rate)
    else:
        pool = recording_pool(rng, recordings, length, sample_rate)
    windows = np.lib.stride_tricks.sliding_window_view(pool, length, axis=1)  # (rows, width - L + 1, L), a view
    which = rng.integers(0, len(pool), (n, channels))
    start = rng.integers(0, windows.shape[1], (n, channels))
    crops = windows[which, start]  # a copy
    return np.clip(crops, -1.0, 1.0, out=crops)


def _speech_commands(
    rng: np.random.Generator, n: int, split: str, *, data_root: str, length: int, sample_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Speech Commands clips (whole shuffled passes over the subset) and their word indices."""
    try:
        from torchaudio.datasets import SPEECHCOMMANDS
        from torchaudio.functional import resample
    except ImportError as err:
        raise ImportError(
            "dataset chaos_audio: source 'speech_commands' needs torchaudio; install the audio extra "
            "(pip install 'xaiharness[audio]') or use source='synthetic'"
        ) from err

    folder = Path(data_root).expanduser() / "SpeechCommands" / "speech_commands_v0.02"
    how = (
        f"put the extracted speech_commands_v0.02 archive (with validation_list.txt and testing_list.txt) at "
        f"{folder}, or on a machine with network run torchaudio.datasets.SPEECHCOMMANDS(data_root, "
        "download=True) and copy the folder. Nothing is downloaded at run time."
    )
    if not data_root or not folder.is_dir():
        raise FileNotFoundError(f"dataset chaos_audio: Speech Commands not found (data_root={data_root!r}): "
                                + how)
    part = "training" if split == "train" else "validation"  # the seed evaluates on the validation list
    subset = SPEECHCOMMANDS(data_root, download=False, subset=part)
    if len(subset) == 0:
        raise FileNotFoundError(f"dataset chaos_audio: no Speech Commands clips in the {split} subset: {how}")
    order = np.concatenate([rng.permutation(len(subset)) for _ in range(-(-n // len(subset)))])[:n]
    clips, labels = np.zeros((n, 16000), dtype=np.float32), np.empty(n, dtype=np.int64)
    for row, index in enumerate(order):
        relpath, _, word, *_ = subset.get_metadata(int(index))
        wave = read_recording(Path(subset._archive) / relpath, 16000)[:16000]  # at most 1 s, as the seed
        clips[row, : len(wave)], labels[row] = wave, SPEECH_COMMANDS_WORDS.index(word)
    out = torch.from_numpy(clips)
    if sample_rate != 16000:
        out = resample(out, 16000, sample_rate)
    fitted = np.zeros((n, length), dtype=np.float32)
    keep = min(length, out.shape[1])
    fitted[:, :keep] = out[:, :keep].numpy()
    return fitted, labels


def _make_split(
    rng: np.random.Generator, n: int, split: str, *, condition: str, channels: int, length: int,
    sample_rate: int, source: str, vocab: Vocabulary, data_root: str, recordings: Sequence[Path] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if source == "synthetic":
        labels = rng.integers(0, len(vocab.contour), n)
        words = synth_words(rng, labels, vocab, length=length, sample_rate=sample_rate)
    else:
        words, labels = _speech_commands(rng, n, split, data_root=data_root, length=length,
                                         sample_rate=sample_rate)
    if condition.startswith("RB"):
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))  # 3x faster than numpy's normals
        x = torch.randn((n, channels, length), generator=gen).mul_(RB_STD).clamp_(-1.0, 1.0).numpy()
    else:
        x = structured_background(rng, n, channels, length, sample_rate, recordings)
    position = np.zeros(n, dtype=np.int64) if condition.endswith("FP") else rng.integers(0, channels, n)
    x[np.arange(n), position] = words  # the word alone on its channel, as the seed overwrites it
    mask = np.zeros((n, channels, 1), dtype=bool)
    mask[np.arange(n), position] = True
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(mask)


def build_chaos_audio(
    seed: int, *, condition: str = "RBFP", channels: int = 10, length: int = 16000, sample_rate: int = 16000,
    n_train: int = 2000, n_test: int = 400, source: str = "synthetic", words: int = 10, data_root: str = "",
    background: str = "synthetic",
) -> DataBundle:
    """One ChaosMining audio condition; everything random is drawn from ``seed``."""
    where = "dataset chaos_audio"
    for name, value, valid in (("condition", condition, CONDITIONS), ("source", source, SOURCES),
                               ("background", background, BACKGROUNDS)):
        if value not in valid:
            raise ParamError(f"{where}: parameter {name!r} = {value!r} is not valid; choices: "
                             + ", ".join(repr(v) for v in valid))
    if channels < 1 or length < 16 or n_train < 1 or n_test < 1:
        raise ParamError(f"{where}: need channels >= 1, length >= 16, n_train >= 1 and n_test >= 1; got "
                         f"channels={channels}, length={length}, n_train={n_train}, n_test={n_test}")
    if sample_rate < 1000:
        raise ParamError(f"{where}: sample_rate = {sample_rate} must be at least 1000 (Hz)")
    if not 2 <= words <= MAX_WORDS:
        raise ParamError(f"{where}: parameter 'words' = {words} must be in 2..{MAX_WORDS}")
    train_rng, test_rng = np.random.default_rng(seed).spawn(2)
    common = {"condition": condition, "channels": channels, "length": length, "sample_rate": sample_rate,
              "source": source, "vocab": vocabulary(words), "data_root": data_root}
    real = background == "recordings" and condition.startswith("SB")  # RB is noise, as in the seed
    files = {split: ambient_files(data_root, split) if real else None for split in ("train", "test")}
    x_train, y_train, _ = _make_split(train_rng, n_train, "train", recordings=files["train"], **common)
    x_test, y_test, mask_test = _make_split(test_rng, n_test, "test", recordings=files["test"], **common)
    classes = words if source == "synthetic" else MAX_WORDS
    return DataBundle(x_train, y_train, x_test, y_test, classes, mask_test)


DEFAULTS = {
    "condition": "RBFP", "channels": 10, "length": 16000, "sample_rate": 16000, "n_train": 2000,
    "n_test": 400, "source": "synthetic", "words": 10, "data_root": "", "background": "synthetic",
}

DATASETS.add(
    "chaos_audio",
    DatasetSpec(
        name="chaos_audio",
        build=build_chaos_audio,
        modality="audio",
        has_mask=True,
        defaults=DEFAULTS,
        choices={"condition": CONDITIONS, "source": SOURCES, "background": BACKGROUNDS},
        description=(
            "ChaosMining audio data (arXiv 2406.12150): channels x length waveforms (default 10 x 16,000 = "
            "1 s at 16 kHz); one channel holds only a word (synthetic = a fixed vocabulary of `words` words "
            "of 2-3 gliding formant syllables with random pitch, transposition, timing, length and "
            "amplitude; speech_commands = torchaudio SPEECHCOMMANDS v0.02 under data_root, 35 words), "
            "zero-padded; every other channel background: RB = clip(0.25 N(0, 1), -1, 1), SB = crops of "
            "ambient recordings scaled by their 99th-percentile amplitude and clipped (background: synthetic = "
            "generated rain-forest-like ambience; recordings = WAV files under data_root/ambient/train and "
            "data_root/ambient/test, e.g. the Kaggle rfcx-species-audio-detection audio converted to WAV, at "
            "most 32 per split, first 60 s each; ignored by RB). "
            "FP = word in channel 0, RP = random channel. Label = word; mask_test (n, channels, 1) marks the "
            "word's channel. Memory (n_train + n_test) x channels x length x 4 bytes (1.5 GB at the "
            "defaults). Nothing is downloaded."
        ),
    ),
)
