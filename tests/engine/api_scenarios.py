"""The public-API scenarios of the write side, run on trio and again on asyncio.

Each ``@scenario`` is an ``async def (tmp_path) -> None`` written against anyio and the
public API only; ``test_engine_api.py`` runs every one on trio (pytest-trio) and
``test_engine_api_asyncio.py`` under ``asyncio.run``. The memory log serves where the
storage is not the point; restarts and snapshots use LMDB in ``tmp_path``.

Aggregate state is observed through the public API too: ``Peek`` is a command whose
handler rejects with the state it sees (a rejection appends nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from actorlog import (
    Aggregate,
    Committed,
    ConcurrencyError,
    Engine,
    EngineClosed,
    HandlerError,
    Overloaded,
    Rejected,
    StorageFull,
    UnknownCommand,
    applies,
    handles,
)
from actorlog.engine._aggregates import AggregatesStatistics
from actorlog.storage import (
    Append,
    LmdbEventLog,
    MemoryEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
)
from benchmarks.bank import Account, Balances, Deposit

# -- the test domain ---------------------------------------------------------------------


class Add(msgspec.Struct, frozen=True):
    n: int


class AddTwo(msgspec.Struct, frozen=True):
    a: int
    b: int


class Spend(msgspec.Struct, frozen=True):
    n: int


class Noop(msgspec.Struct, frozen=True):
    pass


class Peek(msgspec.Struct, frozen=True):
    pass


class Explode(msgspec.Struct, frozen=True):
    """Its handler scribbles on the state, then raises."""


class Poison(msgspec.Struct, frozen=True):
    """Emits Added(7) then Poisoned, whose applier scribbles on the state, then raises."""


class Added(msgspec.Struct, frozen=True):
    n: int


class Spent(msgspec.Struct, frozen=True):
    n: int


class Poisoned(msgspec.Struct, frozen=True):
    pass


class TooLittle(Rejected):
    """Spend asked for more than the balance."""


class Peeked(Rejected):
    """Carries the state that Peek saw."""

    def __init__(self, balance: int, history: list[int]) -> None:
        super().__init__(f"balance {balance}")
        self.balance = balance
        self.history = history


class Ledger(Aggregate):
    """A balance and the list of every amount added, in order."""

    balance: int
    history: list[int]

    def __init__(self) -> None:
        self.balance = 0
        self.history = []

    @handles
    def add(self, c: Add) -> list[Added]:
        return [Added(c.n)]

    @handles
    def add_two(self, c: AddTwo) -> list[Added]:
        return [Added(c.a), Added(c.b)]

    @handles
    def spend(self, c: Spend) -> list[Spent]:
        if c.n > self.balance:
            raise TooLittle(f"balance {self.balance} < {c.n}")
        return [Spent(c.n)]

    @handles
    def noop(self, c: Noop) -> None:
        return None

    @handles
    def peek(self, c: Peek) -> None:
        raise Peeked(self.balance, list(self.history))

    @handles
    def explode(self, c: Explode) -> None:
        self.balance += 1000
        self.history.append(1000)
        raise ValueError("boom")

    @handles
    def poison(self, c: Poison) -> list[Added | Poisoned]:
        return [Added(7), Poisoned()]

    @applies
    def added(self, e: Added) -> None:
        self.balance += e.n
        self.history.append(e.n)

    @applies
    def spent(self, e: Spent) -> None:
        self.balance -= e.n

    @applies
    def poisoned(self, e: Poisoned) -> None:
        self.history.clear()
        raise ArithmeticError("cannot apply Poisoned")


class SnapLedger(Ledger):
    """The same ledger, snapshotted every 3 events (the same aggregate type in the log)."""

    aggregate_name = "Ledger"
    snapshot_every = 3


async def peek(
    engine: Engine, stream_id: str, kind: type[Ledger] = Ledger
) -> tuple[int, list[int]]:
    """The (balance, history) the aggregate's handlers see right now."""
    with pytest.raises(Peeked) as seen:
        await engine.send(kind, stream_id, Peek())
    return seen.value.balance, seen.value.history


