from __future__ import annotations

import pytest

import harness
from harness.registry import Registry, RegistryError


def test_names_are_sorted_and_lookup_works() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    assert reg.names() == ["a", "b"]
    assert reg.get("a") == 1
    assert "b" in reg and "c" not in reg
    assert list(reg) == ["a", "b"] and len(reg) == 2


def test_decorator_registers() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("thing")
    class Thing:
        pass

    assert reg.get("thing") is Thing


def test_unknown_name_lists_known_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    reg.add("beta", 2)
    with pytest.raises(RegistryError, match=r"unknown widget 'gamma'; known widgets: alpha, beta"):
        reg.get("gamma")


def test_duplicate_name_is_an_error_unless_replaced() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    with pytest.raises(RegistryError, match=r"already registered.*alpha"):
        reg.add("alpha", 2)
    reg.add("alpha", 3, replace=True)
    assert reg.get("alpha") == 3


@pytest.mark.parametrize("bad", ["with-dash", "1abc", "", "a b"])
def test_names_must_be_identifiers(bad: str) -> None:
    with pytest.raises(RegistryError, match="identifier"):
        Registry("widget").add(bad, 1)


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        (harness.DATASETS, {"digits", "pasted_digits"}),
        (harness.MODELS, {"mlp", "small_cnn"}),
        (harness.METHODS, {"random", "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad",
                           "deep_lift"}),
        (harness.METRICS, {"deletion", "insertion"}),
    ],
    ids=["datasets", "models", "methods", "metrics"],
)
def test_builtins_are_registered(registry: Registry[object], expected: set[str]) -> None:
    assert expected <= set(registry.names())
    assert registry.names() == sorted(registry.names())
