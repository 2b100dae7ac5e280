"""The PostgreSQL log against a real server (``ACTORLOG_TEST_POSTGRES``; skipped without
one): the contract, and what only a server log has (reopening a schema, its layout, two
writers at once, a lost connection, an unreachable server, command-id retention in its
table, a writer process killed mid-run)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest

from actorlog import (
    CommandIdRetention,
    ConcurrencyError,
    DefinitionError,
    EncodeError,
    StorageError,
)
from actorlog.engine.testing import make_append
from actorlog.storage import (
    ANY,
    NO_STREAM,
    Append,
    AppendResult,
    DuplicateCommand,
    PostgresEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
    assert_log_consistent,
    check_event_log,
)
from tests.support import Postgres


def test_meets_the_event_log_contract(postgres: Postgres) -> None:
    check_event_log(postgres.log)


def test_reopening_a_schema_keeps_everything(postgres: Postgres) -> None:
    schema = postgres.schema()
    log = postgres.log(schema)
    meta = {"command_id": "c1", "principal": "ann", "headers": (("traceparent", "00-1"),)}
    first = msgspec.structs.replace(
        make_append("a", NO_STREAM, 2, correlation_id="co", aggregate_name="Account"), **meta
    )
    outcomes, _ = log.append_batch(
        [first, make_append("b", NO_STREAM)],
        snapshots=[("a", Snapshot(2, 1, b"\x90", "Account"))],
        projector_caches=[("Balances", ProjectorCache(3, 1, b"\x80"))],
    )
    events = log.read_all()
    log.close()

    again = postgres.log(schema)
    assert again.read_all() == events
    assert again.head_position() == 3
    assert again.stream_version("a") == 2
    assert again.load_snapshot("a") == Snapshot(2, 1, b"\x90", "Account")
    assert again.load_projector_cache("Balances") == ProjectorCache(3, 1, b"\x80")
    assert again.find_command("a", "c1") == outcomes[0]
    outcomes, stored = again.append_batch([make_append("a", 2), make_append("c", NO_STREAM)])
    assert [(e.position, e.stream_id, e.version) for e in stored] == [(4, "a", 3), (5, "c", 1)]
    assert_log_consistent(again)


def test_a_schema_of_another_layout_is_refused(postgres: Postgres) -> None:
    schema = postgres.schema()
    postgres.log(schema).append_batch([make_append("a", NO_STREAM)])
    postgres.execute(f"UPDATE \"{schema}\".meta SET value = 'actorlog-pg-99' WHERE key = 'format'")
    with pytest.raises(StorageError, match="actorlog-pg-99"):
        PostgresEventLog(postgres.url, schema=schema)
    # Nor is a schema whose events table is someone else's taken for an empty log.
    other = postgres.schema()
    postgres.execute(f'CREATE SCHEMA "{other}"')
    postgres.execute(f'CREATE TABLE "{other}".events (id int)')
    with pytest.raises(StorageError):
        PostgresEventLog(postgres.url, schema=other)


def test_an_unreachable_server_is_a_storage_error(postgres: Postgres) -> None:
    with pytest.raises(StorageError) as caught:
        PostgresEventLog("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    assert caught.value.__cause__ is not None
    with pytest.raises(StorageError):
        PostgresEventLog(postgres.url + "_no_such_database")
    with pytest.raises(StorageError):
        PostgresEventLog("this is not = a dsn=")


def test_a_lost_connection_fails_the_group_then_reconnects(postgres: Postgres) -> None:
    log = postgres.log()
    log.append_batch([make_append("a", NO_STREAM)])
    assert log.head_position() == 1  # both connections are open now
    # Every connection to this database but the one issuing the statement.
    postgres.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    outcomes, stored = log.append_batch([make_append("a", 1), make_append("b", NO_STREAM)])
    assert all(isinstance(o, StorageError) for o in outcomes) and len(outcomes) == 2
    assert stored == []
    # A read reconnects and runs again (reads are idempotent); so does the next group.
    # Nothing of the failed group was written.
    assert log.head_position() == 1
    outcomes, _ = log.append_batch([make_append("a", 1)])
    assert isinstance(outcomes[0], AppendResult) and outcomes[0].last_position == 2
    assert_log_consistent(log)


def test_an_append_postgres_cannot_store_fails_alone(postgres: Postgres) -> None:
    log = postgres.log()
    outcomes, stored = log.append_batch(
        [
            make_append("a", NO_STREAM),
            make_append("b", NO_STREAM, correlation_id="nul\x00inside"),
            make_append("c", NO_STREAM),
        ]
    )
    assert [type(o) for o in outcomes] == [AppendResult, EncodeError, AppendResult]
    assert [(e.position, e.stream_id) for e in stored] == [(1, "a"), (2, "c")]
    assert log.stream_version("b") == 0


def test_two_writers_keep_positions_gap_free_and_in_commit_order(postgres: Postgres) -> None:
    # Two logs (two connections, as two processes would have) commit groups at once, to
    # streams of their own (exact expected versions) and to shared ones (ANY), while a
    # reader follows the log by position as a projector does: from the last position it
    # read. A position committed after a larger one would be skipped by the reader for
    # good; the final comparison with the whole log catches that.
    schema = postgres.schema()
    writers = [postgres.log(schema, shared=True), postgres.log(schema, shared=True)]
    reader = postgres.log(schema)
    groups = 150
    results: list[list[object]] = [[], []]
    seen: list[StoredEvent] = []
    done = threading.Event()
    failures: list[BaseException] = []

    def write(w: int) -> None:
        try:
            log = writers[w]
            for g in range(groups):
                outcomes, _ = log.append_batch(
                    [
                        make_append(f"own{w}", g * 2, 2),
                        make_append(f"shared{g % 3}", ANY),
                        make_append(f"own{w}-{g % 5}", ANY, 1 + g % 3),
                    ]
                )
                results[w].extend(outcomes)
        except BaseException as e:
            failures.append(e)

    def follow() -> None:
        try:
            position = 0
            while True:
                finished = done.is_set()
                batch = reader.read_all(position + 1, 50)
                seen.extend(batch)
                if batch:
                    position = batch[-1].position
                elif finished:
                    return
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    follower = threading.Thread(target=follow)
    follower.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follower.join()
    assert failures == []
    assert all(isinstance(o, AppendResult) for r in results for o in r)
    everything = reader.read_all(1, 100_000)
    assert len(everything) == groups * 2 * (2 + 1 + 2)  # each append: 2, 1, then 1-3 (2 avg)
    assert [e.position for e in everything] == list(range(1, len(everything) + 1))
    assert seen == everything  # the follower skipped nothing and saw it in order
    versions = assert_log_consistent(reader)
    assert versions["own0"] == versions["own1"] == 2 * groups
    # Each writer's acknowledged results are what the log holds at those positions.
    for r in results:
        for result in r:
            assert isinstance(result, AppendResult)
            held = everything[result.first_position - 1 : result.last_position]
            assert [(e.stream_id, e.version) for e in held] == [
                (result.stream_id, v) for v in range(result.first_version, result.last_version + 1)
            ]


def test_two_writers_racing_for_streams_commit_exactly(postgres: Postgres) -> None:
    # Groups that need no decision are sent as one message whose INSERT writes only if no
    # stream moved from the version the group assumes (``_commit_guarded``); when another
    # writer moved one, nothing is written and the group is decided exactly. Two logs race
    # for the same streams with exact expected versions (each from the version its last
    # outcome said), beside streams of their own: each append commits exactly when its
    # expected version was current, the losers fail alone, nothing is lost or doubled.
    schema = postgres.schema()
    writers = [postgres.log(schema, shared=True), postgres.log(schema, shared=True)]
    groups = 200
    results: list[list[tuple[Append, object]]] = [[], []]
    failures: list[BaseException] = []

    def write(w: int) -> None:
        try:
            log, known = writers[w], {f"own{w}": 0, "hot0": 0, "hot1": 0}
            for g in range(groups):
                hot = f"hot{g % 2}"
                appends = [make_append(f"own{w}", known[f"own{w}"]), make_append(hot, known[hot])]
                outcomes, _ = log.append_batch(appends)
                for append, outcome in zip(appends, outcomes, strict=True):
                    results[w].append((append, outcome))
                    if isinstance(outcome, AppendResult):
                        known[append.stream_id] = outcome.last_version
                    else:
                        assert isinstance(outcome, ConcurrencyError), outcome
                        known[append.stream_id] = outcome.actual
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    reader = postgres.log(schema)
    everything = reader.read_all(1, 100_000)
    assert [e.position for e in everything] == list(range(1, len(everything) + 1))
    versions = assert_log_consistent(reader)
    assert versions["own0"] == versions["own1"] == groups  # never in a race: all commit
    committed = [(a, o) for r in results for a, o in r if isinstance(o, AppendResult)]
    lost = [(a, o) for r in results for a, o in r if not isinstance(o, AppendResult)]
    assert lost, "the writers never raced: the test proves nothing"
    for stream in ("hot0", "hot1"):
        # Every version of a hot stream is one acknowledged append, expecting the one before.
        won = sorted(a.expected_version for a, o in committed if a.stream_id == stream)
        assert won == list(range(versions[stream]))
    for append, result in committed:
        assert isinstance(result, AppendResult)
        held = everything[result.first_position - 1]
        assert (held.stream_id, held.version) == (append.stream_id, append.expected_version + 1)
        assert bytes(held.payload) == append.events[0][1]
    for append, failure in lost:
        assert isinstance(failure, ConcurrencyError)
        assert failure.actual > append.expected_version


def _ids_held(postgres: Postgres, schema: str) -> int:
    """The rows of the schema's ``command_ids`` table: what pruning left on the server."""
    return int(postgres.execute(f'SELECT count(*) FROM "{schema}".command_ids')[0][0])


