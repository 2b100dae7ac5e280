"""Fixtures shared by every test package (helpers that are plain functions, usable from the
backend-neutral scenarios run under ``asyncio.run`` too, are in ``tests/support.py``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actorlog import Engine
from actorlog.storage import LmdbEventLog, MemoryEventLog
from benchmarks.bank import Account, Balances, Deposited
from tests.support import Postgres, backlog


@pytest.fixture
def memory_log() -> MemoryEventLog:
    """A fresh, empty in-memory log."""
    return MemoryEventLog()


@pytest.fixture
async def bank(memory_log: MemoryEventLog) -> AsyncIterator[Engine]:
    """An engine on an empty memory log hosting the bank's ``Account`` and its ``Balances``
    view, closed after the test."""
    async with Engine.open(log=memory_log, aggregates=[Account], projectors=[Balances]) as engine:
        yield engine


@pytest.fixture
async def bank_behind() -> AsyncIterator[Engine]:
    """The same engine, opened without waiting on a backlog of deposits to stream
    ``"backlog"`` (``support.backlog(steps=16, ...)``): ``Balances`` is catching up, so the
    log's head, ``engine.statistics().head``, is written but not yet applied for 16 steps
    of the test or more."""
    async with Engine.open(
        log=backlog(steps=16, event=Deposited(1)),
        aggregates=[Account],
        projectors=[Balances],
        wait_for_projectors=False,
    ) as engine:
        yield engine


@pytest.fixture
def quick_writer_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL log refuses a second writer after 0.2 s instead of the 2 s it gives a
    killed writer's lock to go: for tests that are refused on purpose, several times."""
    from actorlog.engine import _log_postgres

    monkeypatch.setattr(_log_postgres, "WRITER_LOCK_WAIT", 0.2)


@pytest.fixture
def lmdb_log(tmp_path: Path) -> Iterator[LmdbEventLog]:
    """A fresh LMDB log in ``tmp_path`` (default options: durable), closed after the test."""
    log = LmdbEventLog(tmp_path)
    try:
        yield log
    finally:
        log.close()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """The PostgreSQL server named by ``ACTORLOG_TEST_POSTGRES`` (a libpq URL, e.g.
    ``postgresql://postgres@127.0.0.1:5432/postgres``), with fresh schemas per test, all
    dropped afterwards. Without it the test is skipped, unless ``ACTORLOG_REQUIRE_POSTGRES``
    is set (as CI sets it): then it fails, so a suite that silently skipped cannot pass."""
    url = os.environ.get("ACTORLOG_TEST_POSTGRES")
    if not url:
        if os.environ.get("ACTORLOG_REQUIRE_POSTGRES"):
            pytest.fail("ACTORLOG_REQUIRE_POSTGRES is set but ACTORLOG_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL server: set ACTORLOG_TEST_POSTGRES to a libpq URL")
    server = Postgres(url)
    try:
        yield server
    finally:
        server.cleanup()
