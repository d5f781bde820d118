"""The attribution methods of the ROAR study: the noise family over three base methods, and the Sobel control.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019 (github
google-research/google-research, ``interpretability_benchmark``; §4 of the seed notes) compare gradient,
Integrated Gradients and Guided Backprop, each plain, SmoothGrad (mean over noisy copies), SmoothGrad-squared
(mean of squares) and VarGrad (variance; Adebayo et al., "Local Explanation Methods for Deep Neural Networks
Lack Sensitivity to Parameter Values", ICLR workshop 2018), all of the SIGNED base attribution, with 15 noisy
copies; and a Sobel edge filter as a model-independent control.

The noise rows are rows of the captum adapter (:mod:`harness.methods.captum_adapter`) with a
:class:`~harness.methods.sampling.NoiseDraws` sampler: each sample becomes ``nt_samples`` rows
x + ``stdevs`` * N(0, 1) drawn per sample from the run's seed (``stdevs`` ABSOLUTE, in input units, as the
other SmoothGrad rows), attributed by the base method and reduced over the draws (variance with correction 0,
as captum's NoiseTunnel). Costs per sample: ``nt_samples`` rows (gradient, Guided Backprop) or
``nt_samples * n_steps`` rows (IG, whose steps captum batches itself under the adapter's row budget).
Already registered elsewhere: ``saliency``, ``integrated_gradients``, ``guided_backprop`` (plain),
``smoothgrad`` (SmoothGrad of the gradient; ``abs=False`` for Hooker's signed one).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, IntegratedGradients, Saliency
from torch import nn

from harness.methods import aggregation
from harness.methods.captum_adapter import IG_METHODS, CaptumMethod, register
from harness.methods.sampling import NoiseDraws
from harness.specs import METHODS, Explainer, MethodSpec, RunContext, resolve_params

NOISE_DEFAULTS: dict[str, Any] = {"nt_samples": 15, "stdevs": 0.15}
"""Hooker et al. 2019: 15 noisy copies; sigma 0.15 absolute (the harness's SmoothGrad convention)."""
IG_DEFAULTS: dict[str, Any] = {"n_steps": 25, "method": "gausslegendre", "baseline": 0.0}
"""The ``integrated_gradients`` row's defaults: 25 steps from the zero baseline."""
REDUCTIONS: dict[str, tuple[str, str]] = {
    "smoothgrad": ("smoothgrad", "SmoothGrad (Smilkov et al. 2017): mean over draws of"),
    "sg_sq": ("smoothgrad_sq", "SmoothGrad-squared (Hooker et al. 2019): mean over draws of the square of"),
    "vargrad": ("vargrad", "VarGrad (Adebayo et al. 2018): variance (correction 0) over draws of"),
}
"""Our name prefix -> (NoiseDraws reduction, description)."""
_NOISE = (" at x + stdevs * N(0, 1), nt_samples 15 draws (Hooker et al. 2019), stdevs 0.15 ABSOLUTE (input "
          "units); noise drawn per sample from the run's seed.")


def _gradient_row(prefix: str) -> CaptumMethod:
    reduction, text = REDUCTIONS[prefix]
    return CaptumMethod(
        f"{prefix}_gradient", Saliency,
        f"{text} the SIGNED gradient of the target logit (captum Saliency, abs=False){_NOISE}",
        defaults=dict(NOISE_DEFAULTS), fixed={"abs": False}, sampler=NoiseDraws(reduction),
        own_params=tuple(NOISE_DEFAULTS),
    )


def _ig_row(prefix: str) -> CaptumMethod:
    reduction, text = REDUCTIONS[prefix]
    return CaptumMethod(
        f"{prefix}_ig", IntegratedGradients,
        f"{text} Integrated Gradients (captum; n_steps 25, Gauss-Legendre, zero baseline; the baseline is "
        f"not noised){_NOISE} Costs nt_samples x n_steps rows per sample.",
        defaults={**NOISE_DEFAULTS, **IG_DEFAULTS}, choices={"method": IG_METHODS},
        call={"n_steps": "n_steps", "method": "method", "baseline": "baselines"},
        rows=lambda p: int(p["n_steps"]), batch_kwarg="internal_batch_size", sampler=NoiseDraws(reduction),
        own_params=tuple(NOISE_DEFAULTS),
    )


def _guided_row(prefix: str) -> CaptumMethod:
    reduction, text = REDUCTIONS[prefix]
    return CaptumMethod(
        f"{prefix}_guided_backprop", GuidedBackprop,
        f"{text} Guided Backprop (captum GuidedBackprop; Springenberg et al. 2015; needs nn.ReLU "
        f"modules){_NOISE}",
        defaults=dict(NOISE_DEFAULTS), sampler=NoiseDraws(reduction), own_params=tuple(NOISE_DEFAULTS),
    )


ROAR_METHODS: dict[str, CaptumMethod] = {m.name: m for m in (
    _gradient_row("sg_sq"), _gradient_row("vargrad"),
    *(_ig_row(prefix) for prefix in REDUCTIONS),
    *(_guided_row(prefix) for prefix in REDUCTIONS),
)}
"""``sg_sq_gradient``, ``vargrad_gradient``, ``{smoothgrad,sg_sq,vargrad}_{ig,guided_backprop}``."""

register(ROAR_METHODS)


# ---- Sobel ------------------------------------------------------------------------------------------------

PADDINGS: dict[str, str] = {"replicate": "replicate", "zeros": "constant"}
"""Our ``padding`` -> ``torch.nn.functional.pad`` mode (scipy.ndimage ``mode`` ``nearest`` / ``constant``)."""
SOBEL_DEFAULTS: dict[str, Any] = {"padding": "replicate", aggregation.PARAMETER: "none"}
SOBEL_CHOICES: dict[str, tuple[Any, ...]] = {
    "padding": tuple(PADDINGS), aggregation.PARAMETER: aggregation.AGGREGATIONS,
}
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
"""d/dW (columns) as a cross-correlation kernel; its transpose is d/dH."""


def sobel_magnitude(x: torch.Tensor, padding: str = "replicate") -> torch.Tensor:
    """Sobel edge strength of images (N, C, H, W): per channel sqrt(gx^2 + gy^2) with the 3x3 Sobel kernels,
    borders padded by ``padding`` (``replicate``: the edge pixel repeated, so the image frame is no edge;
    ``zeros``), summed over channels and broadcast back to (N, C, H, W); float32 on x's device.

    Hooker et al. 2019's model-independent control; equals ``hypot(scipy.ndimage.sobel(img, 0, mode=m),
    scipy.ndimage.sobel(img, 1, mode=m))`` per channel with m = ``nearest`` / ``constant``."""
    n, c, h, w = x.shape
    kx = torch.tensor(_SOBEL_X, dtype=torch.float32, device=x.device)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)  # (2, 1, 3, 3): gx, gy
    planes = F.pad(x.detach().float().reshape(n * c, 1, h, w), (1, 1, 1, 1), mode=PADDINGS[padding])
    grads = F.conv2d(planes, kernels)  # (n * c, 2, h, w)
    magnitude = grads.square().sum(dim=1).sqrt().reshape(n, c, h, w)
    return magnitude.sum(dim=1, keepdim=True).expand(n, c, h, w).contiguous()


