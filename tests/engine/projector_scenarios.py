"""Projector scenarios through the public API only, shared by the trio and asyncio suites.

Each ``scenario_*`` is backend-neutral (anyio) and is run by ``tests/engine/test_projector_api.py``
on trio (pytest-trio) and again under ``asyncio.run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import anyio
import anyio.lowlevel
import msgspec
import pytest

from actorlog import (
    Engine,
    InvalidArgument,
    Parked,
    Pending,
    Projector,
    ProjectorFaulted,
    Recorded,
    UnknownPosition,
    applies,
)
from actorlog.storage import ANY, Append, EventLog, LmdbEventLog, MemoryEventLog
from benchmarks.bank import (
    Account,
    AccountOpened,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    Totals,
    Withdraw,
    Withdrawn,
)
from tests.support import backlog, fill_log, stats

POISON = 13
"""A deposit amount that the fragile projectors below cannot apply."""


class Ledger(Projector):
    """Records every position it applies, to prove exactly once and in global order."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.balances: dict[str, int] = {}

    @applies
    def opened(self, e: AccountOpened, meta: Recorded) -> None:
        self.positions.append(meta.position)
        self.balances.setdefault(meta.stream_id, 0)

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.positions.append(meta.position)
        self.balances[meta.stream_id] = self.balances.get(meta.stream_id, 0) + e.amount

    @applies
    def withdrawn(self, e: Withdrawn, meta: Recorded) -> None:
        self.positions.append(meta.position)
        self.balances[meta.stream_id] = self.balances.get(meta.stream_id, 0) - e.amount

    def applied_positions(self) -> list[int]:
        return self.positions

    def all_balances(self) -> dict[str, int]:
        return self.balances


class Fragile(Projector):
    """Halts (the default policy) on a POISON deposit while ``broken`` is set."""

    broken: ClassVar[bool] = True

    def __init__(self) -> None:
        self.deposits = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        if e.amount == POISON and Fragile.broken:
            raise ValueError("unlucky amount")
        self.deposits += e.amount

    def total(self) -> int:
        return self.deposits


class Parking(Projector):
    """Parks a POISON deposit and carries on."""

    on_error = "park"

    def __init__(self) -> None:
        self.deposits = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        if e.amount == POISON:
            raise ValueError("unlucky amount")
        self.deposits += e.amount

    def total(self) -> int:
        return self.deposits


class Note(msgspec.Struct):
    """A mutable struct, to check query results are copies."""

    count: int
    owners: list[str]


class Shapes(Projector):
    """A cache of mutable containers, each exposed by a query."""

    latest: ClassVar[Shapes | None] = None

    def __init__(self) -> None:
        self.by_account: dict[str, list[int]] = {}
        self.history: list[int] = []
        self.note = Note(0, [])
        self.big = 10**20  # not a cached small int, so identity means "not copied"
        Shapes.latest = self

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.by_account.setdefault(meta.stream_id, []).append(e.amount)
        self.history.append(e.amount)
        self.note.count += 1
        self.note.owners.append(meta.stream_id)
        self.big += e.amount

    def accounts(self) -> dict[str, list[int]]:
        return self.by_account

    def amounts(self) -> list[int]:
        return self.history

    def summary(self) -> Note:
        return self.note

    def counted(self) -> tuple[int, list[int]]:
        return len(self.history), self.history

    def big_number(self) -> int:
        return self.big


class DepositsOnly(Projector):
    """Handles one event type, so it must never decode the others."""

    def __init__(self) -> None:
        self.deposits = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        self.deposits += e.amount

    def total(self) -> int:
        return self.deposits


