"""The singing-voice front end: log-mel spectrograms, band statistics and excerpts (Schlüter & Grill 2015, as
used by Subramanian et al., arXiv 2207.07769; §5 of the seed notes).

The seed (``VinodS7/investigate-gradients``, ``src/audio.py``, ``src/data_loader.py``, ``src/augment.py``):

* magnitude STFT of mono 22.05 kHz audio, frame 1024 with a *symmetric* Hann window (``np.hanning``), hop
  ``sample_rate // fps`` = 315 (70 fps), no centring (frame i covers samples [315 i, 315 i + 1024));
* 80 triangular mel filters from 27.5 Hz to 8 kHz on the HTK mel scale (1127 ln(1 + f / 700)), their peaks
  snapped to FFT bins and each filter scaled to unit sum (``create_mel_filterbank``, yaafe-compatible):
  :func:`mel_filterbank` reproduces it exactly;
* ``log(max(mel, 1e-7))``, then per-band z-normalisation with the mean and standard deviation (ddof 1) of
  every frame of the *training* files (``znorm.compute_mean_std``);
* excerpts of 115 frames; a training excerpt is a random window of a training file labelled by its centre
  frame (``frame + 115 // 2``); for evaluation every file is padded with 57 frames of ``log(1e-7)`` at each
  end (before normalisation), so the excerpt at position i is centred on frame i and takes frame i's label.

Orientation: the seed feeds excerpts as (N, 1, frames, bands) = (N, 1, 115, 80): its first fully connected
layer has 64 * 11 * 7 inputs, the 11 from the 115 frames and the 7 from the 80 bands. This module keeps that
order, so an excerpt is an image with time down the rows (height 115) and mel bands across the columns (width
80). The CNN's 3x3 kernels and pools are symmetric, so the transposed layout (1, 80, 115) would describe the
same model class, only with the flattened features in another order.

Frame labels follow the seed's ``create_aligned_targets``: frame i has time i / fps, and a segment
[start, end) labels the frames with start <= i / fps < end (later segments overwrite earlier ones).

torchaudio (the ``audio`` extra) computes the STFT; it is imported when first needed.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 22050
FRAME_LEN = 1024
FPS = 70
HOP = SAMPLE_RATE // FPS
"""315 samples: the seed's hop is ``sample_rate // fps``."""
MEL_BANDS = 80
MEL_MIN = 27.5
MEL_MAX = 8000.0
FLOOR = 1e-7
"""Magnitudes below the floor are clipped before the logarithm."""
BLOCKLEN = 115
"""Frames per excerpt."""
CENTRE = BLOCKLEN // 2
"""57: the index of an excerpt's centre frame, and the padding on either side of an evaluated file."""


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE, frame_len: int = FRAME_LEN, bands: int = MEL_BANDS,
    min_freq: float = MEL_MIN, max_freq: float = MEL_MAX,
) -> Tensor:
    """(frame_len // 2 + 1, bands) float64 matrix of the seed's triangular mel filters (``audio.py``,
    ``create_mel_filterbank``): HTK mel-spaced peaks snapped up to FFT bins by ``searchsorted``; the rising
    edge is (f - f_left) / (bins from left to top), the falling edge (f_right - f) / (bins from top to right);
    each filter is then scaled to sum to 1 (a filter narrower than one bin stays all zero)."""
    bins = frame_len // 2 + 1
    min_mel, max_mel = 1127 * np.log1p(min_freq / 700.0), 1127 * np.log1p(max_freq / 700.0)
    peaks_hz = 700 * (np.exp((min_mel + np.arange(bands + 2) * (max_mel - min_mel) / (bands + 1)) / 1127) - 1)
    fft_freqs = np.linspace(0, sample_rate / 2.0, bins)
    peaks_bin = np.searchsorted(fft_freqs, peaks_hz)
    left, top, right = (peaks_bin[i : i + bands, None] for i in range(3))
    left_hz, right_hz = peaks_hz[:bands, None], peaks_hz[2:, None]
    j, f = np.arange(bins)[None, :], fft_freqs[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where((j >= left) & (j < top), (f - left_hz) / (top - left), 0.0)
        fall = np.where((j >= top) & (j < right), (right_hz - f) / (right - top), 0.0)
    filters = rise + fall  # (bands, bins)
    total = filters.sum(axis=1, keepdims=True)
    filters = np.divide(filters, total, out=np.zeros_like(filters), where=total > 0)
    return torch.from_numpy(filters.T.copy())


def magnitude_spectrogram(samples: Tensor, frame_len: int = FRAME_LEN, hop: int = HOP) -> Tensor:
    """(frames, frame_len // 2 + 1) magnitude STFT of 1-D ``samples`` as the seed's ``audio.spectrogram``:
    symmetric Hann window, no centring or padding, frames = (len - frame_len) // hop + 1 (none if shorter)."""
    try:
        from torchaudio.functional import spectrogram
    except ImportError as err:
        raise ImportError("the singing-voice front end needs torchaudio; install the audio extra "
                          "(pip install 'xaiharness[audio]')") from err
    bins = frame_len // 2 + 1
    if samples.shape[-1] < frame_len:
        return samples.new_zeros((0, bins))
    window = torch.hann_window(frame_len, periodic=False, dtype=samples.dtype, device=samples.device)
    spect = spectrogram(samples, pad=0, window=window, n_fft=frame_len, hop_length=hop, win_length=frame_len,
                        power=1.0, normalized=False, center=False)
    return spect.transpose(-1, -2)


def log_mel(samples: Tensor, filterbank: Tensor | None = None) -> Tensor:
    """(frames, 80) float32 ``log(max(|STFT| @ filterbank, 1e-7))`` of mono 22.05 kHz ``samples``."""
    bank = mel_filterbank() if filterbank is None else filterbank
    spect = magnitude_spectrogram(samples.float())
    return torch.log(torch.clamp_min(spect @ bank.to(spect), FLOOR))


def band_stats(spects: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-band mean and standard deviation (ddof 1), float64, over every frame of ``spects`` (the training
    files only; the seed's ``znorm.compute_mean_std``). A constant band gets std 1 so it normalises to 0."""
    frames = torch.cat([s.double() for s in spects], dim=0)
    if len(frames) < 2:
        raise ValueError(f"band statistics need at least 2 frames, got {len(frames)}")
    mean, std = frames.mean(dim=0), frames.std(dim=0, correction=1)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def normalise(spect: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(spect - mean) / std per band, float32."""
    return ((spect.double() - mean) / std).float()


def frame_labels(segments: Sequence[tuple[float, float, bool]], frames: int, fps: float = FPS) -> Tensor:
    """(frames,) int64 voice labels of frames at times i / fps from (start, end, sing) segments in seconds,
    as the seed's ``labels.create_aligned_targets`` (searchsorted; later segments overwrite earlier ones)."""
    times = np.arange(frames) / float(fps)
    out = np.zeros(frames, dtype=np.int64)
    for start, end, sing in segments:  # one slice per annotated segment, not per frame
        out[np.searchsorted(times, start) : np.searchsorted(times, end)] = int(sing)
    return torch.from_numpy(out)


def random_excerpts(
    spects: Sequence[Tensor], labels: Sequence[Tensor], count: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """``count`` random 115-frame windows of the (normalised) ``spects`` as (count, 1, 115, bands), labelled
    by their centre frame (the seed's ``grab_random_excerpts``): window starts are drawn uniformly over every
    (file, start) pair without replacement (with replacement only if there are fewer pairs than ``count``)."""
    starts = [max(0, len(s) - BLOCKLEN + 1) for s in spects]
    total = sum(starts)
    if total == 0:
        raise ValueError(f"no training file is at least {BLOCKLEN} frames long")
    pick = np.sort(rng.choice(total, size=count, replace=total < count))
    edges = np.cumsum([0, *starts])
    which = np.searchsorted(edges, pick, side="right") - 1
    xs, ys = [], []
    for f in np.unique(which):  # one gather per file
        at = torch.from_numpy(pick[which == f] - edges[f])
        xs.append(spects[f].unfold(0, BLOCKLEN, 1)[at].transpose(1, 2))  # (n, 115, bands)
        ys.append(labels[f][at + CENTRE])
    order = torch.from_numpy(rng.permutation(count))
    return torch.cat(xs)[order].unsqueeze(1).contiguous(), torch.cat(ys)[order]


def centred_excerpts(
    spect: Tensor, labels: Tensor, hop: int, pad_value: Tensor
) -> tuple[Tensor, Tensor]:
    """Excerpts centred on frames 0, hop, 2 hop, ... of one (normalised) file, in time order, as
    (n, 1, 115, bands) with their centre frames' labels; the file is padded with 57 frames of ``pad_value``
    (per band: the normalised ``log(1e-7)``) at each end, as the seed's evaluation does."""
    pad = pad_value.to(spect).expand(CENTRE, -1)
    padded = torch.cat([pad, spect, pad], dim=0)
    centres = torch.arange(0, len(spect), hop)
    windows = padded.unfold(0, BLOCKLEN, 1)[centres].transpose(1, 2)
    return windows.unsqueeze(1).contiguous(), labels[centres]
