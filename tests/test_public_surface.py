"""The public namespaces: ``__all__`` sorted, complete, each name exported once, documented."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

PACKAGES = ["engine", "actors", "engine.testing", "actors.testing"]


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        pytest.skip(f"{name} does not exist yet")


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_unique(name: str) -> None:
    module = _load(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists_and_has_a_docstring(name: str) -> None:
    module = _load(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"{name}.{attr} has no docstring"


@pytest.mark.parametrize("name", ["engine", "actors"])
def test_every_public_class_or_function_is_exported(name: str) -> None:
    module = _load(name)
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith(name)
    }
    assert public <= set(module.__all__)


def test_actors_does_not_leak_into_engine() -> None:
    engine = importlib.import_module("engine")
    for attr in engine.__all__:
        value = getattr(engine, attr)
        assert not getattr(value, "__module__", "").startswith("actors")
