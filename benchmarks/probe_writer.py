"""Probe: durable appends/s through the group-commit writer vs one transaction per append.

``python -m benchmarks.probe_writer`` runs, in one process and one run, on real LMDB with
``sync=True`` (every acknowledged append fsync'd):

- ``one_txn_per_append``: 64 tasks, each append its own write transaction and fsync (the
  baseline a log without group commit pays);
- ``writer_inline``: the same 64 tasks through :class:`engine.Writer` committing on the event
  loop (how the engine commits).

The writer once could also commit in a worker thread; this probe measured inline 1.19x the
thread, the measurement recorded in ``docs/design.md`` ("Inline commit"), and the threaded
mode was removed.

Each task appends one small event per append to its own stream with its exact expected
version, and waits for the acknowledgement before the next. The variants run interleaved,
``--repeat`` times each (fsync times on a shared disk are noisy); each prints one JSON line
with its median rate and every run's, then one line gives the ratios of the medians, the
versions and the CPU count. ``kib_written_per_commit`` (Linux) counts what LMDB writes per
commit, the cost the key layout in ``engine/_log_lmdb.py`` was chosen to cut. ``--sync off``
shows what the fsync costs; ``--quick`` shortens the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import trio

from actorlog.lowlevel import EventRegistry, Writer
from actorlog.storage import Append, LmdbEventLog

from .bank import Deposited

__all__ = ["main", "run_probe"]

TASKS = 64


def _encoded_event() -> tuple[str, bytes]:
    return EventRegistry([Deposited]).encode(Deposited(1))


def _bytes_written() -> int:
    """Bytes this process has passed to write calls so far (0 where /proc is missing)."""
    try:
        with open("/proc/self/io") as io:
            for line in io:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _run_tasks(per_task: int, append_one: Callable[[str, int], Awaitable[None]]) -> float:
    """Run ``TASKS`` tasks of ``per_task`` appends each; return the wall time in seconds."""

    async def one_task(stream_id: str) -> None:
        for expected in range(per_task):
            await append_one(stream_id, expected)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(TASKS):
            nursery.start_soon(one_task, f"acct-{i}")
    return time.perf_counter() - start


async def _one_txn_per_append(path: str, per_task: int, sync: bool) -> dict[str, Any]:
    event = _encoded_event()
    log = LmdbEventLog(path, sync=sync)
    try:

        async def append_one(stream_id: str, expected: int) -> None:
            outcomes, _ = log.append_batch([Append(stream_id, expected, (event,))])
            if isinstance(outcomes[0], Exception):
                raise outcomes[0]
            # Let the other tasks in, as an awaiting caller would.
            await trio.lowlevel.checkpoint()

        written = _bytes_written()
        seconds = await _run_tasks(per_task, append_one)
        written = _bytes_written() - written
        commits = TASKS * per_task
        assert log.head_position() == commits
    finally:
        log.close()
    return _figures("one_txn_per_append", TASKS * per_task, seconds, commits, written, sync)


async def _through_writer(path: str, per_task: int, sync: bool) -> dict[str, Any]:
    event = _encoded_event()
    log = LmdbEventLog(path, sync=sync)
    try:
        writer = Writer(log)

        async def append_one(stream_id: str, expected: int) -> None:
            await writer.append(Append(stream_id, expected, (event,)))

        written = _bytes_written()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            seconds = await _run_tasks(per_task, append_one)
            writer.close()
        written = _bytes_written() - written
        stats = writer.statistics()
        assert log.head_position() == TASKS * per_task == stats.events
    finally:
        log.close()
    figures = _figures("writer_inline", TASKS * per_task, seconds, stats.commits, written, sync)
    figures["largest_batch"] = stats.largest_batch
    figures["mean_batch"] = round(stats.mean_batch, 1)
    return figures


def _figures(
    variant: str, appends: int, seconds: float, commits: int, written: int, sync: bool
) -> dict[str, Any]:
    return {
        "workload": "probe_writer",
        "variant": variant,
        "tasks": TASKS,
        "appends": appends,
        "seconds": round(seconds, 3),
        "appends_per_s": round(appends / seconds),
        "commits": commits,
        "kib_written_per_commit": round(written / commits / 1024, 1),
        "sync": sync,
    }


async def run_probe(
    *, sync: bool = True, quick: bool = False, repeat: int = 3
) -> list[dict[str, Any]]:
    """Run the variants interleaved, ``repeat`` times each, in fresh log directories.

    Returns one summary per variant: the median run's figures, plus every run's rate.
    """
    writer_per_task = 100 if quick else 800
    baseline_per_task = 5 if quick else 25
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="probe_writer_") as root:
        # Warm up the interpreter, the page cache and the file system.
        await _through_writer(os.path.join(root, "warm"), 20, sync)
        for i in range(repeat):
            for figures in (
                await _one_txn_per_append(os.path.join(root, f"one{i}"), baseline_per_task, sync),
                await _through_writer(os.path.join(root, f"inline{i}"), writer_per_task, sync),
            ):
                runs.setdefault(figures["variant"], []).append(figures)
    results = []
    for variant_runs in runs.values():
        rates = [r["appends_per_s"] for r in variant_runs]
        median = dict(sorted(variant_runs, key=lambda r: r["appends_per_s"])[len(rates) // 2])
        median["appends_per_s"] = round(statistics.median(rates))
        median["runs_appends_per_s"] = rates
        results.append(median)
    return results


def main() -> None:
    """Run the probe and print one JSON line per variant, then the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", choices=["on", "off"], default="on")
    parser.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    args = parser.parse_args()
    sync = args.sync == "on"
    results = trio.run(lambda: run_probe(sync=sync, quick=args.quick, repeat=args.repeat))
    rate = {r["variant"]: r["appends_per_s"] for r in results}
    for r in results:
        print(json.dumps(r), flush=True)
    print(
        json.dumps(
            {
                "workload": "probe_writer",
                "variant": "ratios",
                "writer_inline_vs_one_txn": round(
                    rate["writer_inline"] / rate["one_txn_per_append"], 1
                ),
                "sync": sync,
                "python": platform.python_version(),
                "lmdb": version("lmdb"),
                "msgspec": version("msgspec"),
                "trio": version("trio"),
                "cpus": os.cpu_count(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
