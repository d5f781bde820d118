"""Singing-voice detection data sets of the loss-gradient study (Subramanian et al., arXiv 2207.07769, after
Schlüter & Grill, ISMIR 2015; §5 of the seed notes): ``singing_voice`` (synthetic, offline) and ``jamendo``
(the real corpus, read from a local folder).

Both yield log-mel excerpts from the same front end (:mod:`harness.data.melspec`): (1, 115 frames, 80 mel
bands) float32, z-normalised per band with the statistics of the training songs only; label = voice in the
excerpt's centre frame (0/1, int64). Training excerpts are random windows of the training songs (drawn
uniformly over all positions, as the seed; the synthetic songs are sung about half of the time, so the classes
are roughly balanced). Test excerpts are centred on frames 0, ``test_hop``, 2 ``test_hop``, ... of every test
song (each song padded by 57 frames of log(1e-7), as the seed's evaluation), song after song, in time order;
``groups_test`` holds the song index, so predictions can be median-filtered per song
(:func:`harness.metrics.frames.median_filter`, window ``round(56 / test_hop)`` samples).

Modality ``image``: an excerpt is a one-channel 2-D time x frequency map fed to a 2-D CNN, so the image
methods (GradCAM, superpixel / patch masks) and image metrics apply as they do to any picture; ``audio`` here
means raw (channels, samples) waveforms for 1-D models, which these inputs are not.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.data.melspec import (
    CENTRE,
    FLOOR,
    HOP,
    SAMPLE_RATE,
    band_stats,
    centred_excerpts,
    frame_labels,
    log_mel,
    mel_filterbank,
    normalise,
    random_excerpts,
)
from harness.data.singing_synth import Segments, synth_song
from harness.specs import DATASETS, DataBundle, DatasetSpec, ParamError

JAMENDO_URL = "https://zenodo.org/record/2585988"
SPLITS = ("test", "valid")
MIN_SECONDS = 2.0
"""Shortest synthetic song: 115 frames need 1.68 s at 22.05 kHz."""


def assemble(
    train: Sequence[tuple[Tensor, Tensor]], test: Sequence[tuple[Tensor, Tensor]], *, train_excerpts: int,
    test_hop: int, rng: np.random.Generator,
) -> DataBundle:
    """A bundle from (log-mel (frames, 80), frame labels (frames,)) pairs of training and test songs: band
    statistics from the training songs only, random training excerpts, consecutive centred test excerpts."""
    mean, std = band_stats([spect for spect, _ in train])
    x_train, y_train = random_excerpts([normalise(s, mean, std) for s, _ in train], [y for _, y in train],
                                       train_excerpts, rng)
    pad = normalise(torch.full((1, len(mean)), float(np.log(FLOOR))), mean, std)[0]
    parts = [centred_excerpts(normalise(s, mean, std), y, test_hop, pad) for s, y in test]
    groups = torch.cat([torch.full((len(y),), song, dtype=torch.int64) for song, (_, y) in enumerate(parts)])
    return DataBundle(
        x_train=x_train, y_train=y_train, x_test=torch.cat([x for x, _ in parts]),
        y_test=torch.cat([y for _, y in parts]), num_classes=2, groups_test=groups,
    )


def _features(samples: np.ndarray | Tensor, segments: Segments, bank: Tensor) -> tuple[Tensor, Tensor]:
    spect = log_mel(torch.as_tensor(samples), bank)
    return spect, frame_labels(segments, len(spect))


def build_singing_voice(
    seed: int, *, n_songs_train: int, n_songs_test: int, song_seconds: float, snr_db: float,
    train_excerpts: int, test_hop: int,
) -> DataBundle:
    """The synthetic task (:mod:`harness.data.singing_synth`); song i of a split comes from its own child of
    ``numpy.random.default_rng(seed)``, so the test songs do not depend on the number of training songs.

    Defaults: 8 training and 4 test songs of 18 s, 2,000 training excerpts, test excerpts every 5 frames
    (4 x 252 = 1,008; median window round(56 / 5) = 11 samples = 55 frames); 110 MB; about 3-6 s to build on
    2 CPU cores (most of it synthesis)."""
    where = "dataset singing_voice"
    for name, value in (("n_songs_train", n_songs_train), ("n_songs_test", n_songs_test),
                        ("train_excerpts", train_excerpts), ("test_hop", test_hop)):
        if value < 1:
            raise ParamError(f"{where}: parameter {name!r} = {value} must be at least 1")
    if not MIN_SECONDS <= song_seconds <= 600.0:
        raise ParamError(f"{where}: parameter 'song_seconds' = {song_seconds} must be in "
                         f"[{MIN_SECONDS}, 600]")
    if not -40.0 <= snr_db <= 40.0:
        raise ParamError(f"{where}: parameter 'snr_db' = {snr_db} must be in [-40, 40] (dB)")
    train_rng, test_rng, excerpt_rng = np.random.default_rng(seed).spawn(3)
    bank = mel_filterbank()
    songs = {name: [_features(*synth_song(r, song_seconds, snr_db), bank) for r in rng.spawn(count)]
             for name, rng, count in (("train", train_rng, n_songs_train), ("test", test_rng, n_songs_test))}
    return assemble(songs["train"], songs["test"], train_excerpts=train_excerpts, test_hop=test_hop,
                    rng=excerpt_rng)


def read_lab(path: Path) -> Segments:
    """Segments of a Jamendo ``.lab`` file: lines ``start end sing|nosing`` (seconds), as the seed's
    ``load_labels``; blank lines are skipped."""
    segments = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in ("sing", "nosing"):
            raise ValueError(f"{path}:{number}: expected 'start end sing|nosing', got {line!r}")
        segments.append((float(fields[0]), float(fields[1]), fields[2] == "sing"))
    return segments


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Mono float32 samples at ``sample_rate``: WAV through scipy (channels averaged, resampled with
    torchaudio), other formats decoded by ffmpeg as the seed's ``read_ffmpeg`` (needs ffmpeg on the PATH)."""
    if path.suffix.lower() != ".wav":
        if shutil.which("ffmpeg") is None:
            raise RuntimeError(f"cannot decode {path}: only .wav is read without ffmpeg; install ffmpeg or "
                               "convert the corpus to .wav (same names, .wav suffix, in the file lists)")
        command = ["ffmpeg", "-v", "quiet", "-i", str(path), "-f", "f32le", "-ar", str(sample_rate),
                   "-ac", "1", "pipe:1"]
        raw = subprocess.run(command, check=True, capture_output=True).stdout
        return torch.from_numpy(np.frombuffer(raw, dtype=np.float32).copy())
    from scipy.io import wavfile

    rate, data = wavfile.read(path)
    scale = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31, np.dtype(np.uint8): 2.0**7}
    wave = data.astype(np.float32)
    if data.dtype == np.uint8:
        wave -= 128.0
    wave /= scale.get(data.dtype, 1.0)
    wave = torch.from_numpy(wave.mean(axis=1) if wave.ndim == 2 else wave)
    if rate != sample_rate:
        from torchaudio.functional import resample

        wave = resample(wave, rate, sample_rate)
    return wave


