"""A short bank demo on the embedded LMDB default: open accounts, move money, read views."""

from __future__ import annotations

import tempfile
import time

import trio

from actorlog import Engine, Rejected

from .bank import Account, Balances, Deposit, OpenAccount, Totals, Withdraw


async def demo(accounts: int = 100, commands: int = 5_000, clients: int = 16) -> None:
    """Run the bank workload briefly and print what the views say."""
    with tempfile.TemporaryDirectory() as path:
        async with Engine.open(path, aggregates=[Account], projectors=[Balances, Totals]) as engine:
            for n in range(accounts):
                await engine.send(Account, f"acct-{n}", OpenAccount(f"owner-{n}"))
            rejected = 0
            started = time.perf_counter()

            async def client(c: int) -> None:
                nonlocal rejected
                for k in range(commands // clients):
                    account = f"acct-{(c * 7919 + k * 31) % accounts}"
                    command = Deposit(10) if k % 3 else Withdraw(15)
                    try:
                        await engine.send(Account, account, command)
                    except Rejected:
                        rejected += 1

            async with trio.open_nursery() as nursery:
                for c in range(clients):
                    nursery.start_soon(client, c)
            seconds = time.perf_counter() - started
            await engine.wait_projected()
            net = await engine.query(Totals.net)
            balances = await engine.query(Balances.all_balances)
            print(
                f"{commands // clients * clients} commands in {seconds:.2f} s "
                f"({commands / seconds:,.0f}/s durable), {rejected} rejected"
            )
            print(f"sum of balances {sum(balances.values())} == deposits - withdrawals {net}")
            print(engine.statistics().writer)


def main() -> None:
    """Entry point of ``python -m benchmarks.demo``."""
    trio.run(demo)


if __name__ == "__main__":
    main()
