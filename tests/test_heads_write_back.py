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

from engine import Append, AppendResult, ConcurrencyError, LmdbEventLog, StorageError

_CHILD = textwrap.dedent(
    """
    import os, sys
    import msgspec
    import engine._log_lmdb as lmdb_log
    from engine import Append, LmdbEventLog

    path, every, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lmdb_log.HEADS_FLUSH_EVERY = every
    log = LmdbEventLog(path)
    versions = {}
    for group in range(groups):
        appends = []
        for stream in ("a", "b", "c"):
            if (group + ord(stream)) % 2:  # streams interleave unevenly
                continue
            version = versions.get(stream, log.stream_version(stream))
            payload = ("Tick", msgspec.msgpack.encode(f"{stream}-{version + 1}"))
            appends.append(Append(stream, version, (payload,)))
            versions[stream] = version + 1
        outcomes, _ = log.append_batch(appends)
        assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    os._exit(0)  # a crash: no close, so heads not yet written back stay unwritten
    """
)


def _crash_after(path: Path, *, every: int, groups: int) -> None:
    subprocess.run([sys.executable, "-c", _CHILD, str(path), str(every), str(groups)], check=True)


def _expected(groups: int) -> dict[str, int]:
    """Each stream's version after the child's ``groups`` groups."""
    return {stream: len(p) for stream, p in _positions(groups).items()}


def _positions(groups: int) -> dict[str, list[int]]:
    """The log positions of each stream's events, in the child's order."""
    positions: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    position = 0
    for group in range(groups):
        for stream in positions:
            if not (group + ord(stream)) % 2:
                position += 1
                positions[stream].append(position)
    return positions


@pytest.mark.parametrize(("every", "groups"), [(1_000, 7), (4, 9), (3, 3), (1, 5)])
def test_reopen_after_crash_rebuilds_every_head(tmp_path: Path, every: int, groups: int) -> None:
    _crash_after(tmp_path, every=every, groups=groups)
    want = _expected(groups)
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
            heads_at = int.from_bytes(txn.get(b"heads_at", db=meta) or b"", "big")
    finally:
        env.close()
    return heads, heads_at


def test_a_crash_leaves_heads_as_of_the_last_write_back(tmp_path: Path) -> None:
    _crash_after(tmp_path, every=5, groups=9)
    # Group ends (positions): 1 3 4 6 7 9 10 12 13. Write-backs happen in the groups that
    # reach 5 events past the previous one: at 6 and 12; event 13 is the unwritten tail.
    heads, heads_at = _raw(tmp_path)
    assert heads_at == 12
    stored = {k.decode(): int.from_bytes(v[:8], "big") for k, v in heads.items()}
    assert stored == _expected(8) == {"a": 4, "b": 4, "c": 4}  # "b" is one short of its 5


def test_close_writes_every_head_back(tmp_path: Path) -> None:
    _crash_after(tmp_path, every=1_000, groups=7)
    LmdbEventLog(tmp_path).close()  # replays the tail, then writes it back at close
    heads, heads_at = _raw(tmp_path)
    want = _expected(7)
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
    _crash_after(tmp_path, every=1_000, groups=7)
    want = _expected(7)
    _corrupt(tmp_path, _positions(7)["a"][-1], keep=12)  # the link survives, the rest not
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
    _crash_after(tmp_path, every=1_000, groups=3)
    _corrupt(tmp_path, 1, keep=12)  # the first event of its stream: nothing names the stream
    with pytest.raises(StorageError, match="stream index cannot be rebuilt"):
        LmdbEventLog(tmp_path)
    # Refused cleanly: the directory lock was released.
    with pytest.raises(StorageError, match="stream index cannot be rebuilt"):
        LmdbEventLog(tmp_path)
