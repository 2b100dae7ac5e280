"""The LMDB log writes stream heads back lazily; a crash before the write-back loses nothing.

Heads (stream -> version and last position) are an index the log can rebuild from its
events, so they are written every ``HEADS_FLUSH_EVERY`` events, not every commit; opening
the log replays the events after the last write-back. The crashes here are a child process
that appends and then leaves with ``os._exit`` (no close, no write-back), which is what a
``kill -9`` leaves on disk once its commits have returned.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import msgspec
import pytest

import actorlog.engine._log_lmdb as lmdb_log
from actorlog import ConcurrencyError, StorageError
from actorlog.engine._checksum import TRAILER
from actorlog.storage import NO_STREAM, Append, AppendResult, LmdbEventLog

from .heads_child import crash_after, expected_versions, stream_positions

_TICK = ("Tick", msgspec.msgpack.encode("tick"))


@pytest.mark.parametrize(("every", "groups"), [(1_000, 7), (4, 9), (3, 3), (1, 5)])
def test_reopen_after_crash_rebuilds_every_head(tmp_path: Path, every: int, groups: int) -> None:
    crash_after(tmp_path, every=every, groups=groups)
    want = expected_versions(groups)
    log = LmdbEventLog(tmp_path)
    try:
        for stream, version in want.items():
            assert log.stream_version(stream) == version
            payloads = [bytes(e.payload) for e in log.read_stream(stream)]
            assert payloads == [
                msgspec.msgpack.encode(f"{stream}-{v}") for v in range(1, 1 + version)
            ]
        # Appends chain on from the rebuilt heads: the right expected version is accepted,
        # a stale one refused, and new events extend the right chains.
        outcomes, _ = log.append_batch(
            [Append("a", want["a"], (("Tick", b"\xa1x"),)), Append("b", 0, (("Tick", b"\xa1y"),))]
        )
        assert isinstance(outcomes[0], AppendResult) and outcomes[0].last_version == want["a"] + 1
        assert isinstance(outcomes[1], ConcurrencyError)
        assert [e.version for e in log.read_stream("a")] == list(range(1, want["a"] + 2))
    finally:
        log.close()


def _raw(path: Path) -> tuple[dict[bytes, bytes], int]:
    """The ``heads`` table and ``meta[heads_at]`` as stored (the log must be closed)."""
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        heads_db = env.open_db(b"heads", create=False)
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            heads = dict(txn.cursor(db=heads_db))
            heads_at = int.from_bytes((txn.get(b"heads_at", db=meta) or b"")[:8], "big")
    finally:
        env.close()
    return heads, heads_at


def test_a_crash_leaves_heads_as_of_the_last_write_back(tmp_path: Path) -> None:
    crash_after(tmp_path, every=5, groups=9)
    # Group ends (positions): 1 3 4 6 7 9 10 12 13. Write-backs happen in the groups that
    # reach 5 events past the previous one: at 6 and 12; event 13 is the unwritten tail.
    heads, heads_at = _raw(tmp_path)
    assert heads_at == 12
    stored = {k.decode(): int.from_bytes(v[:8], "big") for k, v in heads.items()}
    assert stored == expected_versions(8) == {"a": 4, "b": 4, "c": 4}  # "b" is one short of its 5


def test_close_writes_every_head_back(tmp_path: Path) -> None:
    crash_after(tmp_path, every=1_000, groups=7)
    LmdbEventLog(tmp_path).close()  # replays the tail, then writes it back at close
    heads, heads_at = _raw(tmp_path)
    want = expected_versions(7)
    assert heads_at == sum(want.values())
    assert {k: int.from_bytes(v[:8], "big") for k, v in heads.items()} == {
        s.encode(): v for s, v in want.items()
    }


def _corrupt(path: Path, position: int, keep: int) -> None:
    """Cut the entry at ``position`` to its first ``keep`` bytes (its link is 8 bytes)."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        events = env.open_db(b"events", create=False)
        with env.begin(write=True, db=events) as txn:
            key = position.to_bytes(8, "big")
            value = txn.get(key)
            assert value is not None
            txn.put(key, value[:keep])
    finally:
        env.close()


def test_an_unreadable_tail_entry_is_placed_by_its_chain(tmp_path: Path) -> None:
    crash_after(tmp_path, every=1_000, groups=7)
    want = expected_versions(7)
    _corrupt(tmp_path, stream_positions(7)["a"][-1], keep=12)  # the link survives, the rest not
    log = LmdbEventLog(tmp_path)
    try:
        assert log.stream_version("a") == want["a"]
        assert log.stream_version("b") == want["b"]
        with pytest.raises(StorageError):
            log.read_stream("a")
        assert len(log.read_stream("b")) == want["b"]
    finally:
        log.close()


