"""A ``park`` projector keeps only its most recent ``max_parked`` parked events, each with
its error's text cut to 1 KB, and counts them all in its statistics: parking every event
of a long log must not grow memory with the log (README guarantee 7)."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import (
    Aggregate,
    DefinitionError,
    Engine,
    Projector,
    Recorded,
    applies,
    handles,
)
from actorlog.storage import MemoryEventLog
from actorlog.testing import given_events


class Do(msgspec.Struct, frozen=True):
    pass


class Done(msgspec.Struct, frozen=True):
    pass


class A(Aggregate):
    @handles
    def do(self, c: Do) -> list[Done]:
        return [Done()]

    @applies
    def done(self, e: Done) -> None:
        pass


class Parks(Projector):
    on_error = "park"
    max_parked = 3

    def __init__(self) -> None:
        self.n = 0

    @applies
    def done(self, e: Done, meta: Recorded) -> None:
        raise ValueError("x" * 20_000)  # a message quoting a big event, say

    def count(self) -> int:
        return self.n


async def test_only_the_most_recent_parked_are_kept_and_all_are_counted() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[A], projectors=[Parks]) as engine:
        for i in range(10):
            await engine.send(A, f"s{i % 2}", Do())
        await engine.wait_projected()
        parked = engine.parked(Parks)
        assert [p.position for p in parked] == [8, 9, 10]
        assert all(len(p.error) <= 1024 and p.error.startswith("ValueError('xxx") for p in parked)
        assert engine.statistics().projectors[0].parked == 10
        engine.rebuild(Parks)
        await engine.wait_projected()
        assert [p.position for p in engine.parked(Parks)] == [8, 9, 10]
        assert engine.statistics().projectors[0].parked == 10  # counted afresh


async def test_max_parked_zero_keeps_none_but_counts() -> None:
    class Counts(Parks):
        max_parked = 0

    async with Engine.open(log=MemoryEventLog(), aggregates=[A], projectors=[Counts]) as engine:
        await engine.send(A, "s", Do())
        await engine.wait_projected()
        assert engine.parked(Counts) == []
        assert engine.statistics().projectors[0].parked == 1


def test_the_default_bound() -> None:
    assert Projector.max_parked == 1000


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3", None])
def test_a_bad_max_parked_is_refused_at_definition(bad: object) -> None:
    with pytest.raises(DefinitionError, match="max_parked"):

        class Bad(Parks):
            max_parked = bad  # type: ignore[assignment]


def test_the_kit_cuts_the_error_text_as_the_engine_does() -> None:
    scenario = given_events(Parks, [("s", Done())])
    (parked,) = scenario.parked
    assert len(parked.error) == 1024 and parked.error.endswith("…")
