"""Review 7: adversarial tests of what the PostgreSQL log's one-message group commit
(``PostgresEventLog._commit_guarded``) gained after review 6: command ids recorded, checked
and pruned in the one message, payloads sent as one bytea, and the log's module loaded
lazily (``actorlog.storage.__getattr__``).

Every test runs against a real PostgreSQL server (``ACTORLOG_TEST_POSTGRES``). A group
with no snapshot or cache and every append at an exact version takes the one message; the
same group with a snapshot riding along (``_FORCE_EXACT``) takes the exact (two round trip)
way, which is how the tests compare the two paths: the same script on two logs must give
the same outcomes, events and ``command_ids`` rows (timestamps aside).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import pytest

from actorlog import ConcurrencyError, StorageError
from actorlog.engine._command_ids import CommandIdRetention
from actorlog.engine._log_postgres import _ONE_MESSAGE_MOST_BYTES
from actorlog.storage import (
    Append,
    AppendResult,
    DuplicateCommand,
    PostgresEventLog,
    Snapshot,
    StoredEvent,
)
from tests.support import Postgres

_pack = msgspec.msgpack.encode
_P: Final = _pack(1)
_FORCE_EXACT: Final = (("zz-force-exact", Snapshot(0, 0, _pack(None), None)),)

Group = Sequence[Append]
_ROOT: Final = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _outcome(o: object) -> tuple[Any, ...]:
    """An outcome without its timestamp: what both paths must agree on."""
    if isinstance(o, AppendResult):
        versions = (o.first_version, o.last_version)
        return ("ok", o.stream_id, *versions, o.first_position, o.last_position)
    if isinstance(o, DuplicateCommand):
        return ("dup", o.command_id, *_outcome(o.result)[1:])
    return (type(o).__name__,)


def _ids(postgres: Postgres, log: PostgresEventLog) -> list[tuple[Any, ...]]:
    """The log's ``command_ids`` rows, ``recorded_at`` aside, by seq."""
    return [
        tuple(r)
        for r in postgres.execute(
            f"SELECT seq, stream_id, command_id, first_version, last_version, first_position,"
            f' last_position FROM "{log.schema}".command_ids ORDER BY seq'
        )
    ]


def _events(log: PostgresEventLog) -> list[tuple[Any, ...]]:
    return [
        (e.position, e.stream_id, e.version, e.type, bytes(e.payload), e.command_id)
        for e in log.read_all(1, 100_000)
    ]


def _run(
    log: PostgresEventLog, groups: Sequence[Group], exact: bool, newest_kept: bool = True
) -> list[list[Any]]:
    out = []
    for group in groups:
        if callable(group):
            group()
            continue
        outcomes, stored = log.append_batch(group, snapshots=_FORCE_EXACT if exact else ())
        _check_found(log, group, outcomes, stored, newest_kept)
        out.append([_outcome(o) for o in outcomes])
    return out


def _check_found(
    log: PostgresEventLog,
    group: Group,
    outcomes: Sequence[object],
    stored: Sequence[StoredEvent],
    newest_kept: bool,
) -> None:
    """Every append of the group that committed with a command id is found as exactly its
    result (timestamp included); every event returned is stored bit for bit."""
    last = None
    for append, outcome in zip(group, outcomes, strict=True):
        if isinstance(outcome, AppendResult) and append.command_id is not None:
            found = log.find_command(append.stream_id, append.command_id)
            # (an earlier id of the group may be pruned by a tiny max_ids already)
            assert found is None or found == outcome
            last = (append, outcome)
    if last is not None and newest_kept:  # the newest is kept (max_ids >= 1), unless aged
        assert log.find_command(last[0].stream_id, last[0].command_id or "") == last[1]
    by_position = {e.position: e for e in log.read_all(1, 100_000)}
    for event in stored:
        assert by_position[event.position] == event
        assert bytes(by_position[event.position].payload) == bytes(event.payload)


