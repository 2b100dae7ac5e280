"""A projector's saved cache is a ProjectorCache, and caches saved as Snapshots still load.

Before round two the ``projections`` table held an encoded ``Snapshot`` whose ``version``
was a position: a msgpack array ``[version, format, state, aggregate]``. ``ProjectorCache``
has the same first three fields, so those values decode unchanged (no layout bump).
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgspec

from actorlog.engine._checksum import seal
from actorlog.storage import LmdbEventLog, MemoryEventLog, ProjectorCache, Snapshot


def _put_raw(path: Path, name: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(b"projections", create=False)) as txn:
            txn.put(name, value)
    finally:
        env.close()


def test_a_cache_saved_as_a_snapshot_loads_as_a_projector_cache(tmp_path: Path) -> None:
    LmdbEventLog(tmp_path).close()
    old = msgspec.msgpack.encode(Snapshot(5, 2, b"cache"))  # what the writer stored before
    _put_raw(tmp_path, b"Balances", seal(old))
    log = LmdbEventLog(tmp_path)
    try:
        assert log.load_projector_cache("Balances") == ProjectorCache(5, 2, b"cache")
    finally:
        log.close()


def test_a_cache_is_stored_as_the_first_three_fields_of_a_snapshot() -> None:
    # The other direction: an actorlog that still reads Snapshots reads ours the same.
    new = msgspec.msgpack.encode(ProjectorCache(7, 1, b"state"))
    assert msgspec.msgpack.decode(new, type=Snapshot) == Snapshot(7, 1, b"state")


def test_both_logs_give_back_the_cache_they_were_given(tmp_path: Path) -> None:
    for log in (LmdbEventLog(tmp_path), MemoryEventLog()):
        try:
            log.append_batch([], projector_caches=[("P", ProjectorCache(3, 9, b"c"))])
            assert log.load_projector_cache("P") == ProjectorCache(3, 9, b"c")
        finally:
            log.close()
