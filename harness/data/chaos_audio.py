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

``mask_test`` is (n_test, channels, 1), True on the foreground channel. Everything random comes from one
``numpy.random.Generator(seed)``, spawned into independent train and test streams (so the test set does not
depend on ``n_train``). Memory: x takes (n_train + n_test) * channels * length * 4 bytes; the defaults
(2,400 x 10 x 16,000) take 1.5 GB.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

CONDITIONS = ("RBFP", "RBRP", "SBFP", "SBRP")
SOURCES = ("synthetic", "speech_commands")
BACKGROUNDS = ("synthetic",)
SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila",
    "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
"""The 35 Speech Commands v2 words, sorted as the seed sorts its labels."""
RB_STD = 0.25
MAX_WORDS = len(SPEECH_COMMANDS_WORDS)
VOCAB_SEED = 240612150
"""Fixed seed of the synthetic vocabulary: word k is the same pattern for every data seed."""
DESIGN_RATE = 16000.0
"""Word frequencies are given at 16 kHz and scale with sample_rate / 16 kHz (the same samples at any rate)."""
FORMANTS = 400.0 * 2.0 ** (np.arange(6) / 2)
"""Syllable formant (carrier) levels, half an octave apart: 400 Hz to 2.26 kHz."""
CONTOURS = np.array([  # log2 glide = a * u + b * sin(pi u) + w * sin(6 pi u), u in [0, 1) over a syllable
    [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, -0.5, 0.0], [0.0, 0.0, 0.08],
])
"""Syllable glides: flat, rise, fall, rise-fall, fall-rise, warble (up to half an octave)."""
POOL = 32
"""Synthetic ambient recordings per split."""
CHUNK = 64
"""Rows synthesised at once (bounds the temporary memory of the word synthesis)."""


@dataclass(frozen=True)
class Vocabulary:
    """Per word (rows) and syllable (columns, 3; a 2-syllable word has weight 0 in the last): glide
    (:data:`CONTOURS` index), formant (:data:`FORMANTS` index) and relative length."""

    contour: np.ndarray
    level: np.ndarray
    weight: np.ndarray


def vocabulary(words: int) -> Vocabulary:
    """The first ``words`` words of the fixed vocabulary: distinct sequences of 2 or 3 (glide, formant)
    syllables, drawn once from :data:`VOCAB_SEED`."""
    rng = np.random.default_rng(VOCAB_SEED)
    seen: set[tuple[int, ...]] = set()
    contour, level = np.zeros((MAX_WORDS, 3), dtype=np.int64), np.zeros((MAX_WORDS, 3), dtype=np.int64)
    weight = np.zeros((MAX_WORDS, 3))
    row = 0
    while row < MAX_WORDS:
        count = int(rng.integers(2, 4))
        shape, height = rng.integers(0, len(CONTOURS), 3), rng.integers(0, len(FORMANTS), 3)
        key = (count, *shape[:count], *height[:count])
        repeated = any(height[i] == height[i + 1] and shape[i] == shape[i + 1] for i in range(count - 1))
        if key in seen or repeated:
            continue
        seen.add(key)
        contour[row], level[row] = shape, height
        weight[row, :count] = rng.choice([1.0, 1.5, 2.0], size=count)
        row += 1
    return Vocabulary(contour[:words], level[:words], weight[:words])


def synth_words(
    rng: np.random.Generator, labels: np.ndarray, vocab: Vocabulary, *, length: int, sample_rate: int
) -> np.ndarray:
    """(n, length) float32 words of classes ``labels``: per syllable a carrier gliding around its formant,
    amplitude-modulated at a voice pitch, under a raised-cosine envelope. Per-sample parameters are drawn
    here (a few per row); the waveforms are computed in batches of rows over all time steps."""
    n = len(labels)
    cycles = 1.0 / DESIGN_RATE  # design Hz -> cycles per sample
    pitch = 100.0 * 2.0 ** rng.uniform(0.0, 1.3, n) * cycles  # voice pitch 100-250 Hz
    shift = rng.uniform(-1.5, 1.5, n) / 12  # whole-word transposition, octaves
    span = min(1.0, length / sample_rate) * rng.uniform(0.45, 0.75, n) * sample_rate  # word length, samples
    onset = rng.uniform(0.0, 1.0, n) * (length - span)
    amp = rng.uniform(0.3, 0.9, n)
    phase0 = rng.uniform(0.0, 2 * np.pi, (n, 2))
    depth = rng.uniform(0.75, 1.25, (n, 3))
    weight = vocab.weight[labels] * rng.uniform(0.8, 1.2, (n, 3))
    carrier = np.log2(FORMANTS[vocab.level[labels]] * cycles) + shift[:, None]
    carrier += rng.normal(0.0, 0.3 / 12, (n, 3))
    coef = torch.from_numpy(CONTOURS[vocab.contour[labels]] * depth[..., None]).float()  # (n, 3 syllables, 3)
    bounds = np.cumsum(weight, axis=1) / weight.sum(axis=1, keepdims=True)
    end = onset[:, None] + span[:, None] * bounds
    start = np.concatenate([onset[:, None], end[:, :2]], axis=1)
    per_row = torch.from_numpy(np.stack([pitch, amp, phase0[:, 0], phase0[:, 1]], axis=1))
    start_t, end_t, carrier_t = (torch.from_numpy(a).float() for a in (start, end, carrier))
    t = torch.arange(length, dtype=torch.float32)
    out = torch.empty((n, length), dtype=torch.float32)
    for lo in range(0, n, CHUNK):  # rows in chunks; every step below is batched over (rows, time)
        rows = slice(lo, min(n, lo + CHUNK))
        s, e = start_t[rows], end_t[rows]
        syllable = (t >= s[:, 1:2]).long() + (t >= s[:, 2:3]).long()  # (m, L): the syllable slot of each time
        s_t, e_t = s.gather(1, syllable), e.gather(1, syllable)
        u = (t - s_t) / (e_t - s_t).clamp_min(1e-6)
        inside = ((u >= 0) & (u < 1)).float()
        c = coef[rows].gather(1, syllable[..., None].expand(-1, -1, 3))  # (m, L, 3)
        glide = c[..., 0] * u + c[..., 1] * torch.sin(torch.pi * u) + c[..., 2] * torch.sin(6 * torch.pi * u)
        freq = torch.exp2(carrier_t[rows].gather(1, syllable) + inside * glide).clamp_max(0.45)
        pitch_r, amp_r, phase_c, phase_p = per_row[rows].T[..., None]
        phase = (torch.cumsum(freq.double(), dim=1) * (2 * np.pi) + phase_c).remainder(2 * np.pi).float()
        voice = (2 * np.pi * pitch_r * t.double() + phase_p).remainder(2 * np.pi).float()
        v = (u / 0.85).clamp(0, 1)  # the syllable sounds for 85 % of its slot, raised-cosine ramps
        env = inside * torch.sin(0.5 * torch.pi * (torch.minimum(v, 1 - v) / 0.2).clamp(0, 1)) ** 2
        out[rows] = amp_r.float() * env * torch.sin(phase) * (0.5 + 0.5 * torch.cos(voice)) ** 2
    return out.numpy()


