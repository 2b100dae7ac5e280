"""A log whose reads block (``blocking_reads``): the engine reads it in worker threads, so
one stream's activation, or a projector's catch-up read, never stops the event loop; on
trio and on asyncio.

The slow log is our own backend, honestly slow: a ``MemoryEventLog`` whose reads of the
streams a test names wait on a ``threading.Event`` the test sets (and that say, with
another, that they started), or a real ``PostgresEventLog`` reading a long stream. Each
scenario is a plain coroutine run once under trio (pytest-trio) and once under
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import msgspec
import pytest

from actorlog import (
    Aggregate,
    Committed,
    Engine,
    EngineClosed,
    Overloaded,
    Rejected,
    StorageError,
    UnknownCommand,
    applies,
    handles,
)
from actorlog.storage import AppendResult, MemoryEventLog, StoredEvent
from benchmarks.bank import Account, AccountOpened, Balances, Deposit, Deposited, OpenAccount
from tests.support import Postgres, fill_log, stats


class GatedLog(MemoryEventLog):
    """A memory log that says its reads block, and whose reads of the ``gated`` streams
    (and of the whole log, while ``gate_read_all``; and lookups of the ``gated_ids``
    command ids) wait until the test sets ``gate``; reads of the ``failing`` streams raise
    ``StorageError``. ``loads`` counts the reads of each stream, ``finds`` the lookups of
    each command id."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: set[str] = set()
        self.failing: set[str] = set()
        self.gate_read_all = False
        self.gate = threading.Event()
        self.entered = threading.Event()  # a gated read started
        self.loads: Counter[str] = Counter()
        self.gated_ids: set[str] = set()
        self.finds: Counter[str] = Counter()
        self.reader_threads: set[int] = set()

    @property
    def blocking_reads(self) -> bool:
        return True

    def _wait_at_gate(self) -> None:
        self.reader_threads.add(threading.get_ident())
        self.entered.set()
        if not self.gate.wait(10):
            raise StorageError("the test never opened the gate")

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        self.loads[stream_id] += 1
        if stream_id in self.gated:
            self._wait_at_gate()
        if stream_id in self.failing:
            raise StorageError(f"cannot read {stream_id!r} (the test says so)")
        return super().read_stream(stream_id, from_version, limit)

    def find_command(self, stream_id: str, command_id: str) -> AppendResult | None:
        self.finds[command_id] += 1
        if command_id in self.gated_ids:
            self._wait_at_gate()
        return super().find_command(stream_id, command_id)

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        if self.gate_read_all:
            self._wait_at_gate()
        return super().read_all(from_position, limit)


class AddItem(msgspec.Struct, frozen=True):
    item: str


class ItemAdded(msgspec.Struct, frozen=True):
    item: str


class Basket(Aggregate):
    """Holds a list, and touches it before refusing "bad": a refusal leaves the actor stale
    (a list cannot be restored exactly), so its next command reloads it from the log."""

    def __init__(self) -> None:
        self.items: list[str] = []

    @handles
    def add(self, c: AddItem) -> list[ItemAdded]:
        if c.item == "bad":
            self.items.append(c.item)
            raise Rejected("no bad items")
        return [ItemAdded(c.item)]

    @applies
    def added(self, e: ItemAdded) -> None:
        self.items.append(e.item)


def opened(*stream_ids: str) -> GatedLog:
    log = GatedLog()
    fill_log(log, [(sid, AccountOpened(sid)) for sid in stream_ids])
    return log


