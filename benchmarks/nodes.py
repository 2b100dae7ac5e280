"""Many engine processes on one log (issue 15), in one run, as ratios.

``python -m benchmarks.nodes --dsn postgresql://user@host/db`` measures, each process a
real ``python`` process driven over pipes:

- **W1 on PostgreSQL with 1, 2 and 4 write processes**, routed at random (each command
  to any process) and by affinity (``account number % processes``): commands a second,
  conflicts (commands decided again on a stale aggregate) and client retries (a command
  that exhausted the engine's retries) per command, and commands per CPU-second summed
  over the engines and the PostgreSQL server (its postmaster and backends, from
  ``/proc``); each as a ratio to one process. 1,000 accounts, 64 clients split over the
  processes, both views live on every process (projectors on every node), every
  aggregate a process will be sent cached before the clock starts (steady state, not
  the activation reads of a cold start). Controls, each a ratio to the same one process:
  one process beside 1 and 3 CPU-burning processes, with 32 and 16 clients, on a log only
  it writes, and one and two processes (by affinity) whose commits do not wait for the
  server's WAL flush (``sync=False``; two of those also as a ratio to one of those). And
  besides 64 clients split over N processes (one load, split), N processes of 64 clients
  each (``"load": "64 clients a process"``: what N processes can serve).
- **W5 with 1 and 3 reader processes, on LMDB and on PostgreSQL** (a writer process owns
  the log; readers open it read-only on LMDB, as reader nodes on a shared PostgreSQL
  schema): point queries a second over all readers and queries per CPU-second of theirs,
  ratio 3 / 1; and whether the cores are the limit: the cores the readers kept busy
  (their CPU seconds over the wall seconds) with 1 and with 3, on PostgreSQL also the
  server's (its processes, as for W1), beside ``os.cpu_count()``.
- **Cross-node visibility**: commands sent one at a time on node A; node B's projector
  records when each position arrives (``time.monotonic``, one clock for every process
  on Linux); the lag from A's acknowledgement to B's apply, p50 and p99, on PostgreSQL
  (LISTEN/NOTIFY) and LMDB (a reader polling the head).

Rounds interleave the configurations (``--rounds``); medians are printed as one JSON
line per figure. W1's lines also hold ``paired``: the same ratios taken within each round
(a round runs its configurations back to back), their median and range, which one
process's own drift from round to round (up to a quarter on a shared VM) mostly does not
reach. ``--quick`` scales the counts down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import trio

from actorlog import ConcurrencyError, Engine, Projector, Recorded, Rejected, applies
from actorlog.storage import EventLog, LmdbEventLog, PostgresEventLog

from ._child import Child, heard, say
from .bank import Account, Balances, Deposit, Deposited, OpenAccount, Totals, Withdraw
from .workloads import _commands, _open_accounts

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


class Arrivals(Projector):
    """When each position reached this process's projectors (``time.monotonic``)."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.at[meta.position] = time.monotonic()

    def arrivals(self) -> dict[int, float]:
        """Position -> arrival time."""
        return self.at


# -- the child processes ----------------------------------------------------------------


