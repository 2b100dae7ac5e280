"""The projector host (engine/_projectors.py) driven directly: window, catch-up, faults.

A memory log plus ``Broadcast.publish`` stands in for the writer (it does exactly this after
each commit), so a test decides what is committed and when the projector may run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

import msgspec
import pytest
import trio
import trio.testing

from actorlog import EngineClosed, Projector, ProjectorFaulted, Recorded, StorageError, applies
from actorlog.engine import _projectors
from actorlog.engine._projectors import (
    FIRST_BATCH,
    MAX_BATCH,
    MIN_BATCH,
    Broadcast,
    ProjectorHost,
    _next_batch,
)
from actorlog.engine._writer import CommitBatch
from actorlog.lowlevel import EventRegistry, ProjectorType
from actorlog.storage import ANY, Append, MemoryEventLog, StoredEvent
from benchmarks.bank import AccountOpened, Deposited, Withdrawn
from tests.engine.projector_scenarios import POISON, Fragile, Parking


class Seen(Projector):
    """Keeps every event object it applied, with its position."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, Deposited]] = []

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.seen.append((meta.position, e))

    def positions(self) -> list[int]:
        return [position for position, _ in self.seen]


class Harness:
    """A log, a broadcast and one projector host, with the writer's commit-and-publish."""

    def __init__(
        self, kind: ProjectorType, *, window: int = 65536, log: MemoryEventLog | None = None
    ) -> None:
        self.log = log if log is not None else MemoryEventLog()
        self.registry = EventRegistry([AccountOpened, Deposited, Withdrawn])
        self.broadcast = Broadcast(self.log.head_position(), window=window)
        self.host = ProjectorHost(
            kind, log=self.log, broadcast=self.broadcast, registry=self.registry
        )
        self.emitted: dict[int, msgspec.Struct] = {}

    def commit(self, *events: msgspec.Struct, stream_id: str = "a") -> None:
        """Append ``events`` as one group commit and publish it, as the writer does."""
        appends = [Append(stream_id, ANY, (self.registry.encode(e),)) for e in events]
        _, stored = self.log.append_batch(appends)
        self.broadcast.publish(CommitBatch(stored, list(events)))
        self.emitted.update((s.position, e) for s, e in zip(stored, events, strict=True))

    def commit_many(self, count: int, *, size: int = 1) -> None:
        """``count`` group commits of ``size`` deposits each."""
        for _ in range(count):
            self.commit(*(Deposited(1) for _ in range(size)))

    @property
    def instance(self) -> Any:
        return self.host.instance


def stored_batch(first: int, count: int) -> CommitBatch:
    events = [
        StoredEvent(p, "a", p, "Deposited", 0.0, payload=msgspec.Raw(b""))
        for p in range(first, first + count)
    ]
    return CommitBatch(events, [None] * count)


class Listener:
    """Subscribed to a bare Broadcast: with no projector subscribed it keeps nothing."""

    def wake(self) -> None:
        pass


def listened(broadcast: Broadcast) -> Broadcast:
    broadcast.subscribe(cast(ProjectorHost, Listener()))
    return broadcast


def test_broadcast_since_slices_across_batches() -> None:
    broadcast = listened(Broadcast(0))
    for first, count in ((1, 3), (4, 2), (6, 4)):
        broadcast.publish(stored_batch(first, count))
    assert broadcast.head == 9

    def positions(batch: Iterable[tuple[StoredEvent, Any]] | None) -> list[int]:
        assert batch is not None
        return [stored.position for stored, _ in batch]

    assert positions(broadcast.since(1, 100)) == list(range(1, 10))
    assert positions(broadcast.since(2, 3)) == [2, 3, 4]
    assert positions(broadcast.since(5, 2)) == [5, 6]
    assert positions(broadcast.since(7, 100)) == [7, 8, 9]


def test_broadcast_window_drops_old_batches_but_keeps_the_newest() -> None:
    broadcast = listened(Broadcast(0, window=4))
    broadcast.publish(stored_batch(1, 3))
    broadcast.publish(stored_batch(4, 2))
    assert broadcast.since(1, 10) is None  # evicted: 5 events > window of 4
    broadcast.publish(stored_batch(6, 10))  # bigger than the window: kept whole
    assert broadcast.since(4, 10) is None
    since = broadcast.since(6, 100)
    assert since is not None and len(since) == 10
    broadcast.publish(CommitBatch([], []))  # an empty commit is not an event
    assert broadcast.head == 15


async def test_a_projector_that_starts_late_reads_the_log_then_follows_the_window() -> None:
    h = Harness(Seen, window=4)
    h.commit_many(10, size=3)  # 30 events; only the last commit is still in the window
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        await trio.testing.wait_all_tasks_blocked()
        assert h.host.statistics().state == "live"
        h.commit(Deposited(2), Deposited(3))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    seen = h.instance.seen
    assert [p for p, _ in seen] == list(range(1, 33))
    # Read from the log: decoded copies. Followed live: the very objects committed.
    assert all(e == h.emitted[p] and e is not h.emitted[p] for p, e in seen[:30])
    assert all(e is h.emitted[p] for p, e in seen[30:])


