"""Live state equals replayed state whatever user code does, memory is bounded in bytes,
cancelling waiters is O(1) each, and user code's ``BaseException`` is its own failure.

Real LMDB (``Engine.open(tmp_path)``) wherever the log matters; the aggregate host's
hand-cranked writer (``tests/engine/actor_host.py``) where the test must decide when a
group commits.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import msgspec
import pytest
import trio

from actorlog import (
    Aggregate,
    Engine,
    HandlerError,
    Projector,
    ProjectorFaulted,
    Recorded,
    Rejected,
    applies,
    handles,
)
from actorlog.engine import _projectors
from actorlog.engine._projectors import WINDOW_BYTES, Broadcast, ProjectorHost
from actorlog.engine._records import Append
from actorlog.engine._writer import CommitBatch
from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, MemoryEventLog, StoredEvent
from tests.support import backlog, stats

from .actor_host import host

# -- 1. a handler that changes its actor and then refuses ------------------------------------


class Add(msgspec.Struct, frozen=True):
    n: int


class Totalled(msgspec.Struct, frozen=True):
    total: int


class Meddler(Aggregate):
    """Adds to its total, then refuses negative amounts: after the change (the bug class)."""

    total: int

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Totalled]:
        self.total += c.n  # decides on a changed state ...
        if c.n < 0:
            raise Rejected(f"{c.n} is negative")  # ... and refuses after the change
        return [Totalled(self.total)]

    @applies
    def totalled(self, e: Totalled) -> None:
        self.total = e.total


class SnapMeddler(Meddler):
    aggregate_name = "Meddler"
    snapshot_every = 1


class ListMeddler(Meddler):
    """The same, with a mutable attribute changed in place: not undoable by restoring."""

    aggregate_name = "Meddler"
    amounts: list[int]

    def __init__(self) -> None:
        super().__init__()
        self.amounts = []

    @handles
    def add(self, c: Add) -> list[Totalled]:
        self.amounts.append(c.n)
        return super().add(c)

    @applies
    def totalled(self, e: Totalled) -> None:
        self.amounts = [*self.amounts, e.total]
        self.total = e.total


class SnapListMeddler(ListMeddler):
    aggregate_name = "Meddler"
    snapshot_every = 1


MEDDLERS = [Meddler, SnapMeddler, ListMeddler, SnapListMeddler]


def totals(engine: Engine, stream_id: str = "m") -> list[int]:
    return [
        msgspec.msgpack.decode(e.payload, type=Totalled).total
        for e in engine.log.read_stream(stream_id)
    ]


@pytest.mark.parametrize("kind", MEDDLERS, ids=lambda k: k.__name__)
async def test_a_handler_that_changes_its_state_then_rejects_leaves_no_trace(
    tmp_path: Path, kind: type[Meddler]
) -> None:
    async with Engine.open(tmp_path, aggregates=[kind]) as engine:
        await engine.send(kind, "m", Add(1))
        with pytest.raises(Rejected):
            await engine.send(kind, "m", Add(-100))
        await engine.send(kind, "m", Add(1))
        assert totals(engine) == [1, 2]  # not [1, -98]: decided on the replayed state


@pytest.mark.parametrize("kind", MEDDLERS, ids=lambda k: k.__name__)
async def test_a_rejection_while_earlier_commands_are_in_flight_leaves_no_trace_across_a_restart(
    tmp_path: Path, kind: type[Meddler]
) -> None:
    async with Engine.open(tmp_path, aggregates=[kind]) as engine:
        first = engine.send_nowait(kind, "m", Add(1))  # in flight while the next is refused
        second = engine.send_nowait(kind, "m", Add(1))
        with pytest.raises(Rejected):
            await engine.send(kind, "m", Add(-100))
        await first
        await second
        # The state is all durable now: a snapshot (snapshot_every = 1) may be taken here,
        # and must hold the replayed state, not the refused change.
        await engine.send(kind, "m", Add(1))
        assert totals(engine) == [1, 2, 3]
        with pytest.raises(Rejected):
            await engine.send(kind, "m", Add(-5))  # the last thing before closing
    async with Engine.open(tmp_path, aggregates=[kind]) as engine:
        await engine.send(kind, "m", Add(1))
        assert totals(engine) == [1, 2, 3, 4]


async def test_a_rejection_on_immutable_state_is_undone_without_a_reload(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Meddler]) as engine:
        await engine.send(Meddler, "m", Add(1))
        for _ in range(3):
            with pytest.raises(Rejected):
                await engine.send(Meddler, "m", Add(-100))
        await engine.send(Meddler, "m", Add(1))
        assert totals(engine) == [1, 2]
        assert engine.statistics().aggregates.reloads == 0


class Frozen(msgspec.Struct, frozen=True):
    items: tuple[int, ...]


class Holder(msgspec.Struct, frozen=True):
    items: list[int]  # frozen, yet what it holds can change


class Shapes(Aggregate):
    """Attributes of several shapes; ``Poke`` changes one of them and then refuses."""

    def __init__(self) -> None:
        self.frozen = Frozen((1, 2))
        self.holder = Holder([1, 2])
        self.pairs: tuple[Any, ...] = (1, (2, 3))
        self.nested = (1, [2, 3])

    @handles
    def poke(self, c: Add) -> None:
        if c.n == 0:
            self.frozen = Frozen((9,))  # rebound: undone by restoring
        elif c.n == 1:
            self.holder.items.append(9)  # changed in place inside a frozen struct
        elif c.n == 2:
            self.pairs = (0,)
            self.extra = "new"  # a new attribute goes too
        else:
            self.nested[1].append(9)  # changed in place inside a tuple
        raise Rejected("poked")

    @handles
    def show(self, c: Totalled) -> None:
        raise Rejected(repr((self.frozen, self.holder, self.pairs, self.nested, vars(self))))


@pytest.mark.parametrize("poke", [0, 1, 2, 3])
async def test_whatever_a_refusing_handler_changed_is_gone_before_the_next_command(
    poke: int,
) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Shapes]) as engine:
        with pytest.raises(Rejected) as fresh:
            await engine.send(Shapes, "s", Totalled(0))
        with pytest.raises(Rejected):
            await engine.send(Shapes, "s", Add(poke))
        with pytest.raises(Rejected) as after:
            await engine.send(Shapes, "s", Totalled(0))
        assert str(after.value) == str(fresh.value)


# -- 4. BaseException from user code ---------------------------------------------------------


class Boom(BaseException):
    """A user's exception outside the Exception tree."""


