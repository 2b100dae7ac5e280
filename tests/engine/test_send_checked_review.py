"""Command ids looked up off the loop on PostgreSQL (``send_checked``, issue 14): many
concurrent sends of one command id, on a cold stream and a live one, some of them
cancelled mid-lookup, decide it once; every answer is the one append (review)."""

from __future__ import annotations

import random

import anyio
import pytest

from actorlog import Engine
from benchmarks.bank import Account, Deposit, OpenAccount
from tests.support import Postgres


async def _scenario(postgres: Postgres, cold: bool) -> None:
    schema = postgres.schema()
    rng = random.Random(7)
    for round_ in range(4):
        account = f"acct-{round_}"
        if cold:  # the stream exists; the engine that sends has never loaded it
            async with Engine.open(log=postgres.log(schema), aggregates=[Account]) as engine:
                await engine.send(Account, account, OpenAccount("o"))
        async with Engine.open(log=postgres.log(schema), aggregates=[Account]) as engine:
            if not cold:
                await engine.send(Account, account, OpenAccount("o"))
            answers: list[object] = []

            async def one(
                engine: Engine = engine, account: str = account, answers: list[object] = answers
            ) -> None:
                answers.append(
                    await engine.send(Account, account, Deposit(5), command_id="the-one")
                )

            async with anyio.create_task_group() as tg:
                for _ in range(30):
                    tg.start_soon(one)
                # Some senders are cancelled mid-way (while their lookup runs in a thread).
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as doomed:
                        for _ in range(10):
                            doomed.start_soon(one)
                        for _ in range(rng.randint(0, 5)):
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()
            deposits = [e for e in engine.log.read_stream(account) if e.type == "Deposited"]
            assert len(deposits) == 1
            assert len(answers) >= 30
            assert {(a.version, a.position) for a in answers} == {  # type: ignore[attr-defined]
                (deposits[0].version, deposits[0].position)
            }


@pytest.mark.parametrize("cold", [True, False])
async def test_one_command_id_sent_concurrently_is_decided_once(
    postgres: Postgres, cold: bool
) -> None:
    await _scenario(postgres, cold)


@pytest.mark.parametrize("cold", [True, False])
def test_one_command_id_sent_concurrently_is_decided_once_on_asyncio(
    postgres: Postgres, cold: bool
) -> None:
    anyio.run(_scenario, postgres, cold, backend="asyncio")
