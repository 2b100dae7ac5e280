"""The event-log contract, run against both backends (real LMDB in tmp_path, and memory),
plus only what ``check_event_log`` cannot check for every backend: LMDB's own behaviour
(one transaction a group, anchors of long streams, reopening, the lock, the map, its
layout and damaged entries), the memory log's cap, and random histories (hypothesis).

The rules every backend must keep (group commits, expected versions, empty appends, reads
in slices and batches, metadata, snapshots and projector caches, invalid ids, a closed log)
are checked once, in ``check_event_log`` (``engine/testing.py``); they are not asserted
again here."""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lmdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorlog import ConcurrencyError, DefinitionError, StorageError, StorageFull, StorageLocked
from actorlog.engine._log import AppendOutcome
from actorlog.engine._log_lmdb import ANCHOR_EVERY
from actorlog.engine.testing import make_append
from actorlog.storage import (
    ANY,
    NO_STREAM,
    Append,
    AppendResult,
    EventLog,
    LmdbEventLog,
    MemoryEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
    assert_log_consistent,
    check_event_log,
)

MakeLog = Callable[[], EventLog]


@pytest.fixture(params=["lmdb", "memory"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLog]:
    """A factory of fresh, empty logs of the parametrized backend; all closed at teardown."""
    logs: list[EventLog] = []
    counter = itertools.count()

    def make() -> EventLog:
        log: EventLog
        if request.param == "lmdb":
            log = LmdbEventLog(tmp_path / f"log{next(counter)}", sync=False)
        else:
            log = MemoryEventLog()
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


def commit(log: EventLog, *appends: Append) -> list[AppendResult]:
    outcomes, _ = log.append_batch(appends)
    results = [o for o in outcomes if isinstance(o, AppendResult)]
    assert len(results) == len(outcomes), outcomes
    return results


def test_backend_meets_the_contract_check(make_log: MakeLog) -> None:
    check_event_log(make_log)


def test_group_of_appends_commits_in_one_transaction(lmdb_log: LmdbEventLog) -> None:
    before = lmdb_log._env.info()["last_txnid"]
    commit(lmdb_log, *(make_append(f"s{i}", NO_STREAM, 2) for i in range(50)))
    assert lmdb_log._env.info()["last_txnid"] == before + 1


def test_read_stream_slices_of_a_long_stream(tmp_path: Path) -> None:
    """Long enough to cross several anchors of the LMDB backend, with a neighbour stream."""
    log = LmdbEventLog(tmp_path, sync=False)
    try:
        _read_long_stream_slices(log)
    finally:
        log.close()


def _read_long_stream_slices(log: EventLog) -> None:
    total = 3 * ANCHOR_EVERY + 5
    version = 0
    while version < total:
        count = min(7, total - version)
        commit(log, make_append("long", version, count), make_append("other", ANY))
        version += count
    everything = log.read_stream("long")
    assert [e.version for e in everything] == list(range(1, total + 1))
    for start in (1, 2, ANCHOR_EVERY - 1, ANCHOR_EVERY, ANCHOR_EVERY + 1, 2 * ANCHOR_EVERY):
        for limit in (1, 3, ANCHOR_EVERY, None):
            want = everything[start - 1 :] if limit is None else everything[start - 1 :][:limit]
            assert log.read_stream("long", start, limit) == want, (start, limit)


# -- LMDB only: persistence, locking, the map -----------------------------------------------


def test_reopened_lmdb_log_keeps_everything(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    commit(log, make_append("a", NO_STREAM, 3), make_append("b", NO_STREAM))
    log.append_batch(
        [make_append("a", 3)],
        snapshots=[("a", Snapshot(3, 2, b"s"))],
        projector_caches=[("p", ProjectorCache(4, 0, b"c"))],
    )
    before = log.read_all()
    log.close()
    log = LmdbEventLog(tmp_path)
    try:
        assert log.read_all() == before
        assert log.head_position() == 5
        assert assert_log_consistent(log) == {"a": 4, "b": 1}
        assert log.load_snapshot("a") == Snapshot(3, 2, b"s")
        assert log.load_projector_cache("p") == ProjectorCache(4, 0, b"c")
        outcomes, stored = log.append_batch([make_append("a", 3), make_append("a", 4)])
        assert isinstance(outcomes[0], ConcurrencyError)
        assert outcomes[1] == AppendResult("a", 5, 5, 6, 6, stored[0].timestamp)
    finally:
        log.close()


def test_second_log_on_the_same_directory_is_locked_out(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    try:
        with pytest.raises(StorageLocked):
            LmdbEventLog(tmp_path)
        child = subprocess.run(
            [sys.executable, "-c", _OPEN_IN_CHILD, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert child.stdout.strip() == "StorageLocked", child.stderr
    finally:
        log.close()
    LmdbEventLog(tmp_path).close()  # closing released the lock


_OPEN_IN_CHILD = """
import sys
from actorlog.storage import LmdbEventLog
from actorlog import StorageLocked
try:
    LmdbEventLog(sys.argv[1]).close()
    print("opened")
except StorageLocked:
    print("StorageLocked")
"""


def test_map_grows_transparently(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path, sync=False, map_size=64 << 10)
    payload = msgspec.msgpack.encode(b"x" * 2000)
    try:
        for i in range(40):
            commit(log, Append(f"s{i % 3}", ANY, (("Big", payload),) * 10))
        grown = log.map_size
        assert grown > 64 << 10
        assert log.head_position() == 400
        assert_log_consistent(log)
    finally:
        log.close()
    reopened = LmdbEventLog(tmp_path, sync=False, map_size=64 << 10)
    try:
        # LMDB maps at least what the file holds, and grows again on demand.
        assert reopened.head_position() == 400
        commit(reopened, *(Append("s0", ANY, (("Big", payload),) * 10) for _ in range(20)))
        assert reopened.map_size > grown
        assert_log_consistent(reopened)
    finally:
        reopened.close()


def test_group_past_the_cap_fails_whole_and_raising_the_cap_resumes(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path, sync=False, map_size=256 << 10, max_map_size=256 << 10)
    try:
        commit(log, make_append("a", NO_STREAM), make_append("b", NO_STREAM))
        before = log.read_all()
        big = (("Big", msgspec.msgpack.encode(b"x" * 4000)),) * 100
        group = [Append("a", 1, big), Append("b", ANY, big), make_append("c", NO_STREAM)]
        outcomes, stored = log.append_batch(
            group, projector_caches=[("p", ProjectorCache(9, 0, b"c"))]
        )
        assert stored == []
        assert len(outcomes) == 3 and all(isinstance(o, StorageFull) for o in outcomes)
        assert log.read_all() == before
        assert log.load_projector_cache("p") is None
        assert assert_log_consistent(log) == {"a": 1, "b": 1}
        log.max_map_size = 8 << 20
        results = commit(log, *group)
        assert [r.last_version for r in results] == [101, 101, 1]
        assert log.map_size > 256 << 10
        assert_log_consistent(log)
    finally:
        log.close()


def test_a_log_of_another_format_is_refused_not_misread(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=6)
    events = env.open_db(b"events")
    with env.begin(write=True) as txn:
        txn.put(b"\x00" * 7 + b"\x01", b"an event of some older layout", db=events)
    env.close()
    with pytest.raises(StorageError, match="format"):
        LmdbEventLog(tmp_path)
    with pytest.raises(StorageError, match="format"):  # not StorageLocked: the lock was freed
        LmdbEventLog(tmp_path)


def test_an_unreadable_entry_ends_read_all_before_it_and_is_a_storage_error(
    tmp_path: Path,
) -> None:
    log = LmdbEventLog(tmp_path)
    commit(log, make_append("a", NO_STREAM, 2), make_append("b", NO_STREAM), make_append("a", 2))
    good = log.read_all()
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=6)
    events = env.open_db(b"events", create=False)
    with env.begin(write=True) as txn:
        value = txn.get((3).to_bytes(8, "big"), db=events)
        assert value is not None
        txn.put((3).to_bytes(8, "big"), value.replace(b"b", b"\xff"), db=events)
    env.close()
    log = LmdbEventLog(tmp_path)
    try:
        assert log.read_all() == good[:2]  # everything readable before it
        with pytest.raises(StorageError, match="position 3"):
            log.read_all(3)
        assert log.read_all(4) == good[3:]
        with pytest.raises(StorageError, match="position 3"):
            log.read_stream("b")
        assert log.read_stream("a") == [good[0], good[1], good[3]]
    finally:
        log.close()


def test_an_unreadable_snapshot_counts_as_none(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    log.append_batch([], snapshots=[("a", Snapshot(1, 0, b"s"))])
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=6)
    snapshots = env.open_db(b"snapshots", create=False)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"\xc1 not a snapshot", db=snapshots)
    env.close()
    log = LmdbEventLog(tmp_path)
    try:
        assert log.load_snapshot("a") is None
    finally:
        log.close()


def test_bad_map_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError):
        LmdbEventLog(tmp_path, map_size=1 << 20, max_map_size=1 << 10)
    with pytest.raises(DefinitionError):
        LmdbEventLog(tmp_path, map_size=0)
    log = LmdbEventLog(tmp_path)  # a refused open left no lock behind
    try:
        with pytest.raises(DefinitionError):
            log.max_map_size = 0
    finally:
        log.close()


def test_memory_log_past_max_events_fails_whole() -> None:
    log = MemoryEventLog(max_events=3)
    commit(log, make_append("a", NO_STREAM, 2))
    outcomes, stored = log.append_batch([make_append("a", 2), make_append("b", NO_STREAM)])
    assert stored == [] and all(isinstance(o, StorageFull) for o in outcomes)
    assert log.head_position() == 2


# -- the property: random interleavings read back exactly what was acknowledged --------------

Op = tuple[int, str, int]  # stream index, how the expected version is picked, event count
Acknowledged = tuple[int, str, int, bytes]  # position, stream id, version, payload

ops = st.tuples(
    st.integers(0, 2),
    st.sampled_from(["right", "ahead", "behind", "any", "no_stream"]),
    st.integers(0, 3),
)
histories = st.lists(st.lists(ops, min_size=1, max_size=6), min_size=1, max_size=8)


def pick_expected(pick: str, current: int) -> int:
    if pick == "right":
        return current
    if pick == "ahead":
        return current + 1
    if pick == "behind":
        return current - 1 if current > 0 else current + 2
    return ANY if pick == "any" else NO_STREAM


def run_history(log: EventLog, history: list[list[Op]]) -> list[Acknowledged]:
    """Commit each group, check every outcome against a model, return what was acknowledged."""
    versions = {f"s{i}": 0 for i in range(3)}
    position = 0
    acknowledged: list[Acknowledged] = []
    for group in history:
        appends = []
        predicted: list[tuple[object, ...]] = []
        for stream, pick, count in group:
            stream_id, current = f"s{stream}", versions[f"s{stream}"]
            append = make_append(stream_id, pick_expected(pick, current), count)
            appends.append(append)
            if append.expected_version in (ANY, current):
                predicted.append(
                    (stream_id, current + 1, current + count, position + 1, position + count)
                )
                for i, (_, payload) in enumerate(append.events):
                    acknowledged.append((position + 1 + i, stream_id, current + 1 + i, payload))
                versions[stream_id] += count
                position += count
            else:
                predicted.append(("conflict", stream_id, append.expected_version, current))
        outcomes, _ = log.append_batch(appends)
        got: list[tuple[object, ...]] = []
        for o in outcomes:
            if isinstance(o, ConcurrencyError):
                got.append(("conflict", o.stream_id, o.expected, o.actual))
            else:
                assert isinstance(o, AppendResult), o
                got.append(
                    (
                        o.stream_id,
                        o.first_version,
                        o.last_version,
                        o.first_position,
                        o.last_position,
                    )
                )
        assert got == predicted
    return acknowledged


def assert_reads_back(log: EventLog, acknowledged: list[Acknowledged]) -> None:
    read = [(e.position, e.stream_id, e.version, bytes(e.payload)) for e in log.read_all(1, 10**6)]
    assert read == acknowledged
    versions: dict[str, int] = {}
    for _, stream_id, version, _ in acknowledged:
        versions[stream_id] = version
    assert assert_log_consistent(log, batch=7) == versions


@pytest.mark.parametrize("backend", ["lmdb", "memory"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories)
def test_random_interleavings_read_back_exactly_what_was_acknowledged(
    backend: str, history: list[list[Op]]
) -> None:
    if backend == "memory":
        memory = MemoryEventLog()
        assert_reads_back(memory, run_history(memory, history))
        return
    with tempfile.TemporaryDirectory() as path:
        log = LmdbEventLog(path, sync=False)
        try:
            acknowledged = run_history(log, history)
            assert_reads_back(log, acknowledged)
        finally:
            log.close()
        reopened = LmdbEventLog(path, sync=False)
        try:
            assert_reads_back(reopened, acknowledged)
        finally:
            reopened.close()


# -- the contract check itself catches broken backends ----------------------------------------


class IgnoresLimit(MemoryEventLog):
    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        return super().read_stream(stream_id, from_version)


class ReadsAfterClose(MemoryEventLog):
    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        return self._events[max(from_position, 1) - 1 :][:limit]


class NoStreamMeansAny(MemoryEventLog):
    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        appends = [
            Append(a.stream_id, ANY, a.events) if a.expected_version == NO_STREAM else a
            for a in appends
        ]
        return super().append_batch(appends, snapshots=snapshots, projector_caches=projector_caches)


class LoadsAnyProjectorName(MemoryEventLog):
    def load_projector_cache(self, name: str) -> ProjectorCache | None:
        return None if name == "" else super().load_projector_cache(name)


@pytest.mark.parametrize(
    ("broken", "rule"),
    [
        (IgnoresLimit, "read_stream_from_a_version"),
        (ReadsAfterClose, "closed_log_refuses_everything"),
        (NoStreamMeansAny, "any_and_no_stream"),
        (LoadsAnyProjectorName, "projector_caches_round_trip"),
    ],
)
def test_contract_check_names_the_rule_a_broken_backend_breaks(
    broken: type[MemoryEventLog], rule: str
) -> None:
    with pytest.raises(AssertionError, match=rule):
        check_event_log(broken)
