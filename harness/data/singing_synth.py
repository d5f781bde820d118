"""Synthetic songs for singing-voice detection: instrument-like accompaniment with a voice-like part mixed in
some of the time, and the voice's segments as labels.

An offline stand-in for the Jamendo corpus (Ramona et al. 2008) used by Subramanian et al. (arXiv 2207.07769,
§5 of the seed notes). Each song (:func:`synth_song`) is drawn from its own ``numpy.random.Generator``:

* accompaniment: a tempo (80-150 bpm, 4/4), a key (major or minor) and a chord per bar (I, IV, V or vi);
  the chord's three tones and a bass note as harmonic tones (8-14 harmonics falling as k^-tilt) strummed on
  the beats (and offbeats in half of the songs) with fast attacks (3-8 ms) and exponential decays
  (0.15-0.6 s); drums as percussive bursts (kick: a 110 -> 45 Hz sweep; snare: band-passed noise with a 180 Hz
  body; hi-hat: high-passed noise on every eighth); and, in about half of the voice-free gaps, a lead
  instrument (a sawtooth-like tone, steady pitch, no vibrato, no formants) as a confuser;
* voice: phrases of 2-6 s separated by gaps of 1-5 s (about half of a song is sung). A phrase sings notes of
  the key in a male or female register, 0.5-2 beats each, on a smooth pitch contour (30-60 ms portamento)
  with vibrato at 5-7 Hz of ±0.5-1 semitone. Each note is a glottal-like source (harmonics falling as 1/k up
  to 8 kHz) shaped by the formants of a vowel (/a e i o u/: F1-F3, plus a singer's formant near 3 kHz) at the
  note's pitch; the phrase ramps in and out over 30-80 ms and consonant-like dips (to silence) join the notes;
* mix: the voice is scaled so that its mean power over the phrases is ``snr_db`` above the accompaniment's
  mean power over the whole song; the mix is peak-normalised to 0.3-0.9 over a -80 dB noise floor. A frame is
  labelled "voice" inside a phrase (as annotators mark whole phrases, dips included).

Speed: tones are played from one-period wavetables (linear interpolation at a running phase), the four chords
are rendered once per song and repeated bar by bar, drum hits are added from templates; a 30 s song takes
about 0.1 s on one CPU core.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

SAMPLE_RATE = 22050
MAX_FREQ = 8000.0
"""Harmonics above this are left out (the front end stops at 8 kHz)."""
TABLE = 2048
"""Wavetable length (one period)."""
VOWELS = np.array([  # F1, F2, F3 in Hz (Peterson & Barney-like averages)
    [730.0, 1090.0, 2440.0], [530.0, 1840.0, 2480.0], [270.0, 2290.0, 3010.0],
    [570.0, 840.0, 2410.0], [300.0, 870.0, 2240.0],
])
"""Formant frequencies of /a e i o u/."""
BANDWIDTHS = np.array([80.0, 100.0, 140.0, 250.0])
"""Bandwidths of F1, F2, F3 and the singer's formant, Hz."""
FORMANT_GAINS = np.array([1.0, 0.6, 0.35, 0.4])
PROGRESSION = np.array([0, 3, 4, 5])
"""Scale degrees of the chords a bar may take: I, IV, V, vi."""
SCALES = (np.array([0, 2, 4, 5, 7, 9, 11]), np.array([0, 2, 3, 5, 7, 8, 10]))
"""Major and natural minor, semitones above the key."""

Segments = list[tuple[float, float, bool]]


def midi_hz(midi: np.ndarray | float) -> np.ndarray:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def wavetables(amps: np.ndarray, phases: np.ndarray | None = None) -> np.ndarray:
    """(P, TABLE + 1) float32 one-period tables sum_k amps[p, k - 1] sin(2 pi k j / TABLE + phases[k - 1]),
    j = 0..TABLE (the last column repeats the first, for interpolation)."""
    k = np.arange(1, amps.shape[1] + 1)
    angle = 2 * np.pi * np.outer(k, np.arange(TABLE + 1) / TABLE)
    if phases is not None:
        angle += phases[:, None]
    return (amps @ np.sin(angle)).astype(np.float32)


