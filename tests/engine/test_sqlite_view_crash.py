"""A SqliteView killed with SIGKILL at any moment holds exactly the log up to its
checkpoint, and a restart applies each later event once (a real child process)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actorlog import Engine
from actorlog.lowlevel import EventRegistry
from actorlog.storage import LmdbEventLog
from benchmarks.bank import Account, AccountOpened, BalanceDocuments, Balances, Deposited, Withdrawn
from tests.support import stats

ROUNDS = int(os.environ.get("ACTORLOG_CRASH_ROUNDS", "3"))
SEED = 1717


def run_and_kill(log: Path, database: Path, seed: int, kill_after: int) -> None:
    """Run the child until it has reported ``kill_after`` progress lines, then SIGKILL it."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.engine.sqlite_view_child",
            str(log),
            str(database),
            str(seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent.parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        for _ in range(kill_after):
            assert child.stdout.readline().startswith("committed ")
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the child ended before it was killed"


def stored_view(database: Path) -> tuple[int, dict[str, Any]]:
    """The view's checkpoint and documents, as SQLite holds them after the kill."""
    db = sqlite3.connect(database)
    try:
        (position,) = db.execute(
            "SELECT position FROM actorlog_views WHERE view = 'BalanceDocuments'"
        ).fetchone()
        rows = db.execute(
            "SELECT key, body FROM actorlog_documents WHERE view = 'BalanceDocuments'"
        ).fetchall()
    finally:
        db.close()
    return position, {key: json.loads(body) for key, body in rows}


def folded(log_path: Path, upto: int) -> tuple[int, dict[str, Any]]:
    """The log's head, and the documents its events 1..``upto`` give, folded here by hand."""
    registry = EventRegistry([AccountOpened, Deposited, Withdrawn])
    log = LmdbEventLog(log_path)  # the killed child's lock died with it
    try:
        head = log.head_position()
        documents: dict[str, Any] = {}
        position = 1
        while position <= upto:
            batch = log.read_all(position, min(1024, upto - position + 1))
            for stored in batch:
                assert stored.position == position
                event = registry.decode(stored.type, stored.payload)
                doc = documents.setdefault(stored.stream_id, {"owner": None, "balance": 0})
                if isinstance(event, AccountOpened):
                    documents[stored.stream_id] = {"owner": event.owner, "balance": 0}
                elif isinstance(event, Deposited):
                    doc["balance"] += event.amount
                else:
                    doc["balance"] -= event.amount
                position += 1
    finally:
        log.close()
    return head, documents


@pytest.mark.slow
async def test_killed_view_is_the_log_up_to_its_checkpoint(tmp_path: Path) -> None:
    log, database = tmp_path / "log", tmp_path / "views.sqlite"
    rng = random.Random(SEED)
    for round_ in range(ROUNDS):
        run_and_kill(log, database, SEED + round_, rng.randint(1, 40))
        checkpoint, documents = stored_view(database)
        head, expected = folded(log, checkpoint)
        assert 0 <= checkpoint <= head
        assert documents == expected, f"round {round_}: the view is not the log up to {checkpoint}"
    # Restarted, it applies exactly what came after its checkpoint, and equals a rebuild.
    checkpoint, _ = stored_view(database)
    view = BalanceDocuments.at(database)
    async with Engine.open(log, aggregates=[Account], projectors=[view, Balances]) as engine:
        head = engine.log.head_position()
        assert stats(engine, "BalanceDocuments").applied == head - checkpoint
        assert await engine.query(view.all_balances) == await engine.query(Balances.all_balances)
