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

import contextlib
import os
import random
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, Final

import msgspec
import pytest

from actorlog import ConcurrencyError, StorageError
from actorlog.engine._log_postgres import _ONE_MESSAGE_MOST_BYTES
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
    longest = f"{tag}/" + "\U0001f600" * ((400 - len(tag) - 1) // 4)
    appends.append(Append(longest, log.stream_version(longest), (("T", b"\xc0"),)))
    return appends


def _committed(outcomes: Sequence[object]) -> list[AppendResult]:
    for outcome in outcomes:
        assert isinstance(outcome, AppendResult), outcome
    return [o for o in outcomes if isinstance(o, AppendResult)]


def _on_both_paths(
    log: PostgresEventLog,
) -> tuple[list[Append], list[Append], list[StoredEvent], list[StoredEvent]]:
    """The tricky group committed as one message, then again (other streams) with one ANY
    append, which sends it the exact way: the groups and what ``append_batch`` returned."""
    fast = _tricky_group("fast", log)
    outcomes, fast_stored = log.append_batch(fast)
    _committed(outcomes)
    exact = [*_tricky_group("exact", log), Append("any", ANY, (("T", b"\xc0"),))]
    outcomes, exact_stored = log.append_batch(exact)
    _committed(outcomes)
    return fast, exact, fast_stored, exact_stored


def test_every_field_round_trips_bit_for_bit_on_both_paths(postgres: Postgres) -> None:
    log = postgres.log()
    fast, exact, fast_stored, exact_stored = _on_both_paths(log)
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


# -- outcomes: the rule, at the versions the log had ----------------------------------------


def _model_outcomes(
    group: Sequence[Append], versions: dict[str, int], head: int
) -> tuple[list[tuple[Any, ...]], int]:
    """The log's rule, written out on its own: an exact expected version must be the
    stream's; an append that expects the version a failed append (with events) of the same
    stream in the group would have left fails too (``after_failed``). Moves ``versions``."""
    chained: dict[str, set[int]] = {}
    outcomes: list[tuple[Any, ...]] = []
    for append in group:
        sid, expected, n = append.stream_id, append.expected_version, len(append.events)
        actual = versions.get(sid, 0)
        if expected == ANY or (expected == actual and expected not in chained.get(sid, ())):
            outcomes.append(("ok", sid, actual + 1, actual + n, head + 1, head + n))
            versions[sid] = actual + n
            head += n
        else:
            outcomes.append(("conflict", sid, expected, actual, expected == actual))
            if n:
                chained.setdefault(sid, set()).add(expected + n)
    return outcomes, head


def _observed(outcome: object) -> tuple[Any, ...]:
    if isinstance(outcome, AppendResult):
        return (
            "ok",
            outcome.stream_id,
            outcome.first_version,
            outcome.last_version,
            outcome.first_position,
            outcome.last_position,
        )
    assert isinstance(outcome, ConcurrencyError), outcome
    return ("conflict", outcome.stream_id, outcome.expected, outcome.actual, outcome.after_failed)


def _random_group(rng: random.Random, believed: dict[str, int], tag: str) -> list[Append]:
    """Pipelined chains on a few streams from ``believed`` versions (stale, or off by one
    now and then), interleaved; checks (empty appends) among them; rarely an ANY append
    or a broken chain (the exact path)."""
    chains: list[list[Append]] = []
    for sid in rng.sample(sorted(believed), rng.randint(1, 4)):
        version = believed[sid] + (rng.choice((-1, 1)) if rng.random() < 0.1 else 0)
        chain = []
        for k in range(rng.randint(1, 3)):
            n = rng.choice((0, 1, 1, 2))
            events = tuple((f"{tag}.{sid}.{k}.{j}", b"\xc0") for j in range(n))
            expected = ANY if rng.random() < 0.03 else max(version, 0)
            chain.append(Append(sid, expected, events))
            version = max(version, 0) + n + (1 if rng.random() < 0.03 else 0)
        chains.append(chain)
    group: list[Append] = []
    while chains:
        chain = rng.choice(chains)
        group.append(chain.pop(0))
        if not chain:
            chains.remove(chain)
    return group


def test_outcomes_are_the_rule_at_the_versions_another_writer_left(postgres: Postgres) -> None:
    schema = postgres.schema()
    ours = postgres.log(schema, shared=True)
    other = postgres.log(schema, shared=True)
    rng = random.Random(66)
    streams = [f"s{i}" for i in range(6)]
    versions = dict.fromkeys(streams, 0)  # the log's
    believed = dict(versions)  # ours, stale after the other writer's appends
    head = 0
    expected_log: list[tuple[str, int, str]] = []
    for round_ in range(120):
        for sid in rng.sample(streams, rng.choice((0, 0, 1, 2))):
            n = rng.randint(1, 2)
            events = tuple((f"other.{round_}.{sid}.{j}", b"\xc0") for j in range(n))
            _committed(other.append_batch([Append(sid, ANY, events)])[0])
            expected_log += [
                (sid, versions[sid] + j + 1, name) for j, (name, _) in enumerate(events)
            ]
            versions[sid] += n
            head += n
        group = _random_group(rng, believed, f"ours.{round_}")
        model, new_head = _model_outcomes(group, versions, head)
        outcomes, stored = ours.append_batch(group)
        assert [_observed(o) for o in outcomes] == model, round_
        for append, outcome in zip(group, model, strict=True):
            if outcome[0] == "ok":
                expected_log += [
                    (append.stream_id, outcome[2] + j, name)
                    for j, (name, _) in enumerate(append.events)
                ]
        assert [(e.stream_id, e.version, e.type) for e in stored] == expected_log[head:]
        assert [e.position for e in stored] == list(range(head + 1, new_head + 1))
        head = new_head
        believed = dict(versions)  # as an engine learns from its conflicts and its follower
    log = ours.read_all(1, 100_000)
    assert [e.position for e in log] == list(range(1, head + 1))
    assert [(e.stream_id, e.version, e.type) for e in log] == expected_log


def test_a_group_racing_another_writer_loses_nothing_and_writes_no_failure(
    postgres: Postgres,
) -> None:
    """Another process appends to the same streams all the while, so groups find streams
    moved once, twice (the exact path), or not at all: every acknowledged append is in the
    log where its result says, no failed one is, positions have no gaps."""
    schema = postgres.schema()
    ours = postgres.log(schema, shared=True)
    other = postgres.log(schema, shared=True)
    streams = [f"s{i}" for i in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        rng = random.Random(7)
        try:
            while not stop.is_set():
                sid = rng.choice(streams)
                other.append_batch([Append(sid, ANY, (("other", b"\xc0"),))])
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=hammer)
    thread.start()
    rng = random.Random(8)
    acknowledged: dict[str, tuple[int, int, int, str]] = {}
    failed: set[str] = set()
    try:
        deadline = time.monotonic() + 1.5
        round_ = 0
        while time.monotonic() < deadline:
            round_ += 1
            believed = {sid: ours.stream_version(sid) for sid in streams}
            group = _random_group(rng, believed, f"ours.{round_}")
            outcomes, stored = ours.append_batch(group)
            for append, outcome in zip(group, outcomes, strict=True):
                if not append.events:
                    continue
                (name, _), *_ = append.events
                if isinstance(outcome, AppendResult):
                    acknowledged[name] = (
                        outcome.first_position,
                        outcome.first_version,
                        len(append.events),
                        append.stream_id,
                    )
                else:
                    assert isinstance(outcome, ConcurrencyError), outcome
                    failed.add(name)
            assert stored == sorted(stored, key=lambda e: e.position)
    finally:
        stop.set()
        thread.join()
    assert not errors
    log = ours.read_all(1, 1_000_000)
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    by_type = {e.type: e for e in log}
    for name, (position, version, _, sid) in acknowledged.items():
        event = by_type[name]
        assert (event.position, event.version, event.stream_id) == (position, version, sid)
    assert not failed & set(by_type)
    # Each stream's versions are 1, 2, ... in log order.
    for sid in streams:
        assert [e.version for e in log if e.stream_id == sid] == list(
            range(1, ours.stream_version(sid) + 1)
        )
    assert acknowledged and failed  # the race happened both ways


@pytest.mark.parametrize("shared", [False, True])
def test_a_check_only_group_answers_the_head_like_the_exact_path(
    postgres: Postgres, shared: bool
) -> None:
    """An empty append's result is one past the last position and version (the storage
    contract), whether its group went as one message or the exact way, and whether it was
    a group of checks from the start (a rejection's probe) or became one when its writes
    were judged stale."""
    schema = postgres.schema()
    log = postgres.log(schema, shared=shared)
    other = postgres.log(schema, shared=True) if shared else log
    _committed(log.append_batch([Append("a", 0, (("T", b"\xc0"),) * 3)])[0])
    head = 3
    for group in (
        [Append("a", 3, ())],  # one message, checks only
        [Append("a", 3, ()), Append("b", ANY, ())],  # the exact path
    ):
        (result, *_), _ = log.append_batch(group)
        assert isinstance(result, AppendResult), result
        assert (result.first_version, result.last_version) == (4, 3)
        assert (result.first_position, result.last_position) == (head + 1, head)
    # Its write judged stale, the rest of the group is checks only.
    _committed(other.append_batch([Append("b", 0, (("T", b"\xc0"),))])[0])
    head += 1
    outcomes, stored = log.append_batch([Append("b", 0, (("T", b"\xc0"),)), Append("a", 3, ())])
    assert isinstance(outcomes[0], ConcurrencyError), outcomes[0]
    assert stored == []
    assert isinstance(outcomes[1], AppendResult), outcomes[1]
    assert (outcomes[1].first_position, outcomes[1].last_position) == (head + 1, head)


# -- failures -------------------------------------------------------------------------------


def _with_options(url: str, options: str) -> str:
    """``url`` with libpq ``options`` (server settings for its connections)."""
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), ("options", options)]
    return parts._replace(
        query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    ).geturl()