def test_command_id_retention_bounds_the_table(postgres: Postgres) -> None:
    schema = postgres.schema()
    retention = CommandIdRetention(max_ids=50)
    log = postgres.log(schema, command_ids=retention)

    def with_id(command_id: str) -> Append:
        return msgspec.structs.replace(make_append("s", ANY), command_id=command_id)

    def kept(log: PostgresEventLog) -> list[str]:
        ids = [f"{g}-{i}" for g in range(20) for i in range(10)]
        return [c for c in ids if log.find_command("s", c) is not None]

    for group in range(20):
        log.append_batch([with_id(f"{group}-{i}") for i in range(10)])
    assert kept(log) == [f"{g}-{i}" for g in range(15, 20) for i in range(10)]
    assert _ids_held(postgres, schema) == 50
    log.close()
    again = postgres.log(schema, command_ids=retention)
    assert len(kept(again)) == 50
    outcomes, _ = again.append_batch([with_id("19-9"), with_id("14-9")])
    assert [type(o) for o in outcomes] == [DuplicateCommand, AppendResult]


def test_command_ids_past_their_age_are_decided_again_and_pruned(postgres: Postgres) -> None:
    schema = postgres.schema()
    # A microsecond: every group takes longer (its round trips), so each finds the id of
    # the one before aged out.
    log = postgres.log(schema, command_ids=CommandIdRetention(max_age=1e-6))
    command = msgspec.structs.replace(make_append("s", ANY), command_id="c")
    for _ in range(3):
        outcomes, _ = log.append_batch([command])
        assert isinstance(outcomes[0], AppendResult)  # the last one aged out already
    assert log.find_command("s", "c") is None
    assert log.stream_version("s") == 3
    assert _ids_held(postgres, schema) == 1  # each group pruned the one before