def test_an_unreadable_first_event_in_the_tail_refuses_the_log(tmp_path: Path) -> None:
    crash_after(tmp_path, every=1_000, groups=3)
    _corrupt(tmp_path, 1, keep=12)  # the first event of its stream: nothing names the stream
    with pytest.raises(StorageError, match="stream index cannot be rebuilt"):
        LmdbEventLog(tmp_path)
    # Refused cleanly: the directory lock was released.
    with pytest.raises(StorageError, match="stream index cannot be rebuilt"):
        LmdbEventLog(tmp_path)


def test_an_empty_append_writes_no_head(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    outcomes, _ = log.append_batch([Append("ghost", 0, ()), Append("real", 0, (_TICK,))])
    assert isinstance(outcomes[0], AppendResult) and isinstance(outcomes[1], AppendResult)
    log.close()
    heads, _ = _raw(tmp_path)
    assert set(heads) == {b"real"}


def _rewrite_meta(path: Path, format: bytes, *, drop_heads_at: bool) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            txn.put(b"format", format)
            if drop_heads_at:
                txn.delete(b"heads_at")
    finally:
        env.close()


def _unseal(path: Path) -> None:
    """Strip the checksum from every event and head, as the layouts before it stored them."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        for name in (b"events", b"heads"):
            db = env.open_db(name, create=False)
            with env.begin(write=True, db=db) as txn:
                for key, value in list(txn.cursor()):
                    txn.put(key, value[:-TRAILER])
    finally:
        env.close()


def test_a_log_of_the_first_layout_is_refused_not_misread(tmp_path: Path) -> None:
    # actorlog-1 (0.1: heads written every group, no checksums) is no longer upgraded.
    crash_after(tmp_path, every=1_000, groups=3)
    LmdbEventLog(tmp_path).close()
    _unseal(tmp_path)
    _rewrite_meta(tmp_path, b"actorlog-1", drop_heads_at=True)
    with pytest.raises(StorageError, match="actorlog-1"):
        LmdbEventLog(tmp_path)


def test_a_log_without_heads_at_rebuilds_every_head(tmp_path: Path) -> None:
    crash_after(tmp_path, every=2, groups=6)  # some heads written back, then a crash
    _rewrite_meta(tmp_path, lmdb_log.FORMAT, drop_heads_at=True)  # nothing vouches for them
    log = LmdbEventLog(tmp_path)
    try:
        assert {s: log.stream_version(s) for s in "abc"} == expected_versions(6)
    finally:
        log.close()


def test_a_write_back_that_does_not_fit_waits_rather_than_failing_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmdb_log, "HEADS_FLUSH_EVERY", 1)  # every group writes heads back
    log = LmdbEventLog(tmp_path, map_size=1 << 20, max_map_size=1 << 20)  # at its cap

    def no_room(*args: object) -> None:
        raise lmdb.MapFullError("the heads do not fit")

    monkeypatch.setattr(log, "_write_heads", no_room)
    try:
        for version in range(3):
            outcomes, _ = log.append_batch([Append("a", version, (_TICK,))])
            assert isinstance(outcomes[0], AppendResult), outcomes
        assert log.stream_version("a") == 3
    finally:
        log.close()  # its write-back fails too, quietly: the next open replays
    log = LmdbEventLog(tmp_path)
    try:
        assert log.stream_version("a") == 3
        assert [e.version for e in log.read_stream("a")] == [1, 2, 3]
    finally:
        log.close()


# -- a log of the previous layout, a self-linked tail entry, eviction under a reader ----

# A child that opens the log, appends, and dies without close() (what kill -9 leaves).
_CRASH_CHILD = textwrap.dedent(
    """
    import os, sys
    from actorlog.storage import Append, LmdbEventLog

    path = sys.argv[1]
    log = LmdbEventLog(path)
    for stream, count in (("a", 3), ("b", 1)):
        version = log.stream_version(stream)
        events = tuple(("Tick", b"\\xc0") for _ in range(count))
        outcomes, _ = log.append_batch([Append(stream, version, events)])
        assert not isinstance(outcomes[0], Exception), outcomes
    os._exit(0)
    """
)


def _crash_child(path: Path) -> None:
    subprocess.run([sys.executable, "-c", _CRASH_CHILD, str(path)], check=True, timeout=30)


def _delete_heads_at(path: Path) -> None:
    """Make the log look like one written by the previous layout (no ``meta[heads_at]``)."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            assert txn.delete(b"heads_at")
    finally:
        env.close()


def test_a_log_of_the_previous_layout_keeps_its_heads_across_a_crash(tmp_path: Path) -> None:
    """engine/_log_lmdb.py:174: a log without ``heads_at`` gets ``_heads_at = head`` in
    memory only. Appends after that are not written to ``heads`` (no write-back before
    16,384 events), and a crash leaves ``heads_at`` still missing, so the next open again
    takes the stale table as complete and replays nothing: stream versions go back and an
    append reuses versions that already exist."""
    log = LmdbEventLog(tmp_path)
    log.append_batch([Append("a", NO_STREAM, (("Tick", b"\xc0"), ("Tick", b"\xc0")))])
    log.close()  # heads table complete up to position 2
    _delete_heads_at(tmp_path)  # ...as the previous layout left it

    _crash_child(tmp_path)  # appends a:3..5 and b:1, then dies before any write-back

    log = LmdbEventLog(tmp_path)
    try:
        assert log.head_position() == 6
        assert log.stream_version("a") == 5
        assert log.stream_version("b") == 1
        assert [e.version for e in log.read_stream("a")] == [1, 2, 3, 4, 5]
        outcomes, _ = log.append_batch([Append("b", NO_STREAM, (("Tick", b"\xc0"),))])
        assert isinstance(outcomes[0], ConcurrencyError)  # b already has version 1
    finally:
        log.close()


_OPEN_CHILD = textwrap.dedent(
    """
    import sys
    from actorlog.storage import LmdbEventLog
    from actorlog import StorageError
    try:
        LmdbEventLog(sys.argv[1]).close()
    except StorageError:
        print("refused")
    else:
        print("opened")
    """
)


def test_an_unreadable_entry_linking_to_itself_does_not_hang_the_open(tmp_path: Path) -> None:
    """engine/_log_lmdb.py:_owner_of follows back-links without checking that each one
    points strictly backwards. An undecodable entry in the replayed tail whose link bytes
    name its own position (or two corrupt entries naming each other) loops forever at
    100% CPU: the open never returns instead of being refused (or placed)."""
    _crash_child(tmp_path)  # positions 1-3: a, 4: b; heads_at stays 0
    env = lmdb.open(str(tmp_path), max_dbs=8)
    try:
        events = env.open_db(b"events", create=False)
        with env.begin(write=True, db=events) as txn:
            key = (3).to_bytes(8, "big")
            txn.put(key, key + b"\xc1")  # link = its own position; 0xc1 is never msgpack
    finally:
        env.close()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _OPEN_CHILD, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("opening the log hung in _owner_of")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("refused", "opened")


class _EvictionProbe(dict[str, tuple[int, int]]):
    """Stands for another thread reading the log at the instant the cache is cleared."""

    log: LmdbEventLog
    seen: list[int]

    def clear(self) -> None:
        super().clear()
        self.seen.append(len(self.log.read_stream("a")))


def test_a_reader_never_sees_an_unwritten_head_vanish_during_eviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine/_log_lmdb.py:_try_append evicts with ``_heads.clear()`` then
    ``_heads.update(_unwritten)``: two steps. A reader on another thread (the docstring
    allows reads from any thread) that looks a head up
    between them finds nothing in memory, falls back to the ``heads`` table, which lacks
    every unwritten head, and reads a committed stream as empty (or stale). The probe runs
    the read exactly in that window."""
    monkeypatch.setattr(lmdb_log, "_HEAD_CACHE_LIMIT", 1)
    log = LmdbEventLog(tmp_path)
    try:
        for stream in ("a", "b"):
            outcomes, _ = log.append_batch([Append(stream, NO_STREAM, (("Tick", b"\xc0"),))])
            assert isinstance(outcomes[0], AppendResult)
        probe = _EvictionProbe(log._heads)
        probe.log, probe.seen = log, []
        log._heads = probe
        log.append_batch([Append("c", NO_STREAM, (("Tick", b"\xc0"),))])  # evicts
        # "a" has one committed event, whatever the cache does. (A fix that swaps in a new
        # dict instead of clearing this one never calls the probe: nothing to see then.)
        assert all(n == 1 for n in probe.seen), probe.seen
    finally:
        log.close()
