"""Another process's writes to a bank account, straight to a shared PostgreSQL log, and
what the account's stream holds (for tests of decisions made on a stale cache)."""

from __future__ import annotations

import msgspec

from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, Append, PostgresEventLog
from benchmarks.bank import Deposited, Withdrawn

EVENTS = EventRegistry([Deposited, Withdrawn])
"""The account events the helpers encode and decode."""


def append(log: PostgresEventLog, stream_id: str, *events: msgspec.Struct) -> None:
    """Another process's commit: straight to the log, synchronously."""
    encoded = tuple(EVENTS.encode(e) for e in events)
    outcomes, _ = log.append_batch([Append(stream_id, ANY, encoded)])
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


def amounts(log: PostgresEventLog, stream_id: str) -> list[tuple[int, str, int]]:
    """(version, event name, amount) of every event of the stream, in order."""
    events = log.read_stream(stream_id)
    return [(e.version, e.type, EVENTS.decode(e.type, e.payload).amount) for e in events]


def balances(log: PostgresEventLog, stream_id: str) -> list[int]:
    """The account's balance after each of its events, in order."""
    balance, after = 0, []
    for _, name, amount in amounts(log, stream_id):
        balance += amount if name == "Deposited" else -amount
        after.append(balance)
    return after
