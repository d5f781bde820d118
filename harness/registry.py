"""One small generic registry: named, frozen specs with lazy factories.

Every dataset, model, attribution method and metric is a frozen spec object registered under a unique
name. Registering builds nothing heavy; the spec's factory runs only when a case needs it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the plain message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A sorted name → spec mapping with a ``register`` decorator.

    >>> reg: Registry[int] = Registry("number")
    >>> reg.add("one", 1)
    >>> reg.get("one"), reg.names()
    (1, ['one'])
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> None:
        if not name.isidentifier():
            raise RegistryError(f"{self.kind} name {name!r} must be a Python identifier (letters, digits, _)")
        if name in self._items and not replace:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered; pass replace=True to override. "
                f"Registered {self.kind}s: {', '.join(self.names())}"
            )
        self._items[name] = item

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            self.add(name, item, replace=replace)
            return item

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