def build_jamendo(
    seed: int, *, data_root: str, train_excerpts: int, test_hop: int, test_split: str
) -> DataBundle:
    """The Jamendo corpus laid out as the seed's README: ``data_root/jamendo/{audio, labels, filelists/{train,
    valid, test}}``; a file list names audio files (relative to ``audio/``), ``labels/<name without
    extension>.lab`` annotates each. ``test_split`` picks the evaluated list (``valid`` to choose a
    threshold)."""
    where = "dataset jamendo"
    if train_excerpts < 1 or test_hop < 1:
        raise ParamError(f"{where}: train_excerpts = {train_excerpts} and test_hop = {test_hop} must be >= 1")
    if test_split not in SPLITS:
        raise ParamError(f"{where}: parameter 'test_split' = {test_split!r} is not valid; choices: "
                         + ", ".join(repr(s) for s in SPLITS))
    folder = Path(data_root).expanduser() / "jamendo"
    lists = folder / "filelists"
    needed = [folder / "audio", folder / "labels", lists / "train", lists / test_split]
    missing = [str(p) for p in needed if not p.exists()] if data_root else [str(folder)]
    if missing:
        raise FileNotFoundError(
            f"{where}: not found (data_root={data_root!r}): {', '.join(missing)}. Expected {folder}/audio, "
            f"{folder}/labels (.lab files) and {folder}/filelists/{{train,valid,test}}: download the Jamendo "
            f"corpus from {JAMENDO_URL} (zenodo 2585988) and lay it out as in the seed's README "
            "(github VinodS7/investigate-gradients). Nothing is downloaded at run time."
        )
    bank = mel_filterbank()

    def load(split: str) -> list[tuple[Tensor, Tensor]]:
        names = [line.strip() for line in (lists / split).read_text().splitlines() if line.strip()]
        if not names:
            raise FileNotFoundError(f"{where}: the file list {lists / split} is empty")
        return [_features(read_audio(folder / "audio" / name),
                          read_lab(folder / "labels" / (name.rsplit(".", 1)[0] + ".lab")), bank)
                for name in names]

    return assemble(load("train"), load(test_split), train_excerpts=train_excerpts, test_hop=test_hop,
                    rng=np.random.default_rng(seed))


