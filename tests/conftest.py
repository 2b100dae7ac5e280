"""Fixtures shared by every test package (helpers that are plain functions, usable from the
backend-neutral scenarios run under ``asyncio.run`` too, are in ``tests/support.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actorlog import Engine
from actorlog.storage import LmdbEventLog, MemoryEventLog
from benchmarks.bank import Account, Balances, Deposited
from tests.support import backlog


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
def lmdb_log(tmp_path: Path) -> Iterator[LmdbEventLog]:
    """A fresh LMDB log in ``tmp_path`` (default options: durable), closed after the test."""
    log = LmdbEventLog(tmp_path)
    try:
        yield log
    finally:
        log.close()
