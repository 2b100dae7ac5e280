"""Helpers shared across the test packages (plain functions; the fixtures that use them are
in ``tests/conftest.py``). Test modules import from here, never from one another."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from actorlog import Engine, ProjectorStatistics
from actorlog.engine._projectors import MAX_BATCH
from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, Append, EventLog, MemoryEventLog, PostgresEventLog


def stats(engine: Engine, name: str) -> ProjectorStatistics:
    """The statistics of the projector called ``name``."""
    (found,) = [p for p in engine.statistics().projectors if p.name == name]
    return found


def fill_log(log: EventLog, events: Sequence[tuple[str, msgspec.Struct]]) -> None:
    """Append ``(stream_id, event)`` pairs straight to the log, in large groups (no engine:
    a log "as it was at open")."""
    registry = EventRegistry(list({type(e): None for _, e in events}))
    for i in range(0, len(events), 5000):
        group = [Append(sid, ANY, (registry.encode(e),)) for sid, e in events[i : i + 5000]]
        outcomes, _ = log.append_batch(group)
        assert not any(isinstance(o, Exception) for o in outcomes)


def filled(n: int, event: msgspec.Struct) -> MemoryEventLog:
    """A memory log already holding ``n`` copies of ``event``, one per stream ``s0``, ``s1``..."""
    log = MemoryEventLog()
    encoded = EventRegistry([type(event)]).encode(event)
    outcomes, _ = log.append_batch([Append(f"s{i}", ANY, (encoded,)) for i in range(n)])
    assert not any(isinstance(o, Exception) for o in outcomes)
    return log


def backlog(steps: int, event: msgspec.Struct, *, stream_id: str = "backlog") -> MemoryEventLog:
    """A memory log holding enough copies of ``event`` (one stream) that the projectors of an
    engine opened on it with ``wait_for_projectors=False`` cannot apply its last position
    within ``steps`` scheduling steps of the test.

    This is how a test gets a position that is written but not yet applied: the engine is
    its log's only writer, so ``query(after=)`` and ``wait_projected`` refuse positions
    beyond the head (``UnknownPosition``), and a live projector applies each commit at its
    next step. A projector catching up applies one batch of at most ``MAX_BATCH`` events a
    step, then yields; appliers are synchronous, so nothing else can hold it back without
    stopping the whole event loop. Tests that rely on the backlog also assert that the
    checkpoint is still behind where it matters: a change of batching fails them loudly,
    never lets them pass without waiting.
    """
    log = MemoryEventLog()
    encoded = EventRegistry([type(event)]).encode(event)
    # One append of many events: the cheapest way to write them (~1.4 us an event).
    outcomes, _ = log.append_batch([Append(stream_id, ANY, (encoded,) * (steps * MAX_BATCH))])
    assert not any(isinstance(o, Exception) for o in outcomes)
    return log


class Postgres:
    """The PostgreSQL server the tests run against (``ACTORLOG_TEST_POSTGRES``, a libpq
    URL): fresh schemas, each dropped at teardown, and logs on them, each closed then."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._schemas: list[str] = []
        self._logs: list[PostgresEventLog] = []

    def schema(self) -> str:
        """A new schema name, unused on the server (the log creates it)."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self._schemas.append(name)
        return name

    def log(self, schema: str | None = None, **options: Any) -> PostgresEventLog:
        """A log on ``schema`` (a fresh one by default), closed at teardown."""
        log = PostgresEventLog(self.url, schema=schema or self.schema(), **options)
        self._logs.append(log)
        return log

    def execute(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement on a connection of its own (autocommit); its rows, if any."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def cleanup(self) -> None:
        """Close the logs and drop the schemas."""
        for log in self._logs:
            log.close()
        for name in self._schemas:
            self.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
