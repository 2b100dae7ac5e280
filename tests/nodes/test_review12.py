"""Review 12: a conflict's catch-up waiting for the follower's next read, on a real server:
three engines on one shared schema under random routing, a few hot streams (conflicts
with others' events the follower is bringing as they come), ``send`` and pipelined
``send_nowait``, sends cancelled at random (some while their catch-up waits), a small
``max_live_aggregates`` (eviction). Every live state equals the log's; every acknowledged
command is in the log exactly once, none refused or failed is, and none twice.
``ACTORLOG_REVIEW12_COMMANDS`` sets the commands per client (default 40)."""

from __future__ import annotations

import os
import random
from typing import Any

import trio
import trio.lowlevel

from actorlog import ConcurrencyError, Engine, EngineError, Overloaded, Rejected
from tests.engine.counters import KINDS, Add, Counter, Scribble, SnappedCounter, Take, Tally
from tests.support import Postgres

from .test_conflict_catch_up import check_live, replayed


async def test_catch_ups_waiting_for_the_follower_keep_every_command_once(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    oracle = postgres.log(schema, shared=True)
    streams = [(Counter, "c-1"), (Counter, "c-2"), (SnappedCounter, "s-1"), (Tally, "t-1")]
    per_client = int(os.environ.get("ACTORLOG_REVIEW12_COMMANDS", "40"))
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
            rng = random.Random(number + 1000 * int(os.environ.get("ACTORLOG_REVIEW12_SEED", "0")))
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
                        if roll < 0.35
                        else Add(tag, rng.randint(1, 5))
                    )
                    if rng.random() < 0.4:
                        try:
                            pending = engine.send_nowait(kind, stream_id, command)
                        except Overloaded:
                            failed.add(tag)
                        else:
                            mine.start_soon(settle, pending, tag)
                        if rng.random() < 0.5:
                            await trio.lowlevel.checkpoint()
                        continue
                    # Some sends are cancelled after a few ms: perhaps while their
                    # catch-up waits for the follower (FOLLOWER_WAIT is 20 ms).
                    deadline = rng.choice([None, None, 0.002, 0.01])
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
    print(
        "review12",
        [
            (s.retries, s.caught_up, s.caught_up_unread, s.caught_up_waits, s.caught_up_wait_misses)
            for s in stats
        ],
    )
    logged = [tag for _, stream_id in streams for tag in replayed(oracle, stream_id)[1]]
    assert len(logged) == len(set(logged)), "a command applied twice"
    assert acknowledged <= set(logged), acknowledged - set(logged)
    assert not (set(logged) & failed)
    assert set(logged) <= acknowledged | cancelled