def _both(
    postgres: Postgres, groups: Sequence[Any], newest_kept: bool = True, **options: Any
) -> tuple[PostgresEventLog, PostgresEventLog, list[list[Any]]]:
    """Run ``groups`` (or callables between them) on a log the one-message way and on one
    the exact way; assert they agree; the logs and the outcomes."""
    fast, exact = postgres.log(**options), postgres.log(**options)
    got_fast = _run(fast, groups, False, newest_kept)
    got_exact = _run(exact, groups, True, newest_kept)
    assert got_fast == got_exact
    assert _events(fast) == _events(exact)
    # The same ids, in the same order of recording (seq). Not the same seqs: a group that
    # finds an aged-out id recorded prunes it in its one message before the exact way
    # records it again, numbering from the max seq left (1 once the table is empty).
    assert [r[1:] for r in _ids(postgres, fast)] == [r[1:] for r in _ids(postgres, exact)]
    return fast, exact, got_fast


def _a(stream: str, expected: int, n: int = 1, cid: str | None = None) -> Append:
    return Append(stream, expected, (("E", _P),) * n, command_id=cid)


# -- command ids -------------------------------------------------------------------------


def test_retries_answer_the_first_result_on_both_paths(postgres: Postgres) -> None:
    groups = [
        [_a("s", 0, 2, "c1")],
        [_a("s", 0, 2, "c1")],  # a retry at the stale version
        [_a("s", 2, 1, "c1")],  # at the current version
        [_a("t", 0, 1, "c1")],  # the same id on another stream: a new command
        [_a("s", 2, 1, "c2"), _a("s", 3, 1, "c1")],  # a duplicate after a passing append
    ]
    fast, _, got = _both(postgres, groups)
    first = ("s", 1, 2, 1, 2)
    assert got[1] == [("dup", "c1", *first)]
    assert got[2] == [("dup", "c1", *first)]
    assert got[3] == [("ok", "t", 1, 1, 3, 3)]
    assert got[4][0] == ("ok", "s", 3, 3, 4, 4) and got[4][1] == ("dup", "c1", *first)
    assert [r[0] for r in _ids(postgres, fast)] == [1, 2, 3]


def test_ids_of_several_appends_of_one_stream_and_empty_appends(postgres: Postgres) -> None:
    groups = [
        [_a("x", 0)],
        [
            _a("s", 0, 2, "a"),
            _a("s", 2, 0, "empty"),  # no events: versions 3..2, positions head+1..head
            _a("s", 2, 3, "b"),
            _a("t", 0, 1, "a"),
            _a("u", 0, 0, "e2"),
        ],
        [_a("s", 5, 0, "empty")],  # the empty append's retry
        [_a("v", 0, 0, "only"), _a("w", 0, 0, "only")],  # a group of empty appends only
        [_a("v", 0, 0, "only")],
    ]
    fast, _, got = _both(postgres, groups)
    assert got[1] == [
        ("ok", "s", 1, 2, 2, 3),
        ("ok", "s", 3, 2, 4, 3),
        ("ok", "s", 3, 5, 4, 6),
        ("ok", "t", 1, 1, 7, 7),
        ("ok", "u", 1, 0, 8, 7),
    ]
    assert got[2] == [("dup", "empty", "s", 3, 2, 4, 3)]
    assert got[3] == [("ok", "v", 1, 0, 8, 7), ("ok", "w", 1, 0, 8, 7)]
    assert got[4] == [("dup", "only", "v", 1, 0, 8, 7)]
    seqs = [r[0] for r in _ids(postgres, fast)]
    assert seqs == list(range(1, len(seqs) + 1)) == list(range(1, 8))


def test_aged_out_ids_are_replaced_as_the_exact_path_replaces_them(postgres: Postgres) -> None:
    age = 0.3
    groups: list[Any] = [
        [_a("s", 0, 1, "c"), _a("t", 0, 1, "d")],
        lambda: time.sleep(age + 0.05),
        [_a("s", 1, 1, "c")],  # aged out: a new command, recorded again
        [_a("s", 1, 1, "c")],  # and now kept: its retry is a duplicate of the new one
    ]
    fast, _, got = _both(postgres, groups, command_ids=CommandIdRetention(max_age=age))
    assert got[1] == [("ok", "s", 2, 2, 3, 3)]
    assert got[2] == [("dup", "c", "s", 2, 2, 3, 3)]
    # "d" aged out and was pruned by the group that recorded "c" again; "c" is kept once.
    assert [r[1:3] for r in _ids(postgres, fast)] == [("s", "c")]
    assert fast.find_command("t", "d") is None


