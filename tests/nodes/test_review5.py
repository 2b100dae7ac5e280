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
from typing import Any

import anyio
import pytest

from actorlog import Engine, Projector, Recorded, Rejected
from actorlog.actors import applies
from benchmarks.bank import (
    Account,
    Balances,
    Deposit,
    Deposited,
    InsufficientFunds,
    Withdraw,
    Withdrawn,
)
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


class Positions(Projector):
    """Every account event's position, in the order the projector applied them."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.seen.append(meta.position)

    @applies
    def withdrawn(self, e: Withdrawn, meta: Recorded) -> None:
        self.seen.append(meta.position)

    def positions(self) -> list[int]:
        return list(self.seen)


async def interleave(postgres: Postgres, rounds: int) -> None:
    """Two engines (aggregates + a projector each) and a raw writer interleave single and
    multi-event appends, send and pipelined send_nowait; every projector must apply every
    position exactly once, in order."""
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    kinds: dict[str, Any] = {"aggregates": [Account], "projectors": [Positions]}
    async with (
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as a,
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as b,
    ):

        async def load(engine: Engine, name: str) -> None:
            for n in range(rounds):
                append(rival, f"r{n % 3}", Deposited(1), Deposited(2), Deposited(3))
                await engine.send(Account, f"{name}{n % 2}", Deposit(1))
                pendings = [engine.send_nowait(Account, f"{name}p", Deposit(1)) for _ in range(3)]
                append(rival, "shared", Deposited(1))
                for pending in pendings:
                    await pending
                if n % 4 == 0:
                    await anyio.sleep(0.002)

        async with anyio.create_task_group() as tg:
            tg.start_soon(load, a, "a")
            tg.start_soon(load, b, "b")
        head = rival.head_position()
        for engine in (a, b):
            with anyio.fail_after(20):
                await engine.wait_projected(head)
            seen = await engine.query(Positions.positions)
            assert seen[:head] == list(range(1, head + 1))


async def test_projectors_see_every_position_once_in_order(postgres: Postgres) -> None:
    await interleave(postgres, 30)


async def test_projectors_in_order_across_small_read_batches_and_held_overflow(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actorlog.engine import _follow

    monkeypatch.setattr(_follow, "READ_BATCH", 4)
    monkeypatch.setattr(_follow, "HELD_EVENTS", 3)
    await interleave(postgres, 30)


def test_projectors_see_every_position_once_in_order_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(interleave(postgres, 15))