async def scenario_read_your_writes() -> None:
    """Every client reads its own acknowledged writes through ``after=``."""
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances, Totals]
    ) as engine:

        async def client(account: str) -> None:
            balance = 0
            await engine.send(Account, account, OpenAccount(account))
            for amount in range(1, 30):
                if amount % 3:
                    ack = await engine.send(Account, account, Deposit(amount))
                    balance += amount
                else:
                    ack = await engine.send(Account, account, Withdraw(amount // 3))
                    balance -= amount // 3
                seen = await engine.query(Balances.balance, account, after=ack.position)
                assert seen == balance
                net = await engine.query(Totals.net, after=ack.position)
                assert net >= balance  # every other client's balance is >= 0

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(client, f"acct-{n}")
        await engine.wait_projected()
        assert sum((await engine.query(Balances.all_balances)).values()) == await engine.query(
            Totals.net
        )


async def scenario_query_without_after_does_not_wait() -> None:
    """Opening does not wait for catch-up, and a query without ``after`` answers at once."""
    log = MemoryEventLog()
    fill_log(log, [("acct-1", AccountOpened("o"))] + [("acct-1", Deposited(1))] * 3000)
    async with Engine.open(
        log=log, aggregates=[Account], projectors=[Totals], wait_for_projectors=False
    ) as engine:
        before = stats(engine, "Totals")
        assert before.state == "catching_up"
        assert before.lag == 3001
        # No wait: the answer is whatever the cache holds now, however stale.
        total = await engine.query(Totals.total_deposits)
        assert total == max(before.checkpoint - 1, 0)
        assert stats(engine, "Totals").checkpoint == before.checkpoint
        # Commands are accepted while the projector catches up.
        ack = await engine.send(Account, "acct-1", Deposit(5))
        assert await engine.query(Totals.total_deposits, after=ack.position) == 3005
        assert stats(engine, "Totals").state == "live"


async def scenario_after_waits_for_later_positions() -> None:
    """A query ``after`` a position written but not yet applied waits for it, then sees it
    (and what came before it)."""
    # The projector catches up on a backlog meanwhile: 3 sends and 20 checkpoints take far
    # fewer than its 64 steps.
    log = backlog(steps=64, event=Deposited(1))
    async with Engine.open(
        log=log, aggregates=[Account], projectors=[Balances], wait_for_projectors=False
    ) as engine:
        first = await engine.send(Account, "a", Deposit(5))
        await engine.send(Account, "a", Deposit(7))
        last = await engine.send(Account, "a", Deposit(11))
        results: list[tuple[int, int]] = []

        async def reader() -> None:
            balance = await engine.query(Balances.balance, "a", after=last.position)
            results.append((balance, stats(engine, "Balances").checkpoint))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert stats(engine, "Balances").checkpoint < first.position  # all three written,
            assert results == []  # none applied: it waits
        ((balance, checkpoint),) = results
        assert balance == 23
        assert checkpoint >= last.position  # released once its position was applied


async def scenario_positions_beyond_the_head_are_refused_at_once() -> None:
    """``query(after=)`` and ``wait_projected`` beyond the log's head raise
    ``UnknownPosition`` (an ``InvalidArgument``) at once, a timeout or not; at the head they
    answer; the projectors and the write side carry on unaffected."""
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances, Totals]
    ) as engine:
        # An empty log: its head is 0, which needs no waiting.
        with pytest.raises(UnknownPosition):
            await engine.query(Balances.balance, "a", after=1)
        with pytest.raises(UnknownPosition):
            await engine.wait_projected(1)
        assert await engine.query(Balances.balance, "a", after=0) == 0
        await engine.wait_projected(0)
        ack = await engine.send(Account, "a", Deposit(5))
        head = engine.statistics().head
        assert head == ack.position
        for beyond in (head + 1, head + 1000, 2**64 - 1):
            with pytest.raises(UnknownPosition) as caught:
                await engine.query(Balances.balance, "a", after=beyond)
            assert isinstance(caught.value, InvalidArgument)
            with pytest.raises(UnknownPosition):
                await engine.query(Balances.balance, "a", after=beyond, timeout=60)
            with pytest.raises(UnknownPosition):
                await engine.wait_projected(beyond)
            with pytest.raises(UnknownPosition):
                await engine.wait_projected(beyond, timeout=60)
        # The head itself is a position some acknowledgement gave: waited for, answered.
        assert await engine.query(Balances.balance, "a", after=head) == 5
        await engine.wait_projected(head)
        assert [(p.name, p.state, p.fault) for p in engine.statistics().projectors] == [
            ("Balances", "live", None),
            ("Totals", "live", None),
        ]
        later = await engine.send(Account, "a", Deposit(7))
        assert later.position == head + 1
        assert await engine.query(Balances.balance, "a", after=later.position) == 12
        assert await engine.query(Totals.net, after=later.position) == 12


