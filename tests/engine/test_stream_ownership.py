"""A stream created by one aggregate type is never loaded, nor appended to, as another.

Stream ids are shared by all aggregate types. While an actor is live the engine knows its
type; after passivation or a restart it reads the type from the log: the append that
creates a stream records ``aggregate_name`` on its events, snapshots record it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from actorlog import Aggregate, DefinitionError, Engine, EngineError, applies, handles
from actorlog.storage import (
    NO_STREAM,
    Append,
    AppendResult,
    LmdbEventLog,
    MemoryEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
    check_event_log,
)


class Rename(msgspec.Struct, frozen=True):
    name: str


class Renamed(msgspec.Struct, frozen=True):
    name: str


class Customer(Aggregate):
    """Applies ``Renamed``, as ``Supplier`` does: event types alone cannot tell them apart."""

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
    """Another aggregate type with the same events (its own ``aggregate_name``)."""


class SnappingCustomer(Customer):
    aggregate_name = "Customer"
    snapshot_every = 2


class SnappingSupplier(Supplier):
    aggregate_name = "Supplier"
    snapshot_every = 2


class Client(Customer):
    """``Customer`` renamed: it keeps the old name in the log."""

    aggregate_name = "Customer"


async def test_another_type_cannot_load_a_stream_after_a_restart(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Customer]) as engine:
        await engine.send(Customer, "42", Rename("Ada"))
    async with Engine.open(tmp_path, aggregates=[Customer, Supplier]) as engine:
        with pytest.raises(DefinitionError, match="belongs to aggregate type 'Customer'"):
            await engine.send(Supplier, "42", Rename("Acme"))
        assert engine.log.stream_version("42") == 1  # nothing appended
        assert not engine.is_live("42")
        await engine.send(Customer, "42", Rename("Ada L."))  # the owner still works
        assert engine.log.stream_version("42") == 2


async def test_another_type_cannot_load_a_passivated_stream(tmp_path: Path) -> None:
    async with Engine.open(
        tmp_path, aggregates=[Customer, Supplier], max_live_aggregates=1
    ) as engine:
        await engine.send(Customer, "42", Rename("Ada"))
        await engine.send(Supplier, "s-1", Rename("Acme"))  # passivates "42"
        assert not engine.is_live("42")
        with pytest.raises(DefinitionError, match="belongs to aggregate type 'Customer'"):
            await engine.send(Supplier, "42", Rename("Acme"))
        assert engine.log.stream_version("42") == 1


async def test_a_snapshot_names_its_type_too(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[SnappingCustomer]) as engine:
        for name in ("a", "b", "c"):
            await engine.send(SnappingCustomer, "42", Rename(name))
        await engine.send(SnappingCustomer, "42", Rename("d"))
        snapshot = engine.log.load_snapshot("42")
        assert snapshot is not None and snapshot.aggregate == "Customer"
    async with Engine.open(tmp_path, aggregates=[SnappingSupplier]) as engine:
        with pytest.raises(DefinitionError, match="belongs to aggregate type 'Customer'"):
            await engine.send(SnappingSupplier, "42", Rename("Acme"))


async def test_another_types_snapshot_is_not_used(tmp_path: Path) -> None:
    # A stream written without a type belongs to no one, but a snapshot says who took it:
    # the other type replays the events instead of adopting a state that is not its own.
    log = LmdbEventLog(tmp_path)
    try:
        payload = msgspec.msgpack.encode(Renamed("raw"))
        log.append_batch(
            [Append("42", NO_STREAM, (("Renamed", payload),))],
            snapshots=[("42", Snapshot(1, 1, msgspec.msgpack.encode({"name": "x"}), "Supplier"))],
        )
    finally:
        log.close()
    async with Engine.open(tmp_path, aggregates=[SnappingCustomer]) as engine:
        ack = await engine.send(SnappingCustomer, "42", Rename("Ada"))
        assert ack.version == 2
    log = LmdbEventLog(tmp_path)  # the snapshot rides on a later group: read it after close
    try:
        snapshot = log.load_snapshot("42")
    finally:
        log.close()
    # Its own snapshot, due only because it counted 2 events from version 0: had it adopted
    # Supplier's (version 1), one event would not have made one due.
    assert snapshot is not None and (snapshot.aggregate, snapshot.version) == ("Customer", 2)


async def test_a_renamed_class_keeping_its_name_loads_its_streams(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Customer]) as engine:
        await engine.send(Customer, "42", Rename("Ada"))
    async with Engine.open(tmp_path, aggregates=[Client]) as engine:
        ack = await engine.send(Client, "42", Rename("Ada L."))
        assert ack.version == 2
    log = LmdbEventLog(tmp_path)
    try:
        # Only the append that created the stream names its type.
        assert [e.aggregate for e in log.read_stream("42")] == ["Customer", None]
    finally:
        log.close()


async def test_a_stream_written_without_a_type_loads_as_any(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    try:
        payload = msgspec.msgpack.encode(Renamed("raw"))
        log.append_batch([Append("42", NO_STREAM, (("Renamed", payload),))])
    finally:
        log.close()
    async with Engine.open(tmp_path, aggregates=[Supplier]) as engine:
        assert (await engine.send(Supplier, "42", Rename("Acme"))).version == 2


def test_aggregate_name_must_be_a_non_empty_str() -> None:
    with pytest.raises(DefinitionError, match="aggregate_name"):

        class Nameless(Aggregate):
            aggregate_name = ""

    assert Customer.aggregate_name == "Customer"
    assert Supplier.aggregate_name == "Supplier"  # a subclass is its own type by default


# -- found by review: a refused sender must not strand the others; the backend contract --


async def test_a_sender_refused_the_stream_passes_its_live_slot_on() -> None:
    # Scenario: every live slot is busy, so senders queue for one (FIFO). The first one
    # woken is refused (the stream belongs to another type): _activate has already
    # passivated the idle actor, and _wait_for_capacity lets the DefinitionError out
    # without waking the next sender, who then waits for a slot that is free, forever.
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Customer, Supplier], max_live_aggregates=1
    ) as engine:
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
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendResult | EngineError], list[StoredEvent]]:
        return super().append_batch(
            [msgspec.structs.replace(a, aggregate_name=None) for a in appends],
            snapshots=[(s, msgspec.structs.replace(x, aggregate=None)) for s, x in snapshots],
            projector_caches=projector_caches,
        )


async def test_with_the_dropping_backend_another_type_loads_the_stream() -> None:
    """The premise of the next test: such a backend silently turns ownership off."""
    async with Engine.open(
        log=_DropsAggregate(), aggregates=[Customer, Supplier], max_live_aggregates=1
    ) as engine:
        await engine.send(Customer, "42", Rename("Ada"))
        await engine.send(Customer, "43", Rename("Bo"))  # passivates "42"
        assert (await engine.send(Supplier, "42", Rename("Acme"))).version == 2


def test_the_log_contract_requires_the_creating_type_to_round_trip() -> None:
    with pytest.raises(AssertionError):
        check_event_log(_DropsAggregate)
