"""A node process of the multi-process tests: one engine on a shared log, driven by JSON
lines on stdin, answering one JSON line each on stdout.

    python -m tests.nodes.node pg URL SCHEMA writer|reader trio|asyncio
    python -m tests.nodes.node lmdb PATH - writer|reader trio|asyncio

A reader opens the log with projectors and no aggregates (an LMDB reader read-only).
Requests (``op`` and its arguments):

- ``send`` stream, amount: one deposit; answers its position and version.
- ``withdraw`` stream, amount: one withdrawal; answers its position, or the error type.
- ``increment`` stream, n, concurrency: ``n`` deposits of 1 from ``concurrency`` tasks,
  each re-sent while the engine answers ``ConcurrencyError`` (nothing was appended then);
  answers the acknowledged positions and the retries (the client's and the engine's).
- ``load`` streams, concurrency: ``Bump`` (two events) to random ``Pair`` streams
  until a ``stop`` line comes (or the process is killed), one line
  ``{"ack": [stream, position]}`` per acknowledgement, then ``{"stopped": count}``.
- ``query`` stream, after, timeout: the balance after waiting for ``after``.
- ``balances`` after, timeout: every balance.
- ``pairs`` after, timeout: the ``Pairs`` view (every stream's events, in order).
- ``stats``: the engine's statistics (head, projector checkpoints, follower, retries).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from actorlog import (
    Aggregate,
    ConcurrencyError,
    Engine,
    EngineError,
    Projector,
    Recorded,
    applies,
    handles,
)
from actorlog.storage import EventLog, LmdbEventLog, PostgresEventLog
from benchmarks._child import heard, say
from benchmarks.bank import Account, Balances, Deposit, Withdraw


class Bump(msgspec.Struct, frozen=True):
    """Append two events in one command (to see a command committed whole or not at all)."""


class Bumped(msgspec.Struct, frozen=True):
    """One of a bump's two events: ``half`` 1, then 2."""

    half: int


class Pair(Aggregate):
    """A stream of bumps, each two events."""

    def __init__(self) -> None:
        self.bumps = 0

    @handles
    def bump(self, c: Bump) -> list[Bumped]:
        return [Bumped(1), Bumped(2)]

    @applies
    def bumped(self, e: Bumped) -> None:
        self.bumps += e.half == 2


class Pairs(Projector):
    """Every pair stream's halves, in log order."""

    def __init__(self) -> None:
        self.halves: dict[str, list[int]] = {}

    @applies
    def bumped(self, e: Bumped, meta: Recorded) -> None:
        self.halves.setdefault(meta.stream_id, []).append(e.half)

    def all_pairs(self) -> dict[str, list[int]]:
        """Every stream's halves (a copy)."""
        return self.halves


async def serve(
    engine: Engine,
    handle: Callable[[Engine, dict[str, Any]], Awaitable[dict[str, Any]]],
    load: Callable[[Engine, Any, int], Awaitable[dict[str, Any]]],
) -> None:
    """Say ready, then answer the parent's requests (``load`` runs until "stop") until
    its stdin closes."""
    say({"ready": engine.statistics().head})
    while True:
        request = await heard()
        if request is None:
            return
        if request["op"] == "load":
            say(await load(engine, request["streams"], request["concurrency"]))
            continue
        say(await handle(engine, request))


async def bump_until_acknowledged(engine: Engine, stream: str, retries: list[int]) -> int:
    """One bump, re-sent while the engine says the stream kept changing under it."""
    while True:
        try:
            return (await engine.send(Pair, stream, Bump())).position
        except ConcurrencyError:
            retries[0] += 1


async def deposit_until_acknowledged(
    engine: Engine, stream: str, amount: int, retries: list[int]
) -> int:
    """One deposit, re-sent while the engine says the stream kept changing under it."""
    while True:
        try:
            return (await engine.send(Account, stream, Deposit(amount))).position
        except ConcurrencyError:
            retries[0] += 1


async def handle(engine: Engine, request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    try:
        if op == "send":
            ack = await engine.send(Account, request["stream"], Deposit(request["amount"]))
            return {"position": ack.position, "version": ack.version}
        if op == "withdraw":
            ack = await engine.send(Account, request["stream"], Withdraw(request["amount"]))
            return {"position": ack.position, "version": ack.version}
        if op == "increment":
            positions: list[int] = []
            retries = [0]
            todo = iter(range(request["n"]))

            async def worker() -> None:
                for _ in todo:
                    positions.append(
                        await deposit_until_acknowledged(engine, request["stream"], 1, retries)
                    )

            async with anyio.create_task_group() as nursery:
                for _ in range(request["concurrency"]):
                    nursery.start_soon(worker)
            return {
                "positions": positions,
                "client_retries": retries[0],
                "engine_retries": engine.statistics().aggregates.retries,
            }
        if op == "query":
            balance = await engine.query(
                Balances.balance,
                request["stream"],
                after=request.get("after"),
                timeout=request.get("timeout"),
            )
            return {"balance": balance}
        if op == "balances":
            found = await engine.query(
                Balances.all_balances, after=request.get("after"), timeout=request.get("timeout")
            )
            return {"balances": found}
        if op == "pairs":
            halves = await engine.query(
                Pairs.all_pairs, after=request.get("after"), timeout=request.get("timeout")
            )
            return {"pairs": halves}
        if op == "stats":
            return {"stats": msgspec.to_builtins(engine.statistics())}
    except EngineError as e:
        return {"error": type(e).__name__, "message": str(e)}
    raise ValueError(f"unknown op {op!r}")


async def load(engine: Engine, streams: int, concurrency: int) -> dict[str, Any]:
    """Bumps to random streams until a ``stop`` line (or a kill), each ack on its own line."""
    retries = [0]
    count = 0

    async def worker() -> None:
        nonlocal count
        while True:
            stream = f"pair-{random.randrange(streams)}"
            position = await bump_until_acknowledged(engine, stream, retries)
            count += 1
            say({"ack": [stream, position]})

    async with anyio.create_task_group() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "stop"
        nursery.cancel_scope.cancel()
    return {"stopped": count}


async def main(kind: str, where: str, schema: str, role: str) -> None:
    log: EventLog
    if kind == "pg":
        log = PostgresEventLog(where, schema=schema, shared=True)
    else:
        log = LmdbEventLog(where, readonly=role == "reader", sync=False)
    aggregates = [] if role == "reader" else [Account, Pair]
    async with Engine.open(log=log, aggregates=aggregates, projectors=[Balances, Pairs]) as engine:
        await serve(engine, handle, load)


if __name__ == "__main__":
    kind, where, schema, role = sys.argv[1:5]
    anyio.run(main, kind, where, schema, role, backend=sys.argv[5])
