"""The child of the transfer torture: transfers on a real LMDB log until SIGKILLed.

    python -m tests.engine.transfer_torture_child DIR SEED NOW [--verify-only]

On open it waits for the transfer process manager to settle, then prints one line,
``v <money> <applied twice> <unfinished> <transfers>``: the sum of every balance, how many
transfers were credited or refunded more than once, how many debited transfers have no
outcome yet, and how many were debited in all. Then (unless ``--verify-only``) clients
send transfers between the accounts (two of them closed: those are refunded) until the
parent kills it. Deadlines run on a clock set to ``NOW`` (seconds since the epoch, moved
forward by the parent between rounds), so transfers caught by a kill time out in a later
round, racing the credit the restart sends again.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import trio

from actorlog import Engine, Overloaded, Projector, Recorded, Rejected, applies
from actorlog.testing import FakeClock
from benchmarks.bank import (
    Balances,
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    TransferAccount,
    TransferCredited,
    TransferDebited,
    TransferProcess,
    TransferRefunded,
)

ACCOUNTS = 12
START = 1_000
CLOSED = ("acct-10", "acct-11")


class Audit(Projector):
    """How often each transfer was debited, credited and refunded."""

    def __init__(self) -> None:
        self.debited: set[str] = set()
        self.outcomes: dict[str, int] = {}

    @applies
    def debited_(self, e: TransferDebited) -> None:
        self.debited.add(e.transfer_id)

    @applies
    def credited(self, e: TransferCredited, meta: Recorded) -> None:
        self.outcomes[e.transfer_id] = self.outcomes.get(e.transfer_id, 0) + 1

    @applies
    def refunded(self, e: TransferRefunded) -> None:
        self.outcomes[e.transfer_id] = self.outcomes.get(e.transfer_id, 0) + 1

    def report(self) -> tuple[int, int, int]:
        twice = sum(1 for n in self.outcomes.values() if n > 1)
        unfinished = sum(1 for t in self.debited if t not in self.outcomes)
        return twice, unfinished, len(self.debited)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write: a kill never tears a line


async def main(directory: Path, seed: int, now: float, verify_only: bool) -> None:
    rng = random.Random(seed)
    async with Engine.open(
        directory,
        aggregates=[TransferAccount],
        projectors=[Balances, Audit],
        process_managers=[TransferProcess],
        clock=FakeClock(now),
    ) as engine:
        if not engine.log.read_stream("acct-0"):
            for i in range(ACCOUNTS):
                account = f"acct-{i}"
                await engine.send(TransferAccount, account, OpenAccount(account))
                await engine.send(TransferAccount, account, Deposit(START))
            for account in CLOSED:
                await engine.send(TransferAccount, account, CloseAccount())
        await engine.wait_settled()
        await engine.wait_projected()
        money = sum((await engine.query(Balances.all_balances)).values())
        twice, unfinished, total = await engine.query(Audit.report)
        _say(f"v {money} {twice} {unfinished} {total}")
        if verify_only:
            return

        async def client(number: int) -> None:
            for i in range(1_000_000):
                source, target = rng.sample(range(ACCOUNTS), 2)
                transfer = Transfer(
                    f"{seed}-{number}-{i}", f"acct-{source}", f"acct-{target}", rng.randint(1, 60)
                )
                try:
                    await engine.send(TransferAccount, transfer.source, transfer)
                except (Rejected, Overloaded):
                    await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            for number in range(8):
                nursery.start_soon(client, number)
            await trio.sleep(30)  # never outlive the parent for long
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(
        main, Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), "--verify-only" in sys.argv
    )