def amounts(events: Sequence[StoredEvent]) -> list[int]:
    """The n of each Added event, in order."""
    return [msgspec.msgpack.decode(e.payload, type=Added).n for e in events if e.type == "Added"]


class WatchedLog(MemoryEventLog):
    """A memory log that calls ``on_batch`` with each group before committing it."""

    def __init__(self) -> None:
        super().__init__()
        self.on_batch: Callable[[Sequence[Append]], None] | None = None

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> Any:
        if self.on_batch is not None:
            self.on_batch(appends)
        return super().append_batch(appends, snapshots=snapshots, projector_caches=projector_caches)


class CachedBalances(Balances):
    """Balances, saving its cache every 3 positions (and at close)."""

    snapshot_every = 3
    by_account: dict[str, int]


# -- the registry ------------------------------------------------------------------------

Scenario = Callable[[Path], Coroutine[Any, Any, None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    """Register ``fn`` to run on every backend; its name says the behaviour."""
    SCENARIOS[fn.__name__] = fn
    return fn


# -- sending -----------------------------------------------------------------------------


@scenario
async def send_returns_committed_once_durable(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        assert await engine.send(Ledger, "a", Add(5)) == Committed("a", 1, 1, 1)
        assert await engine.send(Ledger, "b", Add(1)) == Committed("b", 1, 2, 1)
        assert await engine.send(Ledger, "a", AddTwo(2, 3)) == Committed("a", 3, 4, 2)
        assert [e.version for e in engine.log.read_stream("a")] == [1, 2, 3]
        assert amounts(engine.log.read_stream("a")) == [5, 2, 3]
        assert await peek(engine, "a") == (10, [5, 2, 3])


@scenario
async def query_after_position_reads_own_write(tmp_path: Path) -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]
    ) as engine:
        ack = await engine.send(Account, "acct-1", Deposit(5))
        assert await engine.query(Balances.balance, "acct-1", after=ack.position) == 5


@scenario
async def a_saved_projector_cache_is_loaded_after_a_restart(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Account], projectors=[CachedBalances]) as engine:
        for n in range(1, 11):
            await engine.send(Account, "acct-1", Deposit(n))
        await engine.wait_projected()
        head = engine.log.head_position()
    async with Engine.open(tmp_path, aggregates=[Account], projectors=[CachedBalances]) as engine:
        stats = engine.statistics().projectors[0]
        assert (stats.restored_from, stats.applied) == (head, 0)  # loaded, nothing replayed
        assert await engine.query(CachedBalances.balance, "acct-1") == 55
        ack = await engine.send(Account, "acct-1", Deposit(5))
        assert await engine.query(CachedBalances.balance, "acct-1", after=ack.position) == 60


@scenario
async def concurrent_sends_to_one_aggregate_get_consecutive_versions(tmp_path: Path) -> None:
    acks: dict[int, Committed] = {}

    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:

        async def add(n: int) -> None:
            acks[n] = await engine.send(Ledger, "hot", Add(n))

        async with anyio.create_task_group() as tg:
            for n in range(1, 1001):
                tg.start_soon(add, n)

        stored = engine.log.read_stream("hot")
        assert [e.version for e in stored] == list(range(1, 1001))
        assert sorted(ack.version for ack in acks.values()) == list(range(1, 1001))
        for n, ack in acks.items():  # each caller got the version its own event has
            event = stored[ack.version - 1]
            assert (event.position, amounts([event])) == (ack.position, [n])
        assert await peek(engine, "hot") == (500500, amounts(stored))
        # The mailbox pipelines commands through the group commit.
        assert engine.statistics().writer.commits < 1000