async def scenario_catch_up_while_commands_arrive(path: Path | None, *, backlog: int) -> None:
    """Catch-up then live under concurrent commands: no gap, no duplicate, global order."""
    events: list[tuple[str, msgspec.Struct]] = []
    expected: dict[str, int] = {}
    for n in range(backlog):
        account = f"old-{n % 500}"
        events.append((account, Deposited(1 + n % 7)))
        expected[account] = expected.get(account, 0) + 1 + n % 7
    log: EventLog = LmdbEventLog(path, sync=False) if path else MemoryEventLog()
    fill_log(log, events)
    acks_while_catching_up = 0

    async with Engine.open(
        log=log,
        aggregates=[Account],
        projectors=[Ledger, Balances],
        wait_for_projectors=False,  # the point: commands while it catches up
    ) as engine:
        assert stats(engine, "Ledger").state == "catching_up"
        # Accepted before the projectors have applied anything.
        opening = {
            f"new-{n}": engine.send_nowait(Account, f"new-{n}", OpenAccount("o")) for n in range(10)
        }

        async def client(account: str, opened: Pending) -> None:
            nonlocal acks_while_catching_up
            await opened
            expected[account] = 0
            for amount in range(40):
                if stats(engine, "Ledger").state == "catching_up":
                    acks_while_catching_up += 1
                if amount:
                    await engine.send(Account, account, Deposit(amount))
                    expected[account] += amount

        async with anyio.create_task_group() as tg:
            for account, opened in opening.items():
                tg.start_soon(client, account, opened)
        await engine.wait_projected()
        head = engine.statistics().head
        assert head == backlog + 10 * 40
        assert await engine.query(Ledger.applied_positions) == list(range(1, head + 1))
        assert await engine.query(Ledger.all_balances) == expected
        assert await engine.query(Balances.all_balances) == expected
        assert stats(engine, "Ledger").applied == head
    assert acks_while_catching_up > 0


async def scenario_halt_then_resume() -> None:
    """A halted projector names position and cause; the rest goes on; resume continues."""
    Fragile.broken = True
    try:
        async with Engine.open(
            log=MemoryEventLog(), aggregates=[Account], projectors=[Fragile, Balances]
        ) as engine:
            await engine.send(Account, "a", Deposit(5))
            bad = await engine.send(Account, "a", Deposit(POISON))
            with pytest.raises(ProjectorFaulted) as caught:
                await engine.query(Fragile.total, after=bad.position)
            fault = caught.value
            assert (fault.projector, fault.position, fault.event_type) == (
                "Fragile",
                bad.position,
                "Deposited",
            )
            assert isinstance(fault.__cause__, ValueError)
            assert f"position {bad.position}" in str(fault)
            assert "unlucky amount" in str(fault)
            halted = stats(engine, "Fragile")
            assert halted.state == "halted"
            assert halted.checkpoint == bad.position - 1
            assert halted.fault is not None and "unlucky amount" in halted.fault
            # Without after= too, and a waiter for a later position: both raise.
            with pytest.raises(ProjectorFaulted):
                await engine.query(Fragile.total)
            with pytest.raises(ProjectorFaulted):
                await engine.wait_projected()
            # The write side and the other projector are unaffected.
            later = await engine.send(Account, "a", Deposit(7))
            assert await engine.query(Balances.balance, "a", after=later.position) == 25
            assert stats(engine, "Balances").state == "live"
            assert stats(engine, "Fragile").checkpoint == bad.position - 1

            Fragile.broken = False  # "deploy the fix"
            engine.resume(Fragile)
            assert await engine.query(Fragile.total, after=later.position) == 25
            resumed = stats(engine, "Fragile")
            assert (resumed.state, resumed.checkpoint, resumed.applied, resumed.fault) == (
                "live",
                later.position,
                3,
                None,
            )
    finally:
        Fragile.broken = True


async def scenario_rebuild_clears_a_halt() -> None:
    """Rebuilding a halted projector after the fix replays everything from position 1."""
    Fragile.broken = True
    try:
        async with Engine.open(
            log=MemoryEventLog(), aggregates=[Account], projectors=[Fragile]
        ) as engine:
            for amount in (POISON, 1, 2):
                ack = await engine.send(Account, "a", Deposit(amount))
            with pytest.raises(ProjectorFaulted):
                await engine.query(Fragile.total, after=ack.position)
            assert stats(engine, "Fragile").checkpoint == 0
            Fragile.broken = False
            engine.rebuild(Fragile)
            assert await engine.query(Fragile.total, after=ack.position) == POISON + 3
            assert stats(engine, "Fragile").state == "live"
    finally:
        Fragile.broken = True


