"""Surrogate-model methods over feature groups: captum KernelShap and Lime, one captum call per sample.

attribench (Gevaert et al. 2024; github arnegevaert/benchmark-general-imaging, scripts/attribution/shap.py)
groups image pixels into SLIC superpixels (scikit-image; 50 segments, ``slic_zero``) and fits the surrogate
on 300 sampled coalitions, per sample. Non-image inputs fall back to one feature per column (N, F) or per
channel (N, C, T), as :func:`harness.methods.feature_masks.ablation_mask`.

Why one call per sample: given a batch, captum (0.9, ``Lime._attribute_kwargs``) does loop over the samples,
but counts the interpretable features over the WHOLE batch's mask (max id + 1), so a sample with fewer
superpixels than another gets empty extra features, which change KernelSHAP's coalition distribution and
both regressions: the result would depend on the batch it came in. Per sample, with its own mask, it does not.
Forward rows: each call evaluates its ``n_samples`` coalitions ``perturbations_per_eval`` at a time, bounded
by the batch budget, and nothing else (no unperturbed row).

Determinism: captum draws coalitions from torch's global CPU RNG (``torch.bernoulli`` in Lime's default
sampler, ``Categorical.sample`` / ``torch.randn`` in KernelShap's). Each sample's call runs inside
``torch.random.fork_rng`` with the CPU generator seeded from that sample's entry of :func:`sample_seeds`
(drawn from ``RunContext.generator``), so the same seed gives the same attributions, independent of the
chunking and of ``perturbations_per_eval`` (the draws do not depend on it), and the caller's RNG is untouched.
The surrogates are deterministic scikit-learn fits (LinearRegression for KernelShap; for Lime a Lasso of
``alpha`` 0.01, captum's default, as is its exponential cosine kernel of width 1).

A sample with a single feature group (``n_segments`` 1, or one column) has no KernelSHAP coalition
distribution (captum divides by zero); its exact Shapley value is f(x) - f(baseline) on every element, which
is what it gets (captum FeatureAblation, two rows).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
from captum.attr import Attribution, FeatureAblation, KernelShap, Lime
from threadpoolctl import threadpool_limits  # a scikit-learn dependency
from torch import nn

from harness.methods.feature_masks import ablation_mask
from harness.segmentation import slic_segments
from harness.specs import ParamError, RunContext

Params = Mapping[str, Any]
SEED_OFFSET = 2
"""``RunContext.generator`` offset of the per-sample seeds."""


def check(method: str, params: Params) -> None:
    """Raise :class:`ParamError` for too few coalitions or superpixels (bind ``method`` with ``partial``)."""
    if params["n_samples"] < 2 or params["n_segments"] < 1 or params.get("alpha", 0.0) < 0:
        raise ParamError(
            f"method {method}: need n_samples >= 2, n_segments >= 1 (and alpha >= 0), got n_samples="
            f"{params['n_samples']}, n_segments={params['n_segments']}"
            + (f", alpha={params['alpha']}" if "alpha" in params else "")
        )


def lime(model: nn.Module, params: Params) -> Lime:
    """captum Lime with a Lasso surrogate of ``alpha`` (captum's default 0.01; 0: ordinary least squares);
    ``MethodSpec`` factory.

    The Lasso penalty is in output units: on a model whose outputs barely move when superpixels are removed
    (an untrained or very smooth one) alpha 0.01 shrinks every coefficient to 0.
    """
    alpha = float(params["alpha"])
    # random_state: sklearn's coordinate descent draws a seed from numpy's global RNG when it has none (unused
    # with the default cyclic selection), which would advance the caller's RNG.
    surrogate = SkLearnLasso(alpha=alpha, random_state=0) if alpha > 0 else SkLearnLinearRegression()
    return Lime(model, interpretable_model=surrogate)


def feature_groups(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Per-sample feature ids 0..M_i-1: (N, 1, H, W) SLIC superpixels for images, else (N, *shape) columns or
    channels (the same for every sample)."""
    if x.ndim == 4:
        return slic_segments(x, params["n_segments"], params["compactness"], params["slic_zero"])
    shape = tuple(x.shape[1:])
    return ablation_mask(shape, 1).to(x.device).expand(len(x), *shape)


def sample_seeds(ctx: RunContext, n: int) -> torch.Tensor:
    """One seed per sample of an explain call, in order, from ``ctx.generator(SEED_OFFSET)``."""
    return torch.randint(0, 2**62, (n,), generator=ctx.generator(SEED_OFFSET))


def attribute_per_sample(
    algorithm: Attribution, x: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, seeds: torch.Tensor,
    kwargs: Mapping[str, Any], rows: int,
) -> torch.Tensor:
    """Attribute each sample of ``x`` by its own captum call with its ``groups`` mask and seed.

    ``kwargs`` holds ``n_samples`` and ``baselines``; at most ``rows`` coalitions go through one forward.
    The surrogate fits (a few hundred rows, tens of features) run on one BLAS thread: multi-threaded OpenBLAS
    took ~200 ms per ``lstsq`` of 300 x 40 on a 2-core machine, one thread under 1 ms.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _attribute_per_sample(algorithm, x, targets, groups, seeds, kwargs, rows)


def _attribute_per_sample(
    algorithm: Attribution, x: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, seeds: torch.Tensor,
    kwargs: Mapping[str, Any], rows: int,
) -> torch.Tensor:
    n_samples = int(kwargs["n_samples"])
    parts = []
    for i in range(len(x)):
        inputs, mask, target = x[i : i + 1], groups[i : i + 1], targets[i : i + 1]
        if isinstance(algorithm, KernelShap) and int(mask.max()) == int(mask.min()):
            ablation = FeatureAblation(algorithm.forward_func)
            parts.append(ablation.attribute(
                inputs, target=target, baselines=kwargs["baselines"], feature_mask=torch.zeros_like(mask)
            ))
            continue
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(int(seeds[i]))
            parts.append(algorithm.attribute(
                inputs, target=target, feature_mask=mask, perturbations_per_eval=max(1, min(n_samples, rows)),
                **kwargs,
            ))
    return torch.cat(parts).float()
