"""W1, W3 and W4 on the PostgreSQL log beside the LMDB log and the ``eventsourcing`` peer on
the same PostgreSQL server, in one run, as ratios.

``python -m benchmarks --only PG --postgres URL`` (or ``ACTORLOG_BENCH_POSTGRES=URL``) puts
these rows in the harness's table; ``python -m benchmarks.postgres --dsn URL`` runs the
same comparison alone and prints one JSON line per figure, with two details the table
leaves out: how long a group commit holds the event loop on each backend, and how fast
``read_all``'s keyset pages read the log beside a named (server-side) cursor and a binary
``COPY`` streaming the same rows (``--only reads``).

- **W1** (the bank, 1,000 accounts, 64 clients, durable, both views live) on
  ``LmdbEventLog`` in a temporary directory and on ``PostgresEventLog`` in a fresh schema,
  alternating ``rounds`` times (medians); the peer once (one transaction, one table lock
  and one WAL flush per command: it is ~30x slower and its ratio is not close).
- **W3**: an engine opened on a log holding one account of ``events`` events, timing the
  first command (a rejected withdrawal: the activation, no commit); the median of 5 opens.
- **W4**: an engine opened on a log of ``events`` bank events (written through the log's
  own ``append_batch``, not timed) until the balances view has caught up.

Every PostgreSQL schema made here is dropped afterwards.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from actorlog import Engine, Rejected
from actorlog.storage import EventLog, LmdbEventLog, PostgresEventLog

from ._peer import PostgresStore, run_peer_w1, run_peer_w3, run_peer_w4
from .bank import Account, Balances, Deposit, OpenAccount, Totals, Withdraw
from .workloads import _commands, _open_accounts, append_bank_log, percentile, send_all

__all__ = ["compare", "main", "read_strategies"]

MakeLog = Callable[[bool], EventLog]
"""Opens the log of one backend; the argument is ``sync`` (False only to write a setup)."""


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
        seconds = await send_all(engine, work, clients)
        after = engine.statistics().writer
    groups = after.commits - before.commits
    return {
        "per_second": commands / seconds,
        "mean_batch": (after.appends - before.appends) / groups if groups else 0.0,
        "commit_seconds": commit_seconds / commits if commits else 0.0,
    }


async def write_one_account(make_log: MakeLog, *, events: int) -> None:
    """W3's setup: account ``acct-big`` with ``events`` events (an open, then deposits of 1),
    written through an engine, ``sync=False``."""
    async with Engine.open(log=make_log(False), aggregates=[Account]) as engine:
        await engine.send(Account, "acct-big", OpenAccount("big"))
        for done in range(0, events - 1, 64):
            pendings = [
                engine.send_nowait(Account, "acct-big", Deposit(1))
                for _ in range(min(64, events - 1 - done))
            ]
            for pending in pendings:
                await pending


async def w3(make_log: MakeLog, *, repeats: int = 5) -> dict[str, Any]:
    """W3 on the log :func:`write_one_account` wrote: ``repeats`` engines opened on it, each
    timing its first command (a withdrawal beyond the balance: activated, rejected, nothing
    committed); the median and the best, in milliseconds."""
    timings = []
    for _ in range(repeats):
        async with Engine.open(log=make_log(True), aggregates=[Account]) as engine:
            started = time.perf_counter()
            with contextlib.suppress(Rejected):
                await engine.send(Account, "acct-big", Withdraw(10**12))
            timings.append(time.perf_counter() - started)
    return {"median_ms": percentile(timings, 0.5) * 1e3, "min_ms": min(timings) * 1e3}


async def w4(make_log: MakeLog) -> dict[str, Any]:
    """W4: open an engine on a written bank log; time the balances view catching up."""
    started = time.perf_counter()
    async with Engine.open(log=make_log(True), aggregates=[Account], projectors=[Balances]) as e:
        await e.wait_projected()
        seconds = time.perf_counter() - started
        applied = e.statistics().projectors[0].applied
    return {"events": applied, "seconds": seconds, "per_second": applied / seconds}


def _drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def _backends(dsn: str) -> Iterator[Callable[[str], tuple[MakeLog, MakeLog]]]:
    """``fresh(name)``: a new empty LMDB log and a new empty PostgreSQL schema (as log
    factories), all removed when the block ends."""
    schemas: list[str] = []
    with tempfile.TemporaryDirectory(prefix="actorlog-pg-bench-") as tmp:

        def fresh(name: str) -> tuple[MakeLog, MakeLog]:
            path = Path(tmp) / f"{len(schemas):03d}-{name}"
            schema = _schema(f"bench_{name}")
            schemas.append(schema)
            return (
                lambda sync: LmdbEventLog(path, sync=sync),
                lambda sync: PostgresEventLog(dsn, schema=schema, sync=sync),
            )

        try:
            yield fresh
        finally:
            for schema in schemas:
                _drop(dsn, schema)


_PEER_RUNS: dict[str, Callable[..., dict[str, Any]]] = {
    "w1": run_peer_w1,
    "w3": run_peer_w3,
    "w4": run_peer_w4,
}


def _peer_child(out: Any, name: str, dsn: str, schema: str, kwargs: dict[str, Any]) -> None:
    """The peer's run, in a process of its own (see :func:`_peer`)."""
    import faulthandler

    # If the parent gives up on us, say where we were (stderr) before we are killed.
    faulthandler.dump_traceback_later(kwargs.pop("_timeout") - 5)
    try:
        out.send(("ok", _PEER_RUNS[name](PostgresStore(dsn, schema), **kwargs)))
    except BaseException as e:
        out.send(("error", repr(e)))
        raise


