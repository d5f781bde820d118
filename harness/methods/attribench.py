"""The rest of attribench's methods as rows of the captum adapter, with the paper's hyperparameters as defaults.

attribench: Gevaert et al., "Evaluating feature attribution methods in the image domain", Machine Learning
2024 (github arnegevaert/benchmark-general-imaging, scripts/attribution/). Sources: captum 0.9 (GuidedBackprop,
Deconvolution, LayerGradCam, GuidedGradCam, Saliency + NoiseTunnel semantics, DeepLift as DeepLiftShap,
GradientShap semantics, KernelShap, Lime). Gradient, InputXGradient, DeepLift, IG and SmoothGrad are rows of
:data:`harness.methods.captum_adapter.CAPTUM_METHODS`; Random is :mod:`harness.methods.random`.

The rows live in their own table (same adapter, same registration) so the cost table of the original rows is
unchanged. :data:`SEEDED`, :data:`NEEDS_BACKGROUND` and :data:`NEEDS_CONV2D` say which methods use the run's
seed, need ``RunContext.background``, or need a model with an ``nn.Conv2d`` (images only).
"""
from __future__ import annotations

from functools import partial

from captum.attr import (
    Deconvolution,
    DeepLift,
    GuidedBackprop,
    GuidedGradCam,
    KernelShap,
    LayerGradCam,
    Lime,
    Saliency,
)

from harness.methods import gradcam, superpixels
from harness.methods.captum_adapter import CaptumMethod, register
from harness.methods.sampling import BaselinePairs, NoiseDraws, PathDraws

SEGMENT_DEFAULTS = {"n_samples": 300, "n_segments": 50, "compactness": 10.0, "slic_zero": True, "baseline": 0.0}
"""attribench's KernelSHAP / LIME: 300 coalitions over 50 SLIC-zero superpixels, baseline 0."""
SEGMENT_PARAMS = ("n_segments", "compactness", "slic_zero")
GRADCAM_DEFAULTS = {"layer": "", "interpolate_mode": "bilinear"}
GRADCAM_CHOICES = {"interpolate_mode": gradcam.INTERPOLATE_MODES}
_NOISE = ("SmoothGrad family (captum NoiseTunnel over Saliency, attribench defaults): nt_samples 50 draws of "
          "x + N(0, stdevs^2), stdevs 0.15 ABSOLUTE (input units, as captum); noise from the run's seed. ")
_LAYER = ("layer: the module to attribute through, '' = the last nn.Conv2d; needs a convolutional image model. ")

