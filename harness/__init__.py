"""xaiharness: a pytest-driven benchmark harness for feature-attribution methods.

Importing the package registers the built-in data sets, models, methods and metrics.
"""
from harness import data, methods, metrics, models  # noqa: F401  (register the built-in specs)
from harness.registry import Registry, RegistryError
from harness.results import load_results
from harness.specs import (
    DATASETS,
    METHODS,
    METRICS,
    MODELS,
    DatasetSpec,
    MethodSpec,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ModelSpec,
    RunContext,
)

__all__ = [
    "DATASETS", "METHODS", "METRICS", "MODELS", "DatasetSpec", "MethodSpec", "MetricInputs", "MetricResult",
    "MetricSpec", "ModelSpec", "Registry", "RegistryError", "RunContext", "load_results",
]
__version__ = "0.1.0"
