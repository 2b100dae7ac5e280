"""What a worker-thread read costs an activation on the PostgreSQL log, in one run.

``python -m benchmarks.activation --dsn postgresql://user@host/db`` writes ``--streams``
accounts of ``--events`` events each into a fresh schema (dropped afterwards), then
activates every one of them, one after another, through ``Engine.send`` (a withdrawal larger
than any balance: activated and rejected, so no commit is timed), twice per round: with the
log as it is (``blocking_reads``: the load runs in a worker thread, the event loop free)
and with the same log read inline (a subclass that says its reads do not block: the loop
held for the round trips), on a trio host or (``--host asyncio``) an asyncio one. Rounds
alternate which goes first. It prints one JSON line: the median microseconds per activation
of each, the difference (the thread hop), and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import uuid
from typing import Any

import anyio

from actorlog import Engine, Rejected
from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, Append, PostgresEventLog

from .bank import Account, AccountOpened, Deposited, Withdraw

__all__ = ["main"]


class _InlinePostgres(PostgresEventLog):
    """The same log, read inline by the engine (as before reads could block)."""

    @property
    def blocking_reads(self) -> bool:
        return False


def _fill(log: PostgresEventLog, streams: int, events: int) -> None:
    registry = EventRegistry([AccountOpened, Deposited])
    opened, deposited = registry.encode(AccountOpened("x")), registry.encode(Deposited(1))
    for first in range(0, streams, 500):
        group = [
            Append(f"acct-{i}", ANY, (opened,) + (deposited,) * (events - 1))
            for i in range(first, min(first + 500, streams))
        ]
        outcomes, _ = log.append_batch(group)
        assert not any(isinstance(o, Exception) for o in outcomes)


async def _activate_all(log: PostgresEventLog, streams: int) -> float:
    """Seconds per activation, each stream activated once, one after another."""
    async with Engine.open(log=log, aggregates=[Account], max_live_aggregates=streams) as engine:
        started = time.perf_counter()
        for i in range(streams):
            with contextlib.suppress(Rejected):
                await engine.send(Account, f"acct-{i}", Withdraw(10**12))
        return (time.perf_counter() - started) / streams


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.activation", description=__doc__)
    parser.add_argument("--dsn", required=True, help="a libpq URL of the server to use")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--host", choices=("trio", "asyncio"), default="trio")
    args = parser.parse_args(argv)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    PostgresEventLog(args.dsn, schema=schema).close()
    try:
        filler = PostgresEventLog(args.dsn, schema=schema)
        try:
            _fill(filler, args.streams, args.events)
        finally:
            filler.close()
        threaded: list[float] = []
        inline: list[float] = []
        for i in range(args.rounds):
            sides: list[tuple[type[PostgresEventLog], list[float]]] = [
                (PostgresEventLog, threaded),
                (_InlinePostgres, inline),
            ]
            for cls, into in sides if i % 2 == 0 else reversed(sides):
                log = cls(args.dsn, schema=schema)
                into.append(anyio.run(_activate_all, log, args.streams, backend=args.host))
        t, n = statistics.median(threaded), statistics.median(inline)
        result: dict[str, Any] = {
            "host": args.host,
            "streams": args.streams,
            "events_per_stream": args.events,
            "threaded_us_per_activation": round(t * 1e6, 1),
            "inline_us_per_activation": round(n * 1e6, 1),
            "thread_hop_us": round((t - n) * 1e6, 1),
            "inline_over_threaded": round(n / t, 3),
        }
        print(json.dumps(result))
    finally:
        import psycopg

        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
