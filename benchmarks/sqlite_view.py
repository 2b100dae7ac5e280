"""W4 into SQLite: rebuilding the bank's balances as SQLite documents, beside the in-memory
view, in one run.

``python -m benchmarks.sqlite_view`` writes a bank log of ``--events`` events (1,000
accounts), then rebuilds from it, in alternating order each round: ``Balances`` (the
in-memory dict, W4 itself) and ``BalanceDocuments`` (a JSON document per account in a fresh
SQLite file, committed with its checkpoint a batch at a time, folded in a worker thread).
It also times a restart of the SQLite view (it resumes at its checkpoint: nothing to
replay). Prints one JSON line: events per second of each (medians over ``--rounds``), and
the ratio SQLite / memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from actorlog import Engine, Projector

from .bank import Account, BalanceDocuments, Balances
from .workloads import write_bank_log

__all__ = ["main"]


async def _rebuild(log: Path, projector: type[Projector]) -> tuple[float, int]:
    """Seconds from open until ``projector`` has applied the whole log, and events applied."""
    started = time.perf_counter()
    async with Engine.open(log, aggregates=[Account], projectors=[projector]) as engine:
        await engine.wait_projected()
        seconds = time.perf_counter() - started
        applied = engine.statistics().projectors[0].applied
    return seconds, applied


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print its JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqlite_view")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20,000 events, 3 rounds")
    args = parser.parse_args(argv)
    events, rounds = (20_000, 3) if args.quick else (args.events, args.rounds)
    memory: list[float] = []
    sqlite: list[float] = []
    resumed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="actorlog-w4-sqlite-") as tmp:
        root = Path(tmp)
        write_bank_log(root / "log", events=events)
        for round_ in range(rounds):
            database = root / f"views-{round_}.sqlite"
            view = BalanceDocuments.at(database)
            order: list[Any] = [Balances, view] if round_ % 2 == 0 else [view, Balances]
            for projector in order:
                seconds, applied = trio.run(_rebuild, root / "log", projector)
                assert applied == events, (applied, events)
                (memory if projector is Balances else sqlite).append(events / seconds)
            seconds, applied = trio.run(_rebuild, root / "log", view)
            assert applied == 0  # resumed at its checkpoint
            resumed.append(seconds)
    row = {
        "workload": "W4-sqlite",
        "events": events,
        "rounds": rounds,
        "memory_events_per_s": round(statistics.median(memory)),
        "sqlite_events_per_s": round(statistics.median(sqlite)),
        "ratio_sqlite_to_memory": round(statistics.median(sqlite) / statistics.median(memory), 3),
        "sqlite_restart_ms": round(statistics.median(resumed) * 1e3, 1),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
