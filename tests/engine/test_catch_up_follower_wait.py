"""A conflict's catch-up waits for the follower's next read rather than read the log
itself (issue 15, session 9), white-box with the hand-cranked writer on a log whose reads
block (the PostgreSQL path): while the follower is bringing others' events as they come,
the events a failed append found the stream at are on their way, so the catch-up waits
(at most ``FOLLOWER_WAIT``) until the events it keeps reach the conflict's version, and
applies them; it reads the log if they do not come, and does not wait at all when the
follower is not reading or what it kept has a gap (nor when the follower already moved the aggregate
past the conflict: ``test_catch_up_unread.py``). Either way the live state must be the
log's, and senders arriving meanwhile wait their turn."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import trio.testing

from actorlog import EngineClosed
from actorlog.engine import _aggregates
from actorlog.engine._aggregates import Aggregates, Pending

from .actor_host import ManualWriter
from .counters import Add, Counter, fold
from .test_catch_up import SharedMemoryLog, crank, rival_add, shared_host
from .test_catch_up_unread import BlockingLog, check_live, followed, opened


def host() -> tuple[Aggregates, ManualWriter, BlockingLog]:
    log = BlockingLog()
    aggregates, writer, _ = shared_host([Counter], log)
    return aggregates, writer, log


def follower_reading(aggregates: Aggregates, log: BlockingLog) -> None:
    """The follower hands over another process's event of a stream not cached here: it is
    reading others' events as they come."""
    rival_add(log, "elsewhere", "x")
    assert aggregates.apply_foreign(followed(log, "elsewhere", 0)) == 0


def live_tags(log: BlockingLog) -> tuple[int, tuple[str, ...]]:
    return fold(SharedMemoryLog.read_stream(log, "a"))


@pytest.fixture(autouse=True)
def patient_follower(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait bound at a test's pace, not a server's (a test may set its own)."""
    monkeypatch.setattr(_aggregates, "FOLLOWER_WAIT", 5.0)


async def mine_in_flight(
    aggregates: Aggregates, writer: ManualWriter, log: BlockingLog, *rivals: str, reading: bool
) -> tuple[Pending, int]:
    """Stream "a" opened at version 1, the follower reading others' events if ``reading``,
    ``Add("mine", 5)`` decided on version 1 and in flight, and another process's commit of
    an event a tag in ``rivals`` (versions 2, 3, ...) that the follower has not read yet;
    and the log's stream reads so far."""
    await opened(aggregates, writer)
    if reading:
        follower_reading(aggregates, log)
    mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
    rival_add(log, "a", *rivals)
    return mine, log.reads


async def test_a_catch_up_waits_for_the_follower_and_reads_nothing() -> None:
    aggregates, writer, log = host()
    later: list[Any] = []
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        # Decided on version 1; another process commits versions 2 and 3, which the
        # follower has not read yet: the append fails (actual 3) and the catch-up waits.
        mine, reads = await mine_in_flight(aggregates, writer, log, "r1", "r2", reading=True)
        await crank(writer)
        actor = aggregates._live["a"]
        assert actor.reloading and actor.stale

        async def send_later() -> None:
            later.append(await aggregates.send(Counter, "a", Add("later", 1), None))

        tasks.start_soon(send_later)
        await trio.testing.wait_all_tasks_blocked()
        assert not later and not writer.queue  # it waits for the catch-up
        # The follower's next read brings them: applied, nothing read, decided again.
        assert aggregates.apply_foreign(followed(log, "a", 1)) == 2
        await crank(writer)
        await mine
        assert len(later) == 1
        stats = aggregates.statistics()
        assert stats.caught_up_waits == 1 and stats.caught_up_wait_misses == 0
        assert stats.caught_up == stats.caught_up_unread == 1
        assert log.reads == reads
        await check_live(aggregates, writer, log)
    assert live_tags(log) == (9, ("own", "r1", "r2", "mine", "later"))


async def test_a_catch_up_the_follower_does_not_serve_in_time_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_aggregates, "FOLLOWER_WAIT", 0.3)
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        mine, reads = await mine_in_flight(aggregates, writer, log, "r1", reading=True)
        await crank(writer)
        assert aggregates._live["a"].reloading
        await anyio.sleep(0.5)  # the follower never brings version 2: the wait ends
        await crank(writer)
        await mine
        stats = aggregates.statistics()
        assert stats.caught_up_waits == stats.caught_up_wait_misses == 1
        assert stats.caught_up_unread == 0
        assert log.reads == reads + 1
        await check_live(aggregates, writer, log)
    assert live_tags(log) == (7, ("own", "r1", "mine"))


async def test_no_wait_when_the_follower_is_not_reading() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        # No read of others' events yet (the follower rests, say): nothing on its way.
        mine, reads = await mine_in_flight(aggregates, writer, log, "r1", reading=False)
        await crank(writer)
        assert aggregates.statistics().caught_up_waits == 0
        await mine
        assert log.reads == reads + 1
        await check_live(aggregates, writer, log)


async def test_no_wait_when_the_kept_events_have_a_gap() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        mine, reads = await mine_in_flight(aggregates, writer, log, "r1", "r2", "r3", reading=True)
        # Only version 3 handed over: kept from 3, so version 2 will never be among them
        # (and the conflict found 4: short of it too).
        aggregates.apply_foreign(followed(log, "a", 2)[:1])
        await crank(writer)
        assert aggregates.statistics().caught_up_waits == 0
        await mine
        assert log.reads == reads + 1
        await check_live(aggregates, writer, log)


async def test_a_sender_cancelled_while_its_catch_up_waits() -> None:
    aggregates, writer, log = host()
    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        follower_reading(aggregates, log)

        async def send_mine() -> None:
            with scope:
                await aggregates.send(Counter, "a", Add("mine", 5), None)

        tasks.start_soon(send_mine)
        await trio.testing.wait_all_tasks_blocked()
        rival_add(log, "a", "r1", "r2")
        await crank(writer)  # its append fails; its catch-up waits for the follower
        actor = aggregates._live["a"]
        assert actor.reloading
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # Gone without deciding again; the aggregate is still to be caught up, by the
        # next sender, from what the follower brings.
        assert not actor.reloading and actor.stale
        aggregates.apply_foreign(followed(log, "a", 1))
        following = aggregates.send_nowait(Counter, "a", Add("next", 1), None)
        await crank(writer)
        await following
        await check_live(aggregates, writer, log)
    assert live_tags(log) == (4, ("own", "r1", "r2", "next"))


async def test_closing_wakes_a_catch_up_waiting_for_the_follower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_aggregates, "FOLLOWER_WAIT", 60.0)
    aggregates, writer, log = host()
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        await opened(aggregates, writer)
        follower_reading(aggregates, log)

        async def send_mine() -> None:
            try:
                await aggregates.send(Counter, "a", Add("mine", 5), None)
            except EngineClosed as e:
                outcome.append(e)

        tasks.start_soon(send_mine)
        await trio.testing.wait_all_tasks_blocked()
        rival_add(log, "a", "r1")
        await crank(writer)
        assert aggregates._live["a"].reloading
        aggregates.close()
        # Not left waiting for a follower that an engine closing stops: the sender is told.
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1
    assert live_tags(log) == (2, ("own", "r1"))
