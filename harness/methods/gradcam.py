"""GradCAM and Guided GradCAM through a model's last 2-d convolution (captum LayerGradCam, GuidedGradCam).

GradCAM (Selvaraju et al., ICCV 2017): weights alpha_c = spatial mean of d logit / d A_c for the feature maps
A of a conv layer, map = ReLU(sum_c alpha_c A_c) (captum ``LayerGradCam`` with ``relu_attributions``), then
upsampled to the input's H x W (captum ``LayerAttribution.interpolate``, bilinear in attribench) and broadcast
over the input's channels. Guided GradCAM multiplies Guided Backprop by that upsampled map (captum
``GuidedGradCam``, which always applies the ReLU). attribench (Gevaert et al. 2024) uses the last conv
layer; ``layer`` = "" finds it (the last ``nn.Conv2d`` in ``model.modules()`` order, i.e. registration
order), or names a module by its dotted path (``model.get_submodule``).

Both need a convolutional image model: on a model without ``nn.Conv2d`` (an MLP, a 1-d audio network) the
method fails at build time.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from torch import nn

from harness.specs import ParamError

Params = Mapping[str, Any]
INTERPOLATE_MODES: tuple[str, ...] = ("bilinear", "nearest", "bicubic", "area")
"""``torch.nn.functional.interpolate`` modes for 4-d maps (captum ``LayerAttribution.interpolate``)."""


def conv_layer(model: nn.Module, name: str, method: str) -> nn.Module:
    """The module GradCAM attributes through: the last ``nn.Conv2d`` (``name`` "") or the named module."""
    if name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ParamError(
                f"method {method}: parameter 'layer' = {name!r} is not a module of the model; its Conv2d layers: "
                + (", ".join(repr(n) for n in convs) or "(none)")
            ) from None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"method {method}: the model ({type(model).__name__}) has no nn.Conv2d layer; {method} attributes through the "
            "feature maps of the last 2-d convolution, so it needs a convolutional image model with (N, C, H, W) "
            "inputs (e.g. small_cnn, resnet), not an MLP or a 1-d (audio / sequence) network"
        )
    return convs[-1]


def layer_gradcam(model: nn.Module, params: Params) -> LayerGradCam:
    """``MethodSpec`` factory: captum LayerGradCam on :func:`conv_layer`."""
    return LayerGradCam(model, conv_layer(model, params["layer"], "gradcam"))


def guided_gradcam(model: nn.Module, params: Params) -> GuidedGradCam:
    """``MethodSpec`` factory: captum GuidedGradCam on :func:`conv_layer`."""
    return GuidedGradCam(model, conv_layer(model, params["layer"], "guided_gradcam"))


def upsample(attributions: torch.Tensor, inputs: torch.Tensor, params: Params) -> torch.Tensor:
    """(n, 1, h, w) layer map -> (n, C, H, W): interpolated to the input's size, broadcast over its channels."""
    if inputs.ndim != 4 or attributions.ndim != 4:
        raise ValueError(
            f"method gradcam: needs image inputs (N, C, H, W) and a 2-d conv layer map; got inputs of shape "
            f"{list(inputs.shape)} and a layer map of shape {list(attributions.shape)}"
        )
    size = tuple(inputs.shape[2:])
    if tuple(attributions.shape[2:]) != size:
        attributions = LayerAttribution.interpolate(attributions, size, interpolate_mode=params["interpolate_mode"])
    return attributions.expand(-1, inputs.shape[1], -1, -1).contiguous()
