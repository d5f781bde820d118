"""On-disk cache of data sets, trained models and attributions.

Each entry is a directory ``<root>/<kind>/<key>/`` where ``key`` is a hash of everything that made the entry
(:func:`spec_key`), so a stale entry is never used: change a parameter, a seed or a builder version and the
key changes. Entries hold only tensors (``torch.save`` of a dict of tensors, loaded with
``weights_only=True``) and JSON, never pickled objects. An entry is built under a file lock into a temporary
directory and renamed into place when complete, so parallel workers never build it twice and a crash never
leaves a half-written entry behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

SPEC_FILE = "spec.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same spec always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_key(spec: Mapping[str, Any], length: int = 16) -> str:
    """A short, stable hash of a JSON-able spec."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:length]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xaiharness"


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


class Cache:
    """``get_or_build(kind, spec, build)`` returns the directory of a complete entry, building it once."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def entry(self, kind: str, spec: Mapping[str, Any]) -> Path:
        return self.root / kind / spec_key(spec)

    def get_or_build(self, kind: str, spec: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
        final = self.entry(kind, spec)
        if (final / SPEC_FILE).exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if (final / SPEC_FILE).exists():  # another worker built it while we waited
                return final
            tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                build(tmp)
                save_json(tmp / SPEC_FILE, dict(spec))
                shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover without spec.json
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final
