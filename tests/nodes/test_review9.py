"""Review 9: probes of the conflict catch-up (issue 15, session 7) on a real PostgreSQL
log others append to. Each scenario ends with the live state checked against the state
folded from the log, and a fresh engine's replay checked too."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from actorlog import Engine
from actorlog.engine._aggregates import CATCH_UP_INLINE
from actorlog.storage import ANY, Append, PostgresEventLog
from tests.engine.counters import EVENTS, KINDS, Add, Added, Counter, SnappedCounter, Take, TooMuch
from tests.support import Postgres

from .test_conflict_catch_up import check_live, rival_add


def rival_many(log: PostgresEventLog, stream_id: str, count: int) -> None:
    events = tuple(EVENTS.encode(Added(f"r{i}", 1)) for i in range(count))
    outcomes, _ = log.append_batch([Append(stream_id, ANY, events)])
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


async def test_cancelled_while_catching_up_far_behind_with_senders_in_drained(
    postgres: Postgres,
) -> None:
    """A far-behind catch-up (past the inline read) whose sender is cancelled at various
    moments while others wait in ``drained``: every state left is the log's."""
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        for round_ in range(4):
            await engine.send(Counter, "c", Add(f"own{round_}", 1))
            rival_many(rival, "c", CATCH_UP_INLINE + 40)
            done: list[str] = []

            async def send(tag: str, done: list[str] = done) -> None:
                await engine.send(Counter, "c", Add(tag, 1))
                done.append(tag)

            async with trio.open_nursery() as nursery:
                with trio.move_on_after(0.0005 * round_):  # cancelled at some moment
                    await engine.send(Counter, "c", Add(f"cancelled{round_}", 1))
                for i in range(3):
                    nursery.start_soon(send, f"d{round_}.{i}")
            assert len(done) == 3
            await check_live(engine, Counter, "c", rival)
        assert engine.statistics().aggregates.caught_up > 0
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as fresh:
        await check_live(fresh, Counter, "c", rival)


async def test_snapshots_and_eviction_around_catch_ups(postgres: Postgres) -> None:
    """Snapshotted counters, one live aggregate at a time (each send evicts the other),
    pipelined commands on stale caches with rejections: snapshots never hold a failed or
    doubled decision, and a fresh engine (snapshot + tail) agrees."""
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(
        log=postgres.log(schema, shared=True), aggregates=KINDS, max_live_aggregates=1
    ) as engine:
        for round_ in range(12):
            # Two rounds on one stream (the second on a stale cache), then the other's
            # (evicting it: the next round on it reactivates it).
            for stream_id in ("s-1", "s-1", "s-2", "s-2")[round_ % 2 * 2 :][:2]:
                rival_add(rival, stream_id, f"rival{round_}", 2)

                async def send(command: Any, stream_id: str = stream_id) -> None:
                    with contextlib.suppress(TooMuch):
                        await engine.send(SnappedCounter, stream_id, command)

                async with trio.open_nursery() as nursery:
                    for command in (Add(f"a{round_}", 1), Take(f"t{round_}", 3)):
                        nursery.start_soon(send, command)
                        nursery.start_soon(send, Add(f"b{round_}", 1))
        for stream_id in ("s-1", "s-2"):
            await check_live(engine, SnappedCounter, stream_id, rival)
        stats = engine.statistics().aggregates
        assert stats.passivations > 0 and stats.caught_up > 0, stats
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as fresh:
        for stream_id in ("s-1", "s-2"):
            await check_live(fresh, SnappedCounter, stream_id, rival)