@pytest.mark.parametrize("max_ids", [1, 2, 3])
def test_count_pruning_keeps_the_bound_on_both_paths(postgres: Postgres, max_ids: int) -> None:
    groups: list[Any] = []
    version = 0
    for round_ in range(5):
        size = round_ % 3 + 1
        groups.append([_a("s", version + i, 1, f"c{round_}-{i}") for i in range(size)])
        version += size
    fast, _, got = _both(postgres, groups, command_ids=CommandIdRetention(max_ids=max_ids))
    recorded = [
        (f"c{r}-{i}", res) for r, g in enumerate(got) for i, res in enumerate(g) if res[0] == "ok"
    ]
    # Never fewer than the bound: the newest max_ids are answered with their results.
    for cid, res in recorded[-max_ids:]:
        found = fast.find_command("s", cid)
        assert found is not None and _outcome(found) == res
    # And the retry of each kept one is a duplicate, of an older one a conflict.
    outcomes, _ = fast.append_batch([_a("s", 0, 1, cid) for cid, _ in recorded[-max_ids:]])
    assert all(isinstance(o, DuplicateCommand) for o in outcomes)


def test_huge_max_ids_and_infinite_age(postgres: Postgres) -> None:
    import math

    groups = [[_a("s", 0, 1, "c")], [_a("s", 0, 1, "c")], [_a("s", 1, 1, "d")]]
    _, _, got = _both(
        postgres, groups, command_ids=CommandIdRetention(max_ids=2**70, max_age=math.inf)
    )
    assert got[1] == [("dup", "c", "s", 1, 1, 1, 1)]


def test_a_second_attempt_records_only_the_ids_that_committed(postgres: Postgres) -> None:
    schema = postgres.schema()
    mine = postgres.log(schema, shared=True)
    other = postgres.log(schema, shared=True)
    assert mine.append_batch([_a("s", 0), _a("t", 0)])[0][0].first_position == 1  # type: ignore[union-attr]
    other.append_batch([_a("s", 1)])  # "s" moved behind mine's back
    group = [_a("s", 1, 1, "lost"), _a("s", 2, 1, "chained"), _a("t", 1, 2, "won")]
    outcomes, _ = mine.append_batch(group)
    assert isinstance(outcomes[0], ConcurrencyError)
    assert isinstance(outcomes[1], ConcurrencyError)  # on top of the one that failed
    assert _outcome(outcomes[2]) == ("ok", "t", 2, 3, 4, 5)
    assert mine.find_command("s", "lost") is None
    assert mine.find_command("s", "chained") is None
    assert mine.find_command("t", "won") == outcomes[2]
    assert [r[1:] for r in _ids(postgres, mine)] == [("t", "won", 2, 3, 4, 5)]
    # The failed ids are free: their commands, retried at the right version, commit.
    outcomes, _ = mine.append_batch([_a("s", 2, 1, "lost")])
    assert _outcome(outcomes[0]) == ("ok", "s", 3, 3, 6, 6)
    assert [r[0] for r in _ids(postgres, mine)] == [1, 2]


@pytest.mark.parametrize("mixed", [False, True])
def test_two_shared_logs_racing_with_command_ids(postgres: Postgres, mixed: bool) -> None:
    # mixed: the second log's groups go the exact way, racing the first's one messages.
    schema = postgres.schema()
    logs = [postgres.log(schema, shared=True) for _ in range(2)]
    rounds = int(os.environ.get("ACTORLOG_REVIEW7_ROUNDS", "40"))
    results: list[list[tuple[Append, object]]] = [[], []]
    errors: list[BaseException] = []

    def race(k: int) -> None:
        try:
            log = logs[k]
            for r in range(rounds):
                # Each log retries every command once (a lost answer): the retry must be a
                # duplicate of the first, whichever log's group recorded it.
                group = []
                for stream in ("a", "b", f"own{k}"):
                    version = log.stream_version(stream)
                    group.append(_a(stream, version, 1 + r % 2, f"{stream}-{r}"))
                snaps = _FORCE_EXACT if mixed and k == 1 else ()
                outcomes, _ = log.append_batch(group, snapshots=snaps)
                results[k].extend(zip(group, outcomes, strict=True))
                retry, _ = log.append_batch(group, snapshots=snaps)
                results[k].extend(zip(group, retry, strict=True))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=race, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = _ids(postgres, logs[0])
    seqs = [r[0] for r in rows]
    assert seqs == sorted(set(seqs)) and seqs == list(range(1, len(seqs) + 1))
    recorded = {(r[1], r[2]): r[3:] for r in rows}
    committed: dict[tuple[str, str], AppendResult] = {}
    for append, outcome in results[0] + results[1]:
        assert append.command_id is not None
        key = (append.stream_id, append.command_id)
        if isinstance(outcome, AppendResult):
            # One commit for each (stream, id), across both logs.
            assert key not in committed
            committed[key] = outcome
    for append, outcome in results[0] + results[1]:
        assert append.command_id is not None
        key = (append.stream_id, append.command_id)
        if isinstance(outcome, DuplicateCommand):
            assert outcome.result == committed[key]
        else:
            assert isinstance(outcome, (AppendResult, ConcurrencyError))
    assert set(recorded) == set(committed)
    for key, result in committed.items():
        assert recorded[key] == (
            result.first_version,
            result.last_version,
            result.first_position,
            result.last_position,
        )
        assert logs[1].find_command(*key) == result
    # Every committed append's events are where its result says.
    events = {(e.stream_id, e.version): e for e in logs[0].read_all(1, 100_000)}
    for (stream, cid), result in committed.items():
        for v in range(result.first_version, result.last_version + 1):
            e = events[(stream, v)]
            assert e.command_id == cid
            assert result.first_position <= e.position <= result.last_position