def _writer_pids(postgres: Postgres, schema: str) -> list[int]:
    """The backends holding the writer lock of ``schema`` (a session advisory lock keyed by
    its name): the connections its logs write on. Other tests' logs on the same server
    hold the locks of their own schemas."""
    return [
        pid
        for (pid,) in postgres.execute(
            "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint)"
            " = hashtext('actorlog writer ' || %s)::bigint",
            (schema,),
        )
    ]


def _aborted_sessions(postgres: Postgres, schema: str) -> list[Any]:
    """Those of ``schema``'s writer connections left in an aborted transaction."""
    return postgres.execute(
        "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction (aborted)'"
        " AND pid = ANY(%s)",
        (_writer_pids(postgres, schema),),
    )


def test_a_server_error_inside_the_message_fails_the_group_and_leaves_the_connection_usable(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    log = postgres.log(schema)
    _committed(log.append_batch([Append("a", 0, (("T", b"\xc0"),))])[0])
    # A constraint the guarded INSERT runs into, in the server, after the lock.
    postgres.execute(
        f"ALTER TABLE \"{schema}\".events ADD CONSTRAINT poison CHECK (type <> 'poison')"
    )
    group = [Append("a", 1, (("T", b"\xc0"),)), Append("b", 0, (("poison", b"\xc0"),))]
    for _ in range(2):
        outcomes, stored = log.append_batch(group)
        assert stored == []
        assert len(outcomes) == 2
        assert all(isinstance(o, StorageError) for o in outcomes), outcomes
        assert not _aborted_sessions(postgres, schema)
    assert log.head_position() == 1
    assert log.stream_version("a") == 1
    # The same connection commits the next group, one message or the exact way.
    pids = _writer_pids(postgres, schema)
    _committed(log.append_batch([Append("a", 1, (("T", b"\xc0"),))])[0])
    _committed(log.append_batch([Append("a", ANY, (("T", b"\xc0"),))])[0])
    _committed(log.append_batch([Append("a", 3, ())])[0])
    assert pids == _writer_pids(postgres, schema) and len(pids) == 1
    assert [e.position for e in log.read_all()] == [1, 2, 3]


def test_a_statement_timeout_behind_another_lock_fails_the_group_only(postgres: Postgres) -> None:
    """A writer stuck behind the table lock until its statement times out: the group fails
    with StorageError and nothing of it is written; once the lock is free the next group
    commits on the same connection."""
    with _impatient_writer(postgres) as (log, schema):
        with _table_locked(postgres, schema):
            outcomes, stored = log.append_batch([Append("a", 1, (("T", b"\xc0"),))])
            assert stored == [] and isinstance(outcomes[0], StorageError), outcomes
        assert not _aborted_sessions(postgres, schema)
        _committed(log.append_batch([Append("a", 1, (("T", b"\xc0"),))])[0])
        assert [(e.position, e.version) for e in log.read_stream("a")] == [(1, 1), (2, 2)]


def test_a_writer_killed_before_or_while_sending_reconnects_and_prepares_again(
    postgres: Postgres,
) -> None:
    import psycopg

    schema = postgres.schema()
    log = postgres.log(schema, shared=True)
    _committed(log.append_batch([Append("a", 0, (("T", b"\xc0"),))])[0])
    # Killed between groups: the next group fails (its connection is gone), the one after
    # reconnects, takes the writer lock and prepares the statement again.
    (pid,) = _writer_pids(postgres, schema)
    postgres.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    outcomes, stored = log.append_batch([Append("a", 1, (("T", b"\xc0"),))])
    assert stored == [] and isinstance(outcomes[0], StorageError), outcomes
    _committed(log.append_batch([Append("a", 1, (("T", b"\xc0"),))])[0])
    # Killed while its message waits for the table lock.
    (pid,) = _writer_pids(postgres, schema)
    result: list[Any] = []
    with psycopg.connect(postgres.url) as blocker:
        blocker.execute(f'LOCK TABLE "{schema}".events IN EXCLUSIVE MODE')
        thread = threading.Thread(
            target=lambda: result.append(
                log.append_batch([Append("a", 2, (("T", b"\xc0"),)), Append("b", 0, ())])
            )
        )
        thread.start()
        deadline = time.monotonic() + 5
        while not postgres.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        postgres.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        thread.join(5)
        blocker.rollback()
    ((outcomes, stored),) = result
    assert stored == [] and all(isinstance(o, StorageError) for o in outcomes), outcomes
    assert log.stream_version("a") == 2
    results = _committed(
        log.append_batch([Append("a", 2, (("T", b"\xc0"),)), Append("b", 0, ())])[0]
    )
    assert (results[0].first_position, results[1].first_position) == (3, 4)
    assert [e.position for e in log.read_all()] == [1, 2, 3]


def test_a_group_of_checks_is_answered_while_another_process_holds_the_table_lock(
    postgres: Postgres,
) -> None:
    """A group of checks only (a rejection's probe) writes nothing, so it neither takes nor
    waits for the table lock that another process's group commit holds: it is answered
    meanwhile, at the versions committed (here the connection's statement_timeout would
    fail a check that waited)."""
    with _impatient_writer(postgres) as (log, schema), _table_locked(postgres, schema):
        (check,), _ = log.append_batch([Append("a", 1, ())])
        assert isinstance(check, AppendResult), check
        assert (check.first_position, check.last_position) == (2, 1)
        stale, fresh = log.append_batch([Append("a", 0, ()), Append("b", 0, ())])[0]
        assert isinstance(stale, ConcurrencyError) and stale.actual == 1, stale
        assert isinstance(fresh, AppendResult), fresh


@contextlib.contextmanager
def _impatient_writer(postgres: Postgres) -> Iterator[tuple[PostgresEventLog, str]]:
    """A shared log whose statements time out after 0.3 s, and its schema, with event 1
    committed (stream ``a``, version 1)."""
    schema = postgres.schema()
    log = PostgresEventLog(
        _with_options(postgres.url, "-c statement_timeout=300"), schema=schema, shared=True
    )
    try:
        _committed(log.append_batch([Append("a", 0, (("T", b"\xc0"),))])[0])
        yield log, schema
    finally:
        log.close()


@contextlib.contextmanager
def _table_locked(postgres: Postgres, schema: str) -> Iterator[None]:
    """Another session holds ``schema``'s events table as a group commit does."""
    import psycopg

    with psycopg.connect(postgres.url) as blocker:
        blocker.execute(f'LOCK TABLE "{schema}".events IN EXCLUSIVE MODE')
        yield
        blocker.rollback()


# -- notifications, schemas, options --------------------------------------------------------


def _noticed(log: PostgresEventLog, seconds: float) -> bool:
    """Whether ``log``'s follower hears another process's NOTIFY within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.wait_for_notice(deadline - time.monotonic()):
            return True
    return False


@pytest.mark.parametrize(
    "schema_name", ["actorlog_r6_plain", 'Mixed "Quoted" Schema ç→😀', "  spaced  "]
)
def test_only_groups_that_write_wake_another_processes_follower(
    postgres: Postgres, schema_name: str
) -> None:
    schema_name += postgres.schema()[-6:]  # unique on the server
    quoted = schema_name.replace('"', '""')
    try:
        _groups_that_write_wake(postgres, schema_name)
    finally:
        postgres.execute(f'DROP SCHEMA IF EXISTS "{quoted}" CASCADE')


def _groups_that_write_wake(postgres: Postgres, schema_name: str) -> None:
    log = postgres.log(schema_name, shared=True)
    follower = postgres.log(schema_name, shared=True)
    _committed(follower.append_batch([Append("f", 0, (("T", b"\xc0"),))])[0])
    assert not _noticed(follower, 0.05)  # listening now; its own commit is not news
    _committed(log.append_batch([Append("a", 0, (("T", b"\xc0"),))])[0])
    assert _noticed(follower, 5)
    # A group of checks, and a group whose only write was judged stale: nothing written,
    # no notice.
    _committed(log.append_batch([Append("a", 1, ()), Append("f", 1, ())])[0])
    outcomes, stored = log.append_batch([Append("a", 0, (("T", b"\xc0"),))])
    assert stored == [] and isinstance(outcomes[0], ConcurrencyError)
    assert not _noticed(follower, 0.3)
    # Both paths wrote, and read back, in this schema.
    _committed(log.append_batch([Append("a", ANY, (("T", b"\xc0"),))])[0])
    assert _noticed(follower, 5)
    assert [(e.stream_id, e.version) for e in follower.read_all()] == [
        ("f", 1),
        ("a", 1),
        ("a", 2),
    ]


@pytest.mark.parametrize(
    "options", [{"shared": False, "sync": False}, {"shared": True, "sync": False}]
)
def test_the_one_message_path_with_other_options(
    postgres: Postgres, options: dict[str, Any]
) -> None:
    log = postgres.log(**options)
    for _ in range(3):
        fast = _tricky_group("o", log)
        outcomes, stored = log.append_batch(fast)
        _committed(outcomes)
        assert [_bits(e) for e in log.read_all(stored[0].position, len(stored))] == [
            _bits(e) for e in stored
        ]
    # A stale group under these options too: judged, what passes resent.
    moved = fast[0].stream_id
    outcomes, stored = log.append_batch(
        [Append(moved, 0, (("T", b"\xc0"),)), Append("n", 0, (("T", b"\xc0"),))]
    )
    assert isinstance(outcomes[0], ConcurrencyError) and outcomes[0].actual == 3 * len(_PAYLOADS)
    assert isinstance(outcomes[1], AppendResult), outcomes[1]
    assert [e.stream_id for e in stored] == ["n"]


# -- size -----------------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("ACTORLOG_REVIEW6_BIG"),
    reason="set ACTORLOG_REVIEW6_BIG=1: sends a 530 MiB event (~10 s, ~2 GB of memory)",
)
def test_a_group_the_exact_path_commits_is_not_lost_to_the_message_size_limit(
    postgres: Postgres,
) -> None:
    """PostgreSQL refuses a message over 1 GB. The exact path sends payloads as binary
    (~1 GB of them fit); the one message sends them hex in a JSON string, twice their size,
    so a group of ~512 MiB to ~1 GB of payload, which the engine forms if an event is that
    big (no bound on events or groups), must not go as one message (before the fix: the
    server closed the connection and the group failed with StorageError)."""
    log = postgres.log()
    n = 530 * 2**20
    payload = b"\xc6" + n.to_bytes(4, "big") + bytes(n)  # msgpack bin 32
    outcomes, stored = log.append_batch([Append("big", 0, (("T", payload),))])
    (result,) = _committed(outcomes)
    del payload, stored
    assert (result.first_version, result.last_version) == (1, 1)
    assert log.stream_version("big") == 1


@pytest.mark.skipif(
    not os.environ.get("ACTORLOG_REVIEW6_BIG"),
    reason="set ACTORLOG_REVIEW6_BIG=1: a group of 16,000 events (~40 s, ~5 GB of memory)",
)
def test_a_group_of_many_events_with_escaped_metadata_is_not_lost_to_the_size_limit(
    postgres: Postgres,
) -> None:
    """Metadata the writer admits (check_append: ids of 1,024 bytes, headers of 4,096) is
    repeated on every event, and control characters take six bytes each in the JSON
    document (seven inside the headers' own JSON): one append of 16,000 such events made a
    document over PostgreSQL's 1 GB, while the exact path sends ~0.4 GB and commits it
    (before the fix: StorageError, "invalid memory alloc request size")."""
    from actorlog.engine._log import check_append

    log = postgres.log()
    ctl = "\x01"
    append = check_append(
        Append(
            ctl * 400,
            0,
            tuple((ctl * 400, b"\xc0") for _ in range(16_000)),
            correlation_id=ctl * 1024,
            causation_id=ctl * 1024,
            aggregate_name=ctl * 400,
            principal=ctl * 1024,
            headers=((ctl * 400, ctl * 600),) * 4 + ((ctl * 10, ctl * 86),),
        )
    )
    outcomes, stored = log.append_batch([append])
    (result,) = _committed(outcomes)
    del stored
    assert (result.first_version, result.last_version) == (1, 16_000)
    assert log.stream_version(ctl * 400) == 16_000


def test_groups_on_both_sides_of_the_one_message_bound_round_trip(postgres: Postgres) -> None:
    """Groups of payload exactly at the bound above which a group goes the exact way, and
    just over it, bit for bit."""
    log = postgres.log()
    # A msgpack bin of exactly a quarter of the bound (its header is 2, 3 or 5 bytes).
    quarter = next(
        packed
        for header in (2, 3, 5)
        if len(packed := _pack(b"q" * (_ONE_MESSAGE_MOST_BYTES // 4 - header)))
        == _ONE_MESSAGE_MOST_BYTES // 4
    )
    for count in (4, 5):
        group = [Append(f"m{count}", 0, (("T", quarter),) * count), Append("c", 0, ())]
        outcomes, stored = log.append_batch(group)
        _committed(outcomes)
        assert [_bits(e) for e in log.read_stream(f"m{count}")] == [_bits(e) for e in stored]


def test_session_settings_that_change_literals_do_not_change_what_is_stored(
    postgres: Postgres,
) -> None:
    """The one message binds on the client (quoted literals): a role or DSN may set how the
    server reads string literals (standard_conforming_strings off: backslashes escape) and
    writes floats and bytea as text; every field still round-trips bit for bit."""
    schema = postgres.schema()
    options = (
        "-c standard_conforming_strings=off -c escape_string_warning=off"
        " -c extra_float_digits=0 -c bytea_output=escape"
    )
    log = PostgresEventLog(_with_options(postgres.url, options), schema=schema, shared=True)
    try:
        _, _, fast_stored, exact_stored = _on_both_paths(log)
        for reader in (log, postgres.log(schema)):
            assert [_bits(e) for e in reader.read_all(1, 10_000)] == [
                _bits(e) for e in fast_stored + exact_stored
            ]
    finally:
        log.close()