async def scenario_park_and_continue() -> None:
    """A park projector records the failed event and applies the ones after it."""
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Parking]
    ) as engine:
        await engine.send(Account, "a", Deposit(5))
        bad = await engine.send(Account, "b", Deposit(POISON))
        ack = await engine.send(Account, "a", Deposit(7))
        assert await engine.query(Parking.total, after=ack.position) == 12
        (parked,) = engine.parked(Parking)
        assert isinstance(parked, Parked)
        assert (parked.position, parked.stream_id, parked.type) == (bad.position, "b", "Deposited")
        assert "ValueError" in parked.error and "unlucky amount" in parked.error
        after = stats(engine, "Parking")
        assert (after.state, after.checkpoint, after.applied, after.parked) == (
            "live",
            ack.position,
            2,
            1,
        )
        # The list is the caller's copy.
        engine.parked(Parking).clear()
        assert len(engine.parked(Parking)) == 1
        # A rebuild parks it again, once.
        engine.rebuild(Parking)
        assert await engine.query(Parking.total, after=ack.position) == 12
        assert engine.parked(Parking) == [parked]


async def scenario_query_results_never_alias_the_cache() -> None:
    """Mutating what a query returned leaves the view unchanged; ints come back as is."""
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Shapes]
    ) as engine:
        await engine.send(Account, "a", Deposit(5))
        ack = await engine.send(Account, "b", Deposit(7))
        await engine.wait_projected(ack.position)

        accounts = await engine.query(Shapes.accounts)
        accounts["a"].append(1000)
        accounts["c"] = [1]
        amounts = await engine.query(Shapes.amounts)
        amounts.clear()
        note = await engine.query(Shapes.summary)
        note.count = 99
        note.owners.append("mallory")
        _, history = await engine.query(Shapes.counted)
        history.append(1000)

        assert await engine.query(Shapes.accounts) == {"a": [5], "b": [7]}
        assert await engine.query(Shapes.amounts) == [5, 7]
        assert await engine.query(Shapes.summary) == Note(2, ["a", "b"])
        assert await engine.query(Shapes.counted) == (2, [5, 7])
        # The view keeps working after the callers' mutations.
        ack = await engine.send(Account, "a", Deposit(1))
        assert await engine.query(Shapes.accounts, after=ack.position) == {"a": [5, 1], "b": [7]}
        # An immutable result is handed out as is: no copy.
        big = await engine.query(Shapes.big_number)
        assert Shapes.latest is not None
        assert big == 10**20 + 13
        assert big is Shapes.latest.big


async def scenario_rebuild_and_statistics() -> None:
    """Statistics follow a projector from live through a rebuild back to live."""
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances, Totals]
    ) as engine:
        await engine.send(Account, "a", OpenAccount("ann"))
        await engine.send(Account, "a", Deposit(10))
        ack = await engine.send(Account, "a", Withdraw(3))
        await engine.wait_projected(ack.position)
        balances, totals = stats(engine, "Balances"), stats(engine, "Totals")
        assert (balances.state, balances.checkpoint, balances.head, balances.lag) == (
            "live",
            3,
            3,
            0,
        )
        assert (balances.applied, totals.applied) == (3, 2)  # Totals ignores AccountOpened
        assert (balances.parked, balances.fault) == (0, None)

        engine.rebuild(Balances)
        rebuilding = stats(engine, "Balances")
        assert (rebuilding.state, rebuilding.checkpoint, rebuilding.lag, rebuilding.applied) == (
            "catching_up",
            0,
            3,
            0,
        )
        assert await engine.query(Balances.balance, "a") == 0  # empty until it catches up
        assert stats(engine, "Totals").state == "live"  # the others are left alone
        assert await engine.query(Balances.balance, "a", after=ack.position) == 7
        rebuilt = stats(engine, "Balances")
        assert (rebuilt.state, rebuilt.checkpoint, rebuilt.applied) == ("live", 3, 3)


async def scenario_only_handled_types_are_decoded() -> None:
    """Events of types a projector does not handle are never decoded by it.

    The log holds a Withdrawn and an unregistered event whose payloads are not even
    msgpack: a projector that decoded them would halt, as Totals (which handles Withdrawn)
    does.
    """
    garbage = b"\xc1"  # a byte msgpack never uses
    log = MemoryEventLog()
    fill_log(log, [("a", Deposited(5))])
    log.append_batch([Append("a", ANY, (("Withdrawn", garbage), ("Mystery", garbage)))])
    fill_log(log, [("a", Deposited(7))])
    async with Engine.open(log=log, aggregates=[], projectors=[DepositsOnly, Totals]) as engine:
        assert await engine.query(DepositsOnly.total, after=4) == 12
        only = stats(engine, "DepositsOnly")
        assert (only.state, only.checkpoint, only.applied, only.fault) == ("live", 4, 2, None)
        with pytest.raises(ProjectorFaulted) as caught:
            await engine.query(Totals.total_deposits, after=4)
        assert (caught.value.projector, caught.value.position) == ("Totals", 2)
