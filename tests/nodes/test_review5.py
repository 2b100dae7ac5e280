"""Adversarial tests of session 5's changes to the shared PostgreSQL log (review5): the
rejection confirmed by a probe in the group commit, the NOTIFY inside the commit, the
statements made bytes with the head read beside the versions, and the engine's own
batches held back until the follower has read others' events before them.

Another process is a second writer of the same schema: a ``PostgresEventLog(shared=True)``
appending synchronously right before the engine acts (its follower cannot have read it),
or another engine on the schema. Real server (skipped without ``ACTORLOG_TEST_POSTGRES``).
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from actorlog import Engine, Rejected
from benchmarks.bank import Account, Balances, Deposit, Deposited, InsufficientFunds, Withdraw
from tests.support import Postgres

from .rival import amounts, append


# -- own batches held back (483cf5a) ---------------------------------------------------------


async def own_commit_is_projected_by_wait_projected(postgres: Postgres) -> None:
    # Read-your-writes: after `send` is acknowledged, `wait_projected()` (the head as this
    # engine knows it) must cover it, as it does on a log only this engine writes.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(
        log=postgres.log(schema, shared=True), aggregates=[Account], projectors=[Balances]
    ) as engine:
        for n in range(1, 6):
            append(rival, "other", Deposited(100))  # not read by the follower yet
            await engine.send(Account, "acct", Deposit(5))
            with anyio.fail_after(10):
                await engine.wait_projected()
            assert await engine.query(Balances.balance, "acct") == 5 * n


async def test_wait_projected_covers_an_own_commit_held_back(postgres: Postgres) -> None:
    await own_commit_is_projected_by_wait_projected(postgres)


def test_wait_projected_covers_an_own_commit_held_back_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(own_commit_is_projected_by_wait_projected(postgres))
