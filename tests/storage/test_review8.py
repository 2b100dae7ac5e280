"""Review 8: adversarial tests of the PostgreSQL log's one message when some of a group's
streams moved (``actorlog_guarded_streams``, commit b4342ca): the streams that did not
move are written in the same message, numbered in the group's order, with their command
ids; after a group that found a move the next ``_BY_STREAM_AFTER_A_MOVE`` groups go that
way, others all or nothing (and, when something moved, the rest again by stream).

Every test runs against a real PostgreSQL server (``ACTORLOG_TEST_POSTGRES``) and checks
what ``append_batch`` answers and what the log holds (events, command ids, their seq
numbers) against the log's rule written out on its own (``test_review6._model_outcomes``).
A log starts in the all-or-nothing mode; a group that finds a move switches it to the
by-stream mode; 16 groups that find none switch it back: the tests drive both modes through
the public API only.
"""

from __future__ import annotations

import os
import random
import threading
import time
import unicodedata
from collections.abc import Sequence
from typing import Any, Final

import pytest

from actorlog import ConcurrencyError, InvalidArgument, StorageError
from actorlog.engine._command_ids import CommandIdRetention
from actorlog.engine._log_postgres import _ONE_MESSAGE_MOST_BYTES, _judged
from actorlog.storage import ANY, Append, AppendResult, PostgresEventLog, Snapshot
from tests.storage.test_review6 import (
    _TRICKY,
    _committed,
    _model_outcomes,
    _noticed,
    _observed,
    _with_options,
    _writer_pids,
)
from tests.storage.test_review7 import _payload
from tests.support import Postgres

_E: Final = b"\xc0"
_FORCE_EXACT: Final = (("zz-force-exact", Snapshot(0, 0, b"\xc0", None)),)
_QUIET: Final = 16  # groups that find no move before the log goes all or nothing again


def _a(stream: str, expected: int, n: int = 1, cid: str | None = None, tag: str = "") -> Append:
    events = tuple((f"{tag}{stream}.{expected}.{j}", _E) for j in range(n))
    return Append(stream, expected, events, command_id=cid)


class _Script:
    """Our log and another writer on one schema, and the log's state as the rule says it
    must be: every group's answer, the events, the command ids (found exactly when their
    append committed, with its result) are checked against it after each group."""

    def __init__(self, postgres: Postgres, **options: Any) -> None:
        self.postgres = postgres
        self.schema = postgres.schema()
        self.ours = postgres.log(self.schema, **{"shared": True, **options})
        self.other = postgres.log(self.schema, shared=True)
        self.versions: dict[str, int] = {}
        self.head = 0
        self.log: list[tuple[str, int, str]] = []
        self.committed_ids: list[tuple[str, str, tuple[Any, ...]]] = []
        self.max_ids = options.get("command_ids", CommandIdRetention()).max_ids

    def move(self, *streams: str) -> None:
        """The other writer appends one event to each of ``streams``."""
        for sid in streams:
            version = self.versions.get(sid, 0)
            name = f"other.{sid}.{version}"
            _committed(self.other.append_batch([Append(sid, ANY, ((name, _E),))])[0])
            self.log.append((sid, version + 1, name))
            self.versions[sid] = version + 1
            self.head += 1

    def quiet(self) -> None:
        """Groups that find no move, until the log sends all or nothing again."""
        for _ in range(_QUIET):
            self.ours.append_batch([Append("quiet", self.versions.get("quiet", 0), ())])

    def group(self, group: Sequence[Append]) -> list[tuple[Any, ...]]:
        model, head = _model_outcomes(group, self.versions, self.head)
        outcomes, stored = self.ours.append_batch(group)
        assert [_observed(o) for o in outcomes] == model
        for append, outcome in zip(group, model, strict=True):
            if outcome[0] == "ok":
                self.log += [
                    (append.stream_id, outcome[2] + j, name)
                    for j, (name, _) in enumerate(append.events)
                ]
                if append.command_id is not None:
                    self.committed_ids.append((append.stream_id, append.command_id, outcome))
            elif append.command_id is not None:
                # A failed append's id is never recorded.
                assert self.ours.find_command(append.stream_id, append.command_id) is None
        assert [(e.stream_id, e.version, e.type) for e in stored] == self.log[self.head :]
        assert [e.position for e in stored] == list(range(self.head + 1, head + 1))
        self.head = head
        self.check()
        return model

    def check(self) -> None:
        events = self.ours.read_all(1, 100_000)
        assert [e.position for e in events] == list(range(1, self.head + 1))
        assert [(e.stream_id, e.version, e.type) for e in events] == self.log
        kept = self.committed_ids[-self.max_ids :]
        for sid, cid, outcome in kept:
            found = self.ours.find_command(sid, cid)
            assert found is not None and _observed(found) == outcome, (sid, cid)
        rows = self.postgres.execute(
            f'SELECT seq, stream_id, command_id FROM "{self.schema}".command_ids ORDER BY seq'
        )
        # Numbered with no gap from 1, the newest max_ids kept (the count pruning's bound).
        total = len(self.committed_ids)
        assert [r[0] for r in rows] == list(range(total - len(kept) + 1, total + 1))
        assert [(r[1], r[2]) for r in rows] == [(s, c) for s, c, _ in kept]