class Detonate(msgspec.Struct, frozen=True):
    where: str  # "handler" or "applier"
    error: str  # "boom" or "generator_exit"


class Detonated(msgspec.Struct, frozen=True):
    error: str


def _raise(error: str) -> None:
    raise Boom("boom") if error == "boom" else GeneratorExit()


class Bomb(Aggregate):
    total: int

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Totalled]:
        return [Totalled(self.total + c.n)]

    @handles
    def detonate(self, c: Detonate) -> list[Detonated]:
        self.total = -1
        if c.where == "handler":
            _raise(c.error)
        return [Detonated(c.error)]

    @applies
    def totalled(self, e: Totalled) -> None:
        self.total = e.total

    @applies
    def detonated(self, e: Detonated) -> None:
        self.total = -2
        _raise(e.error)


@pytest.mark.parametrize("error", ["boom", "generator_exit"])
@pytest.mark.parametrize("where", ["handler", "applier"])
async def test_a_base_exception_from_aggregate_code_is_a_handler_error(
    tmp_path: Path, where: str, error: str
) -> None:
    async with Engine.open(tmp_path, aggregates=[Bomb]) as engine:
        await engine.send(Bomb, "b", Add(1))
        with pytest.raises(HandlerError) as caught:
            await engine.send(Bomb, "b", Detonate(where, error))
        assert isinstance(caught.value.__cause__, Boom if error == "boom" else GeneratorExit)
        ack = await engine.send(Bomb, "b", Add(1))  # the engine and the actor carry on
        assert ack.version == 2
        assert [
            msgspec.msgpack.decode(e.payload, type=Totalled).total
            for e in engine.log.read_stream("b")
        ] == [1, 2]


async def test_system_exit_from_a_handler_reaches_the_caller_unchanged() -> None:
    class Quitter(Aggregate):
        @handles
        def add(self, c: Add) -> None:
            raise SystemExit(3)

    async with Engine.open(log=MemoryEventLog(), aggregates=[Quitter]) as engine:
        with pytest.raises(SystemExit):
            await engine.send(Quitter, "q", Add(1))