# -- payloads as one bytea ---------------------------------------------------------------


def _payload(total: int) -> bytes:
    """A msgpack value of exactly ``total`` bytes: a bin (its header included) of every
    byte value, or a fixint."""
    if total == 1:
        return _pack(7)
    for header in (2, 3, 5):
        body = total - header
        data = _pack(bytes(i % 256 for i in range(body)))
        if len(data) == total:
            return data
    raise AssertionError(total)


def test_payloads_at_the_bound_and_around_it(postgres: Postgres) -> None:
    bound = _ONE_MESSAGE_MOST_BYTES
    groups: list[Group] = []
    for total in (bound - 1, bound, bound + 1):
        # Two appends whose events interleave in the bytea (several events an append).
        first = [_payload(1), _payload(total // 2 - 1), _payload(3)]
        rest = total - sum(map(len, first))
        second = [_payload(rest - 1), _payload(1)]
        assert sum(map(len, first + second)) == total
        n = len(groups)
        groups.append(
            [
                Append(f"a{n}", 0, tuple((f"t{i}", p) for i, p in enumerate(first))),
                Append(f"b{n}", 0, tuple((f"t{i}", p) for i, p in enumerate(second))),
                Append(f"a{n}", 3, (("x", _payload(1)),)),
            ]
        )
    _both(postgres, groups)


def test_many_tiny_and_odd_payloads(postgres: Postgres) -> None:
    odd = [
        _pack(None),
        _pack(b""),
        _pack(""),
        _pack(b"\x00"),
        _pack(b"\\"),
        _pack(b"'"),
        _pack(b"\\x00'\\\\''"),
        _pack(b"\xff\xfe\x00\x01"),
        _pack("\\'E'\x00"),
        _pack(bytes(range(256))),
    ]
    groups = [
        [Append(f"s{k}", 0, tuple(("t", p) for p in odd * 50)) for k in range(3)],
        [Append("tiny", 0, (("t", _pack(i % 128)),) * 1) for i in range(1)]
        + [Append(f"tiny{i}", 0, (("t", _pack(i % 128)),)) for i in range(300)],
    ]
    _both(postgres, groups)


def test_odd_bytes_without_standard_conforming_strings(postgres: Postgres) -> None:
    """A server or role with ``standard_conforming_strings=off`` reads backslashes in
    plain literals as escapes: the client-side binding must quote for it."""
    url = _url_with(postgres.url, options="-c standard_conforming_strings=off")
    schema = postgres.schema()
    log = PostgresEventLog(url, schema=schema)
    try:
        text = "a\\b'c\\\\'\"\\u0041\\x41 E'\\''"
        payload = _pack([bytes(range(256)), text, b"\\\\'"])
        append = Append(
            "s\\'1",
            0,
            ((text, payload), ("e", _pack(b"\\"))),
            correlation_id=text,
            command_id=text,
            headers=((text, text),),
        )
        outcomes, stored = log.append_batch([append])
        assert isinstance(outcomes[0], AppendResult)
        back = log.read_stream("s\\'1")
        assert back == stored
        assert [bytes(e.payload) for e in back] == [payload, _pack(b"\\")]
        assert back[0].type == text and back[0].headers == ((text, text),)
        assert log.find_command("s\\'1", text) == outcomes[0]
        retry, _ = log.append_batch([append])
        assert isinstance(retry[0], DuplicateCommand) and retry[0].result == outcomes[0]
    finally:
        log.close()


# -- the module loaded lazily ------------------------------------------------------------


def _python(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lazy_name_pickles_star_imports_and_reprs() -> None:
    out = _python(
        "import pickle, sys\n"
        "from actorlog.storage import *\n"
        "print(PostgresEventLog.__module__, PostgresEventLog.__qualname__)\n"
        "import actorlog.storage as s\n"
        "assert pickle.loads(pickle.dumps(PostgresEventLog)) is s.PostgresEventLog\n"
        "print('PostgresEventLog' in dir(s))\n"
    )
    module, qualname = out.split()[:2]
    assert (module, qualname) == ("actorlog.storage", "PostgresEventLog")
    assert pickle.loads(pickle.dumps(PostgresEventLog)) is PostgresEventLog


def test_engine_open_on_a_url_before_anything_imported_the_module(postgres: Postgres) -> None:
    # Engine.open("postgresql://...") uses the default schema, "actorlog": dropped around
    # the test, as tests/engine/test_engine_on_postgres.py does.
    postgres.execute("DROP SCHEMA IF EXISTS actorlog CASCADE")
    try:
        out = _python(
            "import sys, anyio\n"
            "import actorlog\n"
            "assert 'actorlog.engine._log_postgres' not in sys.modules\n"
            "assert 'psycopg' not in sys.modules\n"
            "async def main():\n"
            "    async with actorlog.Engine.open(sys.argv[1], aggregates=[]) as engine:\n"
            "        print(engine.log.head_position())\n"
            "    import actorlog.storage as s\n"
            "    from actorlog.engine._log_postgres import PostgresEventLog\n"
            "    print(s.PostgresEventLog is PostgresEventLog)\n"
            "anyio.run(main)\n",
            postgres.url,
        )
        assert out.split() == ["0", "True"]
    finally:
        postgres.execute("DROP SCHEMA IF EXISTS actorlog CASCADE")


def test_the_cli_on_a_url_in_a_fresh_process(postgres: Postgres) -> None:
    log = postgres.log()
    outcomes, _ = log.append_batch([_a("s", 0, 3, "c")])
    assert isinstance(outcomes[0], AppendResult)
    done = subprocess.run(
        [sys.executable, "-m", "actorlog", "stream", postgres.url, "s", "--schema", log.schema],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("E") >= 3


def test_the_process_managers_lease_of_two_shared_logs(postgres: Postgres) -> None:
    schema = postgres.schema()
    first, second = (postgres.log(schema, shared=True) for _ in range(2))
    one, two = first.open_lease("pm"), second.open_lease("pm")
    try:
        assert one.try_acquire()
        assert not two.try_acquire()
        assert one.holds()
        one.release()
        assert two.try_acquire() and two.holds()
    finally:
        one.close()
        two.close()


def test_a_released_lease_is_free_at_once(postgres: Postgres) -> None:
    # release() unlocks before it closes: a closed session's locks go only once its server
    # process has exited, and a successor asking meanwhile was refused (seen once under
    # load in the test above).
    schema = postgres.schema()
    first, second = (postgres.log(schema, shared=True) for _ in range(2))
    one, two = first.open_lease("pm"), second.open_lease("pm")
    try:
        for handover in range(50):
            holder, successor = (one, two) if handover % 2 == 0 else (two, one)
            assert holder.try_acquire(), handover
            holder.release()
            assert successor.try_acquire(), handover
            successor.release()
    finally:
        one.close()
        two.close()


def test_mypy_sees_the_lazy_name(tmp_path: Any) -> None:
    host = tmp_path / "host.py"
    host.write_text(
        "import actorlog.storage\n"
        "from actorlog.storage import PostgresEventLog\n"
        "def open_it(url: str) -> actorlog.storage.EventLog:\n"
        "    log: PostgresEventLog = actorlog.storage.PostgresEventLog(url, shared=True)\n"
        "    return log\n"
        "def wrong(url: str) -> int:\n"
        "    return actorlog.storage.PostgresEventLog(url)  # an error mypy must see\n"
    )
    done = subprocess.run(
        # Errors of the host file only: actorlog's own modules are checked by CI's mypy
        # run, and under the lowest dependency versions (lmdb without types) --strict
        # finds an Any in them that says nothing about the lazy name.
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--follow-imports=silent",
            str(host),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=_ROOT,  # the package found as the repo's (an editable install hides it)
    )
    lines = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(lines) == 1 and "host.py:7:" in lines[0], done.stdout + done.stderr


def test_dir_and_help_of_storage_name_the_lazy_class_before_it_loads() -> None:
    """``help(actorlog.storage)`` and ``dir()`` (IDEs, ``inspect.getmembers``) list a
    module's names from ``dir()``: the class loaded on first use must be among them
    before anything loaded it (PEP 562's ``__dir__``)."""
    out = _python(
        "import sys, pydoc\n"
        "import actorlog.storage as s\n"
        "assert 'actorlog.engine._log_postgres' not in sys.modules\n"
        "print('PostgresEventLog' in dir(s))\n"
        "text = pydoc.render_doc(s, renderer=pydoc.plaintext)\n"
        "print('class PostgresEventLog' in text)\n"
        "print(sorted(set(s.__all__) - set(dir(s))))\n"
    )
    assert out.split() == ["True", "True", "[]"]


def _url_with(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return parts._replace(query=encoded).geturl()


@pytest.mark.parametrize("exact", [False, True])
def test_a_client_encoding_in_the_url_does_not_change_what_is_stored(
    postgres: Postgres, exact: bool
) -> None:
    """A DSN (or ``PGCLIENTENCODING``) may ask for another client encoding: the log's
    strs are Unicode whatever it asks, so a character the encoding lacks is stored (the
    one message binds its whole JSON document in the client encoding), and a log on that
    DSN reads what a UTF-8 one wrote."""
    schema = postgres.schema()
    latin = PostgresEventLog(
        _url_with(postgres.url, client_encoding="LATIN1"), schema=schema, shared=True
    )
    try:
        plain = postgres.log(schema, shared=True)
        text = "\U0001f600 \u20ac \u00e9"
        append = Append(
            "s", 0, ((text, _P),), correlation_id=text, command_id=text, headers=((text, text),)
        )
        outcomes, stored = latin.append_batch([append], snapshots=_FORCE_EXACT if exact else ())
        assert isinstance(outcomes[0], AppendResult)
        assert latin.read_stream("s") == stored == plain.read_stream("s")
        assert latin.find_command("s", text) == outcomes[0] == plain.find_command("s", text)
        written, _ = plain.append_batch([Append(text, 0, ((text, _P),))])
        assert isinstance(written[0], AppendResult)
        assert [e.type for e in latin.read_all()] == [text, text]
    finally:
        latin.close()


def test_a_lease_named_in_unicode_under_another_client_encoding(postgres: Postgres) -> None:
    log = PostgresEventLog(
        _url_with(postgres.url, client_encoding="LATIN1"),
        schema=postgres.schema(),
        shared=True,
    )
    try:
        lease = log.open_lease("process managers \U0001f600")
        try:
            assert lease.try_acquire() and lease.holds()
        finally:
            lease.close()
    finally:
        log.close()


_TRICKY_IDS: Final = (
    "\\ ' \" ` '' \\' \\\\ \\u0000 \\u0041 \\x00 \\n E'x'",
    "".join(chr(i) for i in range(1, 32)) + "\x7f\x80\x9f",
    "\U0001f600 e\u0301 \u2028\u2029 \ufeff \ufffd \uffff \U0010ffff",
    '{"s": "x", "c": "y"} [ null true %s $4 ::json',
)


def test_tricky_command_and_stream_ids_and_duplicates_within_a_group(postgres: Postgres) -> None:
    groups: list[Any] = []
    for i, text in enumerate(_TRICKY_IDS):
        stream = f"s{i}{text[:8]}".replace("\x00", "")
        groups.append([_a(stream, 0, 1, text), _a(stream, 1, 1, text[::-1])])
        groups.append([_a(stream, 2, 1, text)])  # a retry at a later version
        # The same id twice on one stream within a group: the second is the duplicate.
        groups.append([_a(stream, 2, 1, text + "!"), _a(stream, 3, 1, text + "!")])
        # A recorded id and a moved stream in one group.
        groups.append([_a(stream, 0, 1, text), _a(stream, 3, 1, "fresh" + text)])
    _, _, got = _both(postgres, groups)
    for i in range(len(_TRICKY_IDS)):
        assert got[4 * i + 1][0][0] == "dup"
        assert [o[0] for o in got[4 * i + 2]] == ["ok", "dup"]
        assert got[4 * i + 3][0][0] == "dup"


def test_ids_pruned_the_moment_they_are_recorded_and_a_backlog(postgres: Postgres) -> None:
    # max_age below the timestamp's resolution: every id is dropped by the group that
    # recorded it, on both paths; and a group of 5,000 ids at max_ids=1 leaves a backlog
    # (each group deletes at most 4,096 a bound) that only the newest is answered from
    # (5,000 behind ACTORLOG_REVIEW7_BIG=1: ~2 s; 300 in the suite, no backlog).
    tiny = [[_a("s", 0, 1, "c")], [_a("s", 0, 1, "c")], [_a("s", 1, 0, "d")]]
    fast, _, got = _both(
        postgres, tiny, newest_kept=False, command_ids=CommandIdRetention(max_age=1e-9)
    )
    assert got[1] == [("ConcurrencyError",)]
    assert _ids(postgres, fast) == []
    n = 5000 if os.environ.get("ACTORLOG_REVIEW7_BIG") else 300
    many = [[_a(f"m{i}", 0, 1, f"id{i}") for i in range(n)], [_a("m0", 1, 1, "id0")]]
    fast, _, got = _both(postgres, many, command_ids=CommandIdRetention(max_ids=1))
    assert got[1] == [("ok", "m0", 2, 2, n + 1, n + 1)]  # id0 on m0 was pruned: new again
    assert fast.find_command("m0", "id0") is not None
    assert fast.find_command(f"m{n - 1}", f"id{n - 1}") is None
    assert len(_ids(postgres, fast)) == 1  # the backlog worked off by the next group


def test_a_group_with_command_ids_notifies_the_other_processes(postgres: Postgres) -> None:
    """Only a group that writes events notifies: with ids (the statement with the
    prunes), and not for a retry (nothing written) nor for empty appends with ids."""
    schema = postgres.schema()
    writer, follower = (postgres.log(schema, shared=True) for _ in range(2))
    assert not follower.wait_for_notice(0.01)  # listening from here on
    outcomes, _ = writer.append_batch([_a("s", 0, 2, "c"), _a("t", 0, 0, "e")])
    assert all(isinstance(o, AppendResult) for o in outcomes)
    assert follower.wait_for_notice(5.0)
    retry, _ = writer.append_batch([_a("s", 0, 2, "c")])  # a duplicate: nothing written
    empty, _ = writer.append_batch([_a("u", 0, 0, "f")])
    assert isinstance(retry[0], DuplicateCommand) and isinstance(empty[0], AppendResult)
    assert not follower.wait_for_notice(0.3)


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_a_database_in_another_encoding(postgres: Postgres, encoding: str) -> None:
    """In a LATIN1 database a character LATIN1 lacks fails in the server, taking every
    append of its group with it (not that append alone, as ``EncodeError``): such a
    database is refused at open. SQL_ASCII stores the UTF-8 bytes as they are."""
    name = f"review7_{encoding.lower()}_{os.getpid()}"
    postgres.execute(f"DROP DATABASE IF EXISTS {name}")
    postgres.execute(
        f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'"
        " TEMPLATE template0"
    )
    parts = urllib.parse.urlsplit(postgres.url)
    url = parts._replace(path=f"/{name}").geturl()
    try:
        if encoding == "LATIN1":
            with pytest.raises(StorageError, match="UTF8"):
                PostgresEventLog(url, schema="r7")
            return
        log = PostgresEventLog(url, schema="r7")
        try:
            text = "\U0001f600 \u00e9 \x01 \\ '"
            appends = [
                Append("ok", 0, (("t", _P),)),
                Append(text, 0, ((text, _P),), command_id=text, headers=((text, text),)),
            ]
            outcomes, stored = log.append_batch(appends)
            assert all(isinstance(o, AppendResult) for o in outcomes)
            assert log.read_all() == stored
            assert log.find_command(text, text) == outcomes[1]
        finally:
            log.close()
    finally:
        postgres.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
