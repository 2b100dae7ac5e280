"""``assert_log_consistent`` reads up to the head position: a batch the log ends early
(the LMDB log ends one just before an unreadable entry) is not the end of the log, and
the log's own ``StorageError`` for that entry comes out, not a confusing AssertionError."""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgspec
import pytest

from actorlog import StorageError
from actorlog.storage import (
    Append,
    AppendResult,
    LmdbEventLog,
    MemoryEventLog,
    assert_log_consistent,
)


def _fill(log: LmdbEventLog | MemoryEventLog, events: int) -> None:
    for n in range(events):
        outcomes, _ = log.append_batch(
            [Append(f"s{n % 2}", n // 2, (("Tick", msgspec.msgpack.encode(n)),))]
        )
        assert isinstance(outcomes[0], AppendResult), outcomes


def _flip_last_byte(path: Path, position: int) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(b"events", create=False)) as txn:
            key = position.to_bytes(8, "big")
            value = txn.get(key)
            assert value is not None
            assert txn.put(key, value[:-1] + bytes([value[-1] ^ 1]))
    finally:
        env.close()


def test_a_damaged_entry_is_the_logs_storage_error(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    try:
        _fill(log, 10)
    finally:
        log.close()
    _flip_last_byte(tmp_path, 5)
    log = LmdbEventLog(tmp_path)
    try:
        assert len(log.read_all(1, 100)) == 4  # the batch ends before the damaged entry
        with pytest.raises(StorageError, match=r"position 5\b"):
            assert_log_consistent(log, batch=100)
    finally:
        log.close()


@pytest.mark.parametrize("batch", [1, 3, 10, 1000])
def test_a_sound_log_checks_whatever_the_batch(batch: int) -> None:
    log = MemoryEventLog()
    _fill(log, 10)
    assert assert_log_consistent(log, batch=batch) == {"s0": 5, "s1": 5}
    assert assert_log_consistent(MemoryEventLog(), batch=batch) == {}


def test_a_log_that_ends_below_its_head_is_reported() -> None:
    class Short(MemoryEventLog):
        def head_position(self) -> int:
            return super().head_position() + 1

    log = Short()
    _fill(log, 3)
    with pytest.raises(AssertionError, match="below the head position 4"):
        assert_log_consistent(log)