async def _line() -> dict[str, Any]:
    message = await heard()
    if message is None:
        raise SystemExit(0)
    return message


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _writer_child(args: dict[str, Any]) -> None:
    """A W1 write node: its share of the commands, from its share of the clients."""
    log = PostgresEventLog(
        args["dsn"], schema=args["schema"], shared=args["shared"], sync=args["sync"]
    )
    views = [Balances, Totals] if args["views"] else []
    async with Engine.open(log=log, aggregates=[Account], projectors=views) as engine:
        work = [
            c
            for i, c in enumerate(_commands(args["accounts"], args["commands"], seed=1))
            if (int(c[0].rsplit("-", 1)[1]) if args["routing"] == "affinity" else i)
            % args["processes"]
            == args["index"]
        ]
        clients = args["clients"]
        # Warm: every aggregate this process will be sent is cached before the clock
        # starts, as in a service past its first minutes (a cold run measures activation
        # reads, N times over under random routing). A withdrawal of 0 is refused: it
        # loads the aggregate and writes nothing.
        streams = list({stream_id: None for stream_id, _ in work})

        async def warm(first: int) -> None:
            for stream_id in streams[first::clients]:
                with contextlib.suppress(Rejected):
                    await engine.send(Account, stream_id, Withdraw(0))

        async with anyio.create_task_group() as tg:
            for first in range(clients):
                tg.start_soon(warm, first)
        before = engine.statistics()
        say({"ready": len(work)})
        await _line()  # go
        retries = 0
        cpu, started = _cpu(), time.perf_counter()

        async def client(first: int) -> None:
            nonlocal retries
            for stream_id, command in work[first::clients]:
                while True:
                    try:
                        await engine.send(Account, stream_id, command)
                    except Rejected:
                        pass
                    except ConcurrencyError:
                        retries += 1
                        continue
                    break

        async with anyio.create_task_group() as tg:
            for first in range(clients):
                tg.start_soon(client, first)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        stats = engine.statistics()
        say(
            {
                "commands": len(work),
                "seconds": seconds,
                "cpu": cpu,
                "conflicts": stats.aggregates.retries - before.aggregates.retries,
                "client_retries": retries,
                "groups": stats.writer.commits - before.writer.commits,
                "follower_reads": 0
                if stats.follower is None or before.follower is None
                else stats.follower.reads - before.follower.reads,
                "follower_rests": 0 if stats.follower is None else stats.follower.rests,
            }
        )
        await _line()  # done


async def _reader_child(args: dict[str, Any]) -> None:
    """A W5 read node (projectors, no aggregates) on a log another process writes, LMDB
    read-only or PostgreSQL shared: point queries for a while."""
    log: EventLog = (
        PostgresEventLog(args["dsn"], schema=args["schema"], shared=True)
        if args["kind"] == "pg"
        else LmdbEventLog(args["path"], readonly=True)
    )
    async with Engine.open(log=log, aggregates=[], projectors=[Balances]) as engine:
        query, balance = engine.query, Balances.balance
        await query(balance, "acct-1", after=args["after"], timeout=30)
        say({"ready": True})
        await _line()  # go
        count, cpu, started = 0, _cpu(), time.perf_counter()
        deadline = started + args["seconds"]
        while time.perf_counter() < deadline:
            for _ in range(1000):
                await query(balance, "acct-1")
            count += 1000
        say({"queries": count, "seconds": time.perf_counter() - started, "cpu": _cpu() - cpu})
        await _line()  # done


async def _arrivals_child(args: dict[str, Any]) -> None:
    """Node B of the visibility lag: report when positions arrived."""
    log: EventLog = (
        PostgresEventLog(args["dsn"], schema=args["schema"], shared=True)
        if args["kind"] == "pg"
        else LmdbEventLog(args["path"], readonly=True)
    )
    async with Engine.open(log=log, aggregates=[], projectors=[Arrivals]) as engine:
        say({"ready": True})
        last = (await _line())["last"]
        at = await engine.query(Arrivals.arrivals, after=last, timeout=60)
        say({"arrivals": {str(k): v for k, v in at.items()}})
        await _line()


def _child(role: str, args: dict[str, Any]) -> None:
    job = {"writer": _writer_child, "reader": _reader_child, "arrivals": _arrivals_child}[role]
    trio.run(job, args)


class _Child(Child):
    def __init__(self, role: str, **args: Any) -> None:
        super().__init__("benchmarks.nodes", "--child", role, json.dumps(args))

    def finish(self) -> None:
        self.proc.communicate(timeout=60)


# -- the PostgreSQL server's CPU ----------------------------------------------------------