SHAPE_NOTE = (
    "Excerpts (1, 115, 80): 115 frames (time, rows) x 80 log-mel bands (columns) as the seed feeds them; "
    f"22.05 kHz, frame 1024 (symmetric Hann), hop {HOP} (70 fps), 80 mel bands 27.5 Hz-8 kHz (the seed's "
    "filterbank), log(max(., 1e-7)), per-band z-normalisation with training-song statistics; label = voice "
    f"in the centre frame (index {CENTRE}); test excerpts every test_hop frames, song by song, groups_test = "
    "song."
)

DATASETS.add(
    "singing_voice",
    DatasetSpec(
        name="singing_voice",
        build=build_singing_voice,
        modality="image",
        defaults={"n_songs_train": 8, "n_songs_test": 4, "song_seconds": 18.0, "snr_db": 0.0,
                  "train_excerpts": 2000, "test_hop": 5},
        description=(
            "Synthetic singing-voice detection (offline stand-in for Jamendo, arXiv 2207.07769): songs of "
            "strummed chords, bass, drums and a steady lead in some voice-free gaps, with a sung part "
            "(formant-shaped harmonic voice, portamento, 5-7 Hz vibrato of 0.5-1 semitone) about half of the "
            "time at snr_db against the accompaniment; 2 classes (voice in the centre frame). " + SHAPE_NOTE
        ),
    ),
)

DATASETS.add(
    "jamendo",
    DatasetSpec(
        name="jamendo",
        build=build_jamendo,
        modality="image",
        defaults={"data_root": "", "train_excerpts": 8000, "test_hop": 10, "test_split": "test"},
        choices={"test_split": SPLITS},
        description=(
            "Jamendo singing-voice corpus (Ramona et al. 2008, zenodo 2585988) read from "
            "data_root/jamendo/{audio,labels,filelists/{train,valid,test}} as the seed's README lays it out "
            "(.lab lines 'start end sing|nosing'; .wav read directly, other formats through ffmpeg); 2 "
            f"classes. {SHAPE_NOTE} Memory about 37 KB per excerpt (the 16 test songs at test_hop 10: "
            "~1 GB). Nothing is downloaded."
        ),
    ),
)
