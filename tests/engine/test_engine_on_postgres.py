"""The engine end to end on the PostgreSQL log, on trio and on asyncio: commands, queries
that read their own writes, a retried command id, a rejection, and a restart on the same
schema (skipped without ``ACTORLOG_TEST_POSTGRES``)."""

from __future__ import annotations

import asyncio

import trio

from actorlog import Committed, Engine
from benchmarks.bank import Account, Balances, Deposit, InsufficientFunds, OpenAccount, Withdraw
from tests.support import Postgres


async def bank_on_postgres(postgres: Postgres) -> None:
    schema = postgres.schema()
    accounts = [f"acct-{i}" for i in range(20)]
    async with Engine.open(
        log=postgres.log(schema), aggregates=[Account], projectors=[Balances]
    ) as engine:
        for account in accounts:
            await engine.send(Account, account, OpenAccount("ann"))
        for round_ in range(5):
            for i, account in enumerate(accounts):
                done = await engine.send(Account, account, Deposit(i + round_ + 1))
        assert await engine.query(Balances.balance, "acct-3", after=done.position) == 5 * 4 + 10
        # A retried command id is answered from the log, not run again.
        first = await engine.send(Account, "acct-0", Deposit(7), command_id="retry-1")
        again = await engine.send(Account, "acct-0", Deposit(7), command_id="retry-1")
        assert again == first == Committed("acct-0", 7, first.position, 1)
        try:
            await engine.send(Account, "acct-1", Withdraw(10_000))
        except InsufficientFunds:
            pass
        else:
            raise AssertionError("an overdraft was not rejected")
        balances = await engine.query(Balances.all_balances, after=again.position)
        head = engine.log.head_position()
    assert head == 20 + 100 + 1
    # A restart on the same schema: the aggregates and the view come back from the log.
    async with Engine.open(
        log=postgres.log(schema), aggregates=[Account], projectors=[Balances]
    ) as engine:
        assert await engine.query(Balances.all_balances) == balances
        after = await engine.send(Account, "acct-0", Deposit(1))
        assert after == Committed("acct-0", 8, head + 1, 1)
        again = await engine.send(Account, "acct-0", Deposit(7), command_id="retry-1")
        assert again == first
        assert await engine.query(Balances.balance, "acct-0", after=after.position) == (
            balances["acct-0"] + 1
        )


async def test_the_engine_runs_on_postgres_under_trio(postgres: Postgres) -> None:
    with trio.fail_after(30):
        await bank_on_postgres(postgres)


def test_the_engine_runs_on_postgres_under_asyncio(postgres: Postgres) -> None:
    asyncio.run(asyncio.wait_for(bank_on_postgres(postgres), 30))