def test_command_ids_of_groups_sent_in_one_message_are_kept_and_answered(
    postgres: Postgres,
) -> None:
    # Appends expecting exact versions take the one-message commit, which records their
    # ids and prunes in the same transaction; a recorded id sends the group to the exact
    # commit, which answers it (DuplicateCommand with the first result), stale or not.
    schema = postgres.schema()
    log = postgres.log(schema, command_ids=CommandIdRetention(max_ids=50))
    first: dict[str, AppendResult] = {}
    for group in range(20):
        appends = [
            msgspec.structs.replace(make_append("s", group * 10 + i), command_id=f"{group}-{i}")
            for i in range(10)
        ]
        outcomes, _ = log.append_batch(appends)
        for append, outcome in zip(appends, outcomes, strict=True):
            assert isinstance(outcome, AppendResult)
            assert append.command_id is not None
            first[append.command_id] = outcome
    # The newest 50 are kept, exactly as recorded; none older; the table holds no more.
    kept = {c: r for c, r in first.items() if log.find_command("s", c) is not None}
    assert sorted(kept) == sorted(f"{g}-{i}" for g in range(15, 20) for i in range(10))
    assert all(log.find_command("s", c) == r for c, r in kept.items())
    assert _ids_held(postgres, schema) == 50
    assert [e.command_id for e in log.read_stream("s", 200)] == ["19-9"]
    # A retry (its expected version stale now) and a reused id on the current version.
    retry = msgspec.structs.replace(make_append("s", 199), command_id="19-9")
    reused = msgspec.structs.replace(make_append("s", 200), command_id="19-8")
    for append in (retry, reused):
        outcomes, stored = log.append_batch([append])
        assert isinstance(outcomes[0], DuplicateCommand) and stored == []
        assert outcomes[0].result == first[str(append.command_id)]
    assert log.stream_version("s") == 200


