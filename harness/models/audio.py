"""ChaosMining's raw-waveform audio classifiers: a strided conv stem, then an RNN, LSTM, TCN or Transformer.

The seed (``chaosmining/audio/models.py``, built in ``examples/train_eval_audio.py`` with hidden 60, 3 layers)
shares one stem, ``Conv1d(C -> 60, kernel 80, stride 16) -> BatchNorm1d -> ReLU -> MaxPool1d(4)``, and ends
every head with a global max over time and ``Linear(-> classes)``. Heads, as in the seed:

* ``rnn`` / ``lstm``: ``nn.RNN`` (tanh) / ``nn.LSTM``, 3 layers of 60, dropout 0.1 between layers, batch
  first.
  The seed starts the LSTM from a *random* state (``torch.randn`` each call), which makes its outputs
  non-deterministic; here both start from zeros (PyTorch's default).
* ``tcn``: the seed's ``AudioTCN`` is not a dilated causal TCN (Bai et al. 2018) but torchaudio's M5-style
  stack: 3 more blocks ``Conv1d(kernel 3, no padding) -> BatchNorm1d -> ReLU -> MaxPool1d(4)`` of widths
  60, 120, 120. That needs >= 6,848 input samples; for shorter inputs a pool is left out where it would leave
  the next conv fewer than 3 frames (or the last block none).
* ``transformer``: ``nn.TransformerEncoder`` of 3 layers (d 60, 6 heads, feed-forward 2048, dropout 0.1, ReLU:
  PyTorch's defaults, as the seed), no positional encoding (the seed has none; ``positional=True`` adds a
  sinusoidal one). The seed leaves ``batch_first=False`` while feeding (N, T, d), so its attention mixes the
  samples of a batch; here ``batch_first=True``, attention runs over time.

DeepLift: every ReLU is its own module and nothing is in place; the transformer's ReLUs are modules
(one per layer), the recurrent non-linearities and attention softmax are inside fused ops and get plain
gradients. GPU: cuDNN's RNN backward refuses eval mode ("cudnn RNN backward can only be called in training
mode") while attributions run in eval mode, so in eval mode with gradients enabled the recurrent layer runs
with cuDNN disabled (PyTorch's native kernels, whose backward works in either mode).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from harness.specs import MODELS, ModelSpec, ParamError

HEADS = ("rnn", "lstm", "tcn", "transformer")
STEM = {"width": 60, "kernel": 80, "stride": 16, "pool": 4}
"""The seed's stem (and the head width, ``hidden_dim`` / ``n_channel`` 60)."""


class GlobalMaxPool(nn.Module):
    """(N, D, T) -> (N, D): the maximum over time (the seed's ``F.max_pool1d(x, x.shape[-1])``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=-1)


class Recurrent(nn.Module):
    """(N, D, T) -> (N, hidden, T) through a batch-first ``nn.RNN`` / ``nn.LSTM`` from a zero state; in eval
    mode with gradients enabled on CUDA it runs without cuDNN, whose backward needs training mode."""

    def __init__(self, kind: str, size: int, layers: int, dropout: float) -> None:
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.RNN
        self.rnn = cls(size, size, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.transpose(1, 2)
        if seq.is_cuda and not self.training and torch.is_grad_enabled():
            with torch.backends.cudnn.flags(enabled=False):
                out, _ = self.rnn(seq)
        else:
            out, _ = self.rnn(seq)
        return out.transpose(1, 2)


class Encoder(nn.Module):
    """(N, D, T) -> (N, D, T): a batch-first transformer encoder over time, optionally with sinusoidal
    positions (Vaswani et al. 2017) added to its input."""

    def __init__(self, size: int, frames: int, layers: int, heads: int, ffn: int, dropout: float,
                 positional: bool) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(size, heads, ffn, dropout, activation=nn.ReLU(), batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.positional = positional
        if positional:
            position = torch.arange(frames, dtype=torch.float32)[:, None]
            rate = torch.exp(torch.arange(0, size, 2, dtype=torch.float32) * (-math.log(10000.0) / size))
            table = torch.zeros(frames, size)
            table[:, 0::2] = torch.sin(position * rate)
            table[:, 1::2] = torch.cos(position * rate[: size // 2])
            self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.transpose(1, 2)
        if self.positional:
            seq = seq + self.table[: seq.shape[1]]
        return self.encoder(seq).transpose(1, 2)


def stem_frames(length: int, kernel: int, stride: int, pool: int) -> int:
    """Frames after the stem: ``floor(floor((length - kernel) / stride + 1) / pool)`` (0 if too short)."""
    return 0 if length < kernel else ((length - kernel) // stride + 1) // pool


def _conv_blocks(width: int, frames: int, layers: int, pool: int, name: str) -> tuple[list[nn.Module], int]:
    """The seed's ``AudioTCN`` blocks after the stem: widths width, 2 width, 2 width, ..."""
    blocks: list[nn.Module] = []
    size = width
    for index in range(layers):
        out = width if index == 0 else 2 * width
        if frames < 3:
            raise ParamError(f"model {name}: conv block {index + 1} gets {frames} frames, needs >= 3; use "
                             "longer inputs or fewer layers")
        frames -= 2
        blocks += [nn.Conv1d(size, out, kernel_size=3), nn.BatchNorm1d(out), nn.ReLU()]
        if frames // pool >= (3 if index + 1 < layers else 1):  # keep >= 3 frames for the next conv
            blocks.append(nn.MaxPool1d(pool))
            frames //= pool
        size = out
    return blocks, size


