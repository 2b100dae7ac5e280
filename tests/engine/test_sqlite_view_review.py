"""Review of the SQLite view (issue 17, part 4): a view file that belongs to another log."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path
from typing import Any

import anyio

from actorlog import Engine
from actorlog.storage import LmdbEventLog
from benchmarks.bank import (
    Account,
    AccountOpened,
    BalanceDocuments,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
)
from tests.support import fill_log


async def test_a_view_file_of_another_shorter_log_is_not_taken_as_this_logs(
    tmp_path: Path,
) -> None:
    database = tmp_path / "v.sqlite"
    view = BalanceDocuments.at(database)
    # Log A: two accounts and a few deposits; its view committed at A's head.
    async with Engine.open(tmp_path / "a", aggregates=[Account], projectors=[view]) as e:
        await e.send(Account, "alice", OpenAccount("alice"))
        ack = await e.send(Account, "alice", Deposit(1_000_000))
        await e.query(view.balance, "alice", after=ack.position)
    # Log B is longer and has other accounts (written without the view); then the same
    # file beside it.
    async with Engine.open(tmp_path / "b", aggregates=[Account]) as e:
        for n in range(5):
            await e.send(Account, f"bob-{n}", OpenAccount("bob"))
            ack = await e.send(Account, f"bob-{n}", Deposit(n + 1))
    async with Engine.open(tmp_path / "b", aggregates=[Account], projectors=[view, Balances]) as e:
        await e.wait_projected()
        truth = await e.query(Balances.all_balances)
        assert await e.query(view.all_balances) == truth  # alice's million is not B's


async def _cancelled_runs(tmp_path: Path, seed: int) -> None:
    """Catch-up and rebuilds of a SqliteView cancelled by the host at random points: each
    restart's view equals the log folded up to the view's checkpoint, and at the end the
    whole log."""
    rng = random.Random(seed)
    log_path = tmp_path / "log"
    log = LmdbEventLog(log_path)
    try:
        events: list[tuple[str, Any]] = [(f"acct-{n}", AccountOpened(f"o{n}")) for n in range(50)]
        events += [(f"acct-{n % 50}", Deposited(n + 1)) for n in range(20_000)]
        fill_log(log, events)
    finally:
        log.close()
    view = BalanceDocuments.at(tmp_path / "v.sqlite")
    for _ in range(8):
        with anyio.CancelScope() as scope:
            async with Engine.open(
                log_path, aggregates=[Account], projectors=[view], wait_for_projectors=False
            ) as engine:
                if rng.random() < 0.5:
                    engine.rebuild(view)
                for _ in range(rng.randint(0, 12)):
                    await anyio.sleep(0.001)
                scope.cancel()
        checkpoint, documents = _stored(tmp_path / "v.sqlite")
        expected: dict[str, int] = {}
        for n, (stream, event) in enumerate(events, start=1):
            if n > checkpoint:
                break
            expected[stream] = expected.get(stream, 0) + getattr(event, "amount", 0)
        assert documents == expected, checkpoint
    async with Engine.open(log_path, aggregates=[Account], projectors=[view, Balances]) as e:
        assert await e.query(view.all_balances) == await e.query(Balances.all_balances)


async def test_a_view_cancelled_mid_batch_is_the_log_up_to_its_checkpoint(tmp_path: Path) -> None:
    await _cancelled_runs(tmp_path, 1)


def test_a_view_cancelled_mid_batch_on_asyncio(tmp_path: Path) -> None:
    anyio.run(_cancelled_runs, tmp_path, 2, backend="asyncio")


def _stored(database: Path) -> tuple[int, dict[str, int]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        (position,) = db.execute(
            "SELECT position FROM actorlog_views WHERE view = 'BalanceDocuments'"
        ).fetchone()
        rows = db.execute(
            "SELECT key, json_extract(body, '$.balance') FROM actorlog_documents"
            " WHERE view = 'BalanceDocuments'"
        ).fetchall()
    return position, dict(rows)
