"""The LMDB log's command ids: kept in the transaction of their append, bounded by the
retention, refused when damaged, and the layout before them upgraded in place."""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgspec
import pytest

from actorlog import CommandIdRetention, StorageError
from actorlog.engine._log_lmdb import FORMAT
from actorlog.engine.testing import make_append
from actorlog.storage import NO_STREAM, Append, AppendResult, DuplicateCommand, LmdbEventLog


def _with_id(stream_id: str, command_id: str, expected: int = -1) -> Append:
    return msgspec.structs.replace(make_append(stream_id, expected), command_id=command_id)


def _table_sizes(path: Path) -> tuple[int, int]:
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            sizes = tuple(
                int(txn.stat(env.open_db(name, txn=txn, create=False))["entries"])
                for name in (b"commands", b"command_order")
            )
    finally:
        env.close()
    return sizes  # type: ignore[return-value]


def test_retention_bounds_the_tables_and_survives_reopening(tmp_path: Path) -> None:
    retention = CommandIdRetention(max_ids=50)
    log = LmdbEventLog(tmp_path, sync=False, command_ids=retention)
    for group in range(20):
        log.append_batch([_with_id("s", f"{group}-{i}") for i in range(10)])
    log.close()
    assert _table_sizes(tmp_path) == (50, 50)
    log = LmdbEventLog(tmp_path, sync=False, command_ids=retention)
    try:
        assert log.find_command("s", "19-9") is not None  # the newest are kept
        assert log.find_command("s", "14-9") is None  # the oldest dropped
        log.append_batch([_with_id("s", "new")])
    finally:
        log.close()
    assert _table_sizes(tmp_path) == (50, 50)


def test_a_damaged_command_id_is_an_error_not_a_new_command(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path, sync=False)
    log.append_batch([_with_id("s", "c")])
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:
        db = env.open_db(b"commands", txn=txn)
        key, value = next(iter(txn.cursor(db=db)))
        txn.put(key, bytes([value[0] ^ 1]) + value[1:], db=db)
    env.close()
    log = LmdbEventLog(tmp_path, sync=False)
    try:
        with pytest.raises(StorageError):
            log.find_command("s", "c")
        outcomes, _ = log.append_batch([_with_id("s", "c")])
        assert isinstance(outcomes[0], StorageError)
        assert log.head_position() == 1  # nothing appended on the strength of it
    finally:
        log.close()


def test_the_layout_before_command_ids_is_upgraded_in_place(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path, sync=False)
    log.append_batch([make_append("s", NO_STREAM, 2)])
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:  # as actorlog-3 left it: no command tables
        txn.put(b"format", b"actorlog-3", db=env.open_db(b"meta", txn=txn))
        txn.drop(env.open_db(b"commands", txn=txn), delete=True)
        txn.drop(env.open_db(b"command_order", txn=txn), delete=True)
    env.close()
    log = LmdbEventLog(tmp_path, sync=False)
    try:
        assert [e.command_id for e in log.read_stream("s")] == [None, None]
        [done], _ = log.append_batch([_with_id("s", "c")])
        assert isinstance(done, AppendResult)
        [again], _ = log.append_batch([_with_id("s", "c")])
        assert isinstance(again, DuplicateCommand) and again.result == done
    finally:
        log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"format", db=env.open_db(b"meta", txn=txn, create=False)) == FORMAT
    env.close()
