"""The LMDB log says how many bytes each read_all read (a ReadBatch), so projectors bound
their shared catch-up reads in bytes without measuring every event."""

from __future__ import annotations

import msgspec

from actorlog.engine._log import ReadBatch
from actorlog.storage import Append, LmdbEventLog, MemoryEventLog


def _fill(log: LmdbEventLog | MemoryEventLog, prefix: str, payload: bytes, count: int) -> None:
    outcomes, _ = log.append_batch(
        [Append(f"{prefix}-{i}", 0, (("Blob", payload),)) for i in range(count)]
    )
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


def test_an_lmdb_read_counts_the_bytes_it_read(lmdb_log: LmdbEventLog) -> None:
    small = msgspec.msgpack.encode("x")
    big = msgspec.msgpack.encode("y" * 50_000)
    _fill(lmdb_log, "small", small, 10)
    _fill(lmdb_log, "big", big, 3)
    events = lmdb_log.read_all(1, 100)
    assert isinstance(events, ReadBatch) and len(events) == 13
    payloads = sum(len(e.payload) for e in events)
    # Every stored record holds its payload, plus a bounded envelope (link, metadata, CRC).
    assert payloads <= events.nbytes <= payloads + 200 * len(events)
    assert events.nbytes > 150_000  # the three big ones are counted
    later = lmdb_log.read_all(11, 100)
    assert [e.position for e in later] == [11, 12, 13]
    assert isinstance(later, ReadBatch) and later.nbytes > 150_000


def test_a_backend_may_return_a_plain_list() -> None:
    """ReadBatch is optional: the memory log returns lists, and readers measure those."""
    log = MemoryEventLog()
    _fill(log, "s", msgspec.msgpack.encode("x"), 3)
    events = log.read_all(1, 10)
    assert len(events) == 3 and not isinstance(events, ReadBatch)
