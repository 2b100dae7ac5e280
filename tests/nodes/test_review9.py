"""Review 9: probes of the conflict catch-up (issue 15, session 7) on a real PostgreSQL
log others append to. Each scenario ends with the live state checked against the state
folded from the log, and a fresh engine's replay checked too."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import trio

from actorlog import Engine
from actorlog.engine._aggregates import CATCH_UP_INLINE
from actorlog.storage import ANY, Append, PostgresEventLog
from tests.engine.counters import (
    EVENTS,
    KINDS,
    Add,
    Added,
    Counter,
    Scribble,
    SnappedCounter,
    Take,
    Tally,
    TooMuch,
)
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


async def test_random_pipelines_small_mailboxes_send_nowait_and_eviction(
    postgres: Postgres,
) -> None:
    """Two engines with a mailbox of 2 and 2 live aggregates (evicting), clients mixing
    ``send`` and ``send_nowait`` (``_Redeciding``), command ids (some sent twice), refusals
    and handlers that change the state and refuse: every acknowledged command is in the
    log exactly once, nothing refused or overloaded is, and every live state (and a fresh
    engine's) is the log's."""
    import random

    from actorlog import ConcurrencyError, Overloaded, Rejected

    from .test_conflict_catch_up import replayed

    schema = postgres.schema()
    oracle = postgres.log(schema, shared=True)
    streams = [(Counter, "c-1"), (Counter, "c-2"), (SnappedCounter, "s-1"), (Tally, "t-1")]
    acknowledged: set[str] = set()
    absent: set[str] = set()
    options: dict[str, Any] = {"mailbox_size": 2, "max_live_aggregates": 2}
    async with (
        Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS, **options) as a,
        Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS, **options) as b,
    ):

        async def client(number: int) -> None:
            rng = random.Random(1000 + number)
            for i in range(int(os.environ.get("ACTORLOG_REVIEW9_COMMANDS", "25"))):
                engine = rng.choice((a, b))
                kind, stream_id = rng.choice(streams)
                tag = f"{number}.{i}"
                roll = rng.random()
                command: Any = (
                    Scribble()
                    if roll < 0.05
                    else Take(tag, rng.randint(1, 12))
                    if roll < 0.4
                    else Add(tag, rng.randint(1, 5))
                )
                command_id = tag if rng.random() < 0.3 else None
                try:
                    if rng.random() < 0.5:
                        await engine.send_nowait(kind, stream_id, command, command_id=command_id)
                    else:
                        await engine.send(kind, stream_id, command, command_id=command_id)
                except (Rejected, Overloaded, ConcurrencyError):
                    absent.add(tag)
                    continue
                acknowledged.add(tag)
                if command_id and rng.random() < 0.5:  # a retry: answered, never appended twice
                    with contextlib.suppress(Overloaded, ConcurrencyError):
                        again = rng.choice((a, b))
                        await again.send(kind, stream_id, command, command_id=command_id)

        async with trio.open_nursery() as nursery:
            for number in range(6):
                nursery.start_soon(client, number)
        for engine in (a, b):
            for kind, stream_id in streams:
                await check_live(engine, kind, stream_id, oracle)
        stats = [engine.statistics().aggregates for engine in (a, b)]
    # The paths under attack ran: conflicts caught up, and evictions.
    assert sum(s.caught_up for s in stats) > 0, stats
    assert sum(s.passivations for s in stats) > 0, stats
    logged = [tag for _, stream_id in streams for tag in replayed(oracle, stream_id)[1]]
    assert sorted(logged) == sorted(acknowledged)
    assert not (set(logged) & absent)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as fresh:
        for kind, stream_id in streams:
            await check_live(fresh, kind, stream_id, oracle)
