"""A node process of the process-manager node tests: an engine hosting the bank's
transfers (``TransferAccount``, ``TransferProcess``) on a shared PostgreSQL log, driven by
JSON lines on stdin, answering one JSON line each on stdout.

    python -m tests.nodes.pm_node URL SCHEMA trio|asyncio lease|always

``always`` gives this node a lease of its own (a test-only switch: the lease's key is
patched), so it runs the process managers whatever the other nodes do.

Requests (``op`` and its arguments):

- ``open`` accounts, amount: open each account and deposit ``amount``.
- ``transfers`` ids, accounts, concurrency, refused: one transfer of 1 per id between two
  random accounts (to an account never opened for the ids in ``refused``); answers the
  ids acknowledged.
- ``load`` streams (accounts), concurrency: transfers of 1 between random accounts until a
  ``stop`` line (or a kill), one line ``{"ack": [transfer id, position]}`` each, then
  ``{"stopped": count}``.
- ``stats``: this engine's process-manager statistics.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from actorlog import ConcurrencyError, Engine
from actorlog.engine import _pg_lease
from actorlog.storage import PostgresEventLog
from benchmarks._child import say
from benchmarks.bank import Deposit, OpenAccount, Transfer, TransferAccount, TransferProcess
from tests.nodes.node import serve


async def transfer(
    engine: Engine, transfer_id: str, accounts: list[str], *, refused: bool = False
) -> int:
    """One transfer of 1 between two random accounts (to an account never opened if
    ``refused``: its credit is refused, and it is refunded), its id its command id (a
    re-send after a conflict is answered from the log if the first one committed)."""
    source, target = random.sample(accounts, 2)
    if refused:
        target = "nowhere"
    while True:
        try:
            done = await engine.send(
                TransferAccount,
                source,
                Transfer(transfer_id, source, target, 1),
                command_id=transfer_id,
            )
            return done.position
        except ConcurrencyError:
            continue


async def load(engine: Engine, accounts: list[str], concurrency: int) -> dict[str, Any]:
    count = 0
    prefix = f"t{os.getpid()}-"

    async def worker(n: int) -> None:
        nonlocal count
        for i in range(10**9):
            transfer_id = f"{prefix}{n}-{i}"
            position = await transfer(engine, transfer_id, accounts)
            count += 1
            say({"ack": [transfer_id, position]})

    async with anyio.create_task_group() as nursery:
        for n in range(concurrency):
            nursery.start_soon(worker, n)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "stop"
        nursery.cancel_scope.cancel()
    return {"stopped": count}


async def handle(engine: Engine, request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    if op == "open":
        for account in request["accounts"]:
            await engine.send(TransferAccount, account, OpenAccount(account))
            await engine.send(TransferAccount, account, Deposit(request["amount"]))
        return {"opened": len(request["accounts"])}
    if op == "transfers":
        acked: list[str] = []
        todo = iter(request["ids"])
        refused = set(request.get("refused", ()))

        async def worker() -> None:
            for transfer_id in todo:
                await transfer(
                    engine, transfer_id, request["accounts"], refused=transfer_id in refused
                )
                acked.append(transfer_id)

        async with anyio.create_task_group() as nursery:
            for _ in range(request["concurrency"]):
                nursery.start_soon(worker)
        return {"acked": acked}
    if op == "stats":
        return {"stats": msgspec.to_builtins(engine.statistics().process_managers)}
    raise ValueError(f"unknown op {op!r}")


async def main(url: str, schema: str, mode: str) -> None:
    if mode == "always":
        key = _pg_lease.lease_key
        _pg_lease.lease_key = lambda schema, name: key(schema, f"{name} {os.getpid()}")
    log = PostgresEventLog(url, schema=schema, shared=True)
    async with Engine.open(
        log=log, aggregates=[TransferAccount], process_managers=[TransferProcess]
    ) as engine:
        await serve(engine, handle, load)


if __name__ == "__main__":
    url, schema, backend, mode = sys.argv[1:5]
    anyio.run(main, url, schema, mode, backend=backend)
