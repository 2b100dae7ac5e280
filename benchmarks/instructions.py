"""Instructions per W1 command and per W4 event, on two source trees: a deterministic A/B.

``python -m benchmarks.instructions --base /path/to/old/checkout`` counts, with valgrind's
callgrind (``apt-get install valgrind``), the instructions this tree and the old one
execute per W1 command (``sync=False``, views on), per W4 rebuilt event and per W3 engine
open with one cold activation of a 10,000-event account (``--only`` picks). Each figure is
the difference of two runs of different sizes divided by the difference in size, so setup
and imports cancel out. Unlike wall-clock time on a shared VM, the counts repeat to within
~0.1% (``PYTHONHASHSEED`` is pinned, and so is the projectors' time-adaptive batch size:
under callgrind's slowdown it would shrink batches and count work that timing decided).
Instructions are not seconds, but a ratio of them is the steadiest A/B this machine gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]

_W1 = """
import sys, tempfile, pathlib, trio
sys.path.insert(0, sys.argv[1])
from benchmarks import workloads
with tempfile.TemporaryDirectory() as tmp:
    trio.run(lambda: workloads.engine_write_throughput(pathlib.Path(tmp), accounts=1000,
             commands=int(sys.argv[2]), clients=64, sync=False, seed=1))
"""

_W4_LOG = """
import sys, pathlib
sys.path.insert(0, sys.argv[1])
from benchmarks import workloads
workloads.write_bank_log(pathlib.Path(sys.argv[2]), events=int(sys.argv[3]))
"""

_W4 = """
import sys, pathlib, trio
sys.path.insert(0, sys.argv[1])
if (pathlib.Path(sys.argv[1]) / "actorlog").is_dir():
    from actorlog import Engine
    try:
        import actorlog.engine._projectors as hosting
    except ImportError:
        import actorlog.engine._projections as hosting
else:  # a tree from before the actorlog namespace: never an actorlog installed elsewhere
    from engine import Engine
    import engine._projections as hosting
hosting.SLICE = 1e9  # batch sizes by count only
from benchmarks.bank import Account, Balances
async def main():
    async with Engine.open(pathlib.Path(sys.argv[2]), aggregates=[Account],
                           projectors=[Balances]) as engine:
        await engine.wait_projected()
trio.run(main)
"""

# W3: a log holding one account of argv[3] events (written outside callgrind), then argv[3]
# engine opens, each activating it cold (a withdrawal too large: rejected, nothing commits).
_W3_LOG = """
import sys, pathlib, trio
sys.path.insert(0, sys.argv[1])
if (pathlib.Path(sys.argv[1]) / "actorlog").is_dir():
    from actorlog import Engine
else:  # a tree from before the actorlog namespace: never an actorlog installed elsewhere
    from engine import Engine
from benchmarks.bank import Account, OpenAccount, Deposit
async def main():
    async with Engine.open(pathlib.Path(sys.argv[2]), aggregates=[Account], sync=False) as e:
        await e.send(Account, "acct-big", OpenAccount("big"))
        for _ in range(int(sys.argv[3]) // 64):
            for pending in [e.send_nowait(Account, "acct-big", Deposit(1)) for _ in range(64)]:
                await pending
trio.run(main)
"""

_W3 = """
import sys, pathlib, trio, contextlib
sys.path.insert(0, sys.argv[1])
if (pathlib.Path(sys.argv[1]) / "actorlog").is_dir():
    from actorlog import Engine, Rejected
else:  # a tree from before the actorlog namespace: never an actorlog installed elsewhere
    from engine import Engine, Rejected
from benchmarks.bank import Account, Withdraw
async def main():
    for _ in range(int(sys.argv[3])):
        async with Engine.open(pathlib.Path(sys.argv[2]), aggregates=[Account]) as engine:
            with contextlib.suppress(Rejected):
                await engine.send(Account, "acct-big", Withdraw(10**12))
trio.run(main)
"""


def _instructions(script: str, *args: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                script,
                *args,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            cwd=tmp,  # never the repository: its packages must not shadow the tree's
        )
        for line in out.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no summary")


def per_command(tree: Path, small: int, large: int) -> float:
    """W1 instructions per command on ``tree``."""
    a = _instructions(_W1, str(tree), str(small))
    b = _instructions(_W1, str(tree), str(large))
    return (b - a) / (large - small)


def per_event(tree: Path, small: int, large: int) -> float:
    """W4 instructions per rebuilt event on ``tree`` (each tree writes its own logs)."""
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, large):
            log = Path(tmp) / f"log-{n}"
            subprocess.run([sys.executable, "-c", _W4_LOG, str(tree), str(log), str(n)], check=True)
            counts.append(_instructions(_W4, str(tree), str(log)))
            shutil.rmtree(log)
    return (counts[1] - counts[0]) / (large - small)


def per_activation(tree: Path, small: int, large: int) -> float:
    """W3 instructions per engine open and cold activation of a 10,000-event account."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        subprocess.run([sys.executable, "-c", _W3_LOG, str(tree), str(log), "10000"], check=True)
        a = _instructions(_W3, str(tree), str(log), str(small))
        b = _instructions(_W3, str(tree), str(log), str(large))
    return (b - a) / (large - small)


def main(argv: list[str] | None = None) -> int:
    """Run the A/B; prints one JSON line a workload."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the old source tree")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--only", default="", help="W1, W4 and/or W3, comma-separated")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    scale = 10 if args.quick else 1
    for name, measure, small, large in (
        ("W1", per_command, 2_000 // scale, 12_000 // scale),
        ("W4", per_event, 20_000 // scale, 220_000 // scale),
        ("W3", per_activation, 1, 1 + max(1, 5 // scale)),
    ):
        if args.only and name not in args.only.split(","):
            continue
        old = measure(args.base, small, large)
        new = measure(args.new, small, large)
        print(
            json.dumps(
                {
                    "workload": name,
                    "unit": {
                        "W1": "instructions a command",
                        "W4": "instructions an event",
                        "W3": "instructions an engine open + cold activation (10,000 events)",
                    }[name],
                    "old": round(old),
                    "new": round(new),
                    "ratio_old_over_new": round(old / new, 3),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
