"""The benchmark harness: every bank workload beside its floor and its peer, in one run.

``python -m benchmarks`` runs W1-W7 and W4-upcast (W4 over events stored at an older
version, against the same log at the current one: ``benchmarks/upcast.py``), about 3-5
minutes here, and PG (W1, W3 and W4 on the PostgreSQL log beside LMDB and the peer on the
same server: ``benchmarks/postgres.py``) when a server is given (``--postgres URL`` or
``ACTORLOG_BENCH_POSTGRES``; with ``--quick``, ``ACTORLOG_TEST_POSTGRES`` too), else it
says it skipped it; ``--quick`` scales every count down ~20x, ``--only W1,W4`` selects, ``--json
PATH`` writes one JSON object per line. The machine is shared and noisy, so absolute
figures drift between runs; the ratios, measured minutes apart in the same process, are
what to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import trio

from . import floors, postgres, upcast, workloads
from . import transfers as transfers_w7
from ._floor import run_floor_paced_latency, run_floor_w1
from ._peer import run_peer_w1, run_peer_w3, run_peer_w4
from ._peer_transfers import run_peer_w7

__all__ = ["main"]

Row = dict[str, Any]
T = TypeVar("T")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("trio", "anyio", "msgspec", "lmdb", "eventsourcing"):
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "missing"
    return found


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def _row(
    workload: str,
    variant: str,
    value: float,
    unit: str,
    *,
    floor: float | None = None,
    peer: float | None = None,
    higher_is_better: bool = True,
    **extra: Any,
) -> Row:
    """One result line; ratios > 1 always mean 'the engine is better'."""

    def ratio(base: float | None) -> float | None:
        if base is None or base == 0 or value == 0:
            return None
        return round(value / base if higher_is_better else base / value, 3)

    return {
        "workload": workload,
        "variant": variant,
        "value": round(value, 4),
        "unit": unit,
        "ratio_vs_floor": ratio(floor),
        "ratio_vs_peer": ratio(peer),
        "floor": None if floor is None else round(floor, 4),
        "peer": None if peer is None else round(peer, 4),
        **extra,
    }


def _trio(job: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion on a fresh trio loop."""

    async def run() -> T:
        return await job

    return trio.run(run)


