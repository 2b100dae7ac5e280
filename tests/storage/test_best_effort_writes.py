"""Best-effort writes never fail the appends they ride with.

A snapshot or a projector's saved cache is only a shortcut (the events stay the truth), so
one that does not fit under ``max_map_size`` (or on the disk) is dropped and the group
retried without it, as the heads write-back is: another stream's command must not get
``StorageFull`` for the room a snapshot would have taken.
"""

from __future__ import annotations

from pathlib import Path

from actorlog import StorageFull
from actorlog.storage import Append, AppendResult, LmdbEventLog, ProjectorCache, Snapshot

CAP = 8 << 20
BIG = b"x" * (20 << 20)  # more than the whole map may hold


def _log(path: Path) -> LmdbEventLog:
    return LmdbEventLog(path, map_size=CAP, max_map_size=CAP)


def _append(stream_id: str, version: int = 0) -> Append:
    return Append(stream_id, version, (("Pinged", b"\x90"),))


def test_a_snapshot_that_does_not_fit_is_dropped_not_the_group(tmp_path: Path) -> None:
    log = _log(tmp_path)
    try:
        outcomes, stored = log.append_batch(
            [_append("innocent")], snapshots=[("big", Snapshot(1, 1, BIG, "Big"))]
        )
        assert isinstance(outcomes[0], AppendResult)
        assert [e.stream_id for e in stored] == ["innocent"]
        assert log.load_snapshot("big") is None
        # A snapshot that fits still rides along with the next group.
        outcomes, _ = log.append_batch(
            [_append("innocent", 1)], snapshots=[("small", Snapshot(1, 1, b"\x90", "Small"))]
        )
        assert isinstance(outcomes[0], AppendResult)
        assert log.load_snapshot("small") == Snapshot(1, 1, b"\x90", "Small")
    finally:
        log.close()
    log = _log(tmp_path)
    try:
        assert log.head_position() == 2 and log.stream_version("innocent") == 2
    finally:
        log.close()


def test_a_saved_cache_that_does_not_fit_is_dropped_not_the_group(tmp_path: Path) -> None:
    log = _log(tmp_path)
    try:
        outcomes, _ = log.append_batch(
            [_append("innocent")],
            projector_caches=[("View", ProjectorCache(1, 1, BIG))],
        )
        assert isinstance(outcomes[0], AppendResult)
        assert log.load_projector_cache("View") is None
        assert log.head_position() == 1
    finally:
        log.close()


def test_appends_that_do_not_fit_themselves_still_fail(tmp_path: Path) -> None:
    log = _log(tmp_path)
    try:
        outcomes, stored = log.append_batch(
            [Append("big", 0, (("Grew", b"\xc6" + len(BIG).to_bytes(4, "big") + BIG),))],
            snapshots=[("s", Snapshot(1, 1, b"\x90"))],
        )
        assert isinstance(outcomes[0], StorageFull) and stored == []
        assert log.head_position() == 0 and log.load_snapshot("s") is None
    finally:
        log.close()