class Seen(Projector):
    def __init__(self) -> None:
        self.totals: list[int] = []

    @applies
    def totalled(self, e: Totalled, meta: Recorded) -> None:
        self.totals.append(e.total)

    def all(self) -> list[int]:
        return self.totals


class Fragile(Projector):
    """Raises a BaseException that is not an Exception on the total 2."""

    error = "boom"

    def __init__(self) -> None:
        self.totals: list[int] = []

    @applies
    def totalled(self, e: Totalled) -> None:
        if e.total == 2:
            _raise(type(self).error)
        self.totals.append(e.total)

    def all(self) -> list[int]:
        return self.totals


class ParkingFragile(Fragile):
    on_error = "park"
    error = "generator_exit"

    def parked_all(self) -> list[int]:  # its own query: an inherited one goes to Fragile
        return self.totals


@pytest.mark.parametrize("error", ["boom", "generator_exit"])
async def test_a_base_exception_from_a_projector_applier_halts_only_that_projector(
    tmp_path: Path, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Fragile, "error", error)
    async with Engine.open(
        tmp_path, aggregates=[Meddler], projectors=[Seen, Fragile, ParkingFragile]
    ) as engine:
        for _ in range(3):
            ack = await engine.send(Meddler, "m", Add(1))
        assert await engine.query(Seen.all, after=ack.position) == [1, 2, 3]
        with pytest.raises(ProjectorFaulted) as caught:
            await engine.query(Fragile.all, after=ack.position)
        assert caught.value.position == 2
        assert isinstance(caught.value.__cause__, Boom if error == "boom" else GeneratorExit)
        assert await engine.query(ParkingFragile.parked_all, after=ack.position) == [1, 3]
        assert [p.position for p in engine.parked(ParkingFragile)] == [2]
        ack = await engine.send(Meddler, "m", Add(1))  # the write side carries on
        assert await engine.query(Seen.all, after=ack.position) == [1, 2, 3, 4]


# -- 3. cancelling waiters is O(1) each --------------------------------------------------------

WAITERS = 3_000


class Seen2(Seen):
    def positions(self) -> int:
        return len(self.totals)


async def cancel_many_query_waiters() -> int:
    """``WAITERS`` queries wait for a position written but not yet applied, and are
    cancelled at once; returns how many times the host compared two waiters meanwhile.

    Each cancelled wait used to remove itself from the waiter heap and re-heapify it, O(n)
    each: 20,000 took 35 s. Every waiter here waits for the same position, so any two are
    told apart by their sequence numbers; counting the comparisons made on those (as the
    senders' test counts them on replies) makes the test exact and fast either way: marked
    dead and compacted once the dead outnumber the live, the waiters cost a few comparisons
    each; removed and re-heapified one by one, quadratically many (31 million for 3,000,
    tried as a mutation). Then checks that dead entries never pile up and a later wait
    still works.
    """
    log = backlog(steps=16, event=Totalled(1))  # Seen2 is still catching up on it
    target = log.head_position()
    comparisons = 0

    class Counted(int):
        """A waiter's sequence number, counting the comparisons made on it."""

        def __eq__(self, other: object) -> bool:
            nonlocal comparisons
            comparisons += 1
            return int(self) == other

        def __lt__(self, other: int) -> bool:
            nonlocal comparisons
            comparisons += 1
            return int(self) < other

        __hash__ = int.__hash__

    async with Engine.open(
        log=log, aggregates=[Meddler], projectors=[Seen2], wait_for_projectors=False
    ) as engine:
        host = engine._projectors[Seen2]  # white box: its waiter heap and their numbers
        host._seq = map(Counted, itertools.count())  # type: ignore[assignment]
        cancelled = 0

        async def wait() -> None:
            nonlocal cancelled
            try:
                await engine.query(Seen2.positions, after=target)
            except anyio.get_cancelled_exc_class():
                cancelled += 1
                raise

        async with anyio.create_task_group() as tg:
            for _ in range(WAITERS):
                tg.start_soon(wait)
            while len(host._waiters) < WAITERS:
                assert stats(engine, "Seen2").checkpoint < target  # or this would never end
                await anyio.lowlevel.checkpoint()
            comparisons = 0
            tg.cancel_scope.cancel()
        counted = comparisons
        # Every query was still waiting when cancelled: none was answered meanwhile.
        assert cancelled == WAITERS
        assert stats(engine, "Seen2").checkpoint < target
        assert len(host._waiters) <= 1  # compacted whenever the dead outnumbered the live
        ack = await engine.send(Meddler, "m", Add(1))  # and a later wait still works
        assert await engine.query(Seen2.positions, after=ack.position) == target + 1
    return counted