def build_sobel(model: nn.Module, ctx: RunContext, /, **params: Any) -> Explainer:
    """``explain(x, target)`` -> :func:`sobel_magnitude` of x (model and target unused; Hooker et al. 2019),
    in chunks of ``ctx.rows_per_chunk`` images."""
    resolved = resolve_params("method sobel", params, SOBEL_DEFAULTS, SOBEL_CHOICES)
    padding, mode = resolved["padding"], resolved[aggregation.PARAMETER]

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"method sobel: needs images (N, C, H, W), got inputs of shape {list(x.shape)}")
        if len(x) == 0:
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        rows = ctx.rows_per_chunk(math.prod(x.shape[1:]), copies=6)
        out = torch.cat([sobel_magnitude(x[i : i + rows], padding) for i in range(0, len(x), rows)])
        return aggregation.aggregate(out, mode)

    return explain


METHODS.add(
    "sobel",
    MethodSpec(
        name="sobel", build=build_sobel, defaults=dict(SOBEL_DEFAULTS), choices=dict(SOBEL_CHOICES),
        modalities=frozenset({"image"}),
        description=(
            "Sobel edge filter (Hooker et al. 2019's model-independent control): per channel the 3x3 Sobel "
            "gradient magnitude sqrt(gx^2 + gy^2), borders padded by padding (replicate, or zeros), summed "
            "over channels and broadcast so every channel of a pixel has the same score. Ignores model and target."
        ),
    ),
)
