"""Models: importing this package registers every built-in :class:`~harness.specs.ModelSpec`."""
from __future__ import annotations

from harness.models import audio, backbones, chaos_mlp, cnn, lenet, mlp, mnist_cnn, spectrogram, vit

__all__ = ["audio", "backbones", "chaos_mlp", "cnn", "lenet", "mlp", "mnist_cnn", "spectrogram", "vit"]
