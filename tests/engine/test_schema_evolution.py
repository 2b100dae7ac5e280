"""Schema evolution through the public API: versions and upcasters, aliases, retired events.

The account domain here is version 2 of ``schema_v1``'s: ``Deposited`` counts cents (an
upcaster multiplies version 1's whole units), ``MoneyIn`` is renamed ``Deposited`` (an
alias), ``FeeCharged`` is retired, and the snapshot and saved-cache formats are bumped.
Every scenario runs on trio and again on asyncio (``SCENARIOS``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from actorlog import (
    Aggregate,
    DecodeError,
    DefinitionError,
    Engine,
    Projector,
    ProjectorFaulted,
    Recorded,
    Rejected,
    UnknownEventType,
    UpcastError,
    applies,
    handles,
    upcaster,
)
from actorlog.lowlevel import EventRegistry
from actorlog.storage import Append, MemoryEventLog

from . import schema_v1 as v1

# -- version 2 of the domain -----------------------------------------------------------------


class Deposit(msgspec.Struct, frozen=True):
    cents: int


class Withdraw(msgspec.Struct, frozen=True):
    cents: int


class Deposited(msgspec.Struct, frozen=True):
    event_version: ClassVar[int] = 2
    event_aliases: ClassVar[tuple[str, ...]] = ("MoneyIn",)
    cents: int


@upcaster(Deposited, from_version=1)
def _units_to_cents(data: dict[str, Any]) -> dict[str, Any]:
    if data["amount"] < 0:
        raise ValueError("a negative deposit cannot be upcast")
    return {"cents": data["amount"] * 100}


class InsufficientFunds(Rejected):
    pass


class Account(Aggregate):
    snapshot_every = 2
    snapshot_format = 2  # the balance is in cents now: version 1's snapshots are ignored
    retired_events = ("FeeCharged",)
    balance: int

    def __init__(self) -> None:
        self.balance = 0

    @handles
    def deposit(self, c: Deposit) -> list[Deposited]:
        return [Deposited(c.cents)]

    @handles
    def withdraw(self, c: Withdraw) -> list[Deposited]:
        raise InsufficientFunds(f"balance {self.balance}")

    @applies
    def deposited(self, e: Deposited) -> None:
        self.balance += e.cents


class Strict(Aggregate):
    """Version 2 without ``retired_events``: a stored ``FeeCharged`` is unknown to it."""

    aggregate_name = "Account"
    balance: int

    def __init__(self) -> None:
        self.balance = 0

    @handles
    def withdraw(self, c: Withdraw) -> list[Deposited]:
        raise InsufficientFunds(f"balance {self.balance}")

    @applies
    def deposited(self, e: Deposited) -> None:
        self.balance += e.cents


class Balances(Projector):
    name = "balances"
    snapshot_every = 2
    snapshot_format = 2  # cents now
    totals: dict[str, int]
    types: list[str]

    def __init__(self) -> None:
        self.totals = {}
        self.types = []

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.totals[meta.stream_id] = self.totals.get(meta.stream_id, 0) + e.cents
        self.types.append(meta.type)

    def total(self, stream_id: str) -> int:
        return self.totals.get(stream_id, 0)

    def stored_types(self) -> list[str]:
        return list(self.types)


class ParkingBalances(Projector):
    on_error = "park"
    totals: dict[str, int]

    def __init__(self) -> None:
        self.totals = {}

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.totals[meta.stream_id] = self.totals.get(meta.stream_id, 0) + e.cents

    def total(self, stream_id: str) -> int:
        return self.totals.get(stream_id, 0)


async def balance_of(engine: Engine, kind: type[Aggregate], stream_id: str) -> str:
    """The balance the aggregate loaded (its refusal says it)."""
    with pytest.raises(InsufficientFunds) as refused:
        await engine.send(kind, stream_id, Withdraw(10**9))
    return str(refused.value)


def write_old(log: MemoryEventLog, stream_id: str, events: list[tuple[str, Any]]) -> None:
    """Append ``(stored name, plain data)`` events to ``stream_id`` as an older release did."""
    version = log.stream_version(stream_id)
    for name, data in events:
        outcomes, _ = log.append_batch(
            [Append(stream_id, version, ((name, msgspec.msgpack.encode(data)),))]
        )
        assert not isinstance(outcomes[0], Exception)
        version += 1


# -- scenarios, each run on trio and on asyncio ----------------------------------------------


async def restart_with_new_versions(tmp_path: Path) -> None:
    path = tmp_path / "log"
    async with Engine.open(path, aggregates=[v1.Account], projectors=[v1.Balances]) as engine:
        await engine.send(v1.Account, "a", v1.Deposit(5))
        await engine.send(v1.Account, "a", v1.Give(2))
        await engine.send(v1.Account, "a", v1.ChargeFee(1))
        await engine.send(v1.Account, "a", v1.Deposit(3))  # a snapshot at 4 (units)
        await engine.send(v1.Account, "b", v1.Deposit(7))
        await engine.wait_projected()
        assert await engine.query(v1.Balances.total, "a") == 8  # its cache is saved
    # Version 2 on the same directory: old events are upcast, the fee skipped, version 1's
    # snapshot and saved cache ignored (their formats are older).
    async with Engine.open(path, aggregates=[Account], projectors=[Balances]) as engine:
        stats = engine.statistics().projectors[0]
        assert stats.restored_from == 0  # rebuilt: the saved cache is of format 1
        assert await engine.query(Balances.total, "a") == 1000  # MoneyIn is Deposited now
        assert await engine.query(Balances.total, "b") == 700
        assert await balance_of(engine, Account, "a") == "balance 1000"  # 500 + 200 + 300
        assert await balance_of(engine, Account, "b") == "balance 700"
        # New events are stored at version 2 and delivered live.
        done = await engine.send(Account, "a", Deposit(5))
        assert await engine.query(Balances.total, "a", after=done.position) == 1005
        assert (await engine.query(Balances.stored_types))[-1] == "Deposited@2"
        # A rebuild reads the old events again, through the same upcasters.
        engine.rebuild(Balances)
        assert await engine.query(Balances.total, "a", after=done.position) == 1005
    async with Engine.open(path, aggregates=[Account], projectors=[Balances]) as engine:
        assert engine.statistics().projectors[0].restored_from > 0  # its own format now
        assert await engine.query(Balances.total, "a") == 1005
        assert await balance_of(engine, Account, "a") == "balance 1005"
        types = await engine.query(Balances.stored_types)
        assert types == ["Deposited", "MoneyIn", "Deposited", "Deposited", "Deposited@2"]


async def catch_up_reads_old_names_and_versions(tmp_path: Path) -> None:
    log = MemoryEventLog()
    write_old(log, "a", [("Deposited", {"amount": 1}), ("MoneyIn", {"amount": 2})])
    write_old(log, "a", [("MoneyIn@2", {"cents": 3}), ("Deposited@2", {"cents": 4})])
    async with Engine.open(log=log, aggregates=[Account], projectors=[Balances]) as engine:
        assert await engine.query(Balances.total, "a") == 100 + 200 + 3 + 4
        assert await balance_of(engine, Account, "a") == "balance 307"


async def a_retired_event_is_skipped_only_when_retired(tmp_path: Path) -> None:
    def old_log() -> MemoryEventLog:
        log = MemoryEventLog()
        write_old(log, "a", [("Deposited", {"amount": 1}), ("FeeCharged", {"amount": 9})])
        write_old(log, "b", [("FeeCharged@3", {"amount": 9}), ("Deposited@2", {"cents": 5})])
        return log

    async with Engine.open(log=old_log(), aggregates=[Account]) as engine:
        assert await balance_of(engine, Account, "a") == "balance 100"
        assert await balance_of(engine, Account, "b") == "balance 5"
    async with Engine.open(log=old_log(), aggregates=[Strict]) as engine:
        # Never a silent drop: without retired_events the name is unknown.
        with pytest.raises(UnknownEventType, match="FeeCharged"):
            await engine.send(Strict, "a", Withdraw(1))


async def a_failing_upcaster_is_a_typed_error_at_its_position(tmp_path: Path) -> None:
    log = MemoryEventLog()
    write_old(log, "a", [("Deposited", {"amount": 1}), ("Deposited", {"amount": -1})])
    write_old(log, "b", [("Deposited", {"nothing": 1})])  # the upcaster's KeyError
    write_old(log, "c", [("Deposited@2", {"cents": "x"})])  # current version, invalid
    write_old(log, "d", [("MoneyIn", {"amount": 1.5})])  # upcast to a float: invalid
    async with Engine.open(
        log=log, aggregates=[Account], projectors=[Balances, ParkingBalances]
    ) as engine:
        with pytest.raises(UpcastError, match=r"position 2\b.*negative deposit") as failed:
            await engine.send(Account, "a", Withdraw(1))
        assert isinstance(failed.value.__cause__, ValueError)
        with pytest.raises(UpcastError, match="position 3"):
            await engine.send(Account, "b", Withdraw(1))
        with pytest.raises(DecodeError, match="position 4"):
            await engine.send(Account, "c", Withdraw(1))
        with pytest.raises(UpcastError, match=r"position 5.*not a valid current event"):
            await engine.send(Account, "d", Withdraw(1))
        # The halting projector stops at the first; the parking one skips each.
        with pytest.raises(ProjectorFaulted) as halted:
            await engine.query(Balances.total, "a")
        assert halted.value.position == 2
        assert halted.value.event_type == "Deposited"
        assert isinstance(halted.value.__cause__, UpcastError)
        assert [p.position for p in engine.parked(ParkingBalances)] == [2, 3, 4, 5]
        assert await engine.query(ParkingBalances.total, "a") == 100


async def live_delivery_decodes_current_events_from_payloads(tmp_path: Path) -> None:
    # A type with a list inside is not shared with projectors: each decodes its payload
    # (by its current name), on the live path as in catch-up.
    async with Engine.open(log=MemoryEventLog(), aggregates=[Tagger], projectors=[Tags]) as engine:
        done = await engine.send(Tagger, "t", Tag(["x", "y"]))
        assert await engine.query(Tags.all, after=done.position) == [("Tagged@3", ["x", "y"])]


class Tag(msgspec.Struct, frozen=True):
    tags: list[str]


class Tagged(msgspec.Struct, frozen=True):
    event_version: ClassVar[int] = 3
    tags: list[str]


@upcaster(Tagged, from_version=1)
def _tag_list(data: dict[str, Any]) -> dict[str, Any]:
    return {"tags": [data["tag"]]}


@upcaster(Tagged, from_version=2)
def _same(data: dict[str, Any]) -> dict[str, Any]:
    return data


class Tagger(Aggregate):
    @handles
    def tag(self, c: Tag) -> list[Tagged]:
        return [Tagged(c.tags)]

    @applies
    def tagged(self, e: Tagged) -> None:
        pass


class Tags(Projector):
    seen: list[tuple[str, list[str]]]

    def __init__(self) -> None:
        self.seen = []

    @applies
    def tagged(self, e: Tagged, meta: Recorded) -> None:
        self.seen.append((meta.type, e.tags))

    def all(self) -> list[tuple[str, list[str]]]:
        return list(self.seen)


async def a_chain_of_upcasters_runs_in_order(tmp_path: Path) -> None:
    log = MemoryEventLog()
    write_old(log, "t", [("Tagged", {"tag": "a"}), ("Tagged@2", {"tags": ["b"]})])
    async with Engine.open(log=log, aggregates=[Tagger], projectors=[Tags]) as engine:
        assert await engine.query(Tags.all) == [("Tagged", ["a"]), ("Tagged@2", ["b"])]


Scenario = Callable[[Path], Coroutine[Any, Any, None]]

SCENARIOS: dict[str, Scenario] = {
    f.__name__: f
    for f in (
        restart_with_new_versions,
        catch_up_reads_old_names_and_versions,
        a_retired_event_is_skipped_only_when_retired,
        a_failing_upcaster_is_a_typed_error_at_its_position,
        live_delivery_decodes_current_events_from_payloads,
        a_chain_of_upcasters_runs_in_order,
    )
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_scenario_on_trio(scenario: Scenario, tmp_path: Path) -> None:
    await scenario(tmp_path)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario_on_asyncio(scenario: Scenario, tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))


# -- definitions: refused at registration (Engine.open), never at the first read -----------


async def test_a_missing_link_in_the_chain_is_refused_at_open() -> None:
    class Gap(msgspec.Struct, frozen=True):
        event_version: ClassVar[int] = 3
        n: int

    @upcaster(Gap, from_version=2)
    def _two(data: Any) -> Any:
        return data

    class Holder(Aggregate):
        @applies
        def gap(self, e: Gap) -> None:
            pass

    with pytest.raises(DefinitionError, match="no @upcaster for 1 -> 2"):
        async with Engine.open(log=MemoryEventLog(), aggregates=[Holder]):
            pass


def test_upcaster_steps_outside_the_versions_are_refused() -> None:
    class Two(msgspec.Struct, frozen=True):
        event_version: ClassVar[int] = 2

    for bad in (0, 2, True, "1"):
        with pytest.raises(DefinitionError, match="from_version"):
            upcaster(Two, from_version=bad)  # type: ignore[arg-type]
    upcaster(Two, from_version=1)(lambda d: d)
    with pytest.raises(DefinitionError, match="two upcasters"):
        upcaster(Two, from_version=1)(lambda d: d)
    with pytest.raises(DefinitionError, match=r"msgspec\.Struct"):
        upcaster(int, from_version=1)  # type: ignore[arg-type]


def test_malformed_versions_names_and_aliases_are_refused() -> None:
    class BadVersion(msgspec.Struct, frozen=True):
        event_version: ClassVar[Any] = 0

    class BadAliases(msgspec.Struct, frozen=True):
        event_aliases: ClassVar[Any] = "Old"

    class At(msgspec.Struct, frozen=True, tag="Deposited@2"):
        pass

    class AtAlias(msgspec.Struct, frozen=True):
        event_aliases: ClassVar[tuple[str, ...]] = ("Old@1",)

    for cls, match in (
        (BadVersion, "event_version"),
        (BadAliases, "event_aliases"),
        (At, "contains '@'"),
        (AtAlias, "contains '@'"),
    ):
        with pytest.raises(DefinitionError, match=match):
            EventRegistry([cls])


def test_an_alias_taken_by_another_type_is_refused() -> None:
    class MoneyIn(msgspec.Struct, frozen=True):
        cents: int

    with pytest.raises(DefinitionError, match="'MoneyIn' is read by both"):
        EventRegistry([MoneyIn, Deposited])
    with pytest.raises(DefinitionError, match="'MoneyIn' is read by both"):
        EventRegistry([Deposited, MoneyIn])


def test_retiring_an_applied_type_is_refused() -> None:
    with pytest.raises(DefinitionError, match="retires 'MoneyIn'"):

        class Confused(Aggregate):
            retired_events = ("MoneyIn",)

            @applies
            def deposited(self, e: Deposited) -> None:
                pass

    for bad in ("FeeCharged", ("FeeCharged@2",), ("",), (1,)):
        with pytest.raises(DefinitionError, match="retired_events"):

            class Malformed(Aggregate):
                retired_events = bad  # type: ignore[assignment]


def test_current_events_are_stored_under_their_versioned_name() -> None:
    registry = EventRegistry([Deposited, v1.FeeCharged])
    assert registry.encode(Deposited(5))[0] == "Deposited@2"
    assert registry.encode(v1.FeeCharged(5))[0] == "FeeCharged"  # version 1: as before
    payload = msgspec.msgpack.encode({"amount": 2})
    assert registry.decode("Deposited", payload) == Deposited(200)
    assert registry.decode("MoneyIn", payload) == Deposited(200)
    with pytest.raises(UnknownEventType):
        registry.decode("Deposited@3", payload)  # a version from the future


def test_a_tagged_type_is_read_under_its_former_tag() -> None:
    # msgspec writes a tagged type's tag into each payload: the old payloads carry the old
    # name, which the renamed type must accept when it reads them under its alias.
    class Old(msgspec.Struct, frozen=True, tag="Credit"):
        cents: int

    class OldRow(msgspec.Struct, frozen=True, tag="Row", array_like=True):
        n: int

    class Credited(msgspec.Struct, frozen=True, tag="Credited"):
        event_aliases: ClassVar[tuple[str, ...]] = ("Credit",)
        cents: int

    class Line(msgspec.Struct, frozen=True, tag="Line", array_like=True):
        event_version: ClassVar[int] = 2
        event_aliases: ClassVar[tuple[str, ...]] = ("Row",)
        n: int

    @upcaster(Line, from_version=1)
    def _double(data: list[Any]) -> list[Any]:
        return [data[0], data[1] * 2]

    registry = EventRegistry([Credited, Line])
    old = EventRegistry([Old, OldRow])
    name, payload = old.encode(Old(5))
    assert registry.decode(name, payload) == Credited(5)
    name, payload = old.encode(OldRow(3))
    assert registry.decode(name, payload) == Line(6)
