"""W7: transfers end to end through the transfer process manager, beside the peer.

A transfer is a ``Transfer`` sent to the source account (the debit), then the process
manager's step (the credit decided, a 30 s deadline set) and the credit, then its closing
step (the deadline cancelled). Its latency runs from the ``send`` until the credit reaches
a projector (it has landed); throughput is transfers over the time until the last credit
lands. Throughput is measured with 64 clients; latency also with one client sending one
transfer at a time, as the peer runs (with 64 clients it is mostly queueing: clients debit
faster than transfers complete). ``python -m benchmarks.transfers`` prints one JSON line;
the harness runs it as W7.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from actorlog import Engine, Projector, applies

from ._peer_transfers import run_peer_w7
from .bank import Deposit, OpenAccount, Transfer, TransferAccount, TransferCredited, TransferProcess

__all__ = ["engine_transfers", "main"]


class Arrivals(Projector):
    """When each transfer's credit reached the read side (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    @applies
    def credited(self, e: TransferCredited) -> None:
        self.at[e.transfer_id] = time.perf_counter()

    def times(self) -> dict[str, float]:
        """Every arrival so far."""
        return self.at


async def engine_transfers(
    path: Path, *, accounts: int, transfers: int, clients: int, sync: bool = True
) -> dict[str, Any]:
    """Run ``transfers`` transfers from ``clients`` concurrent clients; the figures."""
    rng = random.Random(20261130)
    started: dict[str, float] = {}
    async with Engine.open(
        path,
        aggregates=[TransferAccount],
        projectors=[Arrivals],
        process_managers=[TransferProcess],
        sync=sync,
    ) as engine:

        async def open_account(i: int) -> None:
            await engine.send(TransferAccount, f"acct-{i}", OpenAccount("owner"))
            await engine.send(TransferAccount, f"acct-{i}", Deposit(10**9))

        async with trio.open_nursery() as nursery:  # concurrently: group commits
            for i in range(accounts):
                nursery.start_soon(open_account, i)
        await engine.wait_settled()
        per_client = transfers // clients

        async def client(number: int) -> None:
            for i in range(per_client):
                source, target = rng.sample(range(accounts), 2)
                tid = f"t-{number}-{i}"
                started[tid] = time.perf_counter()
                await engine.send(
                    TransferAccount,
                    f"acct-{source}",
                    Transfer(tid, f"acct-{source}", f"acct-{target}", 1),
                )

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for number in range(clients):
                nursery.start_soon(client, number)
        await engine.wait_settled()
        await engine.wait_projected()
        arrivals = await engine.query(Arrivals.times)
    assert set(arrivals) == set(started), "a transfer's credit did not land"
    latencies = sorted(arrivals[t] - started[t] for t in started)
    seconds = max(arrivals.values()) - began
    return {
        "per_second": len(started) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    """W7 once: the engine (durable, trio) beside the peer, as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--peer-transfers", type=int, default=1_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(run_w7(args.accounts, args.transfers, args.peer_transfers, args.clients)))
    return 0


def run_w7(accounts: int, transfers: int, peer_transfers: int, clients: int) -> dict[str, Any]:
    """W7 once: the engine with ``clients`` clients and with one, and the peer."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for name in ("engine", "engine-1", "peer"):
            (root / name).mkdir()
        engine = trio.run(
            lambda: engine_transfers(
                root / "engine", accounts=accounts, transfers=transfers, clients=clients
            )
        )
        one = trio.run(
            lambda: engine_transfers(
                root / "engine-1", accounts=accounts, transfers=peer_transfers, clients=1
            )
        )
        peer = run_peer_w7(str(root / "peer"), accounts=accounts, transfers=peer_transfers)
    return {
        "workload": "W7",
        "engine": {k: round(v, 3) for k, v in engine.items()},
        "engine_one_client": {k: round(v, 3) for k, v in one.items()},
        "peer": {k: round(v, 3) for k, v in peer.items()},
        "throughput_vs_peer": round(engine["per_second"] / peer["per_second"], 2),
        "p99_vs_peer_one_client": round(peer["p99_ms"] / one["p99_ms"], 2),
        "sync": True,
    }


if __name__ == "__main__":
    raise SystemExit(main())
