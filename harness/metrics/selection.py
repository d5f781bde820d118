"""Feature selection by recursive elimination: RFEwNA (neural attribution) and scikit-learn RFE baselines.

Definition (ChaosMining, Shi et al., arXiv 2406.12150, "RFEwNA"; after Guyon et al., "Gene selection for
cancer classification using support vector machines", Machine Learning 2002): start from every feature of a
tabular (N, F) data set; each round scores the selected set S (a model trained on the columns S, its test
error, one importance per feature of S), records the round, then drops the lowest-importance features;
it stops when exactly ``keep`` features remain (``keep`` = 0: m, the number of relevant features).

The elimination loop, its schedule, ties and stopping rule are in :mod:`harness.metrics.elimination`.

Per round: error = test MAE for regression, 1 - test accuracy for classification (the whole test split);
precision = |S & R| / |S|, recall = |S & R| / |R| against the relevant set R.

Metrics (tabular, regression and classification, ``needs_training``, ``needs_mask``):

* ``rfe`` (RFEwNA): round 0 scores the case model (``inputs.model``, trained on every feature); each later
  round trains ``inputs.fit(select_columns(data, S), {"rfe_features": S})`` (the identity is exactly what
  determines the sub-bundle, so equal subsets share one cached model). Importance = mean over the first
  ``samples`` test rows (0: all) of |attribution| of the case's method (``inputs.explainer(model)``), with
  target 0 for regression and the label for classification.
* ``rfe_sklearn`` (uses no attribution method): a scikit-learn ``estimator`` fitted on the train split's
  columns S gives the importance, and its own test error is the round's error: ``linear`` (LinearRegression /
  LogisticRegression(max_iter=1000)), ``tree`` (DecisionTreeRegressor / DecisionTreeClassifier) or ``svm``
  (LinearSVR / LinearSVC, dual="auto", max_iter 10000), seeded from ``RunContext.seed``. Importance is what
  ``sklearn.feature_selection.RFE`` ranks by by default: coef_ squared (summed over classes when 2-D; for one
  output it ranks as |coef_|), else feature_importances_. With a step of 1 (``drop`` < 1 / F) the final
  selection is ``RFE(estimator, n_features_to_select=keep, step=1).support_``. Unlike scikit-learn, whose
  fractional ``step`` is a constant int(max(1, step * F)) computed once from the initial F, ``drop`` is
  recomputed from the current |S| every round (a geometric schedule).

Relevant set R: ``inputs.mask`` (bool (N, F), rows of the test split) must mark the same columns in every row
(ChaosMining's symbolic data do); a mask whose rows disagree is an error naming the columns.

Outputs (first dimension: the repeat, 1 here): ``precision``, ``recall``, ``error`` and ``features`` (the
count) of the final selection, each (1,); per round curves ``curve_precision``, ``curve_recall``,
``curve_error``, ``curve_features``, each (1, R). Primary: precision, higher is better. ``info``: the rounds'
selected indices, the schedule, the final round's index, the relevant indices. ``forward_passes`` is 0: the
retrained models' passes are not counted (round 0's go through ``inputs.model`` and are counted there).

Differences from the seed's code (ChaosMining ``examples/RFEwNA_simulation.py``): it retrains the all-feature
MLP too (here the case model, of the same architecture and recipe, is round 0); it removes
int(|S| * (1 - 0.8)) features (float rounding makes that 1, not 2, at |S| = 10; here floor(drop * |S| +
1e-9)) and does not stop at m (only when no feature would be removed or the MAE worsens); on a worse MAE it
reports the worse round's selection with the previous round's MAE (here both are the previous round's);
as published it reads ``remaining_inds`` before assigning it.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harness.metrics.elimination import Round, eliminate, final_index, relevant_features, select_columns
from harness.specs import (
    METRICS,
    DataBundle,
    MetricInputs,
    MetricResult,
    MetricSpec,
    ParamError,
    RunContext,
    resolve_params,
)

# ----------------------------------------------------------------------------------------------- metrics


DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "rfe": MappingProxyType({"drop": 0.5, "keep": 0, "samples": 0, "stop_on_worse": False}),
    "rfe_sklearn": MappingProxyType({"estimator": "linear", "drop": 0.5, "keep": 0, "stop_on_worse": False}),
})
ESTIMATORS = ("linear", "tree", "svm")
CHOICES: Mapping[str, Mapping[str, tuple[Any, ...]]] = MappingProxyType({
    "rfe": MappingProxyType({}), "rfe_sklearn": MappingProxyType({"estimator": ESTIMATORS}),
})
REFERENCE = (
    "Shi et al., ChaosMining, arXiv 2406.12150 (RFEwNA); Guyon et al., Gene selection for cancer "
    "classification using support vector machines, Machine Learning 2002 (RFE)"
)


def _resolve(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    p = resolve_params(f"metric {name}", params, DEFAULTS[name], CHOICES[name])
    if not 0.0 < p["drop"] <= 1.0:
        raise ParamError(f"metric {name}: parameter 'drop' = {p['drop']!r} must lie in (0, 1]")
    if p["keep"] < 0:
        raise ParamError(
            f"metric {name}: parameter 'keep' = {p['keep']!r} must be at least 0 (0: the relevant count)"
        )
    if p.get("samples", 0) < 0:
        raise ParamError(f"metric {name}: parameter 'samples' = {p['samples']!r} must be at least 0 (0: all)")
    return p


def _data(name: str, inputs: MetricInputs) -> DataBundle:
    data = inputs.data
    if data is None:
        raise ValueError(f"{name}: needs inputs.data (the case's data set; a needs_training metric)")
    if data.x_train.ndim != 2 or data.x_test.ndim != 2:
        raise ValueError(f"{name}: needs tabular (N, F) data, got x_test of shape {list(data.x_test.shape)}")
    if data.task not in ("regression", "classification"):
        raise ValueError(f"{name}: unsupported task {data.task!r}")
    return data


def _keep(name: str, keep: int, relevant: Tensor) -> int:
    keep = keep or int(relevant.sum())
    if keep > relevant.numel():
        raise ParamError(
            f"metric {name}: parameter 'keep' = {keep} exceeds the {relevant.numel()} features"
        )
    return keep


def _result(rounds: list[Round], final: int, relevant: Tensor, info: dict[str, Any]) -> MetricResult:
    chosen = rounds[final]
    n_features = rounds[0].size

    def repeat(values: list[float]) -> Tensor:  # (1, len(values)): one repeat
        return torch.tensor([values], dtype=torch.float64)

    outputs = {
        "precision": repeat([chosen.precision])[:, 0], "recall": repeat([chosen.recall])[:, 0],
        "error": repeat([chosen.error])[:, 0], "features": repeat([float(chosen.size)])[:, 0],
        "curve_precision": repeat([r.precision for r in rounds]),
        "curve_recall": repeat([r.recall for r in rounds]),
        "curve_error": repeat([r.error for r in rounds]),
        "curve_features": repeat([float(r.size) for r in rounds]),
    }
    unit, error, count = (0.0, 1.0), (0.0, None), (1.0, float(n_features))
    bounds: dict[str, tuple[float | None, float | None]] = {
        "precision": unit, "recall": unit, "error": error, "features": count,
        "curve_precision": unit, "curve_recall": unit, "curve_error": error, "curve_features": count,
    }
    info = {
        **info,
        "rounds": [r.selected.tolist() for r in rounds],
        "schedule": [r.size for r in rounds],
        "final_round": final,
        "relevant": relevant.nonzero()[:, 0].tolist(),
    }
    return MetricResult(outputs=outputs, primary="precision", higher_is_better=True, bounds=bounds, info=info)


def _device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (``fallback`` for a model without parameters)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else fallback


@torch.no_grad()
def model_error(model: nn.Module, x: Tensor, y: Tensor, task: str, batch_size: int) -> float:
    """Test MAE of output 0 (regression) or 1 - accuracy (classification), in batches, on the model's device
    (the model's mode is left as it is)."""
    device = _device(model, x.device)
    outputs = torch.cat([model(x[s:s + batch_size].to(device)).detach().double().cpu()
                         for s in range(0, len(x), batch_size)])
    if task == "regression":
        return float((outputs[:, 0] - y.double().cpu()).abs().mean())
    return 1.0 - float((outputs.argmax(1) == y.cpu()).double().mean())


def rfe(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """RFEwNA: retrain on the selection, drop the features of least mean |attribution| (module docstring)."""
    name = "rfe"
    p = _resolve(name, params)
    data = _data(name, inputs)
    if inputs.fit is None:
        raise ValueError(f"{name}: needs inputs.fit (trains a model on a derived data set; needs_training)")
    if inputs.explainer is None:
        raise ValueError(f"{name}: needs inputs.explainer (the case's method for a retrained model)")
    fit, explainer = inputs.fit, inputs.explainer
    n_features = data.x_test.shape[1]
    relevant = relevant_features(name, inputs.mask, n_features)
    keep = _keep(name, p["keep"], relevant)
    n = min(p["samples"] or len(data.y_test), len(data.y_test))
    if n == 0:
        raise ValueError(f"{name}: the data set has no test rows")
    regression = data.task == "regression"
    target = torch.zeros(n, dtype=torch.long) if regression else data.y_test[:n].long()

    def score(selected: Tensor) -> tuple[Tensor, float]:
        if selected.numel() == n_features:  # round 0: the case model, trained on every feature
            model = inputs.model
        else:
            model = fit(select_columns(data, selected), {"rfe_features": selected.tolist()})
        x = data.x_test[:, selected.to(data.x_test.device)]
        error = model_error(model, x, data.y_test, data.task, ctx.batch_size)
        device = _device(model, ctx.device)
        attr = explainer(model)(x[:n].to(device), target.to(device))
        if attr.shape != (n, selected.numel()) or not bool(torch.isfinite(attr).all()):
            raise ValueError(
                f"{name}: the explainer returned {attr.dtype} {list(attr.shape)} for inputs of shape "
                f"[{n}, {selected.numel()}]; expected finite values of the input's shape"
            )
        return attr.detach().abs().double().mean(0).cpu(), error

    rounds = eliminate(n_features, relevant, score, keep, p["drop"], p["stop_on_worse"])
    info = {"drop": p["drop"], "keep": keep, "samples": n, "stop_on_worse": p["stop_on_worse"]}
    return _result(rounds, final_index(rounds, p["stop_on_worse"]), relevant, info)


def make_estimator(kind: str, task: str, seed: int) -> Any:
    """The scikit-learn estimator ``rfe_sklearn`` fits (see the module docstring)."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.svm import LinearSVC, LinearSVR
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    state = seed % 2**32
    regression = task == "regression"
    if kind == "linear":
        return LinearRegression() if regression else LogisticRegression(max_iter=1000)
    if kind == "tree":
        return (DecisionTreeRegressor if regression else DecisionTreeClassifier)(random_state=state)
    if kind == "svm":
        return (LinearSVR if regression else LinearSVC)(dual="auto", max_iter=10000, random_state=state)
    raise ParamError(f"metric rfe_sklearn: parameter 'estimator' = {kind!r} is not valid; choices: "
                     + ", ".join(repr(c) for c in ESTIMATORS))


def sklearn_importance(estimator: Any) -> np.ndarray:
    """What ``sklearn.feature_selection.RFE`` ranks by by default: coef_ ** 2 (summed over classes when 2-D),
    else feature_importances_."""
    coef = getattr(estimator, "coef_", None)
    if coef is not None:
        coef = np.asarray(coef, dtype=np.float64)
        return coef**2 if coef.ndim == 1 else (coef**2).sum(0)
    return np.asarray(estimator.feature_importances_, dtype=np.float64)


def rfe_sklearn(inputs: MetricInputs, ctx: RunContext, **params: Any) -> MetricResult:
    """RFE with a scikit-learn estimator's own importance (module docstring); uses no attribution method."""
    name = "rfe_sklearn"
    p = _resolve(name, params)
    data = _data(name, inputs)
    n_features = data.x_test.shape[1]
    relevant = relevant_features(name, inputs.mask, n_features)
    keep = _keep(name, p["keep"], relevant)
    regression = data.task == "regression"
    x_train, x_test = (x.detach().cpu().double().numpy() for x in (data.x_train, data.x_test))
    label_type = torch.float64 if regression else torch.long
    y_train, y_test = (y.detach().cpu().to(label_type).numpy() for y in (data.y_train, data.y_test))

    def score(selected: Tensor) -> tuple[Tensor, float]:
        columns = selected.numpy()
        estimator = make_estimator(p["estimator"], data.task, ctx.seed)
        with warnings.catch_warnings():
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(x_train[:, columns], y_train)
        predicted = estimator.predict(x_test[:, columns])
        if regression:
            error = float(np.abs(predicted - y_test).mean())
        else:
            error = 1.0 - float((predicted == y_test).mean())
        return torch.from_numpy(sklearn_importance(estimator)), error

    rounds = eliminate(n_features, relevant, score, keep, p["drop"], p["stop_on_worse"])
    info = {"drop": p["drop"], "keep": keep, "stop_on_worse": p["stop_on_worse"], "estimator": p["estimator"]}
    return _result(rounds, final_index(rounds, p["stop_on_worse"]), relevant, info)


TABULAR = frozenset({"tabular"})
TASKS = frozenset({"regression", "classification"})
SPECS: tuple[tuple[str, Callable[..., MetricResult], bool, str], ...] = (
    ("rfe", rfe, True,
     "RFEwNA: retrain, drop the least mean-|attribution| features; precision of the final selection"),
    ("rfe_sklearn", rfe_sklearn, False,
     "RFE by a scikit-learn estimator's importance (linear / tree / SVM); precision of the final selection"),
)

for _name, _compute, _uses_method, _description in SPECS:
    METRICS.add(_name, MetricSpec(
        name=_name, family="selection", compute=_compute, modalities=TABULAR, defaults=DEFAULTS[_name],
        choices=CHOICES[_name], description=_description, reference=REFERENCE, needs_mask=True,
        needs_training=True, per_sample=False, tasks=TASKS, uses_method=_uses_method,
    ))
