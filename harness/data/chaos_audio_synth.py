"""Offline synthesis for ChaosMining audio (:mod:`harness.data.chaos_audio`): the synthetic "words" that stand in
for Speech Commands, and rain-forest-like ambience that stands in for the Rainforest Connection recordings.

Both are described in :mod:`harness.data.chaos_audio`'s docstring; this module only makes the waveforms.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_WORDS = 35
"""Words in the synthetic vocabulary at most: as many as Speech Commands v2 has."""
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
    return by_99th_percentile(mix)


def by_99th_percentile(recordings: np.ndarray) -> np.ndarray:
    """(rows, samples) float32: each row divided by its 99th-percentile |amplitude| (the seed's
    ``max_volume = np.quantile(np.abs(bg_waveform), 0.99)``); a row whose 99th percentile is 0 (silent at
    least 99 % of the time) is left as it is."""
    level = np.quantile(np.abs(recordings), 0.99, axis=1, keepdims=True)
    return (recordings / np.where(level > 0, level, 1.0)).astype(np.float32)
