"""A/B: the same workloads on two source trees, interleaved in one run, reported as ratios.

``python -m benchmarks.ab --base /path/to/old/checkout`` runs W1 (durable and ``sync=False``)
and W4 (``--only`` picks among those and W3, one activation cold or from a snapshot) on the
old tree and on this one, alternating ``--rounds`` times, each run in a fresh
subprocess that imports the tree's own ``engine``/``actors``/``benchmarks``; it prints the
medians and the ratio new/old (above 1: the new code is faster). Make the old tree with
``git worktree add /tmp/base <commit>``. Interleaving spreads the machine's drift over
both sides, which is why a figure is only ever quoted as a ratio from one such run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["main"]

# One workload run in a child: its tree is first on sys.path, so its own packages load.
_CHILD = """
import json, sys, tempfile, pathlib, trio
sys.path.insert(0, sys.argv[1])
from benchmarks import workloads
name, quick = sys.argv[2], sys.argv[3] == "1"
with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    if name.startswith("W1"):
        result = trio.run(lambda: workloads.engine_write_throughput(
            root, accounts=1000, commands=20_000 if quick else 100_000, clients=64,
            sync=name == "W1", seed=1))
    elif name == "W4":
        result = trio.run(lambda: workloads.engine_rebuild(
            root, events=100_000 if quick else 1_000_000))
    elif name.startswith("W3"):
        timings = trio.run(lambda: workloads.engine_rehydrate(
            root, events=2_000 if quick else 10_000))
        # Activations per second (the best of five, as the harness reports W3).
        key = "snapshot_ms" if name == "W3-snapshot" else "cold_ms"
        result = {"per_second": 1e3 / timings[key]}
    else:
        raise SystemExit(f"unknown workload {name}")
print(json.dumps(result))
"""

WORKLOADS = {
    "W1": "W1 durable, commands/s",
    "W1-nosync": "W1 sync=False, commands/s",
    "W3": "W3 cold activation of 10,000 events, activations/s",
    "W3-snapshot": "W3 activation from a snapshot, activations/s",
    "W4": "W4 rebuild, events/s",
}


def _run(tree: Path, name: str, quick: bool) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), name, "1" if quick else "0"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # never the repository: its packages must not shadow
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the A/B; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the old source tree")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rounds", type=int, default=5, help="pairs per workload (median)")
    parser.add_argument("--only", default="W1,W4", help=f"from {', '.join(WORKLOADS)}")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}")
    for name in names:
        old: list[float] = []
        new: list[float] = []
        for i in range(args.rounds):
            # Alternate which side goes first, so a drift within a round favours neither.
            order = [(args.base, old), (args.new, new)]
            for tree, into in order if i % 2 == 0 else reversed(order):
                into.append(_run(tree, name, args.quick)["per_second"])
        ratios = [n / o for n, o in zip(new, old, strict=True)]
        line = {
            "workload": name,
            "what": WORKLOADS[name],
            "old_median": round(statistics.median(old)),
            "new_median": round(statistics.median(new)),
            "ratio_of_medians": round(statistics.median(new) / statistics.median(old), 3),
            "pair_ratios": [round(r, 3) for r in ratios],
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
