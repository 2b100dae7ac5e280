"""Review 11: the catch-up from the follower's events (``Actor.seen``) on a real server:
three engines on one shared schema, clients that pipeline ``send_nowait`` (the path that
keeps events for an aggregate with appends in flight) as well as ``send``, a small
``max_live_aggregates`` (eviction), and the oracle of ``test_conflict_catch_up``: every
live state equals the log's, every acknowledged command is in the log exactly once.
``ACTORLOG_REVIEW11_COMMANDS`` sets the commands per client (default 40)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import trio
import trio.lowlevel

from actorlog import ConcurrencyError, Engine, EngineError, Overloaded, Rejected
from actorlog.lowlevel import AggregatesStatistics
from tests.engine.counters import KINDS, Add, Counter, Scribble, SnappedCounter, Take, Tally
from tests.support import Postgres

from .test_conflict_catch_up import check_live, replayed


async def test_pipelined_send_nowait_keeps_live_state_equal_to_the_log(
    postgres: Postgres,
) -> None:
    stats = await three_engines_at_random(
        postgres,
        per_client=int(os.environ.get("ACTORLOG_REVIEW11_COMMANDS", "40")),
        seed=int(os.environ.get("ACTORLOG_REVIEW11_SEED", "0")),
        nowait=0.6,
        take=0.40,
    )
    print("review11", [(s.retries, s.caught_up, s.caught_up_unread, s.reloads) for s in stats])


async def three_engines_at_random(
    postgres: Postgres,
    *,
    per_client: int,
    seed: int,
    nowait: float,
    take: float,
    deadlines: Sequence[float | None] = (),
) -> list[AggregatesStatistics]:
    """Three engines on one shared schema, 8 clients sending ``per_client`` commands each
    to a random engine and one of four hot streams: ``send_nowait`` (pipelined) for a
    share ``nowait`` of them, else ``send``, cancelled after one of ``deadlines`` (None:
    never) if given; a share ``take`` of them ``Take`` (refused beyond the total). Then
    every engine's live state must equal the log's, every acknowledged command be in the
    log exactly once, none refused or failed be, and only cancelled ones besides. Returns
    the engines' aggregate statistics."""
    schema = postgres.schema()
    oracle = postgres.log(schema, shared=True)
    streams = [(Counter, "c-1"), (Counter, "c-2"), (SnappedCounter, "s-1"), (Tally, "t-1")]
    acknowledged: set[str] = set()
    failed: set[str] = set()
    cancelled: set[str] = set()
    async with (
        Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as a,
        Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as b,
        Engine.open(
            log=postgres.log(schema, shared=True), aggregates=KINDS, max_live_aggregates=2
        ) as c,
    ):
        engines = (a, b, c)

        async def settle(pending: Any, tag: str) -> None:
            try:
                await pending
            except (Rejected, ConcurrencyError):
                failed.add(tag)
            else:
                acknowledged.add(tag)

        async def client(number: int) -> None:
            rng = random.Random(number + 1000 * seed)
            async with trio.open_nursery() as mine:
                for i in range(per_client):
                    engine = rng.choice(engines)
                    kind, stream_id = rng.choice(streams)
                    tag = f"{number}.{i}"
                    roll = rng.random()
                    command: Any = (
                        Scribble()
                        if roll < 0.05
                        else Take(tag, rng.randint(1, 12))
                        if roll < 0.05 + take
                        else Add(tag, rng.randint(1, 5))
                    )
                    if rng.random() < nowait:
                        try:
                            pending = engine.send_nowait(kind, stream_id, command)
                        except Overloaded:
                            failed.add(tag)
                        else:
                            mine.start_soon(settle, pending, tag)
                        if rng.random() < 0.5:
                            await trio.lowlevel.checkpoint()
                        continue
                    deadline = rng.choice(deadlines) if deadlines else None
                    with trio.move_on_after(deadline if deadline else float("inf")) as scope:
                        try:
                            await engine.send(kind, stream_id, command)
                        except (Rejected, ConcurrencyError, EngineError):
                            failed.add(tag)
                            continue
                    if scope.cancelled_caught:
                        cancelled.add(tag)  # committed or not: either is allowed
                    else:
                        acknowledged.add(tag)

        async with trio.open_nursery() as nursery:
            for number in range(8):
                nursery.start_soon(client, number)
        for engine in engines:
            for kind, stream_id in streams:
                await check_live(engine, kind, stream_id, oracle)
        stats = [engine.statistics().aggregates for engine in engines]
    logged = [tag for _, stream_id in streams for tag in replayed(oracle, stream_id)[1]]
    assert len(logged) == len(set(logged)), "a command applied twice"
    assert acknowledged <= set(logged), acknowledged - set(logged)
    assert not (set(logged) & failed)
    assert set(logged) <= acknowledged | cancelled
    return stats