async def started(log: GatedLog) -> None:
    """Wait (without blocking the loop) until a gated read is under way in its thread."""
    assert await anyio.to_thread.run_sync(log.entered.wait, 10), "no gated read started"


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` (engine statistics: nothing to wait on but a poll)."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


# -- scenarios (each runs on trio and on asyncio) ----------------------------------------------


async def others_are_served_while_one_activates() -> None:
    log = opened("slow", "fast")
    log.gated.add("slow")
    async with Engine.open(log=log, aggregates=[Account], projectors=[Balances]) as engine:
        await engine.send(Account, "fast", Deposit(1))  # live from now on
        done: list[Committed] = []

        async def slow() -> None:
            done.append(await engine.send(Account, "slow", Deposit(5)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await started(log)
            # "slow" is loading in a worker thread; the loop serves everything else: a live
            # aggregate commits, a query answers, a cold stream activates (another thread).
            fast = await engine.send(Account, "fast", Deposit(2))
            assert await engine.query(Balances.balance, "fast", after=fast.position) == 3
            assert await engine.send(Account, "cold", OpenAccount("c")) == Committed(
                "cold", 1, 5, 1
            )
            assert done == []
            assert threading.get_ident() not in log.reader_threads
            log.gate.set()
        assert done == [Committed("slow", 2, 6, 1)]
        assert await engine.query(Balances.balance, "slow", after=6) == 5
        assert engine.statistics().aggregates.activations == 3


async def concurrent_first_sends_load_once() -> None:
    log = opened("s")
    log.gated.add("s")
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        results: list[Committed] = []

        async def send(amount: int) -> None:
            results.append(await engine.send(Account, "s", Deposit(amount)))

        async with anyio.create_task_group() as tg:
            for amount in range(1, 6):
                tg.start_soon(send, amount)
            await started(log)
            await until(lambda: engine.statistics().aggregates.waiting == 4)
            log.gate.set()
        assert log.loads["s"] == 1
        assert sorted(r.version for r in results) == [2, 3, 4, 5, 6]
        aggregates = engine.statistics().aggregates
        assert (aggregates.activations, aggregates.live, aggregates.waiting) == (1, 1, 0)
        assert len(engine.log.read_stream("s")) == 6


async def loads_in_flight_count_against_the_live_cap() -> None:
    # Two live slots, three cold streams sent to at once: two load (each in its thread,
    # each holding a slot before it is live), the third waits for a slot.
    log = opened("a", "b", "c")
    log.gated.update({"a", "b", "c"})
    async with Engine.open(log=log, aggregates=[Account], max_live_aggregates=2) as engine:
        async with anyio.create_task_group() as tg:
            for stream_id in ("a", "b", "c"):
                tg.start_soon(engine.send, Account, stream_id, Deposit(1))
            await until(
                lambda: sum(log.loads.values()) == 2 and engine.statistics().aggregates.waiting == 1
            )
            log.gate.set()
        aggregates = engine.statistics().aggregates
        assert (aggregates.activations, aggregates.peak_live, aggregates.waiting) == (3, 2, 0)
        assert [engine.log.stream_version(s) for s in ("a", "b", "c")] == [2, 2, 2]


async def a_stale_actor_reloads_off_the_loop_once() -> None:
    log = opened("fast")
    fill_log(log, [("b", ItemAdded("x"))])
    async with Engine.open(log=log, aggregates=[Account, Basket]) as engine:
        await engine.send(Account, "fast", Deposit(1))
        await engine.send(Basket, "b", AddItem("y"))
        with pytest.raises(Rejected):
            await engine.send(Basket, "b", AddItem("bad"))  # stale from here on
        log.gated.add("b")
        results: list[Committed] = []

        async def add(item: str) -> None:
            results.append(await engine.send(Basket, "b", AddItem(item)))

        async with anyio.create_task_group() as tg:
            for item in ("p", "q", "r"):
                tg.start_soon(add, item)
            await started(log)  # one sender reloads "b" in a thread...
            assert (await engine.send(Account, "fast", Deposit(2))).version == 3  # ...meanwhile
            await until(lambda: engine.statistics().aggregates.waiting == 2)
            with pytest.raises(Overloaded):  # stale, and reloading: no inline reload beside it
                engine.send_nowait(Basket, "b", AddItem("s"))
            log.gate.set()
        assert log.loads["b"] == 2  # the activation, and one reload
        assert engine.statistics().aggregates.reloads == 1
        assert sorted(r.version for r in results) == [3, 4, 5]
        items = [e.type for e in engine.log.read_stream("b")]
        assert len(items) == 5


async def a_sender_cancelled_while_its_stream_loads() -> None:
    # One live slot: "s" loads in a thread for a sender that is then cancelled; a second
    # sender to "s" waits for that load, a third (stream "b") waits for the slot.
    log = opened("s", "b")
    log.gated.add("s")
    async with Engine.open(log=log, aggregates=[Account], max_live_aggregates=1) as engine:
        results: list[Committed] = []
        scope = anyio.CancelScope()
        reached: list[str] = []

        async def cancelled() -> None:
            with scope:
                await engine.send(Account, "s", Deposit(1))
                reached.append("the cancelled command committed")

        async def send(stream_id: str, amount: int) -> None:
            results.append(await engine.send(Account, stream_id, Deposit(amount)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled)
            await started(log)
            tg.start_soon(send, "s", 2)
            tg.start_soon(send, "b", 3)
            await until(lambda: engine.statistics().aggregates.waiting == 2)
            scope.cancel()
            log.gate.set()
        assert reached == [] and scope.cancelled_caught
        assert log.loads["s"] == 1  # the load was finished, and used by the other sender
        assert sorted((r.stream_id, r.version) for r in results) == [("b", 2), ("s", 2)]
        assert len(engine.log.read_stream("s")) == 2  # opened, and the uncancelled deposit
        aggregates = engine.statistics().aggregates
        assert (aggregates.live, aggregates.waiting, aggregates.in_flight) == (1, 0, 0)
        # The slot went round: both streams still take commands.
        assert (await engine.send(Account, "s", Deposit(4))).version == 3
        assert (await engine.send(Account, "b", Deposit(5))).version == 3


async def a_failing_load_fails_its_senders_and_frees_the_slot() -> None:
    log = opened("s", "t")
    log.gated.add("s")
    log.failing.add("s")
    async with Engine.open(log=log, aggregates=[Account], max_live_aggregates=1) as engine:
        errors: list[StorageError] = []

        async def send(amount: int) -> None:
            try:
                await engine.send(Account, "s", Deposit(amount))
            except StorageError as e:
                errors.append(e)

        async with anyio.create_task_group() as tg:
            for amount in range(1, 4):
                tg.start_soon(send, amount)
            await started(log)
            await until(lambda: engine.statistics().aggregates.waiting == 2)
            log.gate.set()
        assert len(errors) == 3 and len({id(e) for e in errors}) == 3
        assert log.loads["s"] == 1  # the senders waiting for the load share its error
        aggregates = engine.statistics().aggregates
        assert (aggregates.live, aggregates.waiting) == (0, 0)
        # Nothing is left behind: the one live slot is free, and "s" loads again once the
        # log reads it.
        assert (await engine.send(Account, "t", Deposit(1))).version == 2
        log.failing.clear()
        assert (await engine.send(Account, "s", Deposit(1))).version == 2
        assert log.loads["s"] == 2


async def send_nowait_while_a_stream_loads() -> None:
    log = opened("s", "n")
    log.gated.add("s")
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.send, Account, "s", Deposit(1))
            await started(log)
            with pytest.raises(Overloaded):
                engine.send_nowait(Account, "s", Deposit(2))
            # A cold stream nobody is loading: send_nowait cannot wait, so it loads inline.
            assert await engine.send_nowait(Account, "n", Deposit(3)) == Committed("n", 2, 3, 1)
            log.gate.set()
        assert engine.log.stream_version("s") == 2


async def the_engine_closes_while_a_stream_loads() -> None:
    log = opened("s")
    log.gated.add("s")
    outcome: list[BaseException] = []

    async def send(engine: Engine) -> None:
        try:
            await engine.send(Account, "s", Deposit(1))
        except EngineClosed as e:
            outcome.append(e)

    async with anyio.create_task_group() as tg:
        async with Engine.open(log=log, aggregates=[Account]) as engine:
            tg.start_soon(send, engine)
            await started(log)
        log.gate.set()  # the engine (and the log) closed while the read waited
    assert len(outcome) == 1


async def projector_catch_up_reads_off_the_loop() -> None:
    log = GatedLog()
    fill_log(log, [("acc", AccountOpened("a"))] + [("acc", Deposited(1))] * 3000)
    fill_log(log, [("fast", AccountOpened("f"))])
    log.gate_read_all = True
    async with Engine.open(
        log=log, aggregates=[Account], projectors=[Balances], wait_for_projectors=False
    ) as engine:
        await started(log)
        # Balances' first catch-up read waits in its thread; commands still commit.
        done = await engine.send(Account, "fast", Deposit(7))
        assert done == Committed("fast", 2, 3003, 1)
        assert stats(engine, "Balances").checkpoint == 0
        log.gate_read_all = False
        log.gate.set()
        assert await engine.query(Balances.balance, "acc", after=done.position) == 3000
        assert await engine.query(Balances.balance, "fast") == 7


async def others_are_served_while_a_command_id_is_looked_up() -> None:
    log = opened("slow", "fast")
    log.gated_ids.add("c1")
    async with Engine.open(log=log, aggregates=[Account], projectors=[Balances]) as engine:
        await engine.send(Account, "slow", Deposit(1))  # both live: only the lookup waits
        await engine.send(Account, "fast", Deposit(1))
        done: list[Committed] = []

        async def slow() -> None:
            done.append(await engine.send(Account, "slow", Deposit(5), command_id="c1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await started(log)
            # The lookup of "c1" waits in a worker thread; the loop serves everything else.
            fast = await engine.send(Account, "fast", Deposit(2), command_id="c2")
            assert await engine.query(Balances.balance, "fast", after=fast.position) == 3
            assert done == []
            assert threading.get_ident() not in log.reader_threads
            log.gate.set()
        assert done == [Committed("slow", 3, 6, 1)]
        # A retry is answered from the log (looked up off the loop again), not decided.
        again = await engine.send(Account, "slow", Deposit(5), command_id="c1")
        assert again == done[0]
        assert log.finds["c1"] == 2
        assert engine.log.stream_version("slow") == 3
        assert await engine.query(Balances.balance, "slow", after=6) == 6


async def concurrent_retries_looked_up_off_the_loop_append_once() -> None:
    log = opened("s")
    log.gated_ids.add("same")
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        results: list[Committed] = []

        async def send() -> None:
            results.append(await engine.send(Account, "s", Deposit(3), command_id="same"))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(send)
            await until(lambda: log.finds["same"] == 3)  # all three lookups under way
            log.gate.set()
        # One decided and appended; the others followed it (in flight) or, had it
        # completed first, would have asked the log again: one answer for all.
        assert results == [Committed("s", 2, 2, 1)] * 3
        assert engine.log.stream_version("s") == 2


async def a_lookup_gone_stale_is_asked_again() -> None:
    # While "x" is looked up, another command of the stream completes: the lookup's
    # answer may be stale (had that been "x", it would be), so the decision asks again.
    log = opened("s")
    log.gated_ids.add("x")
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        await engine.send(Account, "s", Deposit(1))
        done: list[Committed] = []

        async def first() -> None:
            done.append(await engine.send(Account, "s", Deposit(2), command_id="x"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await started(log)
            assert await engine.send(Account, "s", Deposit(4), command_id="y") == Committed(
                "s", 3, 3, 1
            )
            log.gate.set()
        assert done == [Committed("s", 4, 4, 1)]
        assert log.finds["x"] == 2  # off the loop, then again before deciding
        assert [e.command_id for e in engine.log.read_stream("s")] == [None, None, "y", "x"]


async def a_command_id_send_refused_before_any_read() -> None:
    log = opened("s")
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        with pytest.raises(UnknownCommand):
            await engine.send(Basket, "s", AddItem("a"), command_id="k")
        with pytest.raises(UnknownCommand):
            await engine.send(Account, "s", AddItem("a"), command_id="k")
        assert (log.finds["k"], log.loads["s"]) == (0, 0)
    with pytest.raises(EngineClosed):
        await engine.send(Account, "s", Deposit(1), command_id="k")
    assert (log.finds["k"], log.loads["s"]) == (0, 0)


SCENARIOS: dict[str, Callable[[], Awaitable[None]]] = {
    f.__name__: f
    for f in (
        others_are_served_while_one_activates,
        concurrent_first_sends_load_once,
        loads_in_flight_count_against_the_live_cap,
        a_stale_actor_reloads_off_the_loop_once,
        a_sender_cancelled_while_its_stream_loads,
        a_failing_load_fails_its_senders_and_frees_the_slot,
        send_nowait_while_a_stream_loads,
        the_engine_closes_while_a_stream_loads,
        projector_catch_up_reads_off_the_loop,
        others_are_served_while_a_command_id_is_looked_up,
        concurrent_retries_looked_up_off_the_loop_append_once,
        a_lookup_gone_stale_is_asked_again,
        a_command_id_send_refused_before_any_read,
    )
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_on_trio(scenario: Callable[[], Awaitable[None]]) -> None:
    with anyio.fail_after(30):
        await scenario()


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_on_asyncio(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), 30)

    asyncio.run(main())


def test_logs_say_whether_their_reads_block(postgres: Postgres) -> None:
    assert MemoryEventLog().blocking_reads is False
    assert postgres.log().blocking_reads is True


# -- on a real server: activating a long stream while a live aggregate keeps committing ------


async def long_stream_activates_while_others_commit(postgres: Postgres) -> None:
    log = postgres.log()
    fill_log(log, [("long", AccountOpened("l"))] + [("long", Deposited(1))] * 30_000)
    fill_log(log, [("fast", AccountOpened("f"))])
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        await engine.send(Account, "fast", Deposit(1))  # live
        slow: list[Committed] = []
        during = 0

        async def activate() -> None:
            slow.append(await engine.send(Account, "long", Deposit(1)))

        async with anyio.create_task_group() as tg:
            began = time.perf_counter()
            tg.start_soon(activate)
            await anyio.lowlevel.checkpoint()
            while not slow:
                await engine.send(Account, "fast", Deposit(1))
                during += 1
            took = time.perf_counter() - began
        assert slow[0].version == 30_002
        # Loading 30,000 events takes tens of milliseconds or more; each commit of "fast"
        # one round trip. Inline, the load would have held the loop throughout.
        assert during >= 3, (during, took)


async def test_a_long_stream_activates_while_others_commit_on_trio(postgres: Postgres) -> None:
    with anyio.fail_after(60):
        await long_stream_activates_while_others_commit(postgres)


def test_a_long_stream_activates_while_others_commit_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(asyncio.wait_for(long_stream_activates_while_others_commit(postgres), 60))