@scenario
async def rejected_command_appends_nothing(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        await engine.send(Ledger, "a", Add(5))
        with pytest.raises(TooLittle, match=r"^balance 5 < 6$"):
            await engine.send(Ledger, "a", Spend(6))
        assert engine.log.stream_version("a") == 1
        assert engine.log.head_position() == 1
        assert await engine.send(Ledger, "a", Spend(5)) == Committed("a", 2, 2, 1)
        # Ledger's history is a list, which a refusing handler could have changed in
        # place: the refusal reloads it (an aggregate of immutable values is restored
        # instead, with no reload: tests/engine/test_actor_integrity.py).
        assert engine.statistics().aggregates.reloads == 1


@scenario
async def unknown_command_raises_before_anything_is_queued(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        with pytest.raises(UnknownCommand, match="Ledger has no handler for Deposit"):
            await engine.send(Ledger, "a", Deposit(1))
        with pytest.raises(UnknownCommand, match="'Account' is not hosted here"):
            await engine.send(Account, "a", Deposit(1))
        with pytest.raises(UnknownCommand, match="Ledger has no handler for Deposit"):
            engine.send_nowait(Ledger, "a", Deposit(1))
        assert not engine.is_live("a")  # not even activated
        stats = engine.statistics()
        assert (stats.aggregates.activations, stats.head) == (0, 0)


@scenario
async def command_without_events_returns_position_zero(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        assert await engine.send(Ledger, "new", Noop()) == Committed("new", 0, 0, 0)
        await engine.send(Ledger, "a", Add(1))
        assert await engine.send(Ledger, "a", Noop()) == Committed("a", 1, 0, 0)
        assert engine.log.head_position() == 1


@scenario
async def correlation_and_causation_ids_are_stored(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        await engine.send(Ledger, "a", AddTwo(1, 2), correlation_id="req-1", causation_id="c-9")
        pending = engine.send_nowait(Ledger, "a", Add(3), correlation_id="req-2")
        await pending
        await engine.send(Ledger, "a", Add(4))
        ids = [(e.correlation_id, e.causation_id) for e in engine.log.read_stream("a")]
        assert ids == [("req-1", "c-9"), ("req-1", "c-9"), ("req-2", None), (None, None)]


# -- failures ----------------------------------------------------------------------------


@scenario
async def handler_exception_is_handler_error_and_aggregate_is_reloaded(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        await engine.send(Ledger, "a", Add(5))
        with pytest.raises(HandlerError, match="ValueError: boom") as raised:
            await engine.send(Ledger, "a", Explode())
        assert isinstance(raised.value.__cause__, ValueError)
        assert engine.log.stream_version("a") == 1
        assert await peek(engine, "a") == (5, [5])  # the scribbles are gone
        assert engine.statistics().aggregates.reloads == 1
        assert await engine.send(Ledger, "a", Add(1)) == Committed("a", 2, 2, 1)
        assert await engine.send(Ledger, "b", Add(1)) == Committed("b", 1, 3, 1)


@scenario
async def applier_exception_is_handler_error_and_aggregate_is_reloaded(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        await engine.send(Ledger, "a", Add(5))
        with pytest.raises(HandlerError) as raised:
            await engine.send(Ledger, "a", Poison())
        assert isinstance(raised.value.__cause__, ArithmeticError)
        assert engine.log.stream_version("a") == 1  # neither event of the command
        assert await peek(engine, "a") == (5, [5])  # Added(7) was applied, then undone
        assert await engine.send(Ledger, "a", Add(1)) == Committed("a", 2, 2, 1)


@scenario
async def handler_error_keeps_earlier_commands_in_flight(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        first = engine.send_nowait(Ledger, "a", Add(1))
        with pytest.raises(HandlerError):
            engine.send_nowait(Ledger, "a", Explode())
        # The actor is stale with a command in flight: send waits for it, then reloads.
        assert await engine.send(Ledger, "a", Add(2)) == Committed("a", 2, 2, 1)
        assert await first == Committed("a", 1, 1, 1)
        assert await peek(engine, "a") == (3, [1, 2])


@scenario
async def failed_commit_reloads_the_aggregate_from_the_log(tmp_path: Path) -> None:
    log = MemoryEventLog()
    async with Engine.open(log=log, aggregates=[Ledger]) as engine:
        await engine.send(Ledger, "a", Add(1))
        # Another writer appends behind the engine's back (the log guards against it).
        log.append_batch([Append("a", 1, (("Added", msgspec.msgpack.encode(Added(10))),))])
        with pytest.raises(ConcurrencyError) as raised:
            await engine.send(Ledger, "a", Add(2))
        assert (raised.value.expected, raised.value.actual) == (1, 2)
        assert await peek(engine, "a") == (11, [1, 10])
        assert await engine.send(Ledger, "a", Add(3)) == Committed("a", 3, 3, 1)


@scenario
async def storage_full_fails_the_command_and_state_stays_durable(tmp_path: Path) -> None:
    log = MemoryEventLog(max_events=2)
    async with Engine.open(log=log, aggregates=[Ledger]) as engine:
        await engine.send(Ledger, "a", Add(1))
        with pytest.raises(StorageFull):
            await engine.send(Ledger, "a", AddTwo(2, 3))
        assert await peek(engine, "a") == (1, [1])
        assert await engine.send(Ledger, "a", Add(4)) == Committed("a", 2, 2, 1)


# -- the mailbox -------------------------------------------------------------------------


@scenario
async def send_nowait_when_full_raises_overloaded(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger], mailbox_size=2) as engine:
        first = engine.send_nowait(Ledger, "a", Add(1))
        second = engine.send_nowait(Ledger, "a", Add(2))
        with pytest.raises(Overloaded):
            engine.send_nowait(Ledger, "a", Add(3))
        other = engine.send_nowait(Ledger, "b", Add(4))  # other mailboxes are not full
        assert [await first, await second] == [Committed("a", 1, 1, 1), Committed("a", 2, 2, 1)]
        assert await other == Committed("b", 1, 3, 1)
        assert await engine.send_nowait(Ledger, "a", Add(5)) == Committed("a", 3, 4, 1)
        assert amounts(engine.log.read_stream("a")) == [1, 2, 5]


@scenario
async def send_waits_for_room_when_the_mailbox_is_full(tmp_path: Path) -> None:
    log = WatchedLog()
    seen: list[tuple[int, AggregatesStatistics]] = []
    acks: list[Committed] = []
    async with Engine.open(log=log, aggregates=[Ledger], mailbox_size=2) as engine:
        log.on_batch = lambda appends: seen.append((len(appends), engine.statistics().aggregates))

        async def add(n: int) -> None:
            acks.append(await engine.send(Ledger, "a", Add(n)))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(add, n)
    assert sorted(ack.version for ack in acks) == list(range(1, 21))
    assert max(size for size, _ in seen) <= 2  # never more than the mailbox in flight
    assert max(stats.in_flight for _, stats in seen) <= 2
    assert any(stats.in_flight == 2 and stats.waiting > 0 for _, stats in seen)


@scenario
async def woken_senders_that_are_rejected_pass_their_slot_on(tmp_path: Path) -> None:
    rejected: list[int] = []
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger], mailbox_size=1) as engine:
        first = engine.send_nowait(Ledger, "a", Add(1))

        async def overspend(n: int) -> None:
            try:
                await engine.send(Ledger, "a", Spend(1000 + n))
            except TooLittle:
                rejected.append(n)

        with anyio.fail_after(30):  # a deadlock guard, not a timing assertion
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(overspend, n)
            assert sorted(rejected) == list(range(5))
            assert await first == Committed("a", 1, 1, 1)
            assert await engine.send(Ledger, "a", Add(2)) == Committed("a", 2, 2, 1)


@scenario
async def cancelled_send_may_still_commit(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await engine.send(Ledger, "a", Add(1))  # decided at once, then cancelled
        assert scope.cancelled_caught
        # The command was in the mailbox when its caller gave up: it committed anyway.
        assert await engine.send(Ledger, "a", Add(2)) == Committed("a", 2, 2, 1)
        assert amounts(engine.log.read_stream("a")) == [1, 2]


@scenario
async def cancelled_while_waiting_for_room_queues_nothing(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger], mailbox_size=1) as engine:
        first = engine.send_nowait(Ledger, "a", Add(1))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await engine.send(Ledger, "a", Add(2))  # the mailbox is full: it waits
        assert scope.cancelled_caught
        assert await first == Committed("a", 1, 1, 1)
        assert await engine.send(Ledger, "a", Add(3)) == Committed("a", 2, 2, 1)
        assert amounts(engine.log.read_stream("a")) == [1, 3]
        assert engine.statistics().aggregates.waiting == 0


@scenario
async def pending_can_be_awaited_again_after_a_cancelled_wait(tmp_path: Path) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
        pending = engine.send_nowait(Ledger, "a", Add(1))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pending
        assert await pending == Committed("a", 1, 1, 1)
        assert await pending.wait() == Committed("a", 1, 1, 1)


# -- restart and snapshots (LMDB) --------------------------------------------------------


@scenario
async def restart_rehydrates_the_same_state(tmp_path: Path) -> None:
    states: dict[str, tuple[int, list[int]]] = {}
    async with Engine.open(tmp_path, aggregates=[Ledger], sync=False) as engine:
        for i in range(30):
            await engine.send(Ledger, f"s{i % 3}", Add(i))
            if i % 4 == 1:
                await engine.send(Ledger, f"s{i % 3}", Spend(1))
        with contextlib.suppress(TooLittle):
            await engine.send(Ledger, "s0", Spend(10_000))
        for sid in ("s0", "s1", "s2"):
            states[sid] = await peek(engine, sid)
    async with Engine.open(tmp_path, aggregates=[Ledger], sync=False) as engine:
        for sid, state in states.items():
            assert await peek(engine, sid) == state
        version = engine.log.stream_version("s1")
        assert (await engine.send(Ledger, "s1", Add(1))).version == version + 1


@scenario
async def snapshot_and_tail_rehydrate_like_a_full_replay(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[SnapLedger], sync=False) as engine:
        for n in range(1, 11):
            await engine.send(SnapLedger, "a", Add(n))
        await engine.send(SnapLedger, "a", Spend(4))
        expected = await peek(engine, "a", SnapLedger)
        await engine.send(SnapLedger, "a", Noop())  # one more commit carries the snapshot
        snapshot = engine.log.load_snapshot("a")
        assert snapshot is not None and snapshot.version == 9  # every 3 events, at 3, 6, 9
    async with Engine.open(tmp_path, aggregates=[SnapLedger], sync=False) as engine:
        assert await peek(engine, "a", SnapLedger) == expected  # snapshot 9 + events 10, 11
    async with Engine.open(tmp_path, aggregates=[Ledger], sync=False) as engine:
        assert await peek(engine, "a") == expected  # no snapshots: all 11 events


@scenario
async def snapshot_of_another_format_is_ignored(tmp_path: Path) -> None:
    restored: list[bytes] = []

    class SnapLedgerV2(SnapLedger):
        aggregate_name = "Ledger"  # the next version of the same type
        snapshot_format = 2

        @classmethod
        def from_snapshot(cls, data: bytes) -> SnapLedgerV2:
            restored.append(data)
            return super().from_snapshot(data)

    async with Engine.open(tmp_path, aggregates=[SnapLedger], sync=False) as engine:
        for n in range(1, 5):
            await engine.send(SnapLedger, "a", Add(n))
        await engine.send(SnapLedger, "a", Noop())
        assert engine.log.load_snapshot("a") is not None
    async with Engine.open(tmp_path, aggregates=[SnapLedgerV2], sync=False) as engine:
        assert await peek(engine, "a", SnapLedgerV2) == (10, [1, 2, 3, 4])
        assert restored == []  # the format-1 snapshot was never read
        await engine.send(SnapLedgerV2, "a", Add(5))  # 5 events since no snapshot: take one
        await engine.send(SnapLedgerV2, "a", Noop())
        snapshot = engine.log.load_snapshot("a")
        assert snapshot is not None and (snapshot.format, snapshot.version) == (2, 5)


# -- passivation -------------------------------------------------------------------------


@scenario
async def passivation_under_a_small_cap_keeps_live_count_bounded(tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(12)]
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Ledger], max_live_aggregates=3
    ) as engine:
        for round_ in range(3):
            for i, sid in enumerate(ids):
                await engine.send(Ledger, sid, Add(i + round_))
                assert engine.statistics().aggregates.live <= 3

        async def add(sid: str, n: int) -> None:
            await engine.send(Ledger, sid, Add(n))

        async with anyio.create_task_group() as tg:
            for i, sid in enumerate(ids):
                tg.start_soon(add, sid, 100 + i)
        stats = engine.statistics().aggregates
        assert stats.live <= 3  # busy actors may exceed the cap; idle again, they go
        assert stats.passivations >= len(ids) and stats.activations > len(ids)
        for i, sid in enumerate(ids):
            assert await peek(engine, sid) == (3 * i + 3 + 100 + i, [i, i + 1, i + 2, 100 + i])
            assert engine.statistics().aggregates.live <= 3


@scenario
async def the_live_cap_is_hard_send_waits_and_send_nowait_is_overloaded(tmp_path: Path) -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Ledger], max_live_aggregates=1
    ) as engine:
        busy = engine.send_nowait(Ledger, "a", Add(1))  # "a" has a command in flight
        with pytest.raises(Overloaded):  # "b" would need a second live slot
            engine.send_nowait(Ledger, "b", Add(2))
        # send waits until "a" is idle, then passivates it and activates "b".
        assert await engine.send(Ledger, "b", Add(2)) == Committed("b", 1, 2, 1)
        assert await busy == Committed("a", 1, 1, 1)
        assert engine.statistics().aggregates.live == 1
        assert engine.statistics().aggregates.peak_live == 1
        assert await engine.send(Ledger, "a", Add(3)) == Committed("a", 2, 3, 1)  # comes back


