"""Mistakes caught when the class is created, not at open or at the first command."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import Aggregate, DefinitionError, Projector, applies, handles


class Go(msgspec.Struct, frozen=True):
    n: int


class Went(msgspec.Struct, frozen=True):
    n: int


class Loose(msgspec.Struct):  # not frozen
    n: int


def test_an_async_handler_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="async"):

        class Bad(Aggregate):
            @handles
            async def go(self, c: Go) -> list[Went]:
                return [Went(c.n)]

            @applies
            def went(self, e: Went) -> None:
                pass


def test_an_async_applier_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="async"):

        class BadAggregate(Aggregate):
            @applies
            async def went(self, e: Went) -> None:
                pass

    with pytest.raises(DefinitionError, match="async"):

        class BadProjector(Projector):
            @applies
            async def went(self, e: Went) -> None:
                pass


def test_a_non_frozen_event_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="frozen"):

        class BadAggregate(Aggregate):
            @handles
            def go(self, c: Go) -> list[Loose]:
                return [Loose(c.n)]

            @applies
            def loose(self, e: Loose) -> None:
                pass

    with pytest.raises(DefinitionError, match="frozen"):

        class BadProjector(Projector):
            @applies
            def loose(self, e: Loose) -> None:
                pass


def test_an_aggregate_init_that_needs_arguments_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="no arguments"):

        class Bad(Aggregate):
            def __init__(self, owner: str) -> None:
                self.owner = owner


def test_an_aggregate_init_with_defaults_is_fine() -> None:
    class Fine(Aggregate):
        def __init__(self, owner: str = "") -> None:
            self.owner = owner

    assert Fine().owner == ""
