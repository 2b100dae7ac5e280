"""A SqliteView keeps its view in SQLite, committed with its checkpoint: it resumes where it
stopped, answers ``query(after=)`` with committed rows, rebuilds, and never stores part of
an event. Every check compares it with ``Balances`` (the same view in memory) on one log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest

from actorlog import (
    DefinitionError,
    Engine,
    HandlerError,
    ProjectorFaulted,
    Recorded,
    SqliteView,
    StorageError,
    applies,
)
from actorlog.storage import MemoryEventLog
from benchmarks.bank import (
    Account,
    BalanceDocuments,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    Withdraw,
)
from tests.support import Postgres, fill_log, stats


def stored(database: Path, view: str = "BalanceDocuments") -> tuple[int, dict[str, Any]]:
    """The view's checkpoint and documents, read from the file with sqlite3 itself."""
    with sqlite3.connect(database) as db:
        (position,) = db.execute(
            "SELECT position FROM actorlog_views WHERE view = ?", (view,)
        ).fetchone()
        rows = db.execute(
            "SELECT key, json_extract(body, '$.balance') FROM actorlog_documents WHERE view = ?",
            (view,),
        ).fetchall()
    db.close()
    return position, dict(rows)


async def bank_traffic(engine: Engine, accounts: int, deposits: int) -> int:
    """Open ``accounts`` accounts, make ``deposits`` deposits and a withdrawal; the head."""
    for n in range(accounts):
        await engine.send(Account, f"acct-{n}", OpenAccount(f"owner-{n}"))
    ack = None
    for i in range(deposits):
        ack = await engine.send(Account, f"acct-{i % accounts}", Deposit(i + 1))
    ack = await engine.send(Account, "acct-0", Withdraw(1))
    return ack.position


async def test_view_matches_memory_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    database = tmp_path / "views" / "bank.sqlite"
    view = BalanceDocuments.at(database)
    async with Engine.open(
        tmp_path / "log", aggregates=[Account], projectors=[view, Balances]
    ) as e:
        head = await bank_traffic(e, 7, 60)
        assert await e.query(view.balance, "acct-3", after=head) == await e.query(
            Balances.balance, "acct-3"
        )
        assert await e.query(view.all_balances, after=head) == await e.query(Balances.all_balances)
        expected = await e.query(Balances.all_balances)
    assert stored(database) == (head, expected)
    # A restart replays nothing: the view starts at its checkpoint.
    async with Engine.open(tmp_path / "log", aggregates=[Account], projectors=[view]) as e:
        assert stats(e, "BalanceDocuments").restored_from == head
        assert stats(e, "BalanceDocuments").applied == 0
        assert await e.query(view.all_balances) == expected
        ack = await e.send(Account, "acct-1", Deposit(1000))
        assert (
            await e.query(view.balance, "acct-1", after=ack.position) == expected["acct-1"] + 1000
        )
        assert stats(e, "BalanceDocuments").applied == 1


async def test_read_your_writes_on_every_command(tmp_path: Path) -> None:
    view = BalanceDocuments.at(tmp_path / "v.sqlite")
    async with Engine.open(tmp_path / "log", aggregates=[Account], projectors=[view]) as e:
        await e.send(Account, "a", OpenAccount("o"))
        total = 0
        for amount in range(1, 30):
            ack = await e.send(Account, "a", Deposit(amount))
            total += amount
            assert await e.query(view.balance, "a", after=ack.position) == total


def test_read_your_writes_on_asyncio(tmp_path: Path) -> None:
    view = BalanceDocuments.at(tmp_path / "v.sqlite")

    async def scenario() -> list[int]:
        seen = []
        async with Engine.open(tmp_path / "log", aggregates=[Account], projectors=[view]) as e:
            await e.send(Account, "a", OpenAccount("o"))
            for amount in (5, 7, 9):
                ack = await e.send(Account, "a", Deposit(amount))
                seen.append(await e.query(view.balance, "a", after=ack.position))
        return seen

    assert asyncio.run(scenario()) == [5, 12, 21]


