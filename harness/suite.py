"""Suites: TOML files that set the benchmark grid and its sizes, validated before any work.

A suite names data sets, models (with training settings), attribution methods and metrics, each as a table
whose key is the *instance name* used in case ids, with an optional field naming the registered spec
(default: the key itself) and that spec's parameters::

    [suite]
    seed = 0
    samples = 32              # test samples per case
    target = "label"          # or "prediction"
    batch_size = 512          # most rows in one forward pass
    memory_mb = 1024          # budget for one chunk of perturbed inputs
    plugins = ["my_metrics"]  # modules imported first: they may register their own specs
    exclude = ["audio*-*-occlusion-*"]  # case-id patterns (fnmatch) left out of the grid
    correct_only = false      # score only test samples the model classifies correctly (attribench)

    [datasets.digits]
    [models.cnn]
    model = "small_cnn"
    [models.cnn.training]
    epochs = 5
    [methods.ig]
    method = "integrated_gradients"
    n_steps = 16
    [metrics.deletion_morf]
    metric = "deletion"
    order = "morf"
    [metrics.roar]
    only = ["digits-cnn-*"]   # case-id patterns (fnmatch): this entry joins only the cases matching one

Every problem (unknown key or name, wrong type, missing field) raises :class:`SuiteError` naming the file, the
key and the valid choices.
"""
from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import spec_key
from harness.registry import Registry, RegistryError
from harness.specs import DATASETS, METHODS, METRICS, MODELS, ParamError, resolve_params

SUITE_DEFAULTS: dict[str, Any] = {
    "name": "",
    "description": "",
    "seed": 0,
    "samples": 32,
    "target": "label",
    "batch_size": 512,
    "memory_mb": 1024,
    "plugins": [],
    "markers": [],
    "exclude": [],
    "correct_only": False,
}
SUITE_CHOICES = {"target": ("label", "prediction")}
SECTIONS = ("datasets", "models", "methods", "metrics")
REGISTRY_OF: dict[str, tuple[str, Registry[Any]]] = {
    "datasets": ("dataset", DATASETS),
    "models": ("model", MODELS),
    "methods": ("method", METHODS),
    "metrics": ("metric", METRICS),
}


class SuiteError(ValueError):
    """A suite that cannot run; the message names the file and the offending key."""


@dataclass(frozen=True)
class Entry:
    """One named instance of a registered spec with resolved parameters."""

    key: str
    name: str
    params: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] = ()
    """Case-id patterns (fnmatch); if given, the entry joins only cases whose id matches one of them. Not part
    of the spec: it selects cases, it does not change their numbers."""

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "params": dict(self.params)}
        if self.training:
            out["training"] = dict(self.training)
        return out


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    text: str
    settings: Mapping[str, Any]
    datasets: tuple[Entry, ...]
    models: tuple[Entry, ...]
    methods: tuple[Entry, ...]
    metrics: tuple[Entry, ...]

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])

    def key(self) -> str:
        return spec_key({"text": self.text})


def find_suite(name_or_path: str, suites_dir: Path) -> Path:
    """A suite by name (``suites/<name>.toml``) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise SuiteError(f"suite file {path} does not exist")
        return path
    candidate = suites_dir / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in suites_dir.glob("*.toml"))
    raise SuiteError(f"unknown suite {name_or_path!r}; suites in {suites_dir}: {', '.join(known) or '(none)'}")


def load_suite(path: Path | str) -> Suite:
    path = Path(path)
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    return parse_suite(raw, path, text)


def parse_suite(raw: Mapping[str, Any], path: Path, text: str = "") -> Suite:
    unknown = sorted(set(raw) - {"suite", *SECTIONS})
    if unknown:
        raise SuiteError(
            f"{path}: unknown top-level key {unknown[0]!r}; valid keys: suite, {', '.join(SECTIONS)}"
        )
    settings = _settings(raw.get("suite", {}), path)
    _import_plugins(settings["plugins"], path)
    sections = {section: _entries(raw, section, path) for section in SECTIONS}
    return Suite(
        name=settings["name"] or path.stem, path=path, text=text, settings=settings, **sections
    )


def _settings(table: Any, path: Path) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise SuiteError(f"{path}: [suite] must be a table, got {type(table).__name__}")
    try:
        settings = resolve_params(f"{path}: [suite]", table, SUITE_DEFAULTS, SUITE_CHOICES)
    except ParamError as exc:
        raise SuiteError(str(exc)) from None
    for key in ("samples", "batch_size", "memory_mb"):
        if settings[key] < 1:
            raise SuiteError(f"{path}: [suite] {key} = {settings[key]} must be at least 1")
    for key in ("plugins", "markers", "exclude"):
        bad = [v for v in settings[key] if not isinstance(v, str)]
        if bad:
            raise SuiteError(f"{path}: [suite] {key} must be a list of strings; {bad[0]!r} is not")
    return settings


def _import_plugins(modules: list[Any], path: Path) -> None:
    """Import user modules named in the suite (they register their own specs); the suite's folder and its
    parent are importable."""
    for extra in (str(path.parent.resolve()), str(path.parent.parent.resolve())):
        if extra not in sys.path:
            sys.path.append(extra)
    for module in modules:
        try:
            importlib.import_module(str(module))
        except ImportError as exc:
            raise SuiteError(f"{path}: [suite] plugins: cannot import {module!r}: {exc}") from None


def _entries(raw: Mapping[str, Any], section: str, path: Path) -> tuple[Entry, ...]:
    table = raw.get(section)
    if not table:
        raise SuiteError(f"{path}: missing [{section}]: name at least one, e.g. [{section}.NAME]")
    if not isinstance(table, Mapping):
        raise SuiteError(f"{path}: [{section}] must be a table of named entries, got {type(table).__name__}")
    return tuple(_entry(section, key, value, path) for key, value in table.items())


def _entry(section: str, key: str, value: Any, path: Path) -> Entry:
    kind, registry = REGISTRY_OF[section]
    where = f"{path}: [{section}.{key}]"
    if not key.isidentifier():
        raise SuiteError(f"{where}: instance names must be identifiers (letters, digits, _)")
    if section == "methods" and key == "none":
        raise SuiteError(f"{where}: the method name 'none' is reserved for cases of metrics that use no method")
    if not isinstance(value, Mapping):
        raise SuiteError(f"{where} must be a table, got {type(value).__name__}")
    params = dict(value)
    name = params.pop(kind, key)
    try:
        spec = registry.get(name)
    except RegistryError as exc:
        raise SuiteError(f"{where}: {exc}") from None
    training: dict[str, Any] = {}
    if section == "models":
        training = _training(params.pop("training", {}), where)
    only = params.pop("only", [])
    if not isinstance(only, list) or not all(isinstance(v, str) for v in only):
        raise SuiteError(f"{where}: only must be a list of case-id patterns (strings), got {only!r}")
    try:
        resolved = resolve_params(where, params, spec.defaults, spec.choices)
    except ParamError as exc:
        raise SuiteError(str(exc)) from None
    return Entry(key=key, name=name, params=resolved, training=training, only=tuple(only))


def _training(table: Any, where: str) -> dict[str, Any]:
    from harness.models.training import resolve_training

    if not isinstance(table, Mapping):
        raise SuiteError(f"{where}: training must be a table, got {type(table).__name__}")
    try:  # every check training makes, at load time: a bad value never waits for the first case to train
        return resolve_training(dict(table), f"{where} training")
    except ParamError as exc:
        raise SuiteError(str(exc)) from None
