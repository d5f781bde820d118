"""Expanding a suite into cases: one per compatible (dataset, model, method, metric).

The order is the suite's own order (data sets, then models, methods, metrics), so collection is identical on
every xdist worker. A case's ``key`` hashes everything that determines its numbers; ``--resume`` skips a case
only when a recorded case has the same id *and* key.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from harness.cache import spec_key
from harness.specs import DATASETS, METHODS, METRICS, MODELS
from harness.suite import Entry, Suite


@dataclass(frozen=True)
class Case:
    suite: Suite
    dataset: Entry
    model: Entry
    method: Entry
    metric: Entry

    @property
    def id(self) -> str:
        return f"{self.dataset.key}-{self.model.key}-{self.method.key}-{self.metric.key}"

    @property
    def family(self) -> str:
        return METRICS.get(self.metric.name).family

    @property
    def seed(self) -> int:
        return self.suite.seed

    def dataset_spec(self) -> dict[str, Any]:
        return {**self.dataset.spec(), "version": DATASETS.get(self.dataset.name).version, "seed": self.seed}

    def model_spec(self) -> dict[str, Any]:
        version = MODELS.get(self.model.name).version
        return {"dataset": self.dataset_spec(), **self.model.spec(), "version": version, "seed": self.seed}

    @property
    def uses_method(self) -> bool:
        return self.method is not NO_METHOD

    def attribution_spec(self) -> dict[str, Any]:
        settings = self.suite.settings
        version = METHODS.get(self.method.name).version if self.uses_method else 0
        return {
            "model": self.model_spec(),
            "method": {**self.method.spec(), "version": version},
            "samples": settings["samples"],
            "target": settings["target"],
            **({"correct_only": True} if settings["correct_only"] else {}),
            "seed": self.seed,
        }

    def spec(self) -> dict[str, Any]:
        """Everything that determines this case's numbers (batch and memory budgets do not)."""
        metric = {**self.metric.spec(), "version": METRICS.get(self.metric.name).version}
        return {**self.attribution_spec(), "metric": metric}

    def key(self) -> str:
        return spec_key(self.spec())

    def markers(self) -> list[str]:
        return [self.family, self.suite.name, *self.suite.settings["markers"]]


NO_METHOD = Entry(key="none", name="none", params={})
"""The method of a case whose metric ranks inputs without an attribution method (``uses_method=False``)."""


def compatible(dataset: Entry, model: Entry, method: Entry, metric: Entry) -> bool:
    """The model takes the data set's modality; the method applies to that modality and the model has the
    traits it needs; the metric applies to its modality and task; the ground truth the metric needs exists (a mask, or the true attribution of the kind the method estimates)."""
    data_spec = DATASETS.get(dataset.name)
    metric_spec = METRICS.get(metric.name)
    model_spec = MODELS.get(model.name)
    if method is not NO_METHOD:
        method_spec = METHODS.get(method.name)
        if data_spec.modality not in method_spec.modalities or not method_spec.needs <= model_spec.traits:
            return False
    return (
        data_spec.modality in model_spec.modalities
        and data_spec.modality in metric_spec.modalities
        and data_spec.task in metric_spec.tasks
        and (data_spec.has_mask or not metric_spec.needs_mask)
        and (not metric_spec.needs_truth
             or (method is not NO_METHOD and METHODS.get(method.name).truth in data_spec.truths))
    )


def expand(suite: Suite, family: str | None = None) -> list[Case]:
    """Every compatible case of ``suite`` (of one metric ``family`` if given), in suite order; a metric
    that uses no method gets one case per (data set, model) with the method ``none``, after the others.
    Cases whose id matches a pattern of the suite's ``exclude`` list (``fnmatch``, case-sensitive) are left
    out, and so are cases whose id matches none of the ``only`` patterns of one of their entries."""
    cases: list[Case] = []
    for dataset in suite.datasets:
        for model in suite.models:
            metrics = [m for m in suite.metrics
                       if family is None or METRICS.get(m.name).family == family]
            with_method = [m for m in metrics if METRICS.get(m.name).uses_method]
            free = [m for m in metrics if not METRICS.get(m.name).uses_method]
            cases += [Case(suite, dataset, model, method, metric)
                      for method in suite.methods for metric in with_method
                      if compatible(dataset, model, method, metric)]
            cases += [Case(suite, dataset, model, NO_METHOD, metric)
                      for metric in free if compatible(dataset, model, NO_METHOD, metric)]
    exclude = suite.settings["exclude"]
    return [case for case in cases if not any(fnmatchcase(case.id, pattern) for pattern in exclude)
            and all(any(fnmatchcase(case.id, pattern) for pattern in entry.only)
                    for entry in (case.dataset, case.model, case.method, case.metric) if entry.only)]
