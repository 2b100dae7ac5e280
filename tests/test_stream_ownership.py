"""A stream created by one aggregate type is never loaded, nor appended to, as another.

Stream ids are shared by all aggregate types. While an actor is live the engine knows its
type; after passivation or a restart it reads the type from the log: the append that
creates a stream records ``aggregate_name`` on its events, snapshots record it too.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from actors import Aggregate, applies, handles
from engine import NO_STREAM, Append, DefinitionError, Engine, LmdbEventLog


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