# Compaction heapifies the live half each time the dead outnumber it: ~2 * WAITERS entry
# comparisons in all, each counted twice (comparing two lists tests == before <).
LINEAR = 10 * WAITERS


async def test_cancelling_many_query_waiters_is_linear_on_trio() -> None:
    assert await cancel_many_query_waiters() < LINEAR


def test_cancelling_many_query_waiters_is_linear_on_asyncio() -> None:
    assert asyncio.run(cancel_many_query_waiters()) < LINEAR


class Take(msgspec.Struct, frozen=True):
    n: int


class Fail(msgspec.Struct, frozen=True):
    pass


class Stack(Aggregate):
    """A list-holding aggregate: ``Fail`` raises, which marks it stale (to be reloaded)."""

    items: list[int]

    def __init__(self) -> None:
        self.items = []

    @handles
    def add(self, c: Add) -> list[Totalled]:
        return [Totalled(c.n)]

    @handles
    def fail(self, c: Fail) -> None:
        raise ValueError("fails")

    @applies
    def totalled(self, e: Totalled) -> None:
        self.items.append(e.total)


SENDERS = 3_000
Queue = Literal["room", "live_slot", "drained", "settled"]


async def cancel_many_waiting_senders(queue: Queue) -> int:
    """``SENDERS`` senders wait in one of the host's queues and are cancelled at once.

    Returns how many times the host compared two replies while they left. A queue that
    finds a cancelled reply by scanning (``deque.remove``, ``in``) compares it with every
    entry before it, ~SENDERS**2 / 4 times in all; one keyed by the reply compares none.
    Counting that, rather than timing it, makes the test exact and fast either way. Then
    checks the hand-off invariants: nothing left waiting, and the actor takes a command.
    """
    kind: Any = Stack if queue == "drained" else Meddler
    aggregates, writer, _log = host(
        mailbox_size={"settled": SENDERS + 1, "drained": 2}.get(queue, 1),
        max_live=1 if queue == "live_slot" else 100,
        kinds=[kind],
    )
    comparisons = 0
    base: Any = type(aggregates._new_reply())

    class Counted(base):  # type: ignore[misc]
        """The running loop's reply, counting the equality tests made on it."""

        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            nonlocal comparisons
            comparisons += 1
            return self is other

        __hash__ = base.__hash__

    aggregates._new_reply = Counted  # white box: how the host makes replies
    stream = "b" if queue == "live_slot" else "a"
    aggregates.send_nowait(kind, stream, Add(1), None)  # in flight, not committed
    command: Any = Add(1)
    if queue == "drained":
        with pytest.raises(HandlerError):  # stale with an append in flight: senders wait
            aggregates.send_nowait(kind, "a", Fail(), None)
    elif queue == "settled":
        command = Add(-1)  # rejected on state not yet durable: the sender waits for it

    async def send() -> None:
        await aggregates.send(kind, "a", command, None)

    async with anyio.create_task_group() as tg:
        for _ in range(SENDERS):
            tg.start_soon(send)
        while waiting(aggregates, queue) < SENDERS:
            await anyio.lowlevel.checkpoint()
        comparisons = 0
        tg.cancel_scope.cancel()
    counted = comparisons
    assert aggregates.statistics().waiting == 0
    writer.commit()
    pending = aggregates.send_nowait(kind, "a", Add(2), None)
    writer.commit()
    assert (await pending.wait()).stream_id == "a"
    assert not any(actor.busy() for actor in aggregates._live.values())
    return counted


def waiting(aggregates: Any, queue: Queue) -> int:
    if queue == "settled":
        actor = aggregates._live.get("a")
        return 0 if actor is None else len(actor.settled)
    return int(aggregates.statistics().waiting)


QUEUES: list[Queue] = ["room", "live_slot", "drained", "settled"]