class CountingDocuments(BalanceDocuments):
    """BalanceDocuments counting its SQLite transactions (the real commit, counted)."""

    commits: ClassVar[list[int]] = []

    def commit(self, checkpoint: int, mark: str | None = None) -> None:
        super().commit(checkpoint, mark)
        type(self).commits.append(checkpoint)


async def test_catch_up_commits_many_events_a_transaction(tmp_path: Path) -> None:
    log = MemoryEventLog()
    events: list[tuple[str, Any]] = [(f"acct-{n}", Deposited(1)) for n in range(20_000)]
    fill_log(log, events)
    view = CountingDocuments.at(tmp_path / "v.sqlite")
    view.commits = []
    async with Engine.open(log=log, aggregates=[Account], projectors=[view]) as e:
        assert await e.query(view.balance, "acct-19999") == 1
    # Batches start at 256 and double up to 4,096 while they are quick.
    assert view.commits[-1] == 20_000
    assert len(view.commits) < 20_000 / 256


async def test_rebuild_empties_the_store_and_refills_it(tmp_path: Path) -> None:
    database = tmp_path / "v.sqlite"
    view = BalanceDocuments.at(database)
    async with Engine.open(
        tmp_path / "log", aggregates=[Account], projectors=[view, Balances]
    ) as e:
        head = await bank_traffic(e, 3, 20)
        await e.wait_projected(head)
        # A row that no event made: only a rebuild (which empties the table) removes it.
        with sqlite3.connect(database) as db:
            db.execute("INSERT INTO actorlog_documents VALUES ('BalanceDocuments', 'stray', '{}')")
        db.close()
        e.rebuild(view)
        await e.wait_projected(head)
        expected = await e.query(Balances.all_balances)
        assert await e.query(view.all_balances) == expected
        assert stats(e, "BalanceDocuments").applied == head
    assert stored(database) == (head, expected)


async def test_another_format_or_another_log_starts_over(tmp_path: Path) -> None:
    database = tmp_path / "v.sqlite"
    view = BalanceDocuments.at(database)
    async with Engine.open(tmp_path / "log", aggregates=[Account], projectors=[view]) as e:
        head = await bank_traffic(e, 2, 5)

    class Reformatted(BalanceDocuments):
        name = "BalanceDocuments"
        snapshot_format = 2

    async with Engine.open(
        tmp_path / "log", aggregates=[Account], projectors=[Reformatted.at(database)]
    ) as e:
        assert stats(e, "BalanceDocuments").restored_from == 0
        assert stats(e, "BalanceDocuments").applied == head
    # The same file beside a shorter log: its checkpoint is beyond that log's head.
    async with Engine.open(tmp_path / "other", aggregates=[Account], projectors=[view]) as e:
        assert stats(e, "BalanceDocuments").restored_from == 0
        assert await e.query(view.all_balances) == {}
        ack = await e.send(Account, "z", OpenAccount("z"))
        assert await e.query(view.all_balances, after=ack.position) == {"z": 0}
    assert stored(database) == (1, {"z": 0})


class Fragile(SqliteView):
    """Writes a document, then fails on deposits of 13 after writing a second one."""

    on_error: ClassVar[Any] = "halt"

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        count = self.get("count") or 0
        self.put("count", count + 1)
        if e.amount == 13:
            self.put("half-done", True)
            raise ValueError("unlucky")

    def documents(self) -> dict[str, Any]:
        return self.read_all()


class ParkingFragile(Fragile):
    on_error = "park"


