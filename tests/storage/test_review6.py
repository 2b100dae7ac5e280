"""Review 6: adversarial tests of the PostgreSQL log's one-message group commit
(``PostgresEventLog._commit_guarded``: the lock and one guarded INSERT in one simple-query
message, the rows as one JSON document, judged again and resent once when a stream moved).

Every test runs against a real PostgreSQL server (``ACTORLOG_TEST_POSTGRES``). A group
takes the one-message path when every append expects an exact version, carries no command
id and is storable, and no snapshot or cache rides along; adding one ``ANY`` append to a
group sends the same group the exact (two round trip) way, which is how the tests compare
the two paths.
"""

from __future__ import annotations

import random
import struct
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import pytest

from actorlog import ConcurrencyError, StorageError
from actorlog.storage import ANY, Append, AppendResult, PostgresEventLog, StoredEvent
from tests.support import Postgres

_pack = msgspec.msgpack.encode

# Strings that a JSON document, an SQL literal or a text column could each get wrong.
_TRICKY: Final = (
    "\U0001f600 e\u0301 \u2028\u2029 \ufeff \ufffd \uffff \U0010ffff \ud7ff\ue000",
    "".join(chr(i) for i in range(1, 32)) + "\x7f\x80\x9f",
    "\\ ' \" ` '' \\' \\\\ \\u0000 \\u0041 \\x00 \\n E'x'",
    "%s %b %t %(x)s $1 $2 ?; -- /* */ ::jsonb",
    '{"s": "x", "v": 1} [ null true',
    " leading and trailing ",
)
_PAYLOADS: Final = (
    _pack(bytes(range(256))),
    _pack(None),
    _pack([]),
    _pack({}),
    _pack(""),
    _pack(0),
    _pack("".join(chr(i) for i in range(1, 0x800))),
    _pack(b"\x00" * 4096 + bytes(range(256)) * 64),
)


def _bits(event: StoredEvent) -> tuple[Any, ...]:
    """Every field of ``event``, the timestamp as its IEEE bits and the payload as bytes."""
    return (
        event.position,
        event.stream_id,
        event.version,
        event.type,
        struct.pack("<d", event.timestamp),
        event.correlation_id,
        event.causation_id,
        bytes(event.payload),
        event.aggregate,
        event.command_id,
        event.principal,
        event.headers,
    )


def _content(event: StoredEvent) -> tuple[Any, ...]:
    """What an append decides of an event (not where or when it landed)."""
    return _bits(event)[1:4] + _bits(event)[5:]


def _tricky_group(tag: str, log: PostgresEventLog) -> list[Append]:
    appends = []
    for i, text in enumerate(_TRICKY):
        stream_id = f"{tag}/{text}"
        appends.append(
            Append(
                stream_id,
                log.stream_version(stream_id),
                tuple((f"{text}.{j}", payload) for j, payload in enumerate(_PAYLOADS)),
                correlation_id=text,
                causation_id=text[::-1],
                aggregate_name=text + "agg",
                principal=text,
                headers=((text, text[::-1]), ("", ""), (text[:1], "x")) if i % 2 else (),
            )
        )
    # None everywhere, and the longest stream id (400 UTF-8 bytes, four bytes a character).
    appends.append(Append(f"{tag}/" + "\U0001f600" * ((400 - len(tag) - 1) // 4), 0, (("T", b"\xc0"),)))
    return appends


def _committed(outcomes: Sequence[object]) -> list[AppendResult]:
    for outcome in outcomes:
        assert isinstance(outcome, AppendResult), outcome
    return [o for o in outcomes if isinstance(o, AppendResult)]


def test_every_field_round_trips_bit_for_bit_on_both_paths(postgres: Postgres) -> None:
    log = postgres.log()
    fast = _tricky_group("fast", log)
    outcomes, fast_stored = log.append_batch(fast)
    _committed(outcomes)
    # The same group with one ANY append: the exact path.
    exact = [*_tricky_group("exact", log), Append("any", ANY, (("T", b"\xc0"),))]
    outcomes, exact_stored = log.append_batch(exact)
    _committed(outcomes)
    stored = fast_stored + exact_stored
    # What append_batch handed back (to projectors) is what the log reads back.
    assert [_bits(e) for e in log.read_all(1, 10_000)] == [_bits(e) for e in stored]
    for append in fast + exact:
        assert [_bits(e) for e in log.read_stream(append.stream_id)] == [
            _bits(e) for e in stored if e.stream_id == append.stream_id
        ]
    # And both paths store the same thing for the same append.
    fast_content = [_content(e) for e in fast_stored]
    exact_content = [_content(e) for e in exact_stored[:-1]]
    assert [(c[0].replace("fast/", "", 1), *c[1:]) for c in fast_content] == [
        (c[0].replace("exact/", "", 1), *c[1:]) for c in exact_content
    ]
    assert len({e.timestamp for e in fast_stored}) == 1


def test_a_large_payload_round_trips_on_the_one_message_path(postgres: Postgres) -> None:
    log = postgres.log()
    payload = _pack(random.Random(6).randbytes(3 * 2**20))
    outcomes, stored = log.append_batch([Append("big", 0, (("T", payload), ("U", payload)))])
    _committed(outcomes)
    read = log.read_stream("big")
    assert [_bits(e) for e in read] == [_bits(e) for e in stored]
    assert bytes(read[1].payload) == payload


def test_an_expected_version_beyond_bigint_fails_alone(postgres: Postgres) -> None:
    """Versions the writer accepts (below 2**64) but PostgreSQL's bigint cannot hold: no
    stream is ever there, so the append fails alone with a conflict, as the exact path
    judges it; the rest of its group commits."""
    log = postgres.log()
    for expected, events in ((2**63, 1), (2**64 - 1, 0), (2**63 - 1, 1), (2**63 - 1, 0)):
        ok = Append("ok", log.stream_version("ok"), (("T", b"\xc0"),))
        big = Append("big", expected, (("T", b"\xc0"),) * events)
        outcomes, stored = log.append_batch([ok, big, Append("check", 0, ())])
        assert isinstance(outcomes[0], AppendResult), outcomes[0]
        assert isinstance(outcomes[1], ConcurrencyError), outcomes[1]
        assert outcomes[1].actual == 0
        assert isinstance(outcomes[2], AppendResult), outcomes[2]
        assert [e.stream_id for e in stored] == ["ok"]
    assert log.stream_version("ok") == 4
    assert log.stream_version("big") == 0