def _edge_groups(s: _Script, tag: str) -> list[list[tuple[Any, ...]]]:
    """Groups whose command ids sit at the edges: empty appends with ids at the start and
    the end of the group, before, after and among moved streams' rows, on moved streams,
    several ids on one stream; a group in which every stream moved; a group of checks."""
    v = s.versions.get
    answers = []
    s.move(f"{tag}b")
    answers.append(
        s.group(
            [
                _a(f"{tag}a", v(f"{tag}a", 0), 0, f"{tag}1"),  # empty, first of the group
                _a(f"{tag}b", 0, 2, f"{tag}2"),  # moved
                _a(f"{tag}a", 0, 1, f"{tag}3"),
                _a(f"{tag}b", 2, 0, f"{tag}4"),  # empty, on the moved stream
                _a(f"{tag}c", 0, 0, f"{tag}5"),  # empty, right after moved rows
                _a(f"{tag}b", 2, 1, f"{tag}6"),  # moved
                _a(f"{tag}a", 1, 3, f"{tag}7"),
                _a(f"{tag}c", 0, 2),
                _a(f"{tag}b", 3, 1, f"{tag}8"),  # moved, the group's last row
                _a(f"{tag}c", 2, 0, f"{tag}9"),  # empty, last of the group
            ]
        )
    )
    # Every stream moved, ids on all of them: nothing written, nothing recorded.
    s.move(f"{tag}a", f"{tag}c")
    answers.append(
        s.group(
            [
                _a(f"{tag}a", 4, 1, f"{tag}10"),
                _a(f"{tag}c", 2, 0, f"{tag}11"),
                _a(f"{tag}c", 2, 1, f"{tag}12"),
            ]
        )
    )
    # Checks only (empty appends), one on a moved stream, ids on both sides of it.
    s.move(f"{tag}d")
    answers.append(
        s.group(
            [
                _a(f"{tag}a", 5, 0, f"{tag}13"),
                _a(f"{tag}d", 0, 0, f"{tag}14"),
                _a(f"{tag}e", 0, 0),
                _a(f"{tag}c", 3, 0, f"{tag}15"),
            ]
        )
    )
    # The moved stream's append first and last; the kept ones between, several ids each.
    s.move(f"{tag}a")
    answers.append(
        s.group(
            [
                _a(f"{tag}a", 5, 1, f"{tag}16"),
                _a(f"{tag}c", 3, 1, f"{tag}17"),
                _a(f"{tag}c", 4, 1, f"{tag}18"),
                _a(f"{tag}d", 1, 0, f"{tag}19"),
                _a(f"{tag}c", 5, 0, f"{tag}20"),
                _a(f"{tag}a", 6, 2, f"{tag}21"),
            ]
        )
    )
    return answers


