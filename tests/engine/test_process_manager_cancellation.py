"""The host cancels the engine in the middle of transfers (process managers dispatching,
deadlines firing, steps in flight), round after round, on trio and asyncio: after the last
restart settles, money is conserved and no transfer is credited or refunded twice
(review of issue 16)."""

from __future__ import annotations

import contextlib
import os
import random
from collections import Counter
from pathlib import Path

import anyio
import msgspec
import pytest

from actorlog import Engine, EngineClosed, Rejected
from actorlog.storage import StoredEvent
from actorlog.testing import FakeClock
from benchmarks.bank import (
    TRANSFER_TIMEOUT,
    Balances,
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    TransferAccount,
    TransferProcess,
)

ACCOUNTS = [f"acct-{n}" for n in range(5)]
ROUNDS = 6


def _open(path: Path, clock: FakeClock) -> object:
    return Engine.open(
        path,
        aggregates=[TransferAccount],
        projectors=[Balances],
        process_managers=[TransferProcess],
        clock=clock,
    )


async def _scenario(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    async with _open(path, clock) as engine:  # type: ignore[attr-defined]
        for account in ACCOUNTS:
            await engine.send(TransferAccount, account, OpenAccount(account))
            await engine.send(TransferAccount, account, Deposit(1000))
        await engine.send(TransferAccount, ACCOUNTS[-1], CloseAccount())  # credits refused
    sent = 0
    for round_ in range(ROUNDS):
        with anyio.CancelScope() as scope:
            async with _open(path, clock) as engine:  # type: ignore[attr-defined]

                async def transfer(n: int, engine: Engine = engine, round_: int = round_) -> None:
                    source, target = rng.sample(ACCOUNTS[:-1] + ACCOUNTS, 2)
                    if source == target:
                        return
                    with contextlib.suppress(Rejected, EngineClosed):
                        await engine.send(
                            TransferAccount,
                            source,
                            Transfer(f"t-{round_}-{n}", source, target, rng.randint(1, 50)),
                        )

                async with anyio.create_task_group() as tg:
                    for n in range(40):
                        tg.start_soon(transfer, n)
                        sent += 1
                    # Cancel at a random point: steps in flight, sends dispatching.
                    for _ in range(rng.randint(0, 60)):
                        await anyio.lowlevel.checkpoint()
                    if rng.random() < 0.5:
                        clock.advance(TRANSFER_TIMEOUT + 1)  # deadlines race the credits
                        for _ in range(rng.randint(0, 30)):
                            await anyio.lowlevel.checkpoint()
                    scope.cancel()
    clock.advance(TRANSFER_TIMEOUT + 1)
    async with _open(path, clock) as engine:  # type: ignore[attr-defined]
        for _ in range(100):
            await engine.wait_settled(timeout=20)
            stats = engine.statistics().process_managers[0]
            if stats.pending_deadlines == 0:
                break
            clock.advance(TRANSFER_TIMEOUT + 1)
            await anyio.sleep(0.01)
        assert stats.pending_deadlines == 0, stats
        await engine.wait_projected()
        total = sum([await engine.query(Balances.balance, a) for a in ACCOUNTS])
        assert total == 1000 * len(ACCOUNTS)
        moves: Counter[tuple[str, str]] = Counter()
        for account in ACCOUNTS:
            for event in engine.log.read_stream(account):
                if event.type in ("TransferCredited", "TransferRefunded", "TransferDebited"):
                    moves[(event.type, _transfer_id(event))] += 1
        kinds = Counter(kind for kind, _ in moves)
        assert kinds["TransferDebited"] > 0 and kinds["TransferRefunded"] > 0, kinds
        doubles = {k: v for k, v in moves.items() if v > 1}
        assert doubles == {}
        for (kind, tid), _ in moves.items():
            if kind == "TransferDebited":
                outcome = moves[("TransferCredited", tid)] + moves[("TransferRefunded", tid)]
                assert outcome == 1, tid


def _transfer_id(event: StoredEvent) -> str:
    return str(msgspec.msgpack.decode(event.payload)["transfer_id"])


@pytest.mark.parametrize("seed", range(int(os.environ.get("ACTORLOG_CANCEL_ROUNDS", "3"))))
async def test_cancelled_mid_transfer_on_trio(tmp_path: Path, seed: int) -> None:
    await _scenario(tmp_path, seed)


@pytest.mark.parametrize("seed", range(int(os.environ.get("ACTORLOG_CANCEL_ROUNDS", "3")) // 2 + 1))
def test_cancelled_mid_transfer_on_asyncio(tmp_path: Path, seed: int) -> None:
    anyio.run(_scenario, tmp_path, seed + 100, backend="asyncio")
