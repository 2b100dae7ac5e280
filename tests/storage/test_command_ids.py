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


def _kept(log: LmdbEventLog, groups: int) -> int:
    """How many of the ids ``{group}-{i}`` the log still finds."""
    return sum(
        log.find_command("s", f"{group}-{i}") is not None
        for group in range(groups)
        for i in range(10)
    )


def test_retention_bounds_the_ids_and_survives_reopening(tmp_path: Path) -> None:
    retention = CommandIdRetention(max_ids=50)
    log = LmdbEventLog(tmp_path, sync=False, command_ids=retention)
    try:
        for group in range(20):
            log.append_batch([_with_id("s", f"{group}-{i}") for i in range(10)])
        assert _kept(log, 20) == 50
    finally:
        log.close()
    log = LmdbEventLog(tmp_path, sync=False, command_ids=retention)
    try:
        assert _kept(log, 20) == 50
        assert log.find_command("s", "19-9") is not None  # the newest are kept
        assert log.find_command("s", "14-9") is None  # the oldest dropped
        log.append_batch([_with_id("s", f"20-{i}") for i in range(10)])
        assert _kept(log, 21) == 50
    finally:
        log.close()


def _damage_first_id(env: lmdb.Environment) -> None:
    with env.begin(write=True) as txn:
        db = env.open_db(b"command_ids", txn=txn)
        key, value = next(iter(txn.cursor(db=db)))
        txn.put(key, bytes([value[0] ^ 1]) + value[1:], db=db)


def test_a_command_id_damaged_under_a_running_log_is_an_error_not_a_new_command(
    tmp_path: Path,
) -> None:
    log = LmdbEventLog(tmp_path, sync=False)
    try:
        log.append_batch([_with_id("s", "c")])  # one entry a group: "c" alone in the first
        log.append_batch([_with_id("t", "d")])
        _damage_first_id(log._env)  # white-box: the bit rots under the open log
        with pytest.raises(StorageError):
            log.find_command("s", "c")
        outcomes, _ = log.append_batch([_with_id("s", "c"), _with_id("t", "d")])
        assert isinstance(outcomes[0], StorageError)  # that append only
        assert isinstance(outcomes[1], DuplicateCommand)
        assert log.head_position() == 2  # nothing appended on the strength of it
    finally:
        log.close()


def test_a_command_id_damaged_at_rest_is_dropped_at_open_and_the_others_kept(
    tmp_path: Path,
) -> None:
    # At open a damaged entry cannot say which id it held: it is left out of the index
    # (documented), and every other id is still recognised.
    log = LmdbEventLog(tmp_path, sync=False)
    log.append_batch([_with_id("s", "c")])  # one entry a group: "c" alone in the first
    log.append_batch([_with_id("t", "d")])
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8)
    _damage_first_id(env)
    env.close()
    log = LmdbEventLog(tmp_path, sync=False)
    try:
        assert log.find_command("s", "c") is None
        assert log.find_command("t", "d") is not None
    finally:
        log.close()


def test_the_layout_before_command_ids_is_upgraded_in_place(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path, sync=False)
    log.append_batch([make_append("s", NO_STREAM, 2)])
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:  # as actorlog-3 left it: no command-id table
        txn.put(b"format", b"actorlog-3", db=env.open_db(b"meta", txn=txn))
        txn.drop(env.open_db(b"command_ids", txn=txn), delete=True)
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