@pytest.mark.parametrize("max_ids", [100_000, 3, 1])
def test_edge_ids_in_both_modes_match_the_rule(postgres: Postgres, max_ids: int) -> None:
    s = _Script(postgres, command_ids=CommandIdRetention(max_ids=max_ids))
    # A fresh log sends all or nothing: the first edge group is sent whole, then by stream;
    # the next ones by stream (a move was found just before).
    whole_first = _edge_groups(s, "p.")
    # The same shapes sent by stream from their first message.
    s.move("q.warm")
    s.group([_a("q.warm", 0)])  # ... after this one found a move
    by_stream = _edge_groups(s, "q.")
    assert [[o[0] for o in g] for g in whole_first] == [[o[0] for o in g] for g in by_stream]
    # All or nothing again after quiet groups: every stream moved, then some.
    v = s.versions
    s.quiet()
    s.move("p.a", "p.c")
    s.group([_a("p.a", v["p.a"] - 1, 1, "x1"), _a("p.c", v["p.c"] - 1, 1, "x2")])
    s.quiet()
    s.move("p.a")
    c = v["p.c"]
    s.group([_a("p.c", c, 0, "x3"), _a("p.a", v["p.a"] - 1, 1, "x4"), _a("p.c", c, 1, "x5")])
    # A group of checks, all or nothing, one stream moved: judged, the rest checked again.
    s.quiet()
    s.move("p.d")
    d, c = v["p.d"], v["p.c"]
    s.group([_a("p.c", c, 0, "x6"), _a("p.d", d - 1, 0, "x7"), _a("p.c", c, 0, "x8")])