def build_audio_net(
    input_shape: tuple[int, ...], num_classes: int, *, head: str, width: int, kernel: int, stride: int,
    pool: int, layers: int, **extra: Any,
) -> nn.Sequential:
    """Stem -> head -> global max over time -> Linear(num_classes), for (C, T) waveforms."""
    name = f"audio_{head}"
    if len(input_shape) != 2:
        raise ParamError(f"model {name}: needs (channels, samples) inputs, got input_shape "
                         f"{tuple(input_shape)}")
    if min(width, kernel, stride, pool, layers) < 1:
        raise ParamError(f"model {name}: width, kernel, stride, pool and layers must be positive")
    channels, length = input_shape
    frames = stem_frames(length, kernel, stride, pool)
    if frames < 1:
        raise ParamError(
            f"model {name}: input length {length} is too short for the stem Conv1d(kernel {kernel}, stride "
            f"{stride}) -> MaxPool1d({pool}): it needs at least {kernel + stride * (pool - 1)} samples"
        )
    stem: list[nn.Module] = [
        nn.Conv1d(channels, width, kernel_size=kernel, stride=stride), nn.BatchNorm1d(width), nn.ReLU(),
        nn.MaxPool1d(pool),
    ]
    size = width
    if head in ("rnn", "lstm"):
        body: list[nn.Module] = [Recurrent(head, width, layers, extra["dropout"])]
    elif head == "tcn":
        body, size = _conv_blocks(width, frames, layers, pool, name)
    else:
        if width % extra["heads"] or width % 2:
            raise ParamError(f"model {name}: width {width} must be even and divisible by heads "
                             f"{extra['heads']}")
        body = [Encoder(width, frames, layers, extra["heads"], extra["ffn"], extra["dropout"],
                        extra["positional"])]
    return nn.Sequential(*stem, *body, GlobalMaxPool(), nn.Linear(size, num_classes))


HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnn": {"layers": 3, "dropout": 0.1},
    "lstm": {"layers": 3, "dropout": 0.1},
    "tcn": {"layers": 3},
    "transformer": {"layers": 3, "heads": 6, "ffn": 2048, "dropout": 0.1, "positional": False},
}
HEAD_TEXT = {
    "rnn": "3-layer tanh RNN (hidden width, dropout between layers, zero initial state)",
    "lstm": "3-layer LSTM (hidden width, dropout between layers, zero initial state)",
    "tcn": "the seed's AudioTCN blocks: layers x [Conv1d(k 3) -> BatchNorm1d -> ReLU -> MaxPool1d(pool)], "
           "widths width, 2 width, 2 width (a pool is left out where it would starve the next conv)",
    "transformer": "batch-first TransformerEncoder (layers, heads, feed-forward ffn, dropout, ReLU), no "
                   "positional encoding unless positional=True",
}

for _head in HEADS:
    MODELS.add(
        f"audio_{_head}",
        ModelSpec(
            name=f"audio_{_head}",
            build=partial(build_audio_net, head=_head),
            modalities=frozenset({"audio"}),
            defaults={**STEM, **HEAD_DEFAULTS[_head]},
            description=(
                f"ChaosMining raw-waveform audio model (arXiv 2406.12150; seed chaosmining/audio/models.py) "
                f"for (C, T) inputs: Conv1d(C -> width, kernel, stride) -> BatchNorm1d -> ReLU -> "
                f"MaxPool1d(pool), "
                f"then {HEAD_TEXT[_head]}, then max over time -> Linear(num_classes). Defaults as the seed: "
                f"width 60, kernel 80, stride 16, pool 4."
            ),
        ),
    )