@pytest.mark.parametrize("kind", [Fragile, ParkingFragile])
async def test_a_failing_applier_leaves_nothing_half_done(tmp_path: Path, kind: Any) -> None:
    log = MemoryEventLog()
    amounts = [1, 2, 13, 4, 5]
    fill_log(log, [("s", Deposited(a)) for a in amounts])
    view = kind.at(tmp_path / "v.sqlite")
    async with Engine.open(log=log, aggregates=[], projectors=[view]) as e:
        if kind is Fragile:
            with pytest.raises(ProjectorFaulted):
                await e.query(view.documents)
            assert stats(e, "Fragile").checkpoint == 2
        else:
            assert await e.query(view.documents, after=5) == {"count": 4}
            assert [p.position for p in e.parked(view)] == [3]
    position, _ = stored(tmp_path / "v.sqlite", kind.name)
    with sqlite3.connect(tmp_path / "v.sqlite") as db:
        rows = dict(db.execute("SELECT key, body FROM actorlog_documents").fetchall())
    db.close()
    assert (position, rows) == ((2, {"count": "2"}) if kind is Fragile else (5, {"count": "4"}))


async def test_a_second_engine_on_the_same_view_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "v.sqlite"
    view = BalanceDocuments.at(database)
    async with (
        Engine.open(tmp_path / "a", aggregates=[Account], projectors=[view]) as a,
        Engine.open(tmp_path / "b", aggregates=[Account], projectors=[view]) as b,
    ):
        ack = await a.send(Account, "x", OpenAccount("x"))
        await a.wait_projected(ack.position)
        ack = await b.send(Account, "y", OpenAccount("y"))
        with pytest.raises(ProjectorFaulted) as caught:
            await b.query(view.balance, "y", after=ack.position)
        assert isinstance(caught.value.__cause__, StorageError)
    assert stored(database) == (1, {"x": 0})


class Misused(BalanceDocuments):
    def peek(self, key: str) -> Any:
        return self.get(key)  # an applier's method, called by a query

    def vandalise(self) -> Any:
        return self.sql("DELETE FROM actorlog_documents")

    def richest(self) -> list[tuple[Any, ...]]:
        return self.sql(
            "SELECT key FROM actorlog_documents WHERE view = ?"
            " ORDER BY json_extract(body, '$.balance') DESC LIMIT 1",
            self.name,
        )


async def test_queries_read_committed_rows_only(tmp_path: Path) -> None:
    view = Misused.at(tmp_path / "v.sqlite")
    async with Engine.open(tmp_path / "log", aggregates=[Account], projectors=[view]) as e:
        head = await bank_traffic(e, 4, 10)
        assert await e.query(view.richest, after=head) == [("acct-1",)]
        with pytest.raises(HandlerError):
            await e.query(view.peek, "acct-1")
        with pytest.raises(HandlerError) as caught:
            await e.query(view.vandalise)
        assert isinstance(caught.value.__cause__, StorageError)
        assert len(await e.query(view.all_balances)) == 4


def test_definition_errors() -> None:
    with pytest.raises(DefinitionError):

        class Saving(SqliteView):  # pyright: ignore[reportUnusedClass]
            snapshot_every = 10

    # The store's own methods are never queries.
    assert SqliteView.commit not in BalanceDocuments.query_functions
    assert BalanceDocuments.balance in BalanceDocuments.query_functions


async def test_a_view_without_a_database_is_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError):
        async with Engine.open(tmp_path / "log", aggregates=[], projectors=[BalanceDocuments]):
            pass
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(StorageError):
        async with Engine.open(
            tmp_path / "log", aggregates=[], projectors=[BalanceDocuments.at(directory)]
        ):
            pass


async def test_on_a_postgres_log(tmp_path: Path, postgres: Postgres) -> None:
    """On a log whose reads block, the catch-up read and the fold each go to a thread."""
    view = BalanceDocuments.at(tmp_path / "v.sqlite")
    schema = postgres.schema()
    async with Engine.open(
        log=postgres.log(schema), aggregates=[Account], projectors=[view, Balances]
    ) as e:
        head = await bank_traffic(e, 3, 12)
        assert await e.query(view.all_balances, after=head) == await e.query(Balances.all_balances)
    async with Engine.open(log=postgres.log(schema), aggregates=[Account], projectors=[view]) as e:
        assert stats(e, "BalanceDocuments").restored_from == head
        ack = await e.send(Account, "acct-2", Deposit(50))
        assert await e.query(view.balance, "acct-2", after=ack.position) > 50
