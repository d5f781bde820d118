"""Attribution methods: importing this package registers every built-in :class:`~harness.specs.MethodSpec`."""
from __future__ import annotations

from harness.methods import captum_adapter, random

__all__ = ["captum_adapter", "random"]