# Stream ids that one comparison or another could take for each other: case, trailing and
# leading spaces, Unicode normal forms, ligatures and full-width letters, a lone combining
# mark; a collation (or a trim) that equated them would fail or write the wrong stream.
_LOOKALIKES: Final = (
    ("x", "x ", " x", "X", "\u0078\u00a0"),
    (unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")),
    ("ß", "ss", "SS", "ẞ"),
    ("\ufb01", "fi", "\uff46\uff49"),
    ("\u0301", "\u00b4"),
    ("a\tb", "a b", "a\u2028b"),
    _TRICKY,
)


@pytest.mark.parametrize("by_stream", [False, True])
def test_lookalike_stream_ids_are_told_apart(postgres: Postgres, by_stream: bool) -> None:
    s = _Script(postgres)
    if by_stream:
        s.move("warm")
        s.group([_a("warm", 0, 1)])
    for k, family in enumerate(_LOOKALIKES):
        for m, moved in enumerate(family):
            s.move(moved)
            v = s.versions
            group = [_a(sid, v.get(sid, 0) - (sid == moved), 1, f"{k}.{m}") for sid in family]
            group += [_a(sid, v.get(sid, 0) + (sid != moved), 0, f"{k}.{m}e") for sid in family]
            answers = s.group(group)
            assert [o[0] for o in answers] == [
                "conflict" if a.stream_id == moved else "ok" for a in group
            ]


@pytest.mark.parametrize("by_stream", [False, True])
def test_a_writer_killed_in_either_mode_loses_nothing_and_resumes(
    postgres: Postgres, by_stream: bool
) -> None:
    import psycopg

    s = _Script(postgres)
    s.group([_a("a", 0), _a("b", 0)])
    (pid,) = _writer_pids(postgres, s.schema)  # ours: the other has not written yet
    if by_stream:
        s.move("warm")
        s.group([_a("warm", 0, 1)])
    postgres.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    s.move("a")
    (other_pid,) = _writer_pids(postgres, s.schema)  # ours is gone
    outcomes, stored = s.ours.append_batch([_a("a", 1, cid="k1"), _a("b", 1, cid="k2")])
    assert stored == [] and all(isinstance(o, StorageError) for o in outcomes), outcomes
    s.check()
    # Reconnected: both statements prepared again; a partly moved group is written.
    s.group([_a("a", 1, cid="k1"), _a("b", 1, cid="k2")])
    s.move("b")
    s.group([_a("a", 2, cid="k3"), _a("b", 1, cid="k4"), _a("c", 0, cid="k5")])
    # By stream now; killed while its message waits behind another session's table lock.
    (pid,) = set(_writer_pids(postgres, s.schema)) - {other_pid}
    s.move("a")
    result: list[Any] = []
    group = [_a("a", 3, cid="k6"), _a("c", 1, cid="k7"), _a("b", 3, 0, cid="k8")]
    with psycopg.connect(postgres.url) as blocker:
        blocker.execute(f'LOCK TABLE "{s.schema}".events IN EXCLUSIVE MODE')
        thread = threading.Thread(target=lambda: result.append(s.ours.append_batch(group)))
        thread.start()
        deadline = time.monotonic() + 10
        while not postgres.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        postgres.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        thread.join(10)
        blocker.rollback()
    ((outcomes, stored),) = result
    assert stored == [] and all(isinstance(o, StorageError) for o in outcomes), outcomes
    s.check()
    s.group(group)


def test_a_partial_group_wakes_a_follower_and_an_all_moved_one_does_not(
    postgres: Postgres,
) -> None:
    s = _Script(postgres)
    s.group([_a("a", 0), _a("b", 0)])
    assert not _noticed(s.other, 0.05)
    # All or nothing, every stream moved: nothing written, silence (the other writer's
    # own commits are not news to it).
    s.move("a", "b")
    s.group([_a("a", 1, cid="1"), _a("b", 1, 0, cid="2")])
    assert not _noticed(s.other, 0.3)
    # By stream now: only empty appends with ids committed (ids recorded, no event).
    s.move("a")
    s.group([_a("a", 2, cid="3"), _a("b", 2, 0, cid="4")])
    assert not _noticed(s.other, 0.3)
    s.move("b")
    s.group([_a("a", 3, cid="5"), _a("b", 2, 1, cid="6")])
    assert _noticed(s.other, 5)
    # All or nothing again, partly moved: the first message writes nothing and says
    # nothing; the second writes the rest and wakes the follower once.
    s.quiet()
    assert not _noticed(s.other, 0.05)
    s.move("a")
    s.group([_a("a", 4, cid="7"), _a("b", 3, 1, cid="8")])
    assert _noticed(s.other, 5)
    assert not _noticed(s.other, 0.3)


def _random_group(rng: random.Random, believed: dict[str, int], tag: str) -> list[Append]:
    """Pipelined chains from ``believed`` versions on a few streams, interleaved; empty
    appends among them; most appends with an id of their own (unique per tag)."""
    chains: list[list[Append]] = []
    for sid in rng.sample(sorted(believed), rng.randint(1, 6)):
        version = believed[sid]
        chain = []
        for k in range(rng.randint(1, 3)):
            n = rng.choice((0, 1, 1, 2))
            cid = f"{tag}.{sid}.{k}" if rng.random() < 0.7 else None
            events = tuple((f"{tag}.{sid}.{k}.{j}", _E) for j in range(n))
            chain.append(Append(sid, version, events, command_id=cid))
            version += n
        chains.append(chain)
    group: list[Append] = []
    while chains:
        chain = rng.choice(chains)
        group.append(chain.pop(0))
        if not chain:
            chains.remove(chain)
    return group


def test_writers_racing_at_random_answer_what_the_log_holds(postgres: Postgres) -> None:
    """Three shared logs (one ``sync=False``) in threads append random groups with ids to
    the same few streams, learning versions from their conflicts: every append answered
    committed is in the log at its positions, every one answered failed is not; its id is
    recorded exactly when it committed; seq numbers have no gap."""
    schema = postgres.schema()
    rounds = int(os.environ.get("ACTORLOG_REVIEW8_ROUNDS", "60"))
    streams = [f"s{i}" for i in range(6)]
    logs = [
        postgres.log(schema, shared=True),
        postgres.log(schema, shared=True),
        postgres.log(schema, shared=True, sync=False),
    ]
    answered: list[list[tuple[Append, object]]] = [[] for _ in logs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(logs))

    def writer(k: int) -> None:
        try:
            start.wait(30)
            rng = random.Random(800 + k)
            believed = dict.fromkeys(streams, 0)
            for r in range(rounds):
                group = _random_group(rng, believed, f"w{k}.{r}")
                outcomes, _ = logs[k].append_batch(group)
                for append, outcome in zip(group, outcomes, strict=True):
                    answered[k].append((append, outcome))
                    if isinstance(outcome, AppendResult):
                        believed[append.stream_id] = outcome.last_version
                    elif isinstance(outcome, ConcurrencyError) and not outcome.after_failed:
                        believed[append.stream_id] = outcome.actual
                    else:
                        assert isinstance(outcome, ConcurrencyError), outcome
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(logs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    events = logs[0].read_all(1, 1_000_000)
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    by_type = {e.type: e for e in events}
    assert len(by_type) == len(events)
    for stream in streams:
        assert [e.version for e in events if e.stream_id == stream] == list(
            range(1, sum(e.stream_id == stream for e in events) + 1)
        )
    committed = failed = 0
    for k, pairs in enumerate(answered):
        for append, outcome in pairs:
            names = [name for name, _ in append.events]
            if isinstance(outcome, AppendResult):
                committed += 1
                got = [by_type[name] for name in names]
                assert [(e.stream_id, e.version, e.position) for e in got] == [
                    (append.stream_id, outcome.first_version + j, outcome.first_position + j)
                    for j in range(len(names))
                ]
                if append.command_id is not None:
                    found = logs[k].find_command(append.stream_id, append.command_id)
                    assert found == outcome
            else:
                failed += 1
                assert not any(name in by_type for name in names), (append, outcome)
                if append.command_id is not None:
                    assert logs[k].find_command(append.stream_id, append.command_id) is None
    assert committed > 50 and failed > 20, (committed, failed)
    seqs = [r[0] for r in postgres.execute(f'SELECT seq FROM "{schema}".command_ids ORDER BY seq')]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.parametrize("by_stream", [False, True])
def test_a_big_group_with_half_its_streams_moved(postgres: Postgres, by_stream: bool) -> None:
    """Many one-event appends, two a stream, half the streams moved: the kept half is
    written in group order with its ids (ACTORLOG_REVIEW8_STREAMS for the 10,000-stream
    size this review timed)."""
    n = int(os.environ.get("ACTORLOG_REVIEW8_STREAMS", "500"))
    s = _Script(postgres)
    streams = [f"big{i:05}" for i in range(n)]
    s.group([_a(sid, 0, 1) for sid in streams])
    if by_stream:
        s.move("warm")
        s.group([_a("warm", 0, 1)])
    s.move(*streams[::2])
    group = [_a(sid, 1 + j, 1, f"c{j}", tag="g.") for j in range(2) for sid in streams]
    answers = s.group(group)
    assert sum(o[0] == "ok" for o in answers) == n


@pytest.mark.parametrize("by_stream", [False, True])
def test_payloads_at_the_bound_in_a_partly_moved_group(postgres: Postgres, by_stream: bool) -> None:
    """The moved stream's payloads stay in the message's bytea, unwritten: the kept
    streams' payloads are cut from it at their own offsets, bit for bit."""
    s = _Script(postgres)
    if by_stream:
        s.move("warm")
        s.group([_a("warm", 0, 1)])
    bound = _ONE_MESSAGE_MOST_BYTES
    for k, total in enumerate((bound - 1, bound, bound + 1)):
        a, b, c = f"a{k}", f"b{k}", f"c{k}"
        parts = [_payload(1), _payload(total // 3), _payload(total // 3), _payload(2)]
        parts.append(_payload(total - sum(map(len, parts))))
        assert sum(map(len, parts)) == total
        s.move(b)
        group = [
            Append(a, 0, ((f"{a}.0", parts[0]), (f"{a}.1", parts[1]))),
            Append(b, 0, ((f"{b}.0", parts[2]),)),  # moved
            Append(c, 0, ((f"{c}.0", parts[3]),)),
            Append(a, 2, ((f"{a}.2", parts[4]),)),
        ]
        s.group(group)
        sent = {name: payload for append in group for name, payload in append.events}
        for event in s.ours.read_all(1, 100_000):
            if event.type in sent:
                assert bytes(event.payload) == sent[event.type], event.type
        assert s.ours.stream_version(a) == 3 and s.ours.stream_version(c) == 1


def test_an_unshared_log_expecting_wrong_versions_in_both_modes(postgres: Postgres) -> None:
    """``shared=False`` (no NOTIFY in its statements): a stream "moves" when the caller
    expects a version it is not at, ahead or behind; the rest is written all the same."""
    s = _Script(postgres, shared=False)
    s.group([_a("a", 0, 2, "1"), _a("b", 0, 1, "2"), _a("c", 0, 0, "3")])
    for round_ in range(20):  # all or nothing first, then by stream, then quiet again
        wrong = ("a", "b", "c")[round_ % 3]
        v = s.versions
        group = [
            _a(
                sid,
                v.get(sid, 0) + (0 if sid != wrong else (-1, 1)[round_ % 2]),
                1,
                f"r{round_}{sid}",
            )
            for sid in ("a", "b", "c")
        ]
        group.append(_a("b", group[1].expected_version + 1, 0, f"r{round_}e"))
        s.group(group)
        if round_ == 9:
            s.quiet()


def test_an_append_on_a_moved_stream_never_passes_the_rule() -> None:
    """The "unreachable" fallback of ``_commit_guarded``: every chain of appends that
    follow one another (0-2 events each, up to four) from an assumed version, judged at
    any other version the stream could be at, fails at every append."""
    import itertools

    for length in range(1, 5):
        for sizes in itertools.product(range(3), repeat=length):
            for assumed in range(3):
                for actual in range(8):
                    if actual == assumed:
                        continue
                    versions = {"s": actual}
                    chained: dict[str, set[int]] = {}
                    expected = assumed
                    for n in sizes:
                        append = _a("s", expected, n)
                        assert _judged(append, versions, chained) is not None
                        expected += n
                    assert versions == {"s": actual}


def test_a_prepare_that_fails_closes_the_connection_and_the_next_group_prepares_again(
    postgres: Postgres,
) -> None:
    """The writer connection's PREPAREs (the all-or-nothing and the by-stream statement)
    fail behind another session's lock (``lock_timeout``): the group fails whole, nothing
    written; the next group reconnects, prepares both and commits, by stream too."""
    import psycopg

    schema = postgres.schema()
    ours = PostgresEventLog(_with_options(postgres.url, "-c lock_timeout=200"), schema=schema)
    try:
        with psycopg.connect(postgres.url) as blocker:
            blocker.execute(f'LOCK TABLE "{schema}".command_ids IN ACCESS EXCLUSIVE MODE')
            outcomes, stored = ours.append_batch([_a("a", 0, cid="1"), _a("b", 0)])
            assert stored == [] and all(isinstance(o, StorageError) for o in outcomes)
            blocker.rollback()
        assert ours.read_all() == [] and ours.find_command("a", "1") is None
        _committed(ours.append_batch([_a("a", 0, cid="1"), _a("b", 0)])[0])
        # A stream that moves (the caller expects a version it is not at): by stream next.
        outcomes, stored = ours.append_batch([_a("a", 5, cid="2"), _a("b", 1, cid="3")])
        assert isinstance(outcomes[0], ConcurrencyError) and isinstance(outcomes[1], AppendResult)
        outcomes, stored = ours.append_batch([_a("a", 5, cid="4"), _a("b", 2, cid="5")])
        assert isinstance(outcomes[0], ConcurrencyError) and isinstance(outcomes[1], AppendResult)
        assert [(e.stream_id, e.version) for e in ours.read_all()] == [
            ("a", 1),
            ("b", 1),
            ("b", 2),
            ("b", 3),
        ]
        assert ours.find_command("b", "5") == outcomes[1]
    finally:
        ours.close()


def test_a_second_prepare_that_fails_leaves_no_first_behind(postgres: Postgres) -> None:
    """Only the by-stream statement fails to prepare (a ``row_number()`` of another
    schema ahead of pg_catalog on the search path: not a window function), after the
    all-or-nothing one was prepared. The group fails whole; once the cause is gone the
    next group prepares both again on a new connection (on the old one, the first would
    exist already, and every group would fail)."""
    schema, shadow = postgres.schema(), postgres.schema()
    postgres.execute(f'CREATE SCHEMA "{shadow}"')
    postgres.execute(
        f'CREATE FUNCTION "{shadow}".row_number() RETURNS bigint LANGUAGE sql AS $$SELECT 1$$'
    )
    url = _with_options(postgres.url, f"-c search_path={shadow},pg_catalog")
    ours = PostgresEventLog(url, schema=schema)
    try:
        outcomes, stored = ours.append_batch([_a("a", 0, cid="1")])
        assert stored == [] and isinstance(outcomes[0], StorageError), outcomes
        postgres.execute(f'DROP FUNCTION "{shadow}".row_number()')
        _committed(ours.append_batch([_a("a", 0, cid="1")])[0])
        assert [(e.stream_id, e.version) for e in ours.read_all()] == [("a", 1)]
    finally:
        ours.close()
        postgres.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')


# -- defects ------------------------------------------------------------------------------


@pytest.mark.parametrize("expected", [True, 1.0, "1", None])
@pytest.mark.parametrize("by_stream", [False, True])
def test_an_expected_version_that_is_not_an_int_is_refused_at_the_call(
    postgres: Postgres, expected: Any, by_stream: bool
) -> None:
    """An expected version that is not an int (a bool: ``True == 1``; a float) is refused
    with ``InvalidArgument`` before anything is sent, on both paths, as an invalid stream
    id is (the contract's ``check_expected_version``). Review 8 found the one message
    sending it in its JSON as ``true`` / ``1.0``, which the server's bigint refused: every
    append of the group, the valid one on another stream too, failed with a StorageError;
    the LMDB and memory logs decided on a bool as on the int it equals."""
    for snapshots in ((), _FORCE_EXACT):  # the one message, then the exact way
        s = _Script(postgres)
        s.group([_a("s", 0)])
        if by_stream:
            s.move("warm")
            s.group([_a("warm", 0)])
        head = s.ours.head_position()
        with pytest.raises(InvalidArgument):
            s.ours.append_batch(
                [_a("t", 0, cid="c"), Append("s", expected, (("E", _E),))], snapshots=snapshots
            )
        assert s.ours.head_position() == head
        assert s.ours.find_command("t", "c") is None
        _committed(s.ours.append_batch([_a("t", 0, cid="c")])[0])  # nothing of it counted


@pytest.mark.parametrize(
    "expected", [-(2**63) - 1, -(2**70), -(2**63), -5, 2**63 - 1, 2**63, 2**64 - 1]
)
@pytest.mark.parametrize("by_stream", [False, True])
def test_an_expected_version_beyond_bigint_fails_alone_on_both_paths(
    postgres: Postgres, expected: int, by_stream: bool
) -> None:
    """An expected version no stream can be at fails alone with a conflict, the rest of
    its group commits, on both paths. Below bigint's range the one message sent it in its
    JSON, which the server refused: every append of the group failed with a StorageError
    (above the range was routed to the exact path already)."""
    answers = []
    for snapshots in ((), _FORCE_EXACT):
        s = _Script(postgres)
        s.group([_a("s", 0)])
        if by_stream:
            s.move("warm")
            s.group([_a("warm", 0)])
        outcomes, stored = s.ours.append_batch(
            [Append("s", expected, (("E", _E),)), _a("t", 0, cid="c")], snapshots=snapshots
        )
        answers.append(
            (
                [
                    _observed(o) if isinstance(o, (AppendResult, ConcurrencyError)) else repr(o)
                    for o in outcomes
                ],
                [(e.stream_id, e.version) for e in stored],
                [(e.stream_id, e.version) for e in s.ours.read_all()],
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][0][0] == ("conflict", "s", expected, 1, False)
