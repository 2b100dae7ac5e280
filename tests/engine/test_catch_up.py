"""A stale aggregate caught up from a durable state instead of rebuilt (issue 15, session
7), white-box with the hand-cranked writer: appends that fail (another writer moved the
stream) put the actor back to the state the first of them was decided on and read only
what was committed after it; ``send_nowait`` does that inline (the synchronous path).
The shared-log behaviour, end to end, is in tests/nodes/test_conflict_catch_up.py."""

from __future__ import annotations

from typing import Any

import pytest

from actorlog import ConcurrencyError
from actorlog.storage import ANY, Append, MemoryEventLog

from .actor_host import host
from .counters import EVENTS, Add, Added, Check, Counter, Mismatch, Tally, fold


def rival_add(log: MemoryEventLog, stream_id: str, *tags: str) -> None:
    """Another writer's commit, straight to the log: one ``Added(tag, 1)`` per tag."""
    events = tuple(EVENTS.encode(Added(tag, 1)) for tag in tags)
    outcomes, _ = log.append_batch([Append(stream_id, ANY, events)])
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


@pytest.mark.parametrize("kind", [Counter, Tally])
async def test_failed_pipelined_appends_are_undone_and_the_actor_caught_up(kind: Any) -> None:
    aggregates, writer, log = host(mailbox_size=4, kinds=[Counter, Tally])
    for i in range(3):
        aggregates.send_nowait(kind, "a", Add(f"own{i}", 1), None)
    writer.commit()
    rival_add(log, "a", "r1", "r2")  # versions 4 and 5, unseen by the actor
    # Two decisions pipelined on the stale cache: both fail at commit.
    failed = [aggregates.send_nowait(kind, "a", Add(f"late{i}", 10), None) for i in range(2)]
    writer.commit()
    for pending in failed:
        with pytest.raises(ConcurrencyError):
            await pending
    # The next command finds the actor stale and idle: send_nowait reloads it inline.
    total, tags = fold(log.read_stream("a"))
    assert (total, tags) == (5, ("own0", "own1", "own2", "r1", "r2"))
    aggregates.send_nowait(kind, "a", Check(total, tags), None)
    stats = aggregates.statistics()
    assert stats.reloads == 1
    # A tuple is put back exactly and caught up; a list is rebuilt from the log.
    assert stats.caught_up == (1 if kind is Counter else 0)
    with pytest.raises(Mismatch):  # and the check can fail
        aggregates.send_nowait(kind, "a", Check(total + 1, tags), None)