def _server_pids(dsn: str) -> list[int]:
    """The server's postmaster (its data directory's ``postmaster.pid``) and its children
    (this machine's server only)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


def _server_cpu(dsn: str) -> dict[int, float]:
    """CPU seconds each of the server's processes (those alive now) has used."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    for pid in _server_pids(dsn):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def _server_cpu_since(dsn: str, before: dict[int, float]) -> float:
    """CPU seconds the server's processes used since ``before`` (``_server_cpu``): each
    live process's growth, a new one's all. A process that ended meanwhile is not counted
    (an undercount, never below zero: a sum over the live ones went negative when other
    clients' backends ended during a run)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in _server_cpu(dsn).items())


# -- the measurements ---------------------------------------------------------------------


def w1_round(
    dsn: str,
    processes: int,
    routing: str,
    *,
    accounts: int,
    commands: int,
    views: bool,
    clients: int = 64,
    busy: int = 0,
    shared: bool = True,
    sync: bool = True,
    separate: bool = False,
) -> dict[str, float]:
    """One W1 run: ``clients`` split over ``processes`` write processes, beside ``busy``
    processes that only burn CPU (a control: the contention of more processes on the
    cores, without their work); ``shared=False``: one process on a log it alone writes (a
    control: what following others costs one process); ``sync=False``: the engines'
    commits do not wait for the server's WAL flush (a control: what the flush, paid once a
    group and serialized by the log's lock, costs several processes); ``separate``: each
    process on a log of its own (a schema each, the same share of the work: a control:
    what N engines and their server connections cost on these cores with nothing shared)."""
    schema = f"bench_nodes_{uuid.uuid4().hex[:12]}"
    schemas = [f"{schema}_{i}" for i in range(processes)] if separate else [schema]
    try:

        async def open_accounts() -> None:
            for name in schemas:
                setup = PostgresEventLog(dsn, schema=name)
                async with Engine.open(log=setup, aggregates=[Account]) as engine:
                    await _open_accounts(engine, accounts)

        trio.run(open_accounts)
        children = [
            _Child(
                "writer",
                dsn=dsn,
                schema=schemas[i % len(schemas)],
                accounts=accounts,
                commands=commands,
                processes=processes,
                index=i,
                routing=routing,
                clients=max(1, clients // processes),
                views=views,
                shared=shared,
                sync=sync,
            )
            for i in range(processes)
        ]
        for child in children:
            child.hear()
        burners = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)
        ]
        try:
            before = _server_cpu(dsn)
            started = time.perf_counter()
            for child in children:
                child.tell({"go": True})
            results = [child.hear() for child in children]
            wall = time.perf_counter() - started
            server = _server_cpu_since(dsn, before)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        for child in children:
            child.tell({"done": True})
            child.finish()
    finally:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    done = sum(r["commands"] for r in results)
    cpu = sum(r["cpu"] for r in results) + server
    return {
        "per_second": done / wall,
        "per_cpu_second": done / cpu,
        "conflicts": sum(r["conflicts"] for r in results) / done,
        "client_retries": sum(r["client_retries"] for r in results) / done,
        "server_cpu_share": server / cpu,
        "commands_per_group": done / max(1, sum(r["groups"] for r in results)),
        "follower_reads_per_command": sum(r["follower_reads"] for r in results) / done,
        "follower_rests": sum(r["follower_rests"] for r in results),
    }


def w5_round(
    kind: str, readers: int, seconds: float, after: int, *, dsn: str | None = None, **where: Any
) -> dict[str, float]:
    """``readers`` reader processes on one log (``kind`` "lmdb": ``path=``; "pg":
    ``schema=``, on ``dsn``): queries a second over them all, queries per CPU-second of
    theirs, the cores they kept busy (their CPU seconds over the wall seconds) and, on
    PostgreSQL, the cores the server's processes kept busy meanwhile."""
    children = [
        _Child("reader", kind=kind, dsn=dsn, seconds=seconds, after=after, **where)
        for _ in range(readers)
    ]
    for child in children:
        child.hear()
    before = _server_cpu(dsn) if dsn else {}
    started = time.perf_counter()
    for child in children:
        child.tell({"go": True})
    results = [child.hear() for child in children]
    wall = time.perf_counter() - started
    server = _server_cpu_since(dsn, before) if dsn else 0.0
    for child in children:
        child.tell({"done": True})
        child.finish()
    queries = sum(r["queries"] for r in results)
    reader_wall = max(r["seconds"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    return {
        "per_second": queries / reader_wall,
        "per_cpu_second": queries / cpu,
        "busy_cores": cpu / reader_wall,
        "server_busy_cores": server / wall,
    }


def _w5_rounds(
    workload: str, rounds: int, seconds: float, after: int, **where: Any
) -> dict[str, Any]:
    """Interleaved rounds of 1 and 3 readers: the JSON line of ``workload``."""
    ones, threes = [], []
    for _ in range(rounds):
        ones.append(w5_round(readers=1, seconds=seconds, after=after, **where))
        threes.append(w5_round(readers=3, seconds=seconds, after=after, **where))

    def median(runs: list[dict[str, float]], key: str, digits: int = 2) -> float:
        return round(statistics.median(r[key] for r in runs), digits)

    ratios = [t["per_second"] / o["per_second"] for o, t in zip(ones, threes, strict=True)]
    cpu_ratios = [
        t["per_cpu_second"] / o["per_cpu_second"] for o, t in zip(ones, threes, strict=True)
    ]
    row: dict[str, Any] = {
        "workload": workload,
        "three_over_one_per_second": round(statistics.median(ratios), 3),
        "three_over_one_per_cpu_second": round(statistics.median(cpu_ratios), 3),
        "each_round": [round(r, 3) for r in ratios],
        # Whether the cores are the limit: the cores the readers kept busy (their CPU
        # seconds over the wall seconds), medians, against the cores the machine has.
        "reader_busy_cores_one": median(ones, "busy_cores"),
        "reader_busy_cores_three": median(threes, "busy_cores"),
        # Each round's [one, three]: a round's ratio follows the cores its readers got.
        "each_round_reader_busy_cores": [
            [round(o["busy_cores"], 2), round(t["busy_cores"], 2)]
            for o, t in zip(ones, threes, strict=True)
        ],
    }
    if where.get("dsn"):
        row["server_busy_cores_one"] = median(ones, "server_busy_cores", 3)
        row["server_busy_cores_three"] = median(threes, "server_busy_cores", 3)
    row["cpu_count"] = os.cpu_count()
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


def lag_round(kind: str, engine_open: Any, count: int, **where: Any) -> list[float]:
    """Lags (seconds) from node A's acknowledgement (this process) to node B's apply."""
    child = _Child("arrivals", kind=kind, **where)
    child.hear()
    acked: dict[int, float] = {}

    async def send() -> None:
        async with engine_open() as engine:
            for _ in range(count):
                ack = await engine.send(Account, "acct-lag", Deposit(1))
                acked[ack.position] = time.monotonic()
                await trio.sleep(0.002)

    trio.run(send)
    child.tell({"last": max(acked)})
    arrivals = {int(k): v for k, v in child.hear()["arrivals"].items()}
    child.tell({"done": True})
    child.finish()
    return [max(arrivals[p] - t, 0.0) for p, t in acked.items()]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _paired(
    runs: list[dict[str, float]], against: list[dict[str, float]], suffix: str
) -> dict[str, Any]:
    """The ratios of ``runs`` to ``against`` taken round by round (the two lists are in
    round order): for commands a second and per CPU-second, ``per_second{suffix}`` and
    ``per_cpu_second{suffix}`` (medians), each with its ``_range`` (lowest, highest)."""
    out: dict[str, Any] = {}
    for figure in ("per_second", "per_cpu_second"):
        ratios = [run[figure] / other[figure] for run, other in zip(runs, against, strict=True)]
        out[figure + suffix] = round(statistics.median(ratios), 3)
        out[figure + suffix + "_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one JSON line per figure."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nodes", description=__doc__)
    parser.add_argument("--dsn", help="a PostgreSQL server (W1 and the PostgreSQL lag)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        default="W1,W1-plain,W5,lag",
        help="W1, W1-plain (write nodes: W1 without views), W5, lag",
    )
    parser.add_argument("--plot", type=Path, help="draw W1's ratios against processes here")
    parser.add_argument(
        "--plot-from", type=Path, help="with --plot: draw from this run's printed lines, only"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], json.loads(args.child[1]))
        return 0
    if args.plot_from is not None:
        lines = args.plot_from.read_text().splitlines()
        _plot([json.loads(line) for line in lines if line.strip()], args.plot)
        return 0
    rows: list[dict[str, Any]] = []
    only = set(args.only.split(","))
    scale = 10 if args.quick else 1
    for views in (True, False):
        if not args.dsn or ("W1" if views else "W1-plain") not in only:
            continue
        # (processes, routing, clients, busy processes, shared, sync, separate). The controls are
        # one process under the two things that change when the load is split over N
        # processes on these cores: N-1 more processes contending for the cores (busy
        # ones, burning CPU), and 64/N clients each (smaller groups); one process on a
        # log only it writes (what following others costs); and one and two processes
        # whose commits do not wait for the WAL flush (what the flush costs them). Beside
        # the same 64 clients split over N processes, N processes of 64 clients each:
        # the load a deployment of N processes is for (its capacity, not one load split).
        # And N processes of 64 clients, each on a log of its own (nothing shared): what
        # N engines and their server connections cost on these cores, the most any
        # sharing of one log could give per CPU-second here.
        configs: list[tuple[int, str, int, int, bool, bool, bool]] = (
            [
                (1, "affinity", 64, 0, True, True, False),
                (2, "random", 64, 0, True, True, False),
                (2, "affinity", 64, 0, True, True, False),
                (4, "random", 64, 0, True, True, False),
                (4, "affinity", 64, 0, True, True, False),
                (2, "random", 128, 0, True, True, False),
                (2, "affinity", 128, 0, True, True, False),
                (4, "random", 256, 0, True, True, False),
                (4, "affinity", 256, 0, True, True, False),
                (2, "affinity", 128, 0, True, True, True),
                (4, "affinity", 256, 0, True, True, True),
                (1, "affinity", 64, 1, True, True, False),
                (1, "affinity", 64, 3, True, True, False),
                (1, "affinity", 32, 0, True, True, False),
                (1, "affinity", 16, 0, True, True, False),
                (1, "affinity", 64, 0, False, True, False),
                (1, "affinity", 64, 0, True, False, False),
                (2, "affinity", 64, 0, True, False, False),
            ]
            if views
            # Write nodes (aggregates only; the reads served by reader nodes, W5): what
            # the write side alone scales to, each process with its own 64 clients, and
            # what not following others costs or saves (the follower rests by affinity).
            else [
                (1, "affinity", 64, 0, True, True, False),
                (2, "random", 128, 0, True, True, False),
                (2, "affinity", 128, 0, True, True, False),
                (4, "random", 256, 0, True, True, False),
                (4, "affinity", 256, 0, True, True, False),
                (2, "affinity", 128, 0, True, True, True),
                (4, "affinity", 256, 0, True, True, True),
                (1, "affinity", 64, 0, False, True, False),
            ]
        )
        samples: dict[tuple[int, str, int, int, bool, bool, bool], list[dict[str, float]]] = {
            c: [] for c in configs
        }
        for round_ in range(args.rounds):
            # Each round starts at another configuration: a run's place in the round
            # moved its figure by up to ~30% on this VM (the baseline, always first,
            # measured below one process beside a busy one).
            turn = round_ % len(configs)
            for config in configs[turn:] + configs[:turn]:
                processes, routing, clients, busy, shared, sync, separate = config
                samples[config].append(
                    w1_round(
                        args.dsn,
                        processes,
                        routing,
                        accounts=1000 // scale,
                        commands=20_000 // scale,
                        views=views,
                        clients=clients,
                        busy=busy,
                        shared=shared,
                        sync=sync,
                        separate=separate,
                    )
                )
        medians = {
            c: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for c, runs in samples.items()
        }
        base = medians[configs[0]]
        for (processes, routing, clients, busy, shared, sync, separate), med in medians.items():
            row: dict[str, Any] = {
                "workload": "W1-postgres-nodes" if views else "W1-postgres-write-nodes",
                "processes": processes,
                "routing": routing if processes > 1 else "-",
            }
            if processes > 1:
                row["load"] = (
                    "64 clients a process" if clients == 64 * processes else "64 clients in all"
                )
            if busy or (processes == 1 and clients != 64) or not shared or not sync or separate:
                row["control"] = (
                    f"{processes} processes, each on a log of its own (nothing shared)"
                    if separate
                    else f"one process beside {busy} busy processes"
                    if busy
                    else f"one process with {clients} clients"
                    if clients != 64
                    else "one process on a log only it writes (shared=False)"
                    if not shared
                    else f"{processes} process(es), sync=False (the WAL flush not awaited)"
                )
            row |= {
                "per_second_ratio": round(med["per_second"] / base["per_second"], 3),
                "per_cpu_second_ratio": round(med["per_cpu_second"] / base["per_cpu_second"], 3),
            }
            unflushed = medians.get((1, "affinity", 64, 0, True, False, False))
            if not sync and processes > 1 and unflushed is not None:
                # Against one process that does not wait for the flush either.
                row["per_second_vs_one_unflushed"] = round(
                    med["per_second"] / unflushed["per_second"], 3
                )
                row["per_cpu_second_vs_one_unflushed"] = round(
                    med["per_cpu_second"] / unflushed["per_cpu_second"], 3
                )
            apart = medians.get((processes, "affinity", clients, 0, True, True, True))
            if processes > 1 and sync and not separate and apart is not None:
                # Against as many processes with as many clients, each on a log of its
                # own: what sharing one log costs, apart from running N engines here.
                row["per_second_vs_separate"] = round(med["per_second"] / apart["per_second"], 3)
                row["per_cpu_second_vs_separate"] = round(
                    med["per_cpu_second"] / apart["per_cpu_second"], 3
                )
            contended = medians.get((1, "affinity", 64, processes - 1, True, True, False))
            if processes > 1 and sync and contended is not None:
                # Per CPU-second against one process under the same contention for the
                # cores: what splitting the work costs, apart from the cores' sharing.
                row["per_cpu_second_vs_same_contention"] = round(
                    med["per_cpu_second"] / contended["per_cpu_second"], 3
                )
            # The same ratios taken within each round (the configurations of a round run
            # back to back), their median and range: one process's own rate moves by up
            # to a quarter from round to round on a shared VM, and a ratio of two
            # medians carries that, where a ratio within a round mostly does not.
            config = (processes, routing, clients, busy, shared, sync, separate)
            row["paired"] = _paired(samples[config], samples[configs[0]], "_ratio")
            if "per_second_vs_separate" in row:
                apart_runs = samples[(processes, "affinity", clients, 0, True, True, True)]
                row["paired"] |= _paired(samples[config], apart_runs, "_vs_separate")
            row |= {
                "conflicts_per_command": round(med["conflicts"], 4),
                "client_retries_per_command": round(med["client_retries"], 5),
                "server_cpu_share": round(med["server_cpu_share"], 3),
                "commands_per_group": round(med["commands_per_group"], 1),
                "follower_reads_per_command": round(med["follower_reads_per_command"], 3),
                "follower_rests": med["follower_rests"],
                "rounds": args.rounds,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if "W5" in only:
        seconds = 0.5 if args.quick else 3.0  # each reader run
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp)

            async def own_lmdb() -> None:
                # The writer process (this one): opens the log, writes, holds it while the
                # readers run.
                async with Engine.open(path, aggregates=[Account], sync=False) as engine:
                    await engine.send(Account, "acct-1", OpenAccount("q"))
                    head = (await engine.send(Account, "acct-1", Deposit(5))).position
                    row = await anyio.to_thread.run_sync(
                        lambda: _w5_rounds(
                            "W5-lmdb-readers", args.rounds, seconds, head, kind="lmdb", path=tmp
                        )
                    )
                    print(json.dumps(row), flush=True)

            trio.run(own_lmdb)
        if args.dsn:
            dsn, schema = args.dsn, f"bench_readers_{uuid.uuid4().hex[:12]}"

            async def own_pg() -> None:
                # The write node (this one), as on LMDB; the readers are reader nodes on
                # the same schema, each following the log from PostgreSQL.
                log = PostgresEventLog(dsn, schema=schema, shared=True)
                async with Engine.open(log=log, aggregates=[Account]) as engine:
                    await engine.send(Account, "acct-1", OpenAccount("q"))
                    head = (await engine.send(Account, "acct-1", Deposit(5))).position
                    row = await anyio.to_thread.run_sync(
                        lambda: _w5_rounds(
                            "W5-postgres-readers",
                            args.rounds,
                            seconds,
                            head,
                            kind="pg",
                            dsn=dsn,
                            schema=schema,
                        )
                    )
                    print(json.dumps(row), flush=True)

            try:
                trio.run(own_pg)
            finally:
                import psycopg

                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    if "lag" in only:
        count = 500 // scale
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp)

            def lmdb_engine() -> Any:
                return Engine.open(path, aggregates=[Account], sync=False)

            async def create() -> None:
                async with lmdb_engine() as engine:
                    await engine.send(Account, "acct-lag", OpenAccount("lag"))

            trio.run(create)
            lags = lag_round("lmdb", lmdb_engine, count, path=str(path))
            _print_lag("lmdb", lags)
        if args.dsn:
            schema = f"bench_lag_{uuid.uuid4().hex[:12]}"
            try:

                def pg_engine() -> Any:
                    return Engine.open(
                        log=PostgresEventLog(args.dsn, schema=schema, shared=True),
                        aggregates=[Account],
                    )

                PostgresEventLog(args.dsn, schema=schema).close()
                lags = lag_round("pg", pg_engine, count, dsn=args.dsn, schema=schema)
                _print_lag("postgres", lags)
            finally:
                import psycopg

                with psycopg.connect(args.dsn, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    if args.plot is not None and rows:
        _plot(rows, args.plot)
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """W1 commands a second and per CPU-second, as ratios to one process, against the
    number of write processes, one line per routing (and views on or off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.8))
    for workload in sorted({r["workload"] for r in rows if r["workload"].startswith("W1")}):
        mine = [r for r in rows if r["workload"] == workload and "control" not in r]
        base = [r for r in mine if r["processes"] == 1]
        suffix = "" if workload == "W1-postgres-nodes" else ", write nodes (no views)"
        for load, style in (("64 clients in all", "-"), ("64 clients a process", ":")):
            for routing in ("random", "affinity"):
                points = base + [
                    r for r in mine if r["routing"] == routing and r.get("load") == load
                ]
                if len(points) < 2:
                    continue
                xs = [r["processes"] for r in points]
                for ax, key in zip(axes, ("per_second_ratio", "per_cpu_second_ratio"), strict=True):
                    ax.plot(
                        xs,
                        [r[key] for r in points],
                        marker="o",
                        linestyle=style,
                        label=f"{routing}, {load}{suffix}",
                    )
        # The control: one process beside N-1 busy processes (the same contention for
        # the cores as N write processes), per CPU-second.
        busy = {
            r["control"]: r
            for r in rows
            if r["workload"] == workload and "busy" in r.get("control", "")
        }
        controls = base + [
            busy[f"one process beside {n - 1} busy processes"]
            for n in (2, 4)
            if f"one process beside {n - 1} busy processes" in busy
        ]
        if len(controls) > 1:
            axes[1].plot(
                [1, 2, 4][: len(controls)],
                [r["per_cpu_second_ratio"] for r in controls],
                linestyle="--",
                marker="x",
                color="black",  # off the colour cycle: a line keeps its colour in both panels
                label="1 process, same contention" + suffix,
            )
        # The other control: N processes, each on a log of its own (nothing shared).
        apart = {
            r["processes"]: r
            for r in rows
            if r["workload"] == workload and "of its own" in r.get("control", "")
        }
        if apart:
            points = base + [apart[n] for n in sorted(apart)]
            axes[1].plot(
                [r["processes"] for r in points],
                [r["per_cpu_second_ratio"] for r in points],
                linestyle="-.",
                marker="s",
                color="dimgray" if suffix else "darkgray",
                label="N processes, a log each (nothing shared)" + suffix,
            )
    for ax, title in zip(
        axes, ("commands/s vs 1 process", "commands per CPU-second vs 1 process"), strict=True
    ):
        ax.set_xticks([1, 2, 4])
        ax.set_xlabel("write processes on one PostgreSQL log")
        ax.set_title(title)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.grid(True, alpha=0.3)
    # One legend for both panels, below them: inside, it hid the lines.
    labelled: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    fig.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=2, fontsize=8)
    fig.suptitle("W1 (bank, durable) on many engine processes; 2-core VM shared with the server")
    fig.tight_layout(rect=(0, 0.035 * ((len(labelled) + 1) // 2), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_lag(kind: str, lags: list[float]) -> None:
    print(
        json.dumps(
            {
                "workload": f"visibility-lag-{kind}",
                "samples": len(lags),
                "p50_ms": round(1000 * _quantile(lags, 0.5), 2),
                "p99_ms": round(1000 * _quantile(lags, 0.99), 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
