"""W1 on the PostgreSQL log beside the LMDB log, in one run, as ratios.

``python -m benchmarks.postgres --dsn postgresql://user@host/db`` runs W1 (the bank, 1,000
accounts, 64 clients, durable, both views live) on ``LmdbEventLog`` in a temporary
directory and on ``PostgresEventLog`` in a fresh schema (dropped afterwards), alternating
``--rounds`` times, and prints one JSON line: each backend's median commands a second, the
ratio PostgreSQL / LMDB, the mean group size, and the mean time a group commit holds the
event loop (``append_batch`` is synchronous: it runs inline in the writer task), also as a
ratio to LMDB's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import trio

from actorlog import Engine, Rejected
from actorlog.storage import EventLog, LmdbEventLog, PostgresEventLog

from .bank import Account, Balances, Totals
from .workloads import _commands, _open_accounts

__all__ = ["main"]


async def w1(log: EventLog, *, accounts: int, commands: int, clients: int) -> dict[str, Any]:
    """W1 on ``log``: commands a second, mean group size, mean seconds in ``append_batch``."""
    commit_seconds = 0.0
    commits = 0
    inner = log.append_batch

    def timed(*args: Any, **kwargs: Any) -> Any:
        nonlocal commit_seconds, commits
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            commit_seconds += time.perf_counter() - started
            commits += 1

    log.append_batch = timed  # type: ignore[method-assign]
    work = _commands(accounts, commands, seed=1)
    async with Engine.open(log=log, aggregates=[Account], projectors=[Balances, Totals]) as engine:
        await _open_accounts(engine, accounts)
        before = engine.statistics().writer
        commit_seconds, commits = 0.0, 0

        async def client(first: int) -> None:
            for i in range(first, len(work), clients):
                account, command = work[i]
                with contextlib.suppress(Rejected):
                    await engine.send(Account, account, command)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for first in range(clients):
                tg.start_soon(client, first)
        seconds = time.perf_counter() - started
        after = engine.statistics().writer
    groups = after.commits - before.commits
    return {
        "per_second": commands / seconds,
        "mean_batch": (after.appends - before.appends) / groups if groups else 0.0,
        "commit_seconds": commit_seconds / commits if commits else 0.0,
    }


def _drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="a libpq URL of the server to use")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args(argv)
    sizes = {"accounts": 1000, "commands": args.commands, "clients": 64}
    runs: dict[str, list[dict[str, Any]]] = {"lmdb": [], "postgres": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            lmdb_run = functools.partial(w1, LmdbEventLog(Path(tmp)), **sizes)
            runs["lmdb"].append(trio.run(lmdb_run))
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            pg_run = functools.partial(w1, PostgresEventLog(args.dsn, schema=schema), **sizes)
            runs["postgres"].append(trio.run(pg_run))
        finally:
            _drop(args.dsn, schema)

    def median(backend: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[backend]))

    def ratio(key: str) -> float:
        return median("postgres", key) / median("lmdb", key)

    print(
        json.dumps(
            {
                "workload": "W1 durable, PostgreSQL vs LMDB",
                "rounds": args.rounds,
                **sizes,
                "throughput_ratio": round(ratio("per_second"), 3),
                "commit_time_ratio": round(ratio("commit_seconds"), 2),
                "mean_batch": {b: round(median(b, "mean_batch"), 1) for b in runs},
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
