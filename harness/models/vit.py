"""ChaosMining's Vision Transformers ``vit_b_16`` and ``vit_l_32``: torchvision's ``VisionTransformer``.

ChaosMining (arXiv 2406.12150, §1.3 of the seed notes) trains torchvision vit_b_16 and vit_l_32 (Dosovitskiy et
al. 2021; configurations as in ``torchvision.models.vision_transformer``) with a ``Linear(1000, 10)`` head on the
1000-way output, like its convolutional backbones (:mod:`harness.models.backbones`, whose conventions hold here:
``head`` "stack" / "replace", C != 3 input channels by timm's rule, ``pretrained`` a path, never a download).
Parameter names, hence state dicts, are torchvision's. What differs:

* **Input size** (``image_size``, default 224 as in the paper; a multiple of the patch size). A ViT takes square
  inputs of exactly ``image_size`` (its position embedding has one entry per patch). ``small_input`` "resize"
  puts a bilinear resize of any other input (up or down, non-square ones too) to ``image_size`` x ``image_size``
  in front of the network; "error" refuses such inputs at build time, naming the size needed.
* **Pretrained weights** at another ``image_size``: the state dict's position embeddings are interpolated to
  the new patch grid (torchvision's ``interpolate_embeddings``, bicubic) before loading.
* **Input channels**: the patch embedding ``conv_proj`` (a patch-size, patch-stride ``nn.Conv2d``) is adapted.
* **Head**: torchvision zero-initialises ``heads.head``, so a freshly built "stack" ViT (random weights) gives
  the same logits for every input until it is trained; "replace" puts a default-initialised ``nn.Linear`` there.
* **Not a conv net**: no ``"conv2d"`` trait (GradCAM-style cases are not generated: their layer would be the
  patch embedding). **DeepLift** runs but is inexact (:data:`~harness.models.backbones.INEXACT_DEEPLIFT`).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from harness.models.backbones import (
    assemble,
    check_image_shape,
    deeplift_caveat,
    load_pretrained,
    weights_file,
)
from harness.specs import MODELS, ModelSpec, ParamError


class ViTConfig(NamedTuple):
    """``VisionTransformer`` arguments besides ``image_size`` (torchvision's ``vit_*`` builders)."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int


VIT: dict[str, ViTConfig] = {
    "vit_b_16": ViTConfig(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_l_32": ViTConfig(patch_size=32, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
}
"""Name -> configuration, as in ``torchvision.models.vision_transformer.vit_b_16`` / ``vit_l_32``."""

PAPER_IMAGE_SIZE = 224
"""The input side of ChaosMining's vision data and of torchvision's ImageNet weights."""


class ResizeTo(nn.Module):
    """Bilinear resize of both sides to exactly ``size`` (up or down; inputs of that size pass as they are)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


def _check_size(name: str, input_shape: tuple[int, ...], image_size: int, small_input: str) -> None:
    patch = VIT[name].patch_size
    if image_size < patch or image_size % patch:
        raise ParamError(
            f"model {name}: parameter 'image_size' = {image_size!r} is not valid; choices: a positive multiple "
            f"of the patch size {patch} (for example {2 * patch} or {PAPER_IMAGE_SIZE})"
        )
    height, width = input_shape[1:]
    if (height, width) != (image_size, image_size) and small_input == "error":
        fits = height == width and height % patch == 0
        raise ParamError(
            f"model {name}: input {height}x{width} is not the {image_size}x{image_size} it needs with image_size "
            f"{image_size}; use {image_size}x{image_size} inputs, "
            + (f"image_size={height}, " if fits else "")
            + "or small_input='resize' (valid choices: 'resize', 'error')"
        )


def build_vit(
    input_shape: tuple[int, ...], num_classes: int, *, name: str, pretrained: str, head: str, small_input: str,
    image_size: int,
) -> nn.Sequential:
    """``[ResizeTo] -> VisionTransformer -> [Linear(1000, num_classes)]``; see the module docstring."""
    check_image_shape(name, input_shape)
    _check_size(name, input_shape, image_size, small_input)
    config = VIT[name]
    file = weights_file(pretrained, name) if pretrained else None
    backbone = VisionTransformer(image_size=image_size, **config._asdict())
    if file is not None:
        load_pretrained(backbone, file, name, adapt=partial(interpolate_embeddings, image_size, config.patch_size))
    resize = ResizeTo(image_size) if input_shape[1:] != (image_size, image_size) else None
    return assemble(backbone, input_shape[0], num_classes, head=head, resize=resize)


def _register(name: str) -> None:
    config = VIT[name]
    MODELS.add(name, ModelSpec(
        name=name,
        build=partial(build_vit, name=name),
        modalities=frozenset({"image"}),
        defaults={"pretrained": "", "head": "stack", "small_input": "resize", "image_size": PAPER_IMAGE_SIZE},
        choices={"head": ("stack", "replace"), "small_input": ("resize", "error")},
        description=(
            f"torchvision {name} (patch {config.patch_size}, {config.num_layers} layers, {config.num_heads} heads, "
            f"hidden {config.hidden_dim}, MLP {config.mlp_dim}) as in ChaosMining (arXiv 2406.12150), torchvision "
            "parameter names; head 'stack' = Linear(1000, num_classes) on the 1000-way output (the paper; "
            "torchvision zero-initialises the 1000-way layer), 'replace' = new heads.head; C != 3 input channels "
            f"adapt the patch embedding (timm rule); square inputs of exactly image_size px (default "
            f"{PAPER_IMAGE_SIZE}, a multiple of {config.patch_size}): small_input 'resize' resizes other inputs "
            "bilinearly, 'error' refuses them; pretrained = path to a cached torchvision state dict (never "
            "downloaded), position embeddings interpolated to image_size; no conv2d trait (not a conv net)."
            + deeplift_caveat(name)
        ),
    ))


for _name in VIT:
    _register(_name)