def _peer(dsn: str, name: str, *, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """The peer's ``name`` run on a new schema, in a child process killed after ``timeout``
    seconds: once in a dozen runs here the library's pipelined insert never finished (the
    server waiting for the rest of a pipeline, the client gone quiet); a hung peer must
    cost the run one figure, not the run. Returns its figures, or ``{"error": ...}``."""
    import multiprocessing

    schema = _schema("bench_peer")
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_peer_child, args=(send, name, dsn, schema, {**kwargs, "_timeout": timeout})
    )
    child.start()
    try:
        if not receive.poll(timeout):
            return {"error": f"the peer's {name} did not finish in {timeout:.0f} s"}
        status, value = receive.recv()
        return dict(value) if status == "ok" else {"error": value}
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        _drop(dsn, schema)


def compare(
    dsn: str,
    *,
    w1_commands: int = 20_000,
    w3_events: int = 10_000,
    w4_events: int = 1_000_000,
    peer_w1_commands: int = 4_000,
    peer_w4_events: int = 100_000,
    rounds: int = 3,
    peer: bool = True,
    peer_timeout: float = 300.0,
    only: frozenset[str] = frozenset({"W1", "W3", "W4"}),
) -> list[dict[str, Any]]:
    """W1, W3 and W4 on PostgreSQL, on LMDB and (``peer``) on the peer's PostgreSQL, LMDB
    and PostgreSQL alternating ``rounds`` times; one dict of medians per workload."""
    results: list[dict[str, Any]] = []
    sizes = {"accounts": 1000, "clients": 64}
    with _backends(dsn) as fresh:
        if "W1" in only:
            runs: dict[str, list[dict[str, Any]]] = {"lmdb": [], "postgres": []}
            for _ in range(rounds):
                lmdb, pg = fresh("w1")
                for name, make in (("lmdb", lmdb), ("postgres", pg)):
                    job = functools.partial(w1, make(True), commands=w1_commands, **sizes)
                    runs[name].append(trio.run(job))
            row: dict[str, Any] = {
                "workload": "W1",
                "commands": w1_commands,
                **{
                    f"{name}_{key}": statistics.median(r[key] for r in rs)
                    for name, rs in runs.items()
                    for key in ("per_second", "mean_batch", "commit_seconds")
                },
            }
            if peer:
                figures = _peer(
                    dsn,
                    "w1",
                    timeout=peer_timeout,
                    commands=peer_w1_commands,
                    fastforward=False,
                    **sizes,
                )
                row["peer_per_second"] = figures.get("per_second")
                row["peer_commands"] = peer_w1_commands
                row["peer_synchronous_commit"] = figures.get("synchronous_commit")
                row["peer_error"] = figures.get("error")
            results.append(row)
        if "W3" in only:
            lmdb, pg = fresh("w3")
            for make in (lmdb, pg):
                trio.run(functools.partial(write_one_account, make, events=w3_events))
            w3_runs: dict[str, list[dict[str, Any]]] = {"lmdb": [], "postgres": []}
            for _ in range(rounds):
                for name, make in (("lmdb", lmdb), ("postgres", pg)):
                    w3_runs[name].append(trio.run(w3, make))
            row = {
                "workload": "W3",
                "events": w3_events,
                **{
                    f"{name}_ms": statistics.median(r["median_ms"] for r in rs)
                    for name, rs in w3_runs.items()
                },
            }
            if peer:
                figures = _peer(dsn, "w3", timeout=peer_timeout, events=w3_events)
                row["peer_ms"] = figures["seconds"] * 1e3 if "seconds" in figures else None
                row["peer_error"] = figures.get("error")
            results.append(row)
        if "W4" in only:
            lmdb, pg = fresh("w4")
            for make in (lmdb, pg):
                log = make(False)
                try:
                    append_bank_log(log, events=w4_events)
                finally:
                    log.close()
            w4_runs: dict[str, list[float]] = {"lmdb": [], "postgres": []}
            for _ in range(rounds):
                for name, make in (("lmdb", lmdb), ("postgres", pg)):
                    figures = trio.run(w4, make)
                    if figures["events"] != w4_events:
                        raise RuntimeError(f"W4 on {name} applied {figures['events']} events")
                    w4_runs[name].append(figures["per_second"])
            row = {
                "workload": "W4",
                "events": w4_events,
                **{f"{name}_per_second": statistics.median(rs) for name, rs in w4_runs.items()},
            }
            if peer:
                figures = _peer(dsn, "w4", timeout=peer_timeout, events=peer_w4_events)
                row["peer_per_second"] = figures.get("per_second")
                row["peer_events"] = peer_w4_events
                row["peer_error"] = figures.get("error")
            results.append(row)
    return results


