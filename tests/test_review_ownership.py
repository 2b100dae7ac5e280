"""Review of stream ownership (aggregate_name) and the changes around it.

Each test here failed when written, showing an engine bug or a gap in the backend
contract; both are fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
import trio
import trio.testing

from actors import Aggregate, applies, handles
from engine import (
    Append,
    AppendResult,
    DefinitionError,
    Engine,
    EngineError,
    MemoryEventLog,
    Snapshot,
    StoredEvent,
)
from engine.testing import check_event_log


class Rename(msgspec.Struct, frozen=True):
    name: str


class Renamed(msgspec.Struct, frozen=True):
    name: str


class Customer(Aggregate):
    name: str

    def __init__(self) -> None:
        self.name = ""

    @handles
    def rename(self, c: Rename) -> list[Renamed]:
        return [Renamed(c.name)]

    @applies
    def renamed(self, e: Renamed) -> None:
        self.name = e.name


class Supplier(Customer):
    """Another aggregate type (its own aggregate_name) with the same events."""


async def test_a_sender_refused_the_stream_passes_its_live_slot_on() -> None:
    # Scenario: every live slot is busy, so senders queue for one (FIFO). The first one
    # woken is refused (the stream belongs to another type): _activate has already
    # passivated the idle actor, and _wait_for_capacity lets the DefinitionError out
    # without waking the next sender, who then waits for a slot that is free, forever.
    async with Engine.open(None, aggregates=[Customer, Supplier], max_live_aggregates=1) as engine:
        await engine.send(Customer, "owned", Rename("Ada"))
        await engine.send(Customer, "busy", Rename("x"))  # passivates "owned"
        engine.send_nowait(Customer, "busy", Rename("y"))  # in flight: no slot is free
        refused: list[BaseException] = []
        served: list[str] = []

        async def refused_sender() -> None:
            try:
                await engine.send(Supplier, "owned", Rename("Acme"))
            except DefinitionError as e:
                refused.append(e)

        async def sender(stream_id: str) -> None:
            await engine.send(Customer, stream_id, Rename(stream_id))
            served.append(stream_id)

        async with trio.open_nursery() as nursery:
            # The refused sender in the middle: whichever way trio orders this batch of
            # new tasks, it queues ahead of two of the others.
            for stream_id in ("o1", "o2"):
                nursery.start_soon(sender, stream_id)
            nursery.start_soon(refused_sender)
            for stream_id in ("o3", "o4"):
                nursery.start_soon(sender, stream_id)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # only the hung senders are left to cancel
        assert len(refused) == 1
        assert sorted(served) == ["o1", "o2", "o3", "o4"]


class _DropsAggregate(MemoryEventLog):
    """A backend that stores everything the contract asks about, except which aggregate
    type created a stream (or took a snapshot): the engine's ownership check is then off."""

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        checkpoints: Sequence[tuple[str, int]] = (),
        projections: Sequence[tuple[str, Snapshot]] = (),
    ) -> tuple[list[AppendResult | EngineError], list[StoredEvent]]:
        return super().append_batch(
            [msgspec.structs.replace(a, aggregate=None) for a in appends],
            snapshots=[(s, msgspec.structs.replace(x, aggregate=None)) for s, x in snapshots],
            checkpoints=checkpoints,
            projections=projections,
        )


async def test_with_the_dropping_backend_another_type_loads_the_stream() -> None:
    """The premise of the next test: such a backend silently turns ownership off."""
    async with Engine.open(
        None, log=_DropsAggregate(), aggregates=[Customer, Supplier], max_live_aggregates=1
    ) as engine:
        await engine.send(Customer, "42", Rename("Ada"))
        await engine.send(Customer, "43", Rename("Bo"))  # passivates "42"
        assert (await engine.send(Supplier, "42", Rename("Acme"))).version == 2


def test_the_log_contract_requires_the_creating_type_to_round_trip() -> None:
    with pytest.raises(AssertionError):
        check_event_log(_DropsAggregate)
