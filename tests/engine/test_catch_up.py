"""A stale aggregate caught up from a durable state instead of rebuilt (issue 15, session
7), white-box with the hand-cranked writer: appends that fail (another writer moved the
stream) put the actor back to the state the first of them was decided on and read only
what was committed after it; ``send_nowait`` does that inline (the synchronous path).
The shared-log behaviour, end to end, is in tests/nodes/test_conflict_catch_up.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import anyio
import pytest
import trio
import trio.testing

from actorlog.engine._aggregates import Aggregates
from actorlog.lowlevel import EventRegistry, Writer
from actorlog.storage import ANY, Append, MemoryEventLog

from .actor_host import ManualWriter
from .counters import EVENTS, Add, Added, Check, Counter, Mismatch, Tally, fold


def rival_add(log: MemoryEventLog, stream_id: str, *tags: str) -> None:
    """Another writer's commit, straight to the log: one ``Added(tag, 1)`` per tag."""
    events = tuple(EVENTS.encode(Added(tag, 1)) for tag in tags)
    outcomes, _ = log.append_batch([Append(stream_id, ANY, events)])
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


class SharedMemoryLog(MemoryEventLog):
    """A memory log that says others append to it: the aggregates then retry conflicts
    and keep the durable state their idle decisions start from (no follower here: the
    test appends as the other writer)."""

    others_append = True


def shared_host(
    kinds: Sequence[Any], log: MemoryEventLog | None = None, *, max_live: int = 100
) -> tuple[Aggregates, ManualWriter, MemoryEventLog]:
    """Aggregates of ``kinds`` on ``log`` (a new ``SharedMemoryLog`` by default), at most
    ``max_live`` of them live, with the hand-cranked writer."""
    log = SharedMemoryLog() if log is None else log
    writer = ManualWriter(log)
    aggregates = Aggregates(
        kinds,
        log=log,
        writer=cast(Writer, writer),
        registry=EventRegistry(),
        mailbox_size=4,
        max_live=max_live,
    )
    return aggregates, writer, log


async def crank(writer: ManualWriter) -> None:
    """Commit whatever is submitted, and what the tasks it wakes submit, until all rest."""
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(50):  # bounded: a bug that resubmits forever fails instead of hanging
        if not writer.queue:
            return
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError(f"still submitting after 50 group commits: {writer.queue}")


@pytest.mark.parametrize("kind", [Counter, Tally])
async def test_failed_pipelined_appends_are_undone_and_the_actor_caught_up(kind: Any) -> None:
    with trio.fail_after(10):  # a bug that leaves a Pending waiting fails, not hangs
        await _scenario(kind)


async def _scenario(kind: Any) -> None:
    aggregates, writer, log = shared_host([Counter, Tally])
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        first = [aggregates.send_nowait(kind, "a", Add(f"own{i}", 1), None) for i in range(3)]
        await crank(writer)
        for pending in first:
            await pending
        rival_add(log, "a", "r1", "r2")  # versions 4 and 5, unseen by the actor
        # Two decisions pipelined on the stale cache: both fail at commit, and are
        # decided again in tasks of the nursery, which have not run yet when...
        late = [aggregates.send_nowait(kind, "a", Add(f"late{i}", 10), None) for i in range(2)]
        writer.commit()
        # ... the next send_nowait finds the actor stale and idle: it reloads it inline.
        total, tags = fold(log.read_stream("a"))
        assert (total, tags) == (5, ("own0", "own1", "own2", "r1", "r2"))
        check = aggregates.send_nowait(kind, "a", Check(total, tags), None)
        stats = aggregates.statistics()
        assert stats.reloads == 1
        # A tuple is put back exactly and caught up; a list is rebuilt from the log.
        assert stats.caught_up == (1 if kind is Counter else 0)
        await crank(writer)
        await check  # the live state was the log's
        for pending in late:
            await pending
        total, tags = fold(log.read_stream("a"))
        assert (total, sorted(tags[5:])) == (25, ["late0", "late1"])
        wrong = aggregates.send_nowait(kind, "a", Check(total + 1, tags), None)
        await crank(writer)
        with pytest.raises(Mismatch):  # and the check can fail
            await wrong
