"""The child of ``tests/engine/test_sqlite_view_crash.py``: a bank engine with a
``BalanceDocuments`` SQLite view, taking deposits until killed.

    python -m tests.engine.sqlite_view_child LOG DATABASE SEED

Opens (or continues) the LMDB log at LOG with the view in DATABASE, prints ``ready`` once
the view has caught up, then runs 8 tasks sending deposits (and now and then a
withdrawal) to 50 accounts, printing ``committed POSITION`` after every 50 commands. The
view commits as the engine goes (live batches, a SQLite transaction each). Half the time
it rebuilds the view once on the way, so a kill can land in a rebuild too. A guard ends
it after 20 s, so a parent that never kills it cannot leave it running.
"""

from __future__ import annotations

import random
import sys

import trio

from actorlog import Engine, Rejected
from benchmarks.bank import Account, BalanceDocuments, Deposit, OpenAccount, Withdraw

GUARD_SECONDS = 20
ACCOUNTS = 50


async def main(log: str, database: str, seed: int) -> None:
    view = BalanceDocuments.at(database)
    rng = random.Random(seed)
    with trio.move_on_after(GUARD_SECONDS):
        async with Engine.open(log, aggregates=[Account], projectors=[view]) as engine:
            for n in range(ACCOUNTS):
                if engine.log.stream_version(f"acct-{n}") == 0:
                    await engine.send(Account, f"acct-{n}", OpenAccount(f"owner-{n}"))
            print("ready", flush=True)
            if rng.random() < 0.5:
                engine.rebuild(view)
            sent = 0

            async def client(task: int) -> None:
                nonlocal sent
                own = random.Random(seed * 100 + task)
                while True:
                    account = f"acct-{own.randrange(ACCOUNTS)}"
                    command = Withdraw(3) if own.random() < 0.2 else Deposit(own.randint(1, 9))
                    try:
                        ack = await engine.send(Account, account, command)
                    except Rejected:
                        continue
                    sent += 1
                    if sent % 50 == 0:
                        print(f"committed {ack.position}", flush=True)

            async with trio.open_nursery() as nursery:
                for task in range(8):
                    nursery.start_soon(client, task)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
