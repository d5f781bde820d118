"""Attribution methods: importing this package registers every built-in :class:`~harness.specs.MethodSpec`."""
from __future__ import annotations

from harness.methods import attribench, captum_adapter, loss_gradient, random, roar_methods

__all__ = ["attribench", "captum_adapter", "loss_gradient", "random", "roar_methods"]
