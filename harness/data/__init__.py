"""Data sets: importing this package registers every built-in :class:`~harness.specs.DatasetSpec`."""
from __future__ import annotations

from harness.data import chaos_audio, chaos_vision, digits, pasted, singing, symbolic, vision

__all__ = ["chaos_audio", "chaos_vision", "digits", "pasted", "singing", "symbolic", "vision"]
