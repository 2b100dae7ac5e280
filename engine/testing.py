"""Test kits for code built on the engine. Public API.

:func:`check_event_log` is the event-log contract: any storage backend runs it to show it
behaves like the two that ship (``LmdbEventLog`` and the ``MemoryEventLog`` fake)::

    from actorlog.storage import check_event_log

    def test_my_backend_meets_the_contract(tmp_path):
        n = itertools.count()
        check_event_log(lambda: MyEventLog(tmp_path / str(next(n))))

It raises ``AssertionError`` naming the rule that was broken, with what the backend
returned and what the contract wants (explicit checks, not ``assert``: they hold under
``python -O`` too). :func:`assert_log_consistent` checks the invariants of a whole log
(positions and versions consecutive from 1, the stream index agreeing with the global log);
crash and property tests run it after the fact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from ._engine import call_query
from ._errors import ConcurrencyError, DefinitionError, DuplicateCommand, StorageError
from ._log import EventLog
from ._log_check import LogWalk
from ._projectors import detach
from ._records import ANY, NO_STREAM, Append, AppendResult, ProjectorCache, Snapshot, StoredEvent

__all__ = [
    "assert_log_consistent",
    "call_query",
    "check_event_log",
    "detach",
    "make_append",
]

_encode = msgspec.msgpack.Encoder().encode


def make_append(
    stream_id: str,
    expected_version: int,
    count: int = 1,
    *,
    type: str = "Tested",
    correlation_id: str | None = None,
    causation_id: str | None = None,
    aggregate_name: str | None = None,
) -> Append:
    """An append of ``count`` events; each payload (a msgpack str) says where it was sent."""
    events = tuple((type, _encode(f"{stream_id}#{expected_version}+{i}")) for i in range(count))
    return Append(stream_id, expected_version, events, correlation_id, causation_id, aggregate_name)


def assert_log_consistent(log: EventLog, batch: int = 1000) -> dict[str, int]:
    """Check a whole (quiescent) log and return each stream's version.

    Positions run 1..head with no gap, each stream's versions run 1..n in log order, and
    ``read_stream``/``stream_version`` agree with the global log. The log is read up to
    its head position: a short batch does not end it (a backend may end one early, as the
    LMDB log does before an unreadable entry).

    Raises:
        AssertionError: the log is inconsistent.
        StorageError: the log could not read an entry (raised as the log raised it).
    """
    walk = LogWalk(log, batch=batch)  # the rules, shared with ``actorlog verify``
    for damage in walk.damage():
        if damage.error is not None:
            raise damage.error
        raise AssertionError(damage.problem)
    return walk.versions


def check_event_log(make_log: Callable[[], EventLog]) -> None:
    """Run the event-log contract against fresh, empty logs from ``make_log``.

    Each check gets its own log and closes it. Raises ``AssertionError`` on a violation.
    """
    for check in _CHECKS:
        log = make_log()
        try:
            check(log)
        except AssertionError as e:
            raise AssertionError(f"{check.__name__.strip('_')}: {e}") from e
        finally:
            log.close()


def _same(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {_show(got)}, want {_show(want)}")


def _show(value: Any) -> str:
    """Events as (position, stream id, version, payload), so a failure reads at a glance."""
    if isinstance(value, StoredEvent):
        return repr((value.position, value.stream_id, value.version, bytes(value.payload)))
    if isinstance(value, list) and value and isinstance(value[0], StoredEvent):
        return "[" + ", ".join(_show(event) for event in value) + "]"
    return repr(value)


def _holds(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


@contextmanager
def _raises(kind: type[BaseException], what: str) -> Iterator[None]:
    try:
        yield
    except kind:
        return
    raise AssertionError(f"{what} did not raise {kind.__name__}")


def _commit(log: EventLog, *appends: Append) -> list[AppendResult]:
    outcomes, _ = log.append_batch(appends)
    results = [o for o in outcomes if isinstance(o, AppendResult)]
    _same(outcomes, results, "outcomes of appends that should all succeed")
    return results


def _summary(result: object) -> tuple[object, ...]:
    if isinstance(result, AppendResult):
        return (
            result.stream_id,
            result.first_version,
            result.last_version,
            result.first_position,
            result.last_position,
        )
    if isinstance(result, ConcurrencyError):
        return ("conflict", result.stream_id, result.expected, result.actual)
    return ("unexpected", repr(result))


def _starts_empty(log: EventLog) -> None:
    _same(log.head_position(), 0, "head_position() of an empty log")
    _same(log.read_all(), [], "read_all() of an empty log")
    _same(log.stream_version("s"), 0, "stream_version() of a missing stream")
    _same(log.read_stream("s"), [], "read_stream() of a missing stream")
    _same(log.load_snapshot("s"), None, "load_snapshot() never saved")
    _same(log.load_projector_cache("P"), None, "load_projector_cache() never saved")


def _group_commits_in_order(log: EventLog) -> None:
    group = [make_append("a", NO_STREAM, 2), make_append("b", NO_STREAM), make_append("a", 2)]
    outcomes, stored = log.append_batch(group)
    want = [("a", 1, 2, 1, 2), ("b", 1, 1, 3, 3), ("a", 3, 3, 4, 4)]
    _same([_summary(o) for o in outcomes], want, "outcomes of a group")
    _same(
        [(e.position, e.stream_id, e.version) for e in stored],
        [(1, "a", 1), (2, "a", 2), (3, "b", 1), (4, "a", 3)],
        "stored events of a group",
    )
    _same(log.read_all(), stored, "read_all() after a group")
    _same(
        [bytes(e.payload) for e in stored],
        [p for a in group for _, p in a.events],
        "payloads read back",
    )
    _same(log.head_position(), 4, "head_position() after a group")
    _same(log.stream_version("a"), 3, "stream_version() after a group")


def _mismatch_fails_only_that_append(log: EventLog) -> None:
    _commit(log, make_append("a", NO_STREAM))
    outcomes, stored = log.append_batch(
        [make_append("b", NO_STREAM), make_append("a", 5, 3), make_append("c", NO_STREAM)]
    )
    _same(
        [_summary(o) for o in outcomes],
        [("b", 1, 1, 2, 2), ("conflict", "a", 5, 1), ("c", 1, 1, 3, 3)],
        "outcomes of a group with one wrong expected version",
    )
    _same(len(stored), 2, "events stored by that group")
    _same(log.stream_version("a"), 1, "version of the stream whose append failed")
    # A failed append advances nothing, even for a later append to its stream in the same
    # group: that one is checked against the version before the failure, and no position
    # is left unused between the events around it.
    outcomes, stored = log.append_batch(
        [make_append("d", NO_STREAM), make_append("a", 2, 3), make_append("a", 1, 2)]
    )
    _same(
        [_summary(o) for o in outcomes],
        [("d", 1, 1, 4, 4), ("conflict", "a", 2, 1), ("a", 2, 3, 5, 6)],
        "outcomes of a failed append followed by one to the same stream",
    )
    _same(
        [(e.position, e.stream_id, e.version) for e in stored],
        [(4, "d", 1), (5, "a", 2), (6, "a", 3)],
        "stored events around a failed append (no gap)",
    )
    assert_log_consistent(log)


def _any_and_no_stream(log: EventLog) -> None:
    first = _commit(log, make_append("a", ANY), make_append("a", ANY, 2))
    _same([_summary(r) for r in first], [("a", 1, 1, 1, 1), ("a", 2, 3, 2, 3)], "ANY appends")
    outcomes, _ = log.append_batch([make_append("a", NO_STREAM), make_append("b", NO_STREAM)])
    _same(
        [_summary(o) for o in outcomes],
        [("conflict", "a", NO_STREAM, 3), ("b", 1, 1, 4, 4)],
        "NO_STREAM on an existing and on a new stream",
    )


def _empty_append_checks_version_only(log: EventLog) -> None:
    _commit(log, make_append("a", NO_STREAM))
    outcomes, stored = log.append_batch(
        [make_append("a", 1, 0), make_append("a", 0, 0), make_append("new", NO_STREAM, 0)]
    )
    _same(
        [_summary(o) for o in outcomes],
        [("a", 2, 1, 2, 1), ("conflict", "a", 0, 1), ("new", 1, 0, 2, 1)],
        "empty appends (first = one past last: nothing written)",
    )
    _same(stored, [], "events stored by empty appends")
    _same(log.head_position(), 1, "head_position() after empty appends")
    _same(log.stream_version("new"), 0, "an empty append creates no stream")


def _read_stream_from_a_version(log: EventLog) -> None:
    _commit(log, make_append("a", NO_STREAM, 3), make_append("b", NO_STREAM, 2))
    _commit(log, make_append("a", 3), make_append("b", 2, 3), make_append("a", 4, 2))
    a = log.read_stream("a")
    _same(
        [(e.version, e.position) for e in a],
        [(1, 1), (2, 2), (3, 3), (4, 6), (5, 10), (6, 11)],
        "read_stream() of interleaved multi-event appends",
    )
    _same(
        [bytes(e.payload) for e in a],
        [bytes(e.payload) for e in log.read_all() if e.stream_id == "a"],
        "payloads of read_stream() and read_all()",
    )
    for start in range(0, 8):
        tail = a[max(start, 1) - 1 :]
        _same(log.read_stream("a", start), tail, f"read_stream('a', {start})")
        for limit in range(0, 4):
            _same(
                log.read_stream("a", start, limit),
                tail[:limit],
                f"read_stream('a', {start}, {limit})",
            )
    _same([e.version for e in log.read_stream("b", 2)], [2, 3, 4, 5], "read_stream('b', 2)")


def _read_all_in_batches(log: EventLog) -> None:
    for i in range(10):
        _commit(log, make_append(f"s{i % 3}", ANY, i % 4 + 1))
    everything = log.read_all(1, 1000)
    _same([e.position for e in everything], list(range(1, 24)), "positions of read_all()")
    for batch in (1, 2, 7, 23, 24):
        got: list[StoredEvent] = []
        while chunk := log.read_all(len(got) + 1, batch):
            _holds(len(chunk) <= batch, f"read_all(limit={batch}) returned {len(chunk)}")
            got.extend(chunk)
        _same(got, everything, f"read_all() in batches of {batch}")
    _same(log.read_all(24), [], "read_all() past the head")
    _same(log.read_all(0, 2), everything[:2], "read_all(0, 2)")
    _same(log.read_all(5, 0), [], "read_all(limit=0)")


def _metadata_round_trips(log: EventLog) -> None:
    _commit(
        log, make_append("a", NO_STREAM, 2, type="Opened", correlation_id="c", causation_id="k")
    )
    for event in log.read_stream("a"):
        _same(
            (event.type, event.correlation_id, event.causation_id),
            ("Opened", "c", "k"),
            "type and correlation/causation ids read back",
        )
        _holds(event.timestamp > 0, f"timestamp {event.timestamp} is not a commit time")
    # The aggregate type that created a stream comes back on its events, by both reads;
    # without it, a stream could be loaded as another aggregate type.
    _commit(log, make_append("b", NO_STREAM, 2, aggregate_name="Account"))
    _commit(log, make_append("b", 2))
    for events, how in ((log.read_stream("b"), "read_stream"), (log.read_all(3), "read_all")):
        _same(
            [event.aggregate for event in events],
            ["Account", "Account", None],
            f"aggregate of the creating append, by {how}()",
        )


def _snapshots_keep_the_last_write(log: EventLog) -> None:
    _commit(log, make_append("a", NO_STREAM))
    log.append_batch([], snapshots=[("a", Snapshot(1, 7, b"state"))])
    _same(log.load_snapshot("a"), Snapshot(1, 7, b"state"), "load_snapshot()")
    log.append_batch([make_append("a", 1)], snapshots=[("a", Snapshot(2, 7, b"later"))])
    _same(log.load_snapshot("a"), Snapshot(2, 7, b"later"), "load_snapshot() after a second")
    log.append_batch([], snapshots=[("a", Snapshot(2, 7, b"owned", "Account"))])
    _same(log.load_snapshot("a"), Snapshot(2, 7, b"owned", "Account"), "a snapshot's aggregate")
    _same(log.load_snapshot("b"), None, "load_snapshot() of another stream")


def _projector_caches_round_trip(log: EventLog) -> None:
    _same(log.load_projector_cache("Balances"), None, "load_projector_cache() never saved")
    log.append_batch(
        [make_append("a", NO_STREAM)],
        projector_caches=[("Balances", ProjectorCache(1, 3, b"cache"))],
    )
    _same(
        log.load_projector_cache("Balances"),
        ProjectorCache(1, 3, b"cache"),
        "load_projector_cache()",
    )
    # Same name as a stream and as a projector: separate namespaces.
    log.append_batch(
        [],
        snapshots=[("Balances", Snapshot(9, 9, b"stream"))],
        projector_caches=[("Balances", ProjectorCache(2, 3, b"later"))],
    )
    _same(
        log.load_projector_cache("Balances"),
        ProjectorCache(2, 3, b"later"),
        "projector cache overwritten",
    )
    _same(log.load_snapshot("Balances"), Snapshot(9, 9, b"stream"), "a stream's snapshot")
    with _raises(DefinitionError, "append_batch() with a projector named ''"):
        log.append_batch(
            [make_append("b", NO_STREAM)], projector_caches=[("", ProjectorCache(1, 1, b""))]
        )
    _same(log.stream_version("b"), 0, "stream_version() after a refused group")
    _same(log.head_position(), 1, "head_position() after a refused group")
    with _raises(DefinitionError, "load_projector_cache('')"):
        log.load_projector_cache("")


def _invalid_stream_ids_are_refused(log: EventLog) -> None:
    for bad in ("", "a\x00b", "x" * 401):
        with _raises(DefinitionError, f"append_batch() to {bad[:8]!r}"):
            log.append_batch([make_append("ok", NO_STREAM), make_append(bad, NO_STREAM)])
        with _raises(DefinitionError, f"read_stream({bad[:8]!r})"):
            log.read_stream(bad)
        with _raises(DefinitionError, f"stream_version({bad[:8]!r})"):
            log.stream_version(bad)
        with _raises(DefinitionError, f"append_batch() with a snapshot of {bad[:8]!r}"):
            log.append_batch([], snapshots=[(bad, Snapshot(1, 0, b""))])
    _same(log.head_position(), 0, "head_position() after refused groups")
    _commit(log, make_append("ok", NO_STREAM))  # nothing of the refused groups counted
    _commit(log, make_append("é" * 200, NO_STREAM))  # 400 UTF-8 bytes: the limit


def _non_int_expected_versions_are_refused(log: EventLog) -> None:
    # A bool or a float equals a version (True == 1) but is none: refused, as a bad id is.
    for bad in (True, 0.0, "0", None):
        with _raises(DefinitionError, f"append_batch() expecting {bad!r}"):
            log.append_batch([make_append("ok", NO_STREAM), Append("s", bad, ())])  # type: ignore[arg-type]
    _same(log.head_position(), 0, "head_position() after refused groups")
    _commit(log, make_append("ok", NO_STREAM))


def _closed_log_refuses_everything(log: EventLog) -> None:
    _commit(log, make_append("a", NO_STREAM))
    log.close()
    log.close()  # idempotent
    calls: list[tuple[str, Callable[[], object]]] = [
        ("append_batch", lambda: log.append_batch([make_append("a", 1)])),
        ("read_stream", lambda: log.read_stream("a")),
        ("read_all", lambda: log.read_all()),
        ("head_position", log.head_position),
        ("stream_version", lambda: log.stream_version("a")),
        ("load_snapshot", lambda: log.load_snapshot("a")),
        ("load_projector_cache", lambda: log.load_projector_cache("p")),
        ("find_command", lambda: log.find_command("a", "c")),
    ]
    for name, call in calls:
        with _raises(StorageError, f"{name}() after close()"):
            call()


def _command_ids_are_recorded_with_their_append(log: EventLog) -> None:
    # Recorded in the append's transaction, per stream, and read back on every event.
    meta = {"command_id": "c", "principal": "ann", "headers": (("trace", "t1"),)}
    first = _commit(log, msgspec.structs.replace(make_append("a", NO_STREAM, 2), **meta))[0]
    _same(log.find_command("a", "c"), first, "find_command() of a recorded id")
    _same(log.find_command("b", "c"), None, "find_command() of the id on another stream")
    _same(log.find_command("a", "d"), None, "find_command() of an id never recorded")
    for events, how in ((log.read_stream("a"), "read_stream"), (log.read_all(), "read_all")):
        _same(
            [(e.command_id, e.principal, e.headers) for e in events],
            [("c", "ann", (("trace", "t1"),))] * 2,
            f"command id, principal and headers by {how}()",
        )
    # A duplicate writes nothing and carries the original result, in a later group or in
    # the same one; the group's other appends commit.
    again = msgspec.structs.replace(make_append("a", ANY), command_id="c")
    fresh = msgspec.structs.replace(make_append("a", ANY), command_id="e")
    outcomes, stored = log.append_batch([again, fresh, fresh])
    _holds(
        [type(o) for o in outcomes] == [DuplicateCommand, AppendResult, DuplicateCommand],
        f"outcomes of a duplicate, a new id, and its duplicate in one group: {outcomes!r}",
    )
    _same(outcomes[0].result, first, "the duplicate's original result")  # type: ignore[union-attr]
    _same(outcomes[2].result, outcomes[1], "the in-group duplicate's result")  # type: ignore[union-attr]
    _same([e.position for e in stored], [3], "positions the group stored")
    # An empty append records its id; a failed one records nothing.
    empty = _commit(log, msgspec.structs.replace(make_append("b", NO_STREAM, 0), command_id="z"))
    _same(log.find_command("b", "z"), empty[0], "find_command() of an empty append's id")
    outcomes, _ = log.append_batch([msgspec.structs.replace(make_append("b", 7), command_id="y")])
    _holds(isinstance(outcomes[0], ConcurrencyError), "a version mismatch with an id")
    _same(log.find_command("b", "y"), None, "find_command() of a failed append's id")


_CHECKS: tuple[Callable[[EventLog], None], ...] = (
    _starts_empty,
    _group_commits_in_order,
    _mismatch_fails_only_that_append,
    _any_and_no_stream,
    _empty_append_checks_version_only,
    _read_stream_from_a_version,
    _read_all_in_batches,
    _metadata_round_trips,
    _snapshots_keep_the_last_write,
    _projector_caches_round_trip,
    _invalid_stream_ids_are_refused,
    _non_int_expected_versions_are_refused,
    _closed_log_refuses_everything,
    _command_ids_are_recorded_with_their_append,
)
