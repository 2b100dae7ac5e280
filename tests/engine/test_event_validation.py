"""An event that cannot be stored and read back never reaches the log."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import Aggregate, EncodeError, Engine, applies, handles
from actorlog.lowlevel import EventRegistry
from actorlog.storage import MemoryEventLog


class Put(msgspec.Struct, frozen=True):
    value: object


class Stored(msgspec.Struct, frozen=True):
    amount: int


class Box(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    @handles
    def put(self, c: Put) -> list[Stored]:
        return [Stored(c.value)]  # type: ignore[arg-type]  # the bug under test

    @applies
    def stored(self, e: Stored) -> None:
        self.total += e.amount if isinstance(e.amount, int) else 0


def test_registry_refuses_an_event_that_does_not_read_back() -> None:
    registry = EventRegistry([Stored])
    with pytest.raises(EncodeError, match="cannot store"):
        registry.encode(Stored("5"))  # type: ignore[arg-type]


def test_registry_refuses_an_int_beyond_64_bits() -> None:
    registry = EventRegistry([Stored])
    with pytest.raises(EncodeError):
        registry.encode(Stored(2**70))


@pytest.mark.parametrize("bad", ["5", 2**70, None])
async def test_a_command_whose_event_cannot_be_stored_appends_nothing(bad: object) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Box]) as engine:
        ok = await engine.send(Box, "b", Put(3))
        with pytest.raises(EncodeError) as caught:
            await engine.send(Box, "b", Put(bad))
        assert caught.value.__cause__ is not None
        assert engine.log.head_position() == ok.position
        again = await engine.send(Box, "b", Put(4))
        assert again.version == 2  # the stream carried on from the good event