def test_a_failure_after_the_insert_in_one_message_acknowledges_nothing(
    postgres: Postgres,
) -> None:
    # The one message runs several statements in one transaction: the INSERT, then the
    # pruning of command ids. If a later statement fails, the INSERT is rolled back with
    # it, so the group must fail whole (no AppendResult for events the log does not hold).
    schema = postgres.schema()
    log = postgres.log(schema, command_ids=CommandIdRetention(max_ids=1))

    def with_id(stream: str, command_id: str) -> Append:
        return msgspec.structs.replace(make_append(stream, 0), command_id=command_id)

    outcomes, _ = log.append_batch([with_id("a", "first"), with_id("b", "second")])
    assert all(isinstance(o, AppendResult) for o in outcomes)
    postgres.execute(
        f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS'
        " $$ BEGIN RAISE EXCEPTION 'no pruning today'; END $$"
    )
    postgres.execute(
        f'CREATE TRIGGER refuse BEFORE DELETE ON "{schema}".command_ids'
        f' FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()'
    )
    head = log.head_position()
    outcomes, stored = log.append_batch([with_id("c", "third")])  # prunes "second"
    assert stored == [] and isinstance(outcomes[0], StorageError), outcomes
    assert log.head_position() == head and log.stream_version("c") == 0
    assert log.find_command("c", "third") is None


def test_a_killed_writer_loses_no_acknowledged_append(postgres: Postgres) -> None:
    # tests/storage/crash_writer_child.py on this server, SIGKILLed after a random number of
    # acknowledgements, three times over the same schema: every acknowledged append is
    # there whole, every committed one (reported or not) is whole, positions have no gap.
    schema = postgres.schema()
    rng = random.Random(20261130)
    decode = msgspec.msgpack.Decoder(tuple[int, int, int]).decode
    acknowledged: list[list[str]] = []
    for round_ in range(3):
        args = [postgres.url, "24", str(round_), schema]
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.storage.crash_writer_child", *args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent.parent,
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == "ready\n"
            lines = [child.stdout.readline() for _ in range(rng.randint(50, 600))]
            child.send_signal(signal.SIGKILL)
            lines += child.stdout.read().splitlines(keepends=True)
        finally:
            child.kill()
            child.wait(timeout=30)
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL, "the child ended before it was killed"
        acknowledged += [line.split() for line in lines if line.endswith("\n")]
        log = postgres.log(schema)
        versions = assert_log_consistent(log)
        events = {e.position: e for e in log.read_all(1, 10**7)}
        for stream_id, *numbers in acknowledged:
            first_v, last_v, first_p, last_p = map(int, numbers)
            assert versions[stream_id] >= last_v
            got = [events[p] for p in range(first_p, last_p + 1)]
            assert [(e.stream_id, e.version) for e in got] == [
                (stream_id, v) for v in range(first_v, last_v + 1)
            ]
        for event in events.values():
            first_v, i, count = decode(event.payload)
            assert event.version == first_v + i
            for j in range(count):
                other = events[event.position - i + j]
                assert (other.stream_id, other.version) == (event.stream_id, first_v + j)
        log.close()
    assert len(acknowledged) >= 150