@pytest.mark.parametrize("queue", QUEUES)
async def test_cancelling_many_waiting_senders_scans_no_queue_on_trio(queue: Queue) -> None:
    assert await cancel_many_waiting_senders(queue) < SENDERS


@pytest.mark.parametrize("queue", QUEUES)
def test_cancelling_many_waiting_senders_scans_no_queue_on_asyncio(queue: Queue) -> None:
    assert asyncio.run(cancel_many_waiting_senders(queue)) < SENDERS


# -- 2. memory bounded in bytes ----------------------------------------------------------------


class Store(msgspec.Struct, frozen=True):
    size: int


class Blob(msgspec.Struct, frozen=True):
    data: bytes


class Bulk(Aggregate):
    @handles
    def store(self, c: Store) -> list[Blob]:
        return [Blob(b"x" * c.size)]

    @applies
    def blob(self, e: Blob) -> None:
        pass


class BlobSizes(Projector):
    """Every blob applied: (position, size, the object itself)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, Blob]] = []

    @applies
    def blob(self, e: Blob, meta: Recorded) -> None:
        self.seen.append((meta.position, len(e.data), e))

    def positions(self) -> list[int]:
        return [position for position, _, _ in self.seen]


MiB = 1024 * 1024


@pytest.mark.parametrize("projectors", [0, 1])
async def test_the_window_holds_big_events_within_its_byte_budget(
    tmp_path: Path, projectors: int
) -> None:
    """80 events of 1 MiB: the window (64 MiB by default) holds ~31 of them with a projector
    (each counts its payload twice: the stored bytes and the object beside them), none
    without one; the projector still applies each event once, in order."""
    kinds = [BlobSizes][:projectors]
    async with Engine.open(tmp_path, aggregates=[Bulk], projectors=kinds, sync=False) as engine:
        window = engine._broadcast  # white box: the window's own accounting
        held = []
        for _ in range(80):
            ack = await engine.send(Bulk, "b", Store(MiB))
            held.append(window.statistics())
        assert all(s.bytes <= WINDOW_BYTES for s in held)
        if projectors:
            positions = await engine.query(BlobSizes.positions, after=ack.position)
            assert positions == list(range(1, 81))
            assert held[-1].bytes > WINDOW_BYTES // 2  # it does keep what fits
        else:
            assert {(s.events, s.bytes) for s in held} == {(0, 0)}


class BlobHarness:
    """A memory log, a small-budget broadcast and one projector, committed by hand."""

    def __init__(self, *, window_bytes: int, log: MemoryEventLog | None = None) -> None:
        self.log = log if log is not None else MemoryEventLog()
        self.registry = EventRegistry([Blob])
        self.broadcast = Broadcast(0, window_bytes=window_bytes)
        self.host = ProjectorHost(
            BlobSizes, log=self.log, broadcast=self.broadcast, registry=self.registry
        )
        self.emitted: dict[int, Blob] = {}

    def commit(self, *sizes: int) -> None:
        blobs = [Blob(b"x" * size) for size in sizes]
        appends = [Append("b", ANY, (self.registry.encode(blob),)) for blob in blobs]
        _, stored = self.log.append_batch(appends)
        self.broadcast.publish(CommitBatch(stored, list(blobs)))
        self.emitted.update((s.position, b) for s, b in zip(stored, blobs, strict=True))


async def test_a_projector_behind_a_byte_bounded_window_reads_the_rest_from_the_log() -> None:
    h = BlobHarness(window_bytes=10_000)  # 2 events of 1,000 bytes: 4,512 counted
    for _ in range(20):
        h.commit(1000, 1000)
        assert h.broadcast.statistics().bytes <= 10_000
    assert h.broadcast.statistics().events == 4  # the two newest batches
    h.commit(6000)  # alone over the budget: not kept, and it pushes out the rest
    assert h.broadcast.statistics().events == 0
    h.commit(10, 10)
    assert h.broadcast.statistics().events == 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        await h.host.wait_position(43)  # read from the log (it starts at position 1)
        h.commit(10)
        await h.host.wait_position(44)  # live again: from the window
        nursery.cancel_scope.cancel()
    seen = h.host.instance.seen
    assert [p for p, _, _ in seen] == list(range(1, 45))  # each once, in order
    assert [size for _, size, _ in seen] == [1000] * 40 + [6000, 10, 10, 10]
    from_window = [p for p, _, blob in seen if blob is h.emitted[p]]
    assert from_window == [44]
    shared = h.broadcast.statistics()
    assert shared.shared_bytes <= 10_000 // 4  # reads too big to share are not kept


class LimitsLog(MemoryEventLog):
    """Records the limit of every catch-up read."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        self.limits.append(limit)
        return super().read_all(from_position, limit)


