"""Data sets: importing this package registers every built-in :class:`~harness.specs.DatasetSpec`."""
from __future__ import annotations

from harness.data import digits, pasted

__all__ = ["digits", "pasted"]