def play(tables: np.ndarray, which: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Sample n of table ``which[n]`` at the running phase of the per-sample ``freq`` (Hz), linearly
    interpolated, float32."""
    phase = np.cumsum(freq / SAMPLE_RATE) % 1.0 * TABLE
    index = phase.astype(np.int64)
    frac = (phase - index).astype(np.float32)
    flat = tables.reshape(-1)
    at = np.asarray(which, dtype=np.int64) * (TABLE + 1) + index
    return flat[at] + frac * (flat[at + 1] - flat[at])


def harmonic_amps(freqs: np.ndarray, rolloff: np.ndarray) -> np.ndarray:
    """(P, K) amplitudes rolloff[k] for the harmonics of ``freqs`` below :data:`MAX_FREQ`, 0 above."""
    k = np.arange(1, len(rolloff) + 1)
    return rolloff[None, :] * (np.outer(freqs, k) < MAX_FREQ)


def decay_envelope(onsets: np.ndarray, gains: np.ndarray, n: int, attack: float, decay: float) -> np.ndarray:
    """Sum over onsets (sample indices) of gain * (exp(-t / decay) - exp(-t / attack)), t >= 0 in seconds,
    by two one-pole filters over an impulse train, float32 (n,)."""
    impulses = np.zeros(n)
    np.add.at(impulses, onsets, gains)
    slow = lfilter([1.0], [1.0, -np.exp(-1.0 / (decay * SAMPLE_RATE))], impulses)
    fast = lfilter([1.0], [1.0, -np.exp(-1.0 / (attack * SAMPLE_RATE))], impulses)
    return (slow - fast).astype(np.float32)


def _smooth(x: np.ndarray, tau: float) -> np.ndarray:
    """One-pole low-pass with time constant ``tau`` seconds, started at x[0]."""
    a = np.exp(-1.0 / (tau * SAMPLE_RATE))
    return lfilter([1.0 - a], [1.0, -a], x - x[0]) + x[0]


def _phrases(rng: np.random.Generator, seconds: float) -> list[tuple[float, float]]:
    """Alternating gaps (1-5 s, the first 0.5-4 s) and phrases (2-6 s) over the song."""
    out, t = [], rng.uniform(0.5, 4.0)
    while t + 1.0 < seconds:
        end = min(seconds, t + rng.uniform(2.0, 6.0))
        out.append((t, end))
        t = end + rng.uniform(1.0, 5.0)
    return out


def accompaniment(
    rng: np.random.Generator, n: int, beats: np.ndarray, key: int, scale: np.ndarray
) -> np.ndarray:
    """Strummed chords over a bass (each of the four chords rendered once, repeated bar by bar), float32."""
    bars = np.append(beats[::4], n)
    length = int(np.diff(bars).max())
    harmonics, tilt = int(rng.integers(8, 15)), rng.uniform(0.8, 2.0)
    rolloff = np.arange(1, harmonics + 1) ** -tilt
    phases = rng.uniform(0, 2 * np.pi, harmonics)
    step = PROGRESSION[:, None] + 2 * np.arange(3)[None, :]  # (chord, tone): root, third, fifth
    midi = np.concatenate([key + 12 + 12 * (step // 7) + scale[step % 7],
                           (key - 12 + scale[PROGRESSION])[:, None]], axis=1)  # (4 chords, 3 tones + bass)
    freqs = midi_hz(midi).reshape(-1)
    tables = wavetables(harmonic_amps(freqs, rolloff), phases)
    level = np.array([1.0, 1.0, 1.0, 1.2] * len(PROGRESSION), dtype=np.float32)
    tones = np.stack([level[i] * play(tables, np.full(length, i), np.full(length, f))
                      for i, f in enumerate(freqs)])
    chords = tones.reshape(len(PROGRESSION), 4, length).sum(axis=1)
    degree = rng.integers(0, len(PROGRESSION), len(bars) - 1)
    out = np.concatenate([chords[d, : b - a] for d, a, b in zip(degree, bars[:-1], bars[1:])])
    hits = beats if rng.random() < 0.5 else np.sort(np.append(beats, beats + (beats[1] - beats[0]) // 2))
    hits = hits[hits < n]
    strum = decay_envelope(hits, rng.uniform(0.6, 1.0, len(hits)), n, rng.uniform(0.003, 0.008),
                           rng.uniform(0.15, 0.6))
    return np.concatenate([np.zeros(bars[0], np.float32), out]) * strum + drums(rng, n, beats)


def drums(rng: np.random.Generator, n: int, beats: np.ndarray) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, hi-hat on every eighth, at random levels, float32 (n,)."""
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * np.cumsum(45.0 + 65.0 * np.exp(-t / 0.04)) / SAMPLE_RATE) * np.exp(-t / 0.08)
    band = sosfilt(butter(2, [200.0, 6000.0], "bandpass", fs=SAMPLE_RATE, output="sos"),
                   rng.standard_normal(len(t)))
    snare = (band + 0.8 * np.sin(2 * np.pi * 180.0 * t)) * np.exp(-t / 0.07)
    hiss = sosfilt(butter(2, 5000.0, "highpass", fs=SAMPLE_RATE, output="sos"), rng.standard_normal(len(t)))
    hat = hiss * np.exp(-t / 0.02)
    eighths = np.sort(np.append(beats, beats + (beats[1] - beats[0]) // 2))
    out = np.zeros(n + len(t))
    parts = ((kick, beats[0::2], 0.8), (snare, beats[1::2], 0.5), (hat, eighths, 0.25))
    for template, onsets, level in parts:
        gains = level * rng.uniform(0.0, 1.5) * rng.uniform(0.7, 1.0, len(onsets))
        for at, gain in zip(onsets[onsets < n], gains):  # one slice per drum hit
            out[at : at + len(t)] += gain * template
    return out[:n].astype(np.float32)


def lead(rng: np.random.Generator, n: int, gaps: list[tuple[int, int]], beat: float, key: int,
         scale: np.ndarray) -> np.ndarray:
    """A sawtooth-like lead of steady notes in about half of the voice-free ``gaps``, float32 (n,)."""
    out = np.zeros(n, dtype=np.float32)
    pitches = key + 12 + np.concatenate([scale, scale + 12])
    rolloff = 0.6 / np.arange(1, 16)
    tables = wavetables(harmonic_amps(midi_hz(pitches), rolloff))
    decay = rng.uniform(0.3, 1.0)
    longest = int(2 * beat * SAMPLE_RATE)
    t = np.arange(longest) / SAMPLE_RATE
    env = ((np.exp(-t / decay) - np.exp(-t / 0.01)) * np.minimum(1.0, (longest - np.arange(longest)) / 200))
    for start, end in gaps:
        if rng.random() < 0.5:
            continue
        at = start + int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)
        while at < end - int(0.2 * SAMPLE_RATE):  # one note at a time
            p = int(rng.integers(0, len(pitches)))
            size = min(int(rng.choice([0.5, 1.0, 2.0]) * beat * SAMPLE_RATE), end - at)
            note = play(tables, np.full(size, p), np.full(size, midi_hz(pitches[p])))
            out[at : at + size] += note * env[:size] * np.minimum(1.0, (size - np.arange(size)) / 200)
            at += size
    return out


def voice(rng: np.random.Generator, n: int, phrases: list[tuple[int, int]], beat: float, key: int,
          scale: np.ndarray) -> np.ndarray:
    """The singing part (see the module docstring), float32 (n,), zero outside ``phrases``."""
    base = key + 12 + (12 if rng.random() < 0.5 else 0)  # female an octave above male
    starts, midi, vowel = [0], [float(base)], [0]
    amp = np.zeros(n, dtype=np.float32)
    for start, end in phrases:
        at = start
        while at < end:  # one note at a time
            starts.append(at)
            octave = int(rng.random() < 0.2) - int(rng.random() < 0.1)
            midi.append(base + scale[rng.integers(0, 7)] + 12 * octave)
            vowel.append(int(rng.integers(0, len(VOWELS))))
            at = min(end, at + int(rng.choice([0.5, 1.0, 1.5, 2.0]) * beat * SAMPLE_RATE))
        amp[start:end] = 1.0
        ramp = min(int(rng.uniform(0.03, 0.08) * SAMPLE_RATE), (end - start) // 2)
        amp[start : start + ramp] *= np.linspace(0.0, 1.0, ramp)
        amp[end - ramp : end] *= np.linspace(1.0, 0.0, ramp)
    bounds = np.append(starts, n)
    for b in bounds[1:-1]:  # consonant-like dips to silence where the notes (and their tables) change
        out_, in_ = int(rng.uniform(0.01, 0.02) * SAMPLE_RATE), int(rng.uniform(0.02, 0.05) * SAMPLE_RATE)
        amp[max(0, b - out_) : b] *= np.linspace(1.0, 0.0, len(amp[max(0, b - out_) : b]))
        amp[b : b + in_] *= np.linspace(0.0, 1.0, len(amp[b : b + in_]))
    note = np.repeat(np.arange(len(starts)), np.diff(bounds))
    midi_arr, vowel_arr = np.array(midi), np.array(vowel)
    t = np.arange(n) / SAMPLE_RATE
    depth, rate = rng.uniform(0.5, 1.0), rng.uniform(5.0, 7.0)
    pitch = _smooth(midi_arr[note], rng.uniform(0.03, 0.06)) + depth * np.sin(2 * np.pi * rate * t
                                                                              + rng.uniform(0, 2 * np.pi))
    f0 = midi_hz(midi_arr)
    k = np.arange(1, int(MAX_FREQ // f0.min()) + 1)
    centres = np.concatenate([VOWELS[vowel_arr], np.full((len(f0), 1), rng.uniform(2800.0, 3200.0))], axis=1)
    freqs = np.outer(f0, k)[:, :, None]  # (notes, K, 1) against (notes, 1, 4) formants
    env = (FORMANT_GAINS / (1.0 + ((freqs - centres[:, None, :]) / BANDWIDTHS) ** 2)).sum(axis=2) + 0.01
    tables = wavetables(env * harmonic_amps(f0, 1.0 / k))
    out = np.zeros(n, dtype=np.float32)
    for start, end in phrases:
        out[start:end] = play(tables, note[start:end], midi_hz(pitch[start:end])) * amp[start:end]
    return out


def synth_song(rng: np.random.Generator, seconds: float, snr_db: float) -> tuple[np.ndarray, Segments]:
    """One mono 22.05 kHz song, float32 (round(seconds * 22050),), and its voice segments (start, end, True)
    in seconds."""
    n = round(seconds * SAMPLE_RATE)
    beat = 60.0 / rng.uniform(80.0, 150.0)
    beats = np.arange(0, n, beat * SAMPLE_RATE).astype(np.int64)
    key = int(rng.integers(45, 57))
    scale = SCALES[int(rng.integers(0, 2))]
    spans = _phrases(rng, seconds)
    phrases = [(int(a * SAMPLE_RATE), min(n, int(b * SAMPLE_RATE))) for a, b in spans]
    edges = [0, *[x for p in phrases for x in p], n]
    gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2) if edges[i + 1] > edges[i]]
    backing = accompaniment(rng, n, beats, key, scale) + lead(rng, n, gaps, beat, key, scale)
    sung = voice(rng, n, phrases, beat, key, scale)
    inside = np.zeros(n, dtype=bool)
    for a, b in phrases:
        inside[a:b] = True
    if inside.any():
        ratio = np.mean(backing.astype(np.float64) ** 2) / np.mean(sung[inside].astype(np.float64) ** 2)
        sung *= np.float32(np.sqrt(ratio * 10.0 ** (snr_db / 10.0)))
    mix = backing + sung
    mix *= np.float32(rng.uniform(0.3, 0.9) / max(float(np.abs(mix).max()), 1e-9))
    mix += (1e-4 * rng.standard_normal(n)).astype(np.float32)
    return mix, [(a, b, True) for a, b in spans]
