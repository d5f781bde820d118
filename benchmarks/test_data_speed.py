"""How long the offline data sets take to generate, at the smoke suite's sizes and at larger ones.

The harness caches every data set (keyed by a hash of its spec), so generation runs once per spec and machine;
these benchmarks keep that one build short. The goal (issue: ChaosMining data) is seconds at the smoke sizes.
Each case builds the data set from scratch with the registered defaults overridden as in ``suites/smoke.toml``
(``smoke``) or at the sizes of ``suites/chaosmining.toml`` / the paper's canvas (``large``).
``extra_info`` records the samples built per second. Run with ``make benchmarks ARGS='-k data_speed'``.
"""
from __future__ import annotations

from typing import Any

import pytest

import harness.data  # noqa: F401  (registers the datasets)
from harness.specs import DATASETS

WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "smoke-chaos_sbrp": ("chaos_vision", {"condition": "SBRP", "canvas": 24, "object_size": 10,
                                          "n_train": 1000, "n_test": 100}),
    "smoke-audio_rbfp": ("chaos_audio", {"condition": "RBFP", "length": 2000, "n_train": 2000, "n_test": 300}),
    "smoke-audio_sbrp": ("chaos_audio", {"condition": "SBRP", "length": 2000, "n_train": 2000, "n_test": 300}),
    "smoke-symbolic_m6": ("symbolic", {"formula": 10, "n_samples": 2000, "n_noise": 20}),
    "smoke-pasted_digits": ("pasted_digits", {"n_train": 2000, "n_test": 500}),
    "large-vision_sbrp_32px": ("chaos_vision", {"condition": "SBRP", "canvas": 32, "object_size": 12,
                                                "n_train": 4000, "n_test": 300}),
    "large-vision_sbrp_224px": ("chaos_vision", {"condition": "SBRP", "canvas": 224, "object_size": 32,
                                                 "n_train": 1000, "n_test": 200}),
    "large-audio_sbrp_16k": ("chaos_audio", {"condition": "SBRP", "length": 16000, "n_train": 1000,
                                             "n_test": 200}),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_data_generation_speed(benchmark: Any, workload: str) -> None:
    name, params = WORKLOADS[workload]
    spec = DATASETS.get(name)
    resolved = {**spec.defaults, **params}
    rounds = 3 if workload.startswith("smoke") else 1
    bundle = benchmark.pedantic(lambda: spec.build(0, **resolved), rounds=rounds, iterations=1, warmup_rounds=0)
    samples = len(bundle.x_train) + len(bundle.x_test)
    assert samples == resolved.get("n_train", 0) + resolved.get("n_test", 0) or name == "symbolic"
    benchmark.extra_info["samples"] = samples
    benchmark.extra_info["samples_per_second"] = samples / benchmark.stats.stats.median