ATTRIBENCH_METHODS: dict[str, CaptumMethod] = {m.name: m for m in (
    CaptumMethod(
        "guided_backprop", GuidedBackprop,
        "Guided Backpropagation (captum GuidedBackprop; Springenberg et al. 2015): the gradient with every ReLU "
        "passing only positive gradients of positive inputs. Needs ReLU modules (nn.ReLU), not F.relu.",
    ),
    CaptumMethod(
        "deconvolution", Deconvolution,
        "Deconvolution (captum Deconvolution; Zeiler & Fergus 2014): backpropagation with every ReLU applied "
        "to the gradient instead of gated by the input. Needs ReLU modules (nn.ReLU), not F.relu.",
    ),
    CaptumMethod(
        "gradcam", LayerGradCam,
        "GradCAM (captum LayerGradCam; Selvaraju et al. 2017) as attribench: ReLU(sum_c mean(dy/dA_c) A_c) at "
        "the last conv layer, upsampled to H x W (interpolate_mode, bilinear) and broadcast over channels. "
        + _LAYER, defaults={**GRADCAM_DEFAULTS, "relu": True}, choices=GRADCAM_CHOICES,
        call={"relu": "relu_attributions"}, factory=gradcam.layer_gradcam, finish=gradcam.upsample,
        own_params=("layer", "interpolate_mode"),
    ),
    CaptumMethod(
        "guided_gradcam", GuidedGradCam,
        "Guided GradCAM (captum GuidedGradCam; Selvaraju et al. 2017): Guided Backprop times the ReLU'd GradCAM "
        "map upsampled to H x W (interpolate_mode; bilinear as attribench's GradCAM, captum's default is "
        "nearest). " + _LAYER + "Two passes (GradCAM, Guided Backprop) per sample.",
        defaults=dict(GRADCAM_DEFAULTS), choices=GRADCAM_CHOICES, call={"interpolate_mode": "interpolate_mode"},
        factory=gradcam.guided_gradcam, own_params=("layer",), rows=lambda p: 2,
    ),
    CaptumMethod(
        "vargrad", Saliency,
        "VarGrad (Adebayo et al. 2018): variance over draws of |grad| (abs, as attribench's Saliency). " + _NOISE,
        defaults={"nt_samples": 50, "stdevs": 0.15, "abs": True}, call={"abs": "abs"},
        sampler=NoiseDraws("vargrad"), own_params=("nt_samples", "stdevs"),
    ),
    CaptumMethod(
        "smoothgrad_sq", Saliency,
        "SmoothGrad-squared (Hooker et al. 2019): mean over draws of grad^2. " + _NOISE,
        defaults={"nt_samples": 50, "stdevs": 0.15, "abs": True}, call={"abs": "abs"},
        sampler=NoiseDraws("smoothgrad_sq"), own_params=("nt_samples", "stdevs"),
    ),
    CaptumMethod(
        "deep_shap", DeepLift,
        "DeepSHAP (captum DeepLiftShap; Lundberg & Lee 2017): mean of DeepLift (rescale) attributions against "
        "each of n_baselines 100 references drawn without replacement from the training inputs "
        "(RunContext.background; all of them if fewer) by the run's seed, the same for every sample. Costs "
        "2 x n_baselines rows per sample, chunked under the batch budget.",
        defaults={"n_baselines": 100}, rows=lambda p: 2, sampler=BaselinePairs("n_baselines"),
        references="n_baselines", own_params=("n_baselines",),
    ),
    CaptumMethod(
        "expected_gradients", Saliency,
        "Expected Gradients (Erion et al. 2021) = captum GradientShap with stdevs 0: mean over n_samples 100 "
        "draws of (x - b) * grad f(b + alpha (x - b)), b uniform over n_baselines 100 references drawn from "
        "the training inputs (RunContext.background) and alpha ~ U[0, 1], all drawn from the run's seed.",
        defaults={"n_samples": 100, "n_baselines": 100}, fixed={"abs": False}, sampler=PathDraws(),
        references="n_baselines", own_params=("n_samples", "n_baselines"),
    ),
    CaptumMethod(
        "kernel_shap", KernelShap,
        "KernelSHAP (captum KernelShap; Lundberg & Lee 2017) as attribench: n_samples 300 coalitions of "
        "n_segments 50 SLIC superpixels (scikit-image, slic_zero, compactness; one feature per column / channel "
        "for non-images) set to the baseline (0), linear regression; per sample, seeded by the run's seed.",
        defaults=dict(SEGMENT_DEFAULTS), call={"n_samples": "n_samples", "baseline": "baselines"},
        segments=superpixels.feature_groups, own_params=SEGMENT_PARAMS,
        check=partial(superpixels.check, "kernel_shap"),
    ),
    CaptumMethod(
        "lime", Lime,
        "LIME (captum Lime; Ribeiro et al. 2016) over n_segments 50 SLIC superpixels (as kernel_shap) with "
        "n_samples 300 coalitions (each superpixel kept with p 1/2, else the baseline 0); captum's defaults: "
        "Lasso surrogate of alpha 0.01 (in output units: it zeroes every coefficient of a model whose outputs "
        "barely move; alpha 0 = least squares), exponential cosine kernel of width 1; per sample, seeded.",
        defaults={**SEGMENT_DEFAULTS, "alpha": 0.01}, call={"n_samples": "n_samples", "baseline": "baselines"},
        segments=superpixels.feature_groups, factory=superpixels.lime, own_params=(*SEGMENT_PARAMS, "alpha"),
        check=partial(superpixels.check, "lime"),
    ),
)}

SEEDED = frozenset({"vargrad", "smoothgrad_sq", "deep_shap", "expected_gradients", "kernel_shap", "lime"})
"""Methods whose attributions depend on the run's seed (besides ``random`` and ``smoothgrad``)."""
NEEDS_BACKGROUND = frozenset({"deep_shap", "expected_gradients"})
"""Methods that need ``RunContext.background`` (the case's training inputs)."""
NEEDS_CONV2D = frozenset({"gradcam", "guided_gradcam"})
"""Methods that need a model with an ``nn.Conv2d`` layer, hence image inputs."""

register(ATTRIBENCH_METHODS)