async def test_a_projector_that_falls_behind_the_window_fills_the_gap_from_the_log() -> None:
    h = Harness(Seen, window=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        h.commit_many(2, size=2)
        await trio.testing.wait_all_tasks_blocked()
        # Five commits while the projector cannot run: the first ones leave the window.
        h.commit_many(5, size=2)
        assert h.broadcast.since(h.host.checkpoint + 1, 100) is None
        await trio.testing.wait_all_tasks_blocked()
        h.commit(Deposited(9))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    seen = h.instance.seen
    assert [p for p, _ in seen] == list(range(1, 16))
    from_log = [p for p, e in seen if e is not h.emitted[p]]
    assert from_log and from_log == list(range(5, 5 + len(from_log)))
    assert seen[-1][1] is h.emitted[15]  # and back on the window


async def test_a_commit_larger_than_a_batch_is_applied_in_slices_without_the_log() -> None:
    h = Harness(Seen)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        await trio.testing.wait_all_tasks_blocked()
        h.commit(*(Deposited(n) for n in range(3 * MAX_BATCH + 5)))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    seen = h.instance.seen
    assert [p for p, _ in seen] == list(range(1, 3 * MAX_BATCH + 6))
    assert all(e is h.emitted[p] for p, e in seen)


async def test_a_waiter_is_released_only_once_its_position_is_applied() -> None:
    h = Harness(Seen)
    released: list[int] = []

    async def wait_for(position: int) -> None:
        await h.host.wait_position(position)
        released.append(position)

    async with trio.open_nursery() as nursery:
        h.commit(Deposited(1), Deposited(2))
        nursery.start_soon(wait_for, 2)
        nursery.start_soon(wait_for, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert released == []  # committed is not applied: the projector is not running
        nursery.start_soon(h.host.run)
        await trio.testing.wait_all_tasks_blocked()
        assert released == [2]
        h.commit(Deposited(3))
        await trio.testing.wait_all_tasks_blocked()
        assert released == [2, 3]
        await h.host.wait_position(3)  # already applied: returns at once
        nursery.cancel_scope.cancel()


async def test_catch_up_yields_to_other_tasks_between_batches() -> None:
    h = Harness(Seen)
    h.commit_many(20, size=1000)
    observed: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)

        async def watch() -> None:
            while h.host.checkpoint < 20_000:
                observed.append(h.host.checkpoint)
                stats = h.host.statistics()
                assert stats.lag == stats.head - stats.checkpoint == 20_000 - h.host.checkpoint
                await trio.lowlevel.checkpoint()

        nursery.start_soon(watch)
        await h.host.wait_position(20_000)
        nursery.cancel_scope.cancel()
    progress = sorted(set(observed) - {0})
    assert len(progress) >= 3  # several batches, with other tasks running in between
    # Trio runs each ready task once per scheduling round, in random order, so the watcher
    # may see two batches land between its looks, never more.
    assert all(0 < b - a <= 2 * MAX_BATCH for a, b in zip([0, *progress], progress, strict=False))
    assert h.host.applied == 20_000


async def test_a_slow_projector_catches_up_in_smaller_batches() -> None:
    class Slow(Projector):
        def __init__(self) -> None:
            self.count = 0

        @applies
        def deposited(self, e: Deposited) -> None:
            until = time.perf_counter() + 50e-6  # an applier doing real work
            while time.perf_counter() < until:
                pass
            self.count += 1

    h = Harness(Slow)
    h.commit_many(1, size=600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        await h.host.wait_position(600)
        nursery.cancel_scope.cancel()
    assert h.instance.count == 600
    assert h.host._batch < FIRST_BATCH


def test_batch_size_adapts_within_bounds() -> None:
    assert _next_batch(FIRST_BATCH, 0.0) == 2 * FIRST_BATCH
    assert _next_batch(MAX_BATCH, 0.0) == MAX_BATCH
    assert _next_batch(FIRST_BATCH, 1.0) == FIRST_BATCH // 2
    assert _next_batch(MIN_BATCH, 1.0) == MIN_BATCH
    assert _next_batch(FIRST_BATCH, 0.002) == FIRST_BATCH  # about right: keep it


async def test_halt_mid_batch_keeps_the_events_before_it_and_resume_retries_it() -> None:
    Fragile.broken = True
    h = Harness(Fragile)
    errors: list[ProjectorFaulted] = []

    async def wait_for(position: int) -> None:
        try:
            await h.host.wait_position(position)
        except ProjectorFaulted as e:
            errors.append(e)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for, 1)
            nursery.start_soon(wait_for, 3)
            h.commit(Deposited(5), Deposited(POISON), Deposited(7))
            nursery.start_soon(h.host.run)
            await trio.testing.wait_all_tasks_blocked()
            stats = h.host.statistics()
            assert (stats.state, stats.checkpoint, stats.applied) == ("halted", 1, 1)
            assert h.instance.deposits == 5
            # Both waiters fail, even the one for position 1: the applier that raised may
            # have left half its work in the cache, which no query may see.
            assert [e.position for e in errors] == [2, 2]
            assert errors[0] is not errors[1]
            with pytest.raises(ProjectorFaulted):
                await h.host.wait_position(1)
            Fragile.broken = False
            h.host.resume()
            await h.host.wait_position(3)
            assert h.instance.deposits == 25
            assert h.host.statistics().applied == 3
            nursery.cancel_scope.cancel()
    finally:
        Fragile.broken = True


@pytest.mark.parametrize("live", [True, False])
async def test_parking_the_last_event_of_a_batch_counts_it_once(live: bool) -> None:
    h = Harness(Parking)
    if not live:
        h.commit(Deposited(5), Deposited(POISON))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        if live:
            await trio.testing.wait_all_tasks_blocked()
            h.commit(Deposited(5), Deposited(POISON))
        await h.host.wait_position(2)
        stats = h.host.statistics()
        assert (stats.state, stats.checkpoint, stats.applied, stats.parked) == ("live", 2, 1, 1)
        h.commit(Deposited(POISON), Deposited(POISON), Deposited(1))
        await h.host.wait_position(5)
        assert [p.position for p in h.host.parked] == [2, 3, 4]
        assert h.instance.deposits == 6
        nursery.cancel_scope.cancel()


async def test_an_undecodable_event_is_parked_like_a_failing_applier() -> None:
    h = Harness(Parking)
    h.log.append_batch([Append("a", ANY, (("Deposited", b"\xc1"),))])
    h.commit(Deposited(3))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        await h.host.wait_position(2)
        nursery.cancel_scope.cancel()
    (parked,) = h.host.parked
    assert (parked.position, parked.type) == (1, "Deposited")
    assert "DecodeError" in parked.error
    assert h.instance.deposits == 3


class GappyLog(MemoryEventLog):
    """A corrupt log: reads skip one position."""

    def __init__(self, missing: int) -> None:
        super().__init__()
        self.missing = missing

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        return [e for e in super().read_all(from_position, limit) if e.position != self.missing]


async def test_a_gap_in_the_log_halts_the_projector_instead_of_skipping() -> None:
    log = GappyLog(missing=5)
    h = Harness(Seen, log=log, window=1)
    h.commit_many(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        with pytest.raises(ProjectorFaulted) as caught:
            await h.host.wait_position(10)
        nursery.cancel_scope.cancel()
    assert isinstance(caught.value.__cause__, StorageError)
    assert "position 5 is missing" in str(caught.value)
    assert h.host.statistics().state == "halted"
    assert h.host.checkpoint == 0  # nothing applied past a hole
    assert h.instance.seen == []


async def test_rebuild_while_commits_keep_coming_applies_each_event_once() -> None:
    h = Harness(Seen, window=8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.host.run)
        h.commit_many(30, size=3)
        await h.host.wait_position(90)
        first = h.instance
        h.host.rebuild()
        assert h.host.statistics().state == "catching_up"
        h.commit_many(5, size=3)
        await h.host.wait_position(105)
        nursery.cancel_scope.cancel()
    assert h.instance is not first
    assert h.instance.positions() == list(range(1, 106))
    assert h.host.statistics().applied == 105


class CountingLog(MemoryEventLog):
    """Counts the catch-up reads that reach the log."""

    reads = 0

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        self.reads += 1
        return super().read_all(from_position, limit)


@pytest.mark.parametrize("projectors", [1, 3])
async def test_projectors_catching_up_together_share_each_log_read(
    projectors: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_projectors, "FIRST_BATCH", 1000)  # fixed sizes: a countable test
    monkeypatch.setattr(_projectors, "MIN_BATCH", 1000)
    monkeypatch.setattr(_projectors, "MAX_BATCH", 1000)
    log = CountingLog()
    h = Harness(Seen, log=log, window=1)
    hosts = [h.host] + [
        ProjectorHost(kind, log=log, broadcast=h.broadcast, registry=h.registry)
        for kind in (Parking, Fragile)[: projectors - 1]
    ]
    h.commit_many(10, size=2000)
    async with trio.open_nursery() as nursery:
        for host in hosts:
            nursery.start_soon(host.run)
        for host in hosts:
            await host.wait_position(20_000)
        nursery.cancel_scope.cancel()
    # One projector alone reads 18 times (the last commit is still in the window): so do three.
    assert log.reads == 18
    assert [host.applied for host in hosts] == [20_000] * projectors
    assert h.instance.positions() == list(range(1, 20_001))


async def test_a_wait_that_reaches_a_projector_after_the_close_is_refused_at_once() -> None:
    # wait_projected waits on each projector in turn: released during the close by the
    # first, it may reach the next one after the close failed that one's waiters and
    # stopped it. Nothing would ever wake it there: it must raise at once.
    h = Harness(Seen)
    h.commit(Deposited(1))  # written, never applied: the projector is not running
    h.host.fail_waiters(EngineClosed("the engine closed"))
    with pytest.raises(EngineClosed), trio.testing.assert_no_checkpoints():
        await h.host.wait_position(1)
