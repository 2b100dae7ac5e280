"""A conflict caught up from the events the follower already read, without reading the
log (issue 15, session 8), white-box with the hand-cranked writer: the follower's events
for an aggregate with an append in flight are kept; when that append fails, the catch-up
applies them instead of reading, if they run without a gap from the durable state to the
version the failed append found (``ConcurrencyError.actual``); otherwise it reads, as
before. Either way the live state must be the log's. The end-to-end runs on PostgreSQL
(``tests/nodes/test_conflict_catch_up.py``, ``test_follower_rest.py``) take this path
under random routing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actorlog.engine._aggregates import CATCH_UP_INLINE, Aggregates
from actorlog.storage import StoredEvent

from .actor_host import ManualWriter
from .counters import Add, Check, Counter, Take, Tally, TooMuch, fold
from .test_catch_up import SharedMemoryLog, crank, rival_add, shared_host


class CountingLog(SharedMemoryLog):
    """The shared memory log, counting the stream reads (a catch-up's read)."""

    reads = 0

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        self.reads += 1
        return super().read_stream(stream_id, from_version, limit)


class BlockingLog(CountingLog):
    """The counting shared log, saying its reads block: the engine's PostgreSQL path (the
    catch-up may wait for the follower's next read, ``test_catch_up_follower_wait.py``)."""

    blocking_reads = True


def host(log_type: type[CountingLog] = CountingLog) -> tuple[Aggregates, ManualWriter, Any]:
    log = log_type()
    aggregates, writer, _ = shared_host([Counter, Tally], log)
    return aggregates, writer, log


async def opened(
    aggregates: Aggregates, writer: ManualWriter, kind: Any = Counter, stream: str = "a"
) -> None:
    """``stream`` at version 1 (``Add("own", 1)``, committed): the durable base."""
    first = aggregates.send_nowait(kind, stream, Add("own", 1), None)
    await crank(writer)
    await first


def followed(log: CountingLog, stream_id: str, after: int) -> list[StoredEvent]:
    """What the follower would read of the stream: its events after version ``after``
    (read here without counting: the follower's reads are not the catch-up's)."""
    return [e for e in SharedMemoryLog.read_stream(log, stream_id) if e.version > after]


async def check_live(aggregates: Aggregates, writer: ManualWriter, log: CountingLog) -> None:
    total, tags = fold(SharedMemoryLog.read_stream(log, "a"))
    check = aggregates.send_nowait(Counter, "a", Check(total, tags), None)
    await crank(writer)
    await check


@pytest.mark.parametrize("log_type", [CountingLog, BlockingLog])
async def test_a_rejection_whose_probe_conflicts_after_the_follower_moved_it_reads_nothing(
    log_type: type[CountingLog],
) -> None:
    aggregates, writer, log = host(log_type)
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        # Refused on version 1 (Take 3 of 1): its probe expects 1. Another process commits
        # versions 2 and 3, which the follower applies to the idle aggregate before the
        # probe is judged: the probe conflicts (actual 3), and the aggregate, already at
        # 3, is decided again with no read, and allowed.
        mine = aggregates.send_nowait(Counter, "a", Take("take", 3), None)
        rival_add(log, "a", "r1", "r2")
        assert aggregates.apply_foreign(followed(log, "a", 1)) == 2
        reads = log.reads
        await crank(writer)
        try:
            await mine
        except TooMuch:
            raise AssertionError("refused on the stale state") from None
        stats = aggregates.statistics()
        assert stats.caught_up == stats.caught_up_unread == 1
        assert stats.caught_up_waits == 0  # the aggregate is past the conflict already
        assert log.reads == reads
        await check_live(aggregates, writer, log)
    assert fold(log.read_stream("a")) == (0, ("own", "r1", "r2", "take"))


async def test_an_append_in_flight_when_the_follower_saw_the_conflict_reads_nothing() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        # Decided on version 1, in flight; another process commits versions 2 and 3 and
        # the follower hands them over before this append is judged: kept, not applied.
        mine = aggregates.send_nowait(Counter, "a", Take("take", 1), None)
        rival_add(log, "a", "r1", "r2")
        assert aggregates.apply_foreign(followed(log, "a", 1)) == 2  # both kept, both count
        reads = log.reads
        await crank(writer)  # it conflicts (actual 3): put back to 1, caught up to 3
        await mine
        stats = aggregates.statistics()
        assert stats.caught_up == stats.caught_up_unread == 1
        assert log.reads == reads
        await check_live(aggregates, writer, log)
    assert fold(log.read_stream("a")) == (2, ("own", "r1", "r2", "take"))


async def test_an_append_that_failed_is_caught_up_from_the_kept_events() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        # Two decisions pipelined on version 1; another process takes versions 2 and 3
        # (the memory log has no chain rule: both versions taken, both appends fail).
        pipelined = [aggregates.send_nowait(Counter, "a", Add(f"p{i}", 10), None) for i in (1, 2)]
        rival_add(log, "a", "r1", "r2")
        aggregates.apply_foreign(followed(log, "a", 1))
        reads = log.reads
        await crank(writer)
        for pending in pipelined:
            await pending
        stats = aggregates.statistics()
        after = log.reads
        await check_live(aggregates, writer, log)
    assert stats.caught_up_unread == 1, stats
    assert after == reads, stats
    total, tags = fold(log.read_stream("a"))
    assert total == 23 and sorted(tags) == ["own", "p1", "p2", "r1", "r2"]


async def test_kept_events_short_of_the_conflict_are_not_enough() -> None:
    # The follower saw version 2 but not 3 yet: the failed append found 3, so the
    # catch-up reads (the state it makes must be the log's at least as of that append).
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
        rival_add(log, "a", "r1")
        aggregates.apply_foreign(followed(log, "a", 1))
        rival_add(log, "a", "r2")  # not handed over
        reads = log.reads
        await crank(writer)
        await mine
        stats = aggregates.statistics()
        assert stats.caught_up == 1 and stats.caught_up_unread == 0
        assert log.reads == reads + 1
        await check_live(aggregates, writer, log)


async def test_kept_events_with_a_gap_are_not_used() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
        rival_add(log, "a", "r1", "r2", "r3")
        events = followed(log, "a", 1)
        aggregates.apply_foreign([events[0]])
        aggregates.apply_foreign([events[2]])  # version 4 after 2: a gap, kept from 4 on
        reads = log.reads
        await crank(writer)
        await mine
        assert aggregates.statistics().caught_up_unread == 0
        assert log.reads == reads + 1
        await check_live(aggregates, writer, log)


async def test_a_state_that_cannot_be_put_back_is_rebuilt_whatever_was_kept() -> None:
    # A list in the state: no durable base to apply the kept events to (full reload).
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer, Tally)
        mine = aggregates.send_nowait(Tally, "a", Add("mine", 5), None)
        rival_add(log, "a", "r1")
        aggregates.apply_foreign(followed(log, "a", 1))
        await crank(writer)
        await mine
        stats = aggregates.statistics()
        assert stats.caught_up_unread == 0 and stats.caught_up == 0 and stats.reloads == 1
        total, tags = fold(SharedMemoryLog.read_stream(log, "a"))
        check = aggregates.send_nowait(Tally, "a", Check(total, tags), None)
        await crank(writer)
        await check


async def test_kept_events_are_bounded_and_forgotten_once_caught_up() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
        rival_add(log, "a", *(f"r{i}" for i in range(CATCH_UP_INLINE + 10)))
        aggregates.apply_foreign(followed(log, "a", 1))
        actor = aggregates._live["a"]
        assert actor.seen is not None and len(actor.seen) <= CATCH_UP_INLINE
        reads = log.reads
        await crank(writer)
        await mine
        # Too few kept to reach the conflict: read; and nothing is kept after the reload.
        assert log.reads > reads
        assert aggregates.statistics().caught_up_unread == 0
        assert actor.seen is None and actor.conflicted_at == 0
        await check_live(aggregates, writer, log)