_COLUMNS = (
    "position, stream_id, version, type, timestamp, correlation_id, causation_id, payload,"
    " aggregate, command_id, principal, headers::text"
)
_TYPES = ["int8", "text", "int8", "text", "float8", "text", "text", "bytea"]
_TYPES += ["text", "text", "text", "text"]


def read_strategies(dsn: str, *, events: int, rounds: int = 3) -> dict[str, Any]:
    """Rows a second, fetched and parsed by psycopg (not converted to events), for three
    ways of reading a whole log of ``events`` bank events in order, alternating ``rounds``
    times (medians): ``read_all``'s keyset pages (``WHERE position BETWEEN $1 AND $1 +
    4095``: positions have no gaps, so each page is an index range scan from where the last
    ended), a named cursor over one ``SELECT`` fetched 4,096 rows at a time, and ``COPY
    (SELECT ...) TO STDOUT`` in binary format; and ``read_all`` itself (the same pages made
    into events). The log is read right after it is written (as W4 does), before
    autovacuum may have analyzed it."""
    import psycopg
    from psycopg import sql

    schema = _schema("bench_reads")
    try:
        log = PostgresEventLog(dsn, schema=schema, sync=False)
        try:
            append_bank_log(log, events=events)
        finally:
            log.close()
        table = sql.Identifier(schema, "events")
        page = sql.SQL(
            f"SELECT {_COLUMNS} FROM {{}} WHERE position >= %s AND position <= %s ORDER BY position"
        ).format(table)
        whole = sql.SQL(f"SELECT {_COLUMNS} FROM {{}} ORDER BY position").format(table)
        copy = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(whole)

        def keyset(conn: psycopg.Connection[Any]) -> int:
            read, start = 0, 1
            while True:
                with conn.cursor(binary=True) as cur:
                    rows = cur.execute(page, (start, start + 4095)).fetchall()
                if not rows:
                    return read
                read += len(rows)
                start = rows[-1][0] + 1

        def named(conn: psycopg.Connection[Any]) -> int:
            read = 0
            with conn.transaction(), conn.cursor("bench", binary=True) as cur:
                cur.execute(whole)
                while rows := cur.fetchmany(4096):
                    read += len(rows)
            return read

        def binary_copy(conn: psycopg.Connection[Any]) -> int:
            read = 0
            with conn.cursor() as cur, cur.copy(copy) as stream:
                stream.set_types(_TYPES)
                for _ in stream.rows():
                    read += 1
            return read

        log = PostgresEventLog(dsn, schema=schema)

        def read_all(_: psycopg.Connection[Any]) -> int:
            read, start = 0, 1
            while batch := log.read_all(start, 4096):
                read += len(batch)
                start = batch[-1].position + 1
            return read

        ways: dict[str, Callable[[psycopg.Connection[Any]], int]] = {
            "keyset": keyset,
            "named_cursor": named,
            "copy_binary": binary_copy,
            "read_all": read_all,
        }
        rates: dict[str, list[float]] = {name: [] for name in ways}
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                for _ in range(rounds):
                    for name, way in ways.items():
                        started = time.perf_counter()
                        read = way(conn)
                        rates[name].append(read / (time.perf_counter() - started))
                        if read != events:
                            raise RuntimeError(f"{name} read {read} of {events} rows")
            finally:
                log.close()
    finally:
        _drop(dsn, schema)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "workload": "reads",
        "events": events,
        "rounds": rounds,
        **{f"{name}_per_second": round(rate) for name, rate in medians.items()},
        **{
            f"{name}_vs_keyset": round(rate / medians["keyset"], 3)
            for name, rate in medians.items()
            if name != "keyset"
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print its JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="a libpq URL of the server to use")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="W1,W3,W4", help="any of W1,W3,W4,reads")
    parser.add_argument("--commands", type=int, default=20_000, help="W1's commands")
    parser.add_argument("--events", type=int, default=1_000_000, help="W4's and reads' log")
    parser.add_argument("--no-peer", action="store_true", help="skip the eventsourcing peer")
    args = parser.parse_args(argv)
    only = frozenset(w.strip() for w in args.only.split(",") if w.strip())
    meta = {"python": platform.python_version(), "cpu": platform.processor() or "?"}
    for row in compare(
        args.dsn,
        w1_commands=args.commands,
        w4_events=args.events,
        rounds=args.rounds,
        peer=not args.no_peer,
        only=only,
    ):
        print(json.dumps({**row, "rounds": args.rounds, **meta}))
    if "reads" in only:
        print(json.dumps({**read_strategies(args.dsn, events=args.events), **meta}))


if __name__ == "__main__":
    main()