def ambient_pool(rng: np.random.Generator, count: int, samples: int, sample_rate: int) -> np.ndarray:
    """(count, samples) float32 rain-forest-like recordings, each divided by its 99th-percentile |amplitude|
    (the seed's ``max_volume``), not yet clipped: coloured noise with slow swells, sparse resonant drops and
    a low hum."""
    t = np.arange(samples) / sample_rate
    freqs = np.fft.rfftfreq(samples, 1 / sample_rate)[None, :]
    tilt, low = rng.uniform(0.5, 1.5, (count, 1)), rng.uniform(100, 600, (count, 1))
    high = rng.uniform(0.15, 0.4, (count, 1)) * sample_rate
    above = np.maximum(freqs, 1.0)
    gain = above ** (-tilt / 2) / (1 + (low / above) ** 4) / (1 + (freqs / high) ** 4)  # tilted band-pass
    hiss = np.fft.irfft(np.fft.rfft(rng.standard_normal((count, samples))) * gain, n=samples)
    hiss /= hiss.std(axis=1, keepdims=True)
    rate, depth = rng.uniform(0.1, 2.0, (count, 2)), rng.uniform(0.1, 0.5, (count, 2))
    offset = rng.uniform(0, 2 * np.pi, (count, 2, 1))
    swell = 1 + (depth[:, :, None] * np.sin(2 * np.pi * rate[:, :, None] * t + offset)).sum(1)
    density = rng.uniform(5, 40, (count, 1)) / sample_rate  # drops per sample
    hits = (rng.random((count, samples)) < density) * rng.exponential(3, (count, samples))
    decay, ring = rng.uniform(0.002, 0.008, (count, 1)), rng.uniform(0.05, 0.25, (count, 1)) * sample_rate
    kernel = np.exp(-t / decay) * np.sin(2 * np.pi * ring * t)
    drops = np.fft.irfft(np.fft.rfft(hits) * np.fft.rfft(kernel), n=samples)
    hum_f, hum_a = rng.uniform(40, 120, (count, 1)), rng.uniform(0.1, 0.5, (count, 1))
    hum_phase = rng.uniform(0, 2 * np.pi, (count, 3))
    hum = sum(hum_a / k * np.sin(2 * np.pi * k * hum_f * t + hum_phase[:, k - 1 : k]) for k in (1, 2, 3))
    mix = swell * hiss + drops + hum
    return (mix / np.quantile(np.abs(mix), 0.99, axis=1, keepdims=True)).astype(np.float32)


def structured_background(
    rng: np.random.Generator, n: int, channels: int, length: int, sample_rate: int
) -> np.ndarray:
    """(n, channels, length) float32: random crops of random recordings of a fresh pool, clipped to [-1, 1]
    (the seed crops 1 s at a random whole second of a random file)."""
    pool = ambient_pool(rng, POOL, 4 * length, sample_rate)
    windows = np.lib.stride_tricks.sliding_window_view(pool, length, axis=1)  # (POOL, 3 L + 1, L), a view
    which = rng.integers(0, POOL, (n, channels))
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
    from scipy.io import wavfile

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
        rate, raw = wavfile.read(Path(subset._archive) / relpath)  # torchaudio.load would need torchcodec
        wave = raw.astype(np.float32) / 32768.0 if raw.dtype == np.int16 else raw.astype(np.float32)
        wave = wave[: rate] if wave.ndim == 1 else wave[:rate, 0]
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
    sample_rate: int, source: str, vocab: Vocabulary, data_root: str,
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
        x = structured_background(rng, n, channels, length, sample_rate)
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
    x_train, y_train, _ = _make_split(train_rng, n_train, "train", **common)
    x_test, y_test, mask_test = _make_split(test_rng, n_test, "test", **common)
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
            "synthetic rain-forest-like recordings scaled by their 99th-percentile amplitude and clipped. "
            "FP = word in channel 0, RP = random channel. Label = word; mask_test (n, channels, 1) marks the "
            "word's channel. Memory (n_train + n_test) x channels x length x 4 bytes (1.5 GB at the "
            "defaults). Nothing is downloaded."
        ),
    ),
)