class Harness:
    """Runs the selected workloads at a scale, collecting rows."""

    def __init__(self, root: Path, *, quick: bool, peer: bool, postgres: str | None = None) -> None:
        self.root = root
        self.scale = 20 if quick else 1
        self.peer = peer
        self.postgres = postgres
        self.skipped: list[str] = []
        self.rows: list[Row] = []
        self._dirs = 0
        self.sweep: dict[str, dict[int, float]] = {}

    def fresh(self, name: str) -> Path:
        """A new empty directory for one run."""
        self._dirs += 1
        path = self.root / f"{self._dirs:03d}-{name}"
        path.mkdir()
        return path

    def n(self, full: int, minimum: int = 1) -> int:
        """A count scaled for --quick."""
        return max(minimum, full // self.scale)

    # -- workloads ----------------------------------------------------------------------------

    def w1(self) -> None:
        """W1: write throughput, 64 clients, durable and sync=False, trio and asyncio."""
        accounts, commands, clients = 1000, self.n(100_000), 64
        peer = None
        if self.peer:
            peer = run_peer_w1(
                str(self.fresh("peer-w1") / "bank.sqlite"),
                accounts=accounts,
                commands=self.n(20_000),
                clients=clients,
                fastforward=False,
            )["per_second"]
        for sync in (True, False):
            floor = _trio(
                run_floor_w1(
                    str(self.fresh("floor-w1")),
                    accounts=accounts,
                    commands=commands,
                    clients=clients,
                    sync=sync,
                )
            )["per_second"]
            variants = [("trio", True), ("asyncio", True), ("trio", False)]
            for backend, views in variants:
                job = workloads.engine_write_throughput(
                    self.fresh("w1"),
                    accounts=accounts,
                    commands=commands,
                    clients=clients,
                    sync=sync,
                    views=views,
                )
                result = _trio(job) if backend == "trio" else asyncio.run(job)
                label = f"{'durable' if sync else 'sync=False'} {backend}"
                self.rows.append(
                    _row(
                        "W1",
                        label if views else f"{label}, no views",
                        result["per_second"],
                        "commands/s",
                        floor=floor,
                        peer=peer if sync else None,
                        sync=sync,
                        backend=backend,
                        views=views,
                        mean_batch=round(result["mean_batch"], 1),
                        commands=commands,
                    )
                )

    def w1_service(self) -> None:
        """W1 with what a service's commands carry (command ids, a policy, metadata), each
        beside plain W1 in the same run: rounds interleaved, the median of each."""
        accounts, commands, clients = 1000, self.n(40_000), 64
        rounds = 2 if self.scale > 1 else 5  # --quick: a smoke test
        for sync in (False, True):
            rates: dict[str, list[float]] = {v: [] for v in workloads.SERVICE_VARIANTS}
            for _ in range(rounds):
                for variant in workloads.SERVICE_VARIANTS:
                    job = workloads.engine_write_throughput(
                        self.fresh("w1-service"),
                        accounts=accounts,
                        commands=commands,
                        clients=clients,
                        sync=sync,
                        service=variant,
                    )
                    rates[variant].append(_trio(job)["per_second"])
            plain = statistics.median(rates["plain"])
            for variant, samples in rates.items():
                if variant == "plain":
                    continue
                rate = statistics.median(samples)
                self.rows.append(
                    _row(
                        "W1-service",
                        f"{'durable' if sync else 'sync=False'} trio, {variant} "
                        f"({rate / plain:.2f}x plain)",
                        rate,
                        "commands/s",
                        sync=sync,
                        vs_plain=round(rate / plain, 3),
                        commands=commands,
                    )
                )

    def w1_sweep(self) -> None:
        """W1 against the number of concurrent clients, for the plot."""
        accounts, commands = 1000, self.n(20_000)
        for clients in (1, 4, 16, 64, 256):
            n = commands if clients >= 16 else max(clients, commands // 4)
            engine = _trio(
                workloads.engine_write_throughput(
                    self.fresh("sweep"), accounts=accounts, commands=n, clients=clients, sync=True
                )
            )["per_second"]
            floor = _trio(
                run_floor_w1(
                    str(self.fresh("sweep-floor")),
                    accounts=accounts,
                    commands=n,
                    clients=clients,
                    sync=True,
                )
            )["per_second"]
            self.sweep.setdefault("engine", {})[clients] = engine
            self.sweep.setdefault("floor", {})[clients] = floor
            if self.peer:
                peer = run_peer_w1(
                    str(self.fresh("sweep-peer") / "bank.sqlite"),
                    accounts=accounts,
                    commands=max(clients, n // 4),
                    clients=clients,
                    fastforward=False,
                )["per_second"]
                self.sweep.setdefault("peer", {})[clients] = peer

    def w2(self) -> None:
        """W2: latency at a fixed offered load of half the measured W1 rate."""
        w1 = [r for r in self.rows if r["workload"] == "W1" and r["variant"] == "durable trio"]
        rate = (w1[0]["value"] if w1 else 30_000) / 2
        duration = 5.0 / self.scale if self.scale > 1 else 5.0
        engine = _trio(
            workloads.engine_latency(
                self.fresh("w2"), accounts=1000, rate=rate, duration_s=duration
            )
        )
        floor = _trio(
            run_floor_paced_latency(
                str(self.fresh("w2-floor")), accounts=1000, rate=rate, duration_s=duration
            )
        )
        for q in ("p50_ms", "p99_ms"):
            self.rows.append(
                _row(
                    "W2",
                    f"{q[:3]} at {rate:,.0f}/s offered",
                    engine[q],
                    "ms",
                    floor=floor[q],
                    higher_is_better=False,
                    sync=True,
                )
            )

    def w3(self) -> None:
        """W3: activate one account with 10,000 events, cold and from a snapshot."""
        events = self.n(10_000, 200)
        engine = _trio(workloads.engine_rehydrate(self.fresh("w3"), events=events))
        floor = floors.floor_rehydrate(self.fresh("w3-floor"), events=events)["cold_ms"]
        peer = None
        if self.peer:
            peer = (
                run_peer_w3(str(self.fresh("w3-peer") / "bank.sqlite"), events=events)["seconds"]
                * 1e3
            )
        self.rows.append(
            _row(
                "W3",
                f"cold, {events} events",
                engine["cold_ms"],
                "ms",
                floor=floor,
                peer=peer,
                higher_is_better=False,
            )
        )
        self.rows.append(
            _row(
                "W3",
                f"from snapshot, {events} events",
                engine["snapshot_ms"],
                "ms",
                floor=floor,
                higher_is_better=False,
            )
        )

    def w4(self) -> None:
        """W4: rebuild the balances view from a log of 1,000,000 events."""
        events = self.n(1_000_000)
        root = self.fresh("w4")
        engine = _trio(workloads.engine_rebuild(root, events=events))
        floor = floors.floor_rebuild(root / "log")["per_second"]
        peer = None
        if self.peer:
            peer = run_peer_w4(str(self.fresh("w4-peer") / "bank.sqlite"), events=self.n(100_000))[
                "per_second"
            ]
        self.rows.append(
            _row(
                "W4",
                f"rebuild {events:,} events",
                engine["per_second"],
                "events/s",
                floor=floor,
                peer=peer,
            )
        )

    def w4_upcast(self) -> None:
        """W4 over 1,000,000 version-1 events, upcast on read; its baseline is the same log
        written at version 2 (no upcasting), rebuilt alternately in this run."""
        events = self.n(1_000_000)
        result = upcast.measure(self.fresh("w4-upcast"), events=events, rounds=3)
        self.rows.append(
            _row(
                "W4-upcast",
                f"rebuild {events:,} v1 events (floor: same log at v2)",
                result["old_per_second"],
                "events/s",
                floor=result["current_per_second"],
                baseline="the same log at the current version",
            )
        )

    def w5(self) -> None:
        """W5: point queries through the public API."""
        queries = self.n(1_000_000)
        engine = _trio(workloads.engine_query(self.fresh("w5"), queries=queries))
        floor = _trio(floors.floor_query(queries=queries))
        self.rows.append(
            _row("W5", "point query", engine["per_second"], "queries/s", floor=floor["per_second"])
        )

    def w6(self) -> None:
        """W6: from a command's reply until an ``after=`` query sees it."""
        commands = self.n(5_000, 200)
        engine = _trio(workloads.engine_read_your_writes(self.fresh("w6"), commands=commands))
        floor = _trio(floors.floor_read_your_writes(commands=commands))
        for q in ("p50_ms", "p99_ms"):
            self.rows.append(
                _row("W6", q[:3], engine[q], "ms", floor=floor[q], higher_is_better=False)
            )

    def w7(self) -> None:
        """W7: transfers end to end through the transfer process manager, beside the
        peer's process applications (``benchmarks/transfers.py``)."""
        accounts, transfers = self.n(1000, 100), self.n(20_000, 500)
        clients = 64
        engine = _trio(
            transfers_w7.engine_transfers(
                self.fresh("w7"), accounts=accounts, transfers=transfers, clients=clients
            )
        )
        one = _trio(
            transfers_w7.engine_transfers(
                self.fresh("w7-1"), accounts=accounts, transfers=self.n(1_000, 100), clients=1
            )
        )
        peer = None
        if self.peer:
            peer = run_peer_w7(
                str(self.fresh("peer-w7")), accounts=accounts, transfers=self.n(1_000, 100)
            )
        self.rows.append(
            _row(
                "W7",
                "transfers, 64 clients",
                engine["per_second"],
                "transfers/s",
                peer=None if peer is None else peer["per_second"],
                p50_ms=round(engine["p50_ms"], 3),
                p99_ms=round(engine["p99_ms"], 3),
            )
        )
        self.rows.append(
            _row(
                "W7",
                "p99 latency, one client",
                one["p99_ms"],
                "ms",
                peer=None if peer is None else peer["p99_ms"],
                higher_is_better=False,
            )
        )

    def pg(self) -> None:
        """W1 (durable), W3 and W4 on the PostgreSQL log; their floor is the same workload
        on LMDB in the same run (alternating), their peer ``eventsourcing`` on the same
        PostgreSQL server."""
        if self.postgres is None:
            self.skipped.append(
                "PG: skipped, no PostgreSQL server (pass --postgres URL or set "
                "ACTORLOG_BENCH_POSTGRES)"
            )
            return
        quick = self.scale > 1
        results = postgres.compare(
            self.postgres,
            w1_commands=self.n(20_000),
            w3_events=self.n(10_000, 200),
            w4_events=self.n(1_000_000),
            peer_w1_commands=self.n(4_000, 200),
            peer_w4_events=self.n(100_000),
            rounds=1 if quick else 3,
            peer=self.peer,
        )
        lmdb = "(floor: actorlog on LMDB)"
        for r in results:
            peer_note = {"peer_error": r["peer_error"]} if r.get("peer_error") else {}
            if r["workload"] == "W1":
                self.rows.append(
                    _row(
                        "W1-pg",
                        f"durable trio, PostgreSQL {lmdb}",
                        r["postgres_per_second"],
                        "commands/s",
                        floor=r["lmdb_per_second"],
                        peer=r.get("peer_per_second"),
                        sync=True,
                        mean_batch=round(r["postgres_mean_batch"], 1),
                        commit_time_vs_lmdb=round(
                            r["postgres_commit_seconds"] / r["lmdb_commit_seconds"], 2
                        ),
                        commands=r["commands"],
                        peer_commands=r.get("peer_commands"),
                        **peer_note,
                    )
                )
            elif r["workload"] == "W3":
                self.rows.append(
                    _row(
                        "W3-pg",
                        f"cold, {r['events']} events, PostgreSQL {lmdb}",
                        r["postgres_ms"],
                        "ms",
                        floor=r["lmdb_ms"],
                        peer=r.get("peer_ms"),
                        higher_is_better=False,
                        **peer_note,
                    )
                )
            else:
                self.rows.append(
                    _row(
                        "W4-pg",
                        f"rebuild {r['events']:,} events from PostgreSQL {lmdb}",
                        r["postgres_per_second"],
                        "events/s",
                        floor=r["lmdb_per_second"],
                        peer=r.get("peer_per_second"),
                        peer_events=r.get("peer_events"),
                        **peer_note,
                    )
                )


WORKLOADS: dict[str, Callable[[Harness], None]] = {
    "W1": Harness.w1,
    "W1-clients": Harness.w1_sweep,
    "W1-service": Harness.w1_service,
    "W2": Harness.w2,
    "W3": Harness.w3,
    "W4": Harness.w4,
    "W4-upcast": Harness.w4_upcast,
    "W5": Harness.w5,
    "W6": Harness.w6,
    "W7": Harness.w7,
    "PG": Harness.pg,
}


def _table(rows: list[Row]) -> str:
    header = ("workload", "variant", "value", "unit", "vs floor", "vs peer")
    lines = [header]
    for r in rows:
        lines.append(
            (
                r["workload"],
                r["variant"],
                f"{r['value']:,.3f}" if r["value"] < 100 else f"{r['value']:,.0f}",
                r["unit"],
                "-" if r["ratio_vs_floor"] is None else f"{r['ratio_vs_floor']:.2f}x",
                "-" if r["ratio_vs_peer"] is None else f"{r['ratio_vs_peer']:.2f}x",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True))
        for line in lines
    )


def _plot(sweep: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sweep.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("durable commands/s")
    ax.set_title("W1 write throughput vs clients (bank, durable)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the harness; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scale every count down ~20x")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W4")
    parser.add_argument("--json", type=Path, help="write one JSON object per line here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("results/w1_clients.png"),
        help="where to save the W1-vs-clients plot",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the eventsourcing peer")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("ACTORLOG_BENCH_POSTGRES"),
        help="a PostgreSQL server (libpq URL) for PG; default $ACTORLOG_BENCH_POSTGRES",
    )
    args = parser.parse_args(argv)
    if args.postgres is None and args.quick:
        # CI's throwaway server (the tests'); PG at --quick scale takes ~30 s on it.
        args.postgres = os.environ.get("ACTORLOG_TEST_POSTGRES")
    selected = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    unknown = [w for w in selected if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")

    from tqdm import tqdm

    meta = {"versions": _versions(), "cpu": _cpu(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="actorlog-bench-") as tmp:
        harness = Harness(
            Path(tmp), quick=args.quick, peer=not args.no_peer, postgres=args.postgres
        )
        for name in tqdm(selected, desc="workloads", unit="workload", file=sys.stderr):
            WORKLOADS[name](harness)
    rows = [{**row, **meta} for row in harness.rows]
    print(_table(harness.rows))
    for line in harness.skipped:
        print(line)
    print(f"\n{meta['cpu']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    if harness.sweep:
        _plot(harness.sweep, args.plot)
        print(f"plot: {args.plot}")
        rows.append(
            {
                "workload": "W1-clients",
                "variant": "sweep",
                "value": None,
                "unit": "commands/s",
                "ratio_vs_floor": None,
                "ratio_vs_peer": None,
                "points": {
                    k: {str(c): round(v) for c, v in p.items()} for k, p in harness.sweep.items()
                },
                **meta,
            }
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
    return 0