# -- closing -----------------------------------------------------------------------------


@scenario
async def use_after_close_raises_engine_closed(tmp_path: Path) -> None:
    opened = Engine.open(log=MemoryEventLog(), aggregates=[Account], projectors=[Balances])
    engine = await opened.__aenter__()
    await engine.send(Account, "a", Deposit(1))
    await opened.__aexit__(None, None, None)
    await opened.__aexit__(None, None, None)  # a second exit is harmless
    with pytest.raises(EngineClosed):
        await engine.send(Account, "a", Deposit(1))
    with pytest.raises(EngineClosed):
        engine.send_nowait(Account, "a", Deposit(1))
    with pytest.raises(EngineClosed):
        await engine.query(Balances.balance, "a", after=99)


@scenario
async def close_with_commands_in_flight_commits_or_fails_typed(tmp_path: Path) -> None:
    outcomes: dict[tuple[str, int], Committed | EngineClosed] = {}

    async def client(engine: Engine, sid: str, n: int) -> None:
        try:
            outcomes[sid, n] = await engine.send(Ledger, sid, Add(n))
        except EngineClosed as e:
            outcomes[sid, n] = e

    async with anyio.create_task_group() as tg:
        async with Engine.open(tmp_path, aggregates=[Ledger], mailbox_size=2) as engine:
            direct = [engine.send_nowait(Ledger, "direct", Add(n)) for n in (1, 2)]
            for n in range(30):
                tg.start_soon(client, engine, f"s{n % 3}", n)
            await anyio.lowlevel.checkpoint()
        # Closed: what was in a mailbox committed; the rest failed, typed.
        assert [await p for p in direct] == [
            Committed("direct", 1, 1, 1),
            Committed("direct", 2, 2, 1),
        ]
    assert len(outcomes) == 30
    log = LmdbEventLog(tmp_path)
    try:
        for sid in ("s0", "s1", "s2"):
            committed = {
                n: ack
                for (s, n), ack in outcomes.items()
                if s == sid and isinstance(ack, Committed)
            }
            stored = log.read_stream(sid)
            assert sorted(committed) == sorted(amounts(stored))
            for n, ack in committed.items():
                assert amounts([stored[ack.version - 1]]) == [n]
    finally:
        log.close()