@pytest.mark.parametrize(
    "dsn, options",
    [
        (b"postgresql://", {}),
        ("postgresql://", {"schema": ""}),
        ("postgresql://", {"schema": "x" * 64}),
        ("postgresql://", {"schema": "per%cent"}),  # psycopg would read a placeholder
        ("postgresql://", {"sync": 1}),
        ("postgresql://", {"command_ids": 5}),
        ("postgresql://", {"connect_timeout": 0}),
    ],
)
def test_bad_options_are_refused_before_connecting(dsn: object, options: dict[str, object]) -> None:
    with pytest.raises(DefinitionError):
        PostgresEventLog(dsn, **options)  # type: ignore[arg-type]


@pytest.mark.usefixtures("quick_writer_refusal")
def test_an_unshared_log_is_its_schemas_only_writer(postgres: Postgres) -> None:
    # The default promises one writer: a second one, shared or not, is refused at its first
    # append (StorageLocked, nothing written), while logs that only read are not.
    from actorlog import StorageLocked

    schema = postgres.schema()
    alone = postgres.log(schema)
    assert not isinstance(alone.append_batch([make_append("a", NO_STREAM)])[0][0], Exception)
    reader = postgres.log(schema)
    assert [e.stream_id for e in reader.read_all()] == ["a"]
    for other in (postgres.log(schema), postgres.log(schema, shared=True)):
        outcomes, stored = other.append_batch([make_append("b", NO_STREAM)])
        assert isinstance(outcomes[0], StorageLocked) and stored == []
        other.close()
    assert reader.head_position() == 1
    # Closing the writer frees the schema for the next one.
    alone.close()
    successor = postgres.log(schema)
    assert not isinstance(successor.append_batch([make_append("b", NO_STREAM)])[0][0], Exception)
    # Shared writers share the lock, and keep an unshared one out.
    successor.close()
    shared = [postgres.log(schema, shared=True), postgres.log(schema, shared=True)]
    for i, log in enumerate(shared):
        outcome = log.append_batch([make_append(f"s{i}", NO_STREAM)])[0][0]
        assert not isinstance(outcome, Exception)
    late = postgres.log(schema)
    assert isinstance(late.append_batch([make_append("c", NO_STREAM)])[0][0], StorageLocked)
    assert reader.head_position() == 4


def test_a_shared_logs_commit_wakes_the_other_processes_followers(postgres: Postgres) -> None:
    # The NOTIFY rides in the group commit (one a group that wrote events): another log
    # of the schema hears it; the log's own commits never wake its own follower (each
    # would cost it a useless read of the log).
    schema = postgres.schema()
    writer = postgres.log(schema, shared=True)
    follower = postgres.log(schema, shared=True)
    try:
        assert not follower.wait_for_notice(0.05)  # listening now; nothing sent yet

        def commit(log: PostgresEventLog, stream_id: str, expected: int, count: int) -> None:
            outcomes, _ = log.append_batch([make_append(stream_id, expected, count)])
            assert not isinstance(outcomes[0], Exception), outcomes

        commit(writer, "a", 0, 1)
        assert follower.wait_for_notice(5.0)  # another log's commit
        commit(follower, "b", 0, 1)
        assert not follower.wait_for_notice(0.3)  # its own: read and dropped
        # A group that wrote no events (a rejection's check) tells no one.
        commit(writer, "a", 1, 0)
        assert not follower.wait_for_notice(0.3)
        commit(writer, "a", 1, 2)
        assert follower.wait_for_notice(5.0)
    finally:
        writer.close()
        follower.close()
