"""W7 on several engine processes of one PostgreSQL log: transfers end to end while one
node (the lease's holder) runs the transfer process manager for all of them.

``python -m benchmarks.transfer_nodes --dsn postgresql://user@host/db`` runs, in each
round, the same transfers with 1 and with 3 engine processes on a fresh schema (every
engine ``shared=True``, each hosting ``TransferAccount`` and ``TransferProcess``; each
transfer sent to a random process): the debits are spread over the processes, the
process manager's steps and its credits are decided by the leader alone. Throughput is
transfers over the time from the first send until the last credit is in the log. Rounds
alternate the two; one JSON line with the medians and the ratio 3 / 1. ``--quick``
scales the counts down.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread

from actorlog import ConcurrencyError, Engine
from actorlog.storage import PostgresEventLog

from ._child import Child, heard, say
from .bank import Deposit, OpenAccount, Transfer, TransferAccount, TransferProcess

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


async def _child(dsn: str, schema: str) -> None:
    """One node: open the engine, then run the transfers it is told, until stdin ends."""
    log = PostgresEventLog(dsn, schema=schema, shared=True)
    async with Engine.open(
        log=log, aggregates=[TransferAccount], process_managers=[TransferProcess]
    ) as engine:
        say({"ready": True})
        while True:
            request = await heard()
            if request is None:
                return
            if request["op"] == "open":
                for account in request["accounts"]:
                    await engine.send(TransferAccount, account, OpenAccount(account))
                    await engine.send(TransferAccount, account, Deposit(1_000_000))
                say({"opened": True})
            elif request["op"] == "leads":
                say({"leads": engine.statistics().process_managers[0].leader})
            else:

                async def client(todo: Iterator[list[str]]) -> None:
                    for transfer_id, source, target in todo:
                        command = Transfer(transfer_id, source, target, 1)
                        while True:
                            try:
                                await engine.send(TransferAccount, source, command)
                                break
                            except ConcurrencyError:
                                continue

                todo = iter(request["transfers"])
                async with anyio.create_task_group() as tg:
                    for _ in range(request["clients"]):
                        tg.start_soon(client, todo)
                say({"sent": True})


class _Node(Child):
    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__("benchmarks.transfer_nodes", "--child", dsn, schema)

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait(timeout=60) != 0:
            raise RuntimeError("a node failed")


def _credits(dsn: str, schema: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM \"{schema}\".events WHERE type = 'TransferCredited'"
        ).fetchone()
    return int(row[0]) if row else 0


def w7_round(dsn: str, processes: int, transfers: int, accounts: int, clients: int) -> float:
    """Transfers a second with ``processes`` nodes (a fresh schema, dropped after)."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    PostgresEventLog(dsn, schema=schema, shared=True).close()  # the tables, before the race
    nodes = [_Node(dsn, schema) for _ in range(processes)]
    try:
        for node in nodes:
            node.hear()
        names = [f"acct-{i}" for i in range(accounts)]
        nodes[0].tell({"op": "open", "accounts": names})
        nodes[0].hear()
        while True:  # one node leads before the clock starts
            for node in nodes:
                node.tell({"op": "leads"})
            if sum(node.hear()["leads"] for node in nodes) == 1:
                break
            time.sleep(0.05)
        rng = random.Random(20261201)
        shares: list[list[tuple[str, str, str]]] = [[] for _ in nodes]
        for n in range(transfers):
            source, target = rng.sample(names, 2)
            shares[rng.randrange(processes)].append((f"t-{n}", source, target))
        started = time.perf_counter()
        for node, share in zip(nodes, shares, strict=True):
            node.tell({"op": "send", "transfers": share, "clients": max(1, clients // processes)})
        for node in nodes:
            node.hear()
        while _credits(dsn, schema) < transfers:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        for node in nodes:
            node.finish()
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return transfers / elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; print one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        anyio.run(_child, argv[1], argv[2], backend="trio")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer_nodes")
    parser.add_argument("--dsn", required=True, help="a PostgreSQL URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args(argv)
    transfers = 1_000 if args.quick else 5_000
    rates: dict[int, list[float]] = {1: [], 3: []}
    for _ in range(args.rounds):
        for processes in (1, 3):
            rates[processes].append(
                w7_round(args.dsn, processes, transfers, accounts=1_000, clients=48)
            )
    one, three = (statistics.median(rates[p]) for p in (1, 3))
    print(
        json.dumps(
            {
                "workload": "W7 on nodes (PostgreSQL, shared)",
                "transfers": transfers,
                "transfers_per_s_1": round(one, 1),
                "transfers_per_s_3": round(three, 1),
                "ratio_3_over_1": round(three / one, 3),
                "rounds": {str(p): [round(r, 1) for r in rates[p]] for p in rates},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