async def test_catch_up_reads_of_big_events_shrink_to_the_byte_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_projectors, "BATCH_BYTES", 20_000)
    log = LimitsLog()
    h = BlobHarness(window_bytes=0, log=log)  # nothing in the window: all from the log
    for _ in range(100):
        h.commit(*[2000] * 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        await h.host.wait_position(1000)
        nursery.cancel_scope.cancel()
    assert h.host.instance.positions() == list(range(1, 1001))
    assert log.limits[0] == _projectors.FIRST_BATCH
    assert max(log.limits[1:]) * 2000 <= 20_000  # ~BATCH_BYTES of payload per read


class BadSnapshots(Meddler):
    """Snapshots every event, but its snapshot_state raises a BaseException."""

    aggregate_name = "Meddler"
    snapshot_every = 1

    def snapshot_state(self) -> bytes:
        raise Boom("no snapshot")


class BadSavedCache(Seen):
    snapshot_every = 1
    totals: list[int]

    def snapshot_state(self) -> bytes:
        raise Boom("no cache")

    def count(self) -> int:
        return len(self.totals)


async def test_a_base_exception_from_snapshot_state_only_skips_the_snapshot(
    tmp_path: Path,
) -> None:
    async with Engine.open(tmp_path, aggregates=[BadSnapshots], projectors=[BadSavedCache]) as e:
        for n in range(1, 4):
            ack = await e.send(BadSnapshots, "m", Add(1))
            assert ack.version == n
        assert await e.query(BadSavedCache.count, after=ack.position) == 3
        stats = e.statistics()
        assert stats.aggregates.snapshot_failures == 3
        assert stats.projectors[0].snapshot_failures >= 1


class Slotted(Aggregate):
    """Keeps its total in a slot, out of ``__dict__``: a refusal is undone by a reload."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Totalled]:
        self.total += c.n
        if c.n < 0:
            raise Rejected(f"{c.n} is negative")
        return [Totalled(self.total)]

    @applies
    def totalled(self, e: Totalled) -> None:
        self.total = e.total


async def test_a_refusal_on_state_kept_in_slots_is_undone_by_a_reload() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Slotted]) as engine:
        await engine.send(Slotted, "s", Add(1))
        with pytest.raises(Rejected):
            await engine.send(Slotted, "s", Add(-100))
        assert (await engine.send(Slotted, "s", Add(1))).version == 2
        assert totals(engine, "s") == [1, 2]
        assert engine.statistics().aggregates.reloads == 1


# -- an event with a mutable part, shared by the aggregate and a live projector -------------


class AddItem(msgspec.Struct, frozen=True):
    item: str


class ItemsAdded(msgspec.Struct, frozen=True):
    items: list[str]  # a mutable part inside a frozen event


class Cart(Aggregate):
    def __init__(self) -> None:
        self.items: list[str] = []

    @handles
    def add(self, c: AddItem) -> list[ItemsAdded]:
        self.items.append(c.item)  # mutates what the previous event handed out
        return [ItemsAdded(self.items)]

    @applies
    def added(self, e: ItemsAdded) -> None:
        self.items = e.items


class CartView(Projector):
    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    @applies
    def added(self, e: ItemsAdded, meta: Recorded) -> None:
        self.seen.append(e.items)

    def all(self) -> list[list[str]]:
        return self.seen


async def test_an_event_with_a_mutable_part_does_not_alias_a_live_projector() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Cart], projectors=[CartView]
    ) as engine:
        await engine.send(Cart, "c", AddItem("x"))
        ack = await engine.send(Cart, "c", AddItem("y"))
        live = await engine.query(CartView.all, after=ack.position)
        engine.rebuild(CartView)
        await engine.wait_projected(ack.position)
        assert live == await engine.query(CartView.all) == [["x"], ["x", "y"]]
