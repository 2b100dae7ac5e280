"""The LMDB log's data integrity: nothing unwritten is acknowledged, a second writer is kept
out (and caught if it gets in), one unstorable append fails alone, a damaged data file is
refused at open (never an empty log, never a signal), bit flips are caught by checksums, and
every error at open is typed.

Real LMDB in ``tmp_path``; opens that could die of a signal run in a child process, so a
SIGBUS fails the test instead of killing pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest

import actorlog.engine._log_lmdb as lmdb_log
from actorlog import EncodeError, StorageError, StorageFull, StorageLocked
from actorlog.engine._checksum import TRAILER, all_intact, intact, intact_bytes, seal
from actorlog.engine._codec import decode_stored_many, decode_stored_runs, encode_stored
from actorlog.storage import (
    Append,
    AppendResult,
    LmdbEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
)

from .full_log import big_opens, fill, lmdb_view, tmpfs
from .heads_child import crash_after, expected_versions, stream_positions
from .torture_child import TortureAccount

ROOT = Path(__file__).resolve().parent.parent.parent


def _tick(text: str) -> tuple[str, bytes]:
    return "Tick", msgspec.msgpack.encode(text)


def _fill_log(path: Path, streams: int = 7, events: int = 300, size: int = 20) -> None:
    """A closed log of ``events`` events spread over ``streams`` streams."""
    log = LmdbEventLog(path)
    try:
        versions = [0] * streams
        for n in range(events):
            s = n % streams
            outcomes, _ = log.append_batch(
                [Append(f"s{s}", versions[s], (_tick(f"{n:06d}" + "x" * size),))]
            )
            assert isinstance(outcomes[0], AppendResult), outcomes
            versions[s] += 1
    finally:
        log.close()


def _read_everything(path: Path) -> list[StoredEvent]:
    log = LmdbEventLog(path)
    try:
        return log.read_all(1, 1 << 30)
    finally:
        log.close()


# -- the checksum itself ------------------------------------------------------------------


def test_sealed_records_and_any_run_of_them_check() -> None:
    records = [seal(os.urandom(n)) for n in (0, 1, 7, 60, 300, 4096)]
    assert all(intact(r) for r in records)
    assert all_intact(records) and all_intact(records[2:4]) and all_intact([])
    joined = bytearray(b"".join(records))
    for bit in range(0, len(joined) * 8, 97):
        flipped = bytearray(joined)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not intact(bytes(flipped)), bit
    # The trailer is the pure CRC (no initial or final inversion) of the body.
    body = b"actorlog"
    pure = zlib.crc32(body, 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert seal(body) == body + struct.pack("<I", pure) and len(seal(body)) == 8 + TRAILER


def test_intact_bytes_is_the_size_of_intact_records_and_minus_one_otherwise() -> None:
    records = [seal(os.urandom(n % 90)) for n in range(1300)]  # more than two runs of 512
    assert intact_bytes(records) == sum(map(len, records)) and intact_bytes([]) == 0
    for at in (0, 511, 512, 1299):
        damaged = list(records)
        damaged[at] = damaged[at][:-1] + bytes([damaged[at][-1] ^ 0x10])
        assert intact_bytes(damaged) == -1, at


def test_decoding_entries_in_runs_gives_what_decoding_them_one_by_one_gives() -> None:
    entries = [
        struct.pack(">Q", p - 1)
        + encode_stored(
            StoredEvent(p, f"s-{p % 7}", p, "T", 1.5, None, "c", msgspec.Raw(b"\x91\x01"))
        )
        + b"\0" * TRAILER
        for p in range(1, 1100)
    ]
    body = lambda value: value[8:-TRAILER]  # noqa: E731
    assert decode_stored_runs(entries, body) == decode_stored_many(map(body, entries))
    assert decode_stored_runs([], body) == []


# -- 1. every put's result is checked -------------------------------------------------------


class _TxnProxy:
    """A real write transaction; ``sneak`` is called with it before its first ordered put."""

    def __init__(self, txn: Any, sneak: Any) -> None:
        self._txn, self._sneak = txn, sneak

    def put(self, *args: Any, **kwargs: Any) -> bool:
        # put(key, value, dupdata, overwrite, append, db), by position or by keyword.
        fields = ("key", "value", "dupdata", "overwrite", "append", "db")
        named = dict(zip(fields, args, strict=False))
        named.update(kwargs)
        if named.get("append") and self._sneak is not None:
            sneak, self._sneak = self._sneak, None
            sneak(self._txn, named["db"])
        return bool(self._txn.put(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)

    def __enter__(self) -> _TxnProxy:
        self._txn.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._txn.__exit__(*exc)


class _EnvProxy:
    def __init__(self, env: Any, sneak: Any) -> None:
        self._env, self._sneak = env, sneak

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self._env.begin(*args, **kwargs)
        return _TxnProxy(txn, self._sneak) if kwargs.get("write") else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def test_an_ordered_put_that_does_not_write_fails_the_group_and_acknowledges_nothing(
    tmp_path: Path,
) -> None:
    log = LmdbEventLog(tmp_path)
    try:
        log.append_batch([Append("a", 0, (_tick("1"),))])
        before = log.read_all()
        real_env = log._env

        def far_key(txn: Any, db: Any) -> None:
            # A key past every position, inside this very transaction: LMDB's own
            # append=True put then declines (returns False) instead of writing.
            assert txn.put(b"\xff" * 8, b"in the way", db=db)

        log._env = _EnvProxy(real_env, far_key)  # type: ignore[assignment]
        outcomes, stored = log.append_batch(
            [Append("a", 1, (_tick("2"),)), Append("b", 0, (_tick("3"),))]
        )
        log._env = real_env
        assert stored == []
        assert len(outcomes) == 2 and all(type(o) is StorageError for o in outcomes), outcomes
        assert log.head_position() == 1 and log.read_all() == before
        outcomes, _ = log.append_batch([Append("a", 1, (_tick("2"),))])  # carries on
        assert isinstance(outcomes[0], AppendResult) and outcomes[0].last_position == 2
    finally:
        log.close()
    assert [e.position for e in _read_everything(tmp_path)] == [1, 2]


# -- 2. a second writer ---------------------------------------------------------------------

_OPEN_CHILD = textwrap.dedent(
    """
    import sys
    from actorlog.storage import LmdbEventLog
    from actorlog import StorageError, StorageLocked
    try:
        log = LmdbEventLog(sys.argv[1])
    except StorageLocked:
        print("locked")
    except StorageError as e:
        print("refused", e)
    else:
        events = log.read_all(1, 1 << 30)
        log.close()
        print("opened", len(events))
    """
)


def _open_in_child(path: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    return done.returncode, done.stdout.strip() or done.stderr.strip()[-300:]


def test_deleting_the_lock_file_does_not_let_a_second_engine_open(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    try:
        log.append_batch([Append("a", 0, (_tick("1"),))])
        (tmp_path / "actorlog.lock").unlink()
        assert _open_in_child(tmp_path) == (0, "locked")
        with pytest.raises(StorageLocked):  # nor in this process
            LmdbEventLog(tmp_path)
        outcomes, _ = log.append_batch([Append("a", 1, (_tick("2"),))])
        assert isinstance(outcomes[0], AppendResult)
    finally:
        log.close()
    assert [e.position for e in _read_everything(tmp_path)] == [1, 2]


_FOREIGN_WRITER = textwrap.dedent(
    """
    import sys
    import lmdb
    env = lmdb.open(sys.argv[1], max_dbs=8)
    events = env.open_db(b"events", create=False)
    with env.begin(write=True, db=events) as txn:
        cur = txn.cursor()
        assert cur.last()
        head = int.from_bytes(cur.key(), "big")
        assert txn.put((head + 1).to_bytes(8, "big"), b"written by someone else", append=True)
    env.close()
    """
)


def test_a_foreign_write_fails_the_next_append_typed_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    log = LmdbEventLog(tmp_path)
    try:
        outcomes, _ = log.append_batch(
            [Append("a", 0, (_tick("1"), _tick("2"))), Append("b", 0, (_tick("3"),))]
        )
        assert all(isinstance(o, AppendResult) for o in outcomes)
        acknowledged = log.read_all()
        # Both locks bypassed: a raw LMDB writer in another process (LMDB lets it in).
        subprocess.run(
            [sys.executable, "-c", _FOREIGN_WRITER, str(tmp_path)], check=True, timeout=30
        )
        for _ in range(2):  # the next append, and every later one: the log is poisoned
            outcomes, stored = log.append_batch(
                [Append("a", 2, (_tick("4"),)), Append("c", 0, (_tick("5"),))]
            )
            assert stored == []
            assert all(type(o) is StorageError for o in outcomes), outcomes
            assert all("another writer" in str(o) for o in outcomes)
        assert log.head_position() == 3
        assert log.read_all(1, 3) == acknowledged  # reads carry on
    finally:
        log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(b"events", create=False)) as txn:
            stored_values = [v for _, v in txn.cursor()]
    finally:
        env.close()
    assert len(stored_values) == 4 and stored_values[3] == b"written by someone else"


# -- 3. per-append isolation --------------------------------------------------------------


class _Str(str):
    pass


def test_an_append_that_cannot_be_stored_fails_alone_and_writes_nothing(tmp_path: Path) -> None:
    good = _tick("good")
    bad: list[Append] = [
        Append("x1", 0, (good,), correlation_id="\ud800"),  # no UTF-8 form
        Append("x2", 0, (good,), correlation_id=2**70),  # type: ignore[arg-type]
        Append("x3", 0, (good,), correlation_id=42),  # type: ignore[arg-type]
        Append("x4", 0, (good,), causation_id=b"bytes"),  # type: ignore[arg-type]
        Append("x5", 0, (good,), aggregate_name=7),  # type: ignore[arg-type]
        Append("x6", 0, (good, ("Tick", b"\x01\x02"))),  # a payload of two values
        Append("x7", 0, (good, ("Tick", b""))),  # ...and of none
        Append("x8", 0, ((5, good[1]),)),  # type: ignore[arg-type]
        Append("x9", 0, (good, ("Tick", "not bytes"))),  # type: ignore[arg-type]
        Append("x10", 0, (good,), correlation_id=_Str("a str subclass")),  # not encodable
    ]
    log = LmdbEventLog(tmp_path)
    try:
        group = [Append("a", 0, (good,))]
        for version, append in enumerate(bad, 1):  # each bad one between two good ones
            group += [append, Append("a", version, (good,))]
        outcomes, stored = log.append_batch(group)
        for append, outcome in zip(group, outcomes, strict=True):
            if append.stream_id == "a":
                assert isinstance(outcome, AppendResult), outcome
            else:
                assert type(outcome) is EncodeError, (append, outcome)
        assert [e.position for e in stored] == list(range(1, len(bad) + 2))
        assert [e.stream_id for e in stored] == ["a"] * (len(bad) + 1)
        assert log.read_all() == stored
    finally:
        log.close()
    log = LmdbEventLog(tmp_path)  # and the log reopens, every entry readable
    try:
        assert log.read_all() == stored
        assert all(log.stream_version(a.stream_id) == 0 for a in bad)
    finally:
        log.close()


# -- 4. open verifies the data file -------------------------------------------------------


def _needed_bytes(path: Path) -> tuple[int, int]:
    """(bytes the current meta page counts, the data file's size) of a closed log."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8)
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    return needed, (path / "data.mdb").stat().st_size


def test_a_truncated_data_file_is_refused_at_open_never_an_empty_log_or_a_signal(
    tmp_path: Path,
) -> None:
    pristine = tmp_path / "pristine"
    _fill_log(pristine, events=1500, size=100)
    count = len(_read_everything(pristine))
    needed, size = _needed_bytes(pristine)
    assert needed > 150_000
    points = sorted(
        {0, 1, 100, 4095, 4096, 4097, 8191, 8192, 8193, 12288, 65536, 150_000}
        | {needed // 2, needed - 4096, needed - 1, needed, size - 1}
    )
    points = [point for point in points if point < size]
    copies = [tmp_path / f"cut-{point}" for point in points]
    for point, copy in zip(points, copies, strict=True):
        shutil.copytree(pristine, copy)
        os.truncate(copy / "data.mdb", point)
    with ThreadPoolExecutor(2) as pool:  # the children mostly start up: two at a time
        opened = list(pool.map(_open_in_child, copies))
    for point, (code, said) in zip(points, opened, strict=True):
        assert code == 0, (point, code, said)  # a negative code is a signal (SIGBUS)
        if point < needed:
            assert said.startswith("refused"), (point, said)
        else:  # the pages past what the meta page counts held nothing
            assert said == f"opened {count}", (point, said)


def test_a_deleted_data_file_is_refused_not_a_new_log(tmp_path: Path) -> None:
    _fill_log(tmp_path, events=10)
    (tmp_path / "data.mdb").unlink()
    assert _open_in_child(tmp_path)[1].startswith("refused")
    assert not (tmp_path / "data.mdb").exists() or (tmp_path / "data.mdb").stat().st_size == 0
    (tmp_path / "lock.mdb").unlink()  # and without LMDB's lock file as well
    assert _open_in_child(tmp_path)[1].startswith("refused")


def test_a_data_file_with_a_damaged_meta_page_is_refused(tmp_path: Path) -> None:
    _fill_log(tmp_path, events=10)
    with open(tmp_path / "data.mdb", "r+b") as f:
        f.seek(4096 + 16)  # the magic of meta page 1
        f.write(b"\x00\x00\x00\x00")
    assert _open_in_child(tmp_path)[1].startswith("refused")


def test_a_new_log_writes_its_marker_and_an_old_one_gets_it_at_open(tmp_path: Path) -> None:
    LmdbEventLog(tmp_path / "new").close()
    assert (tmp_path / "new" / lmdb_log.MARKER).exists()
    _fill_log(tmp_path / "old", events=3)
    (tmp_path / "old" / lmdb_log.MARKER).unlink()  # as a log from before the marker
    assert len(_read_everything(tmp_path / "old")) == 3
    assert (tmp_path / "old" / lmdb_log.MARKER).exists()


# -- 5. checksums ---------------------------------------------------------------------------


def _flip_in_file(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def test_bit_flips_in_stored_events_are_caught_and_named_never_read_back_changed(
    tmp_path: Path,
) -> None:
    pristine = tmp_path / "pristine"
    _fill_log(pristine, events=200)
    original = _read_everything(pristine)
    env = lmdb.open(str(pristine), readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin(db=env.open_db(b"events", create=False)) as txn:
            entries = [(int.from_bytes(k, "big"), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()
    data = (pristine / "data.mdb").read_bytes()
    flips = 0
    for position, value in entries[::5]:
        # The entry's bytes in leaf pages (no B-tree damage): its live page and any stale
        # copy LMDB left in a free page; the bit is flipped in every copy.
        found: list[int] = []
        at = data.find(value)
        while at >= 0:
            found.append(at)
            at = data.find(value, at + 1)
        assert found
        for index in (0, 7, 9, len(value) // 2, len(value) - 6, len(value) - 1):
            copy = tmp_path / f"flip-{position}-{index}"
            shutil.copytree(pristine, copy)
            for at in found:
                _flip_in_file(copy / "data.mdb", at + index, (position + index) % 8)
            flips += 1
            try:
                log = LmdbEventLog(copy)
            except StorageError:
                continue  # refused at open (a damaged link in the tail it replays)
            try:
                if position > 1:  # the readable prefix (at 1, there is none: it raises)
                    assert log.read_all(1, 1 << 30) == original[: position - 1]
                with pytest.raises(StorageError, match=f"position {position}\\b"):
                    log.read_all(position)
                assert log.read_all(position + 1, 1 << 30) == original[position:]
                with pytest.raises(StorageError):
                    log.read_stream(original[position - 1].stream_id)
            finally:
                log.close()
    assert flips >= 200


def _flip_entry(path: Path, position: int, offset: int, bit: int) -> None:
    """Flip one bit of the entry at ``position`` (``offset`` from its start; negative from
    its end), in place through LMDB, so that only the entry is damaged."""

    def flip(value: bytes) -> bytes:
        at = offset % len(value)
        return value[:at] + bytes([value[at] ^ (1 << bit)]) + value[at + 1 :]

    _rewrite(path, b"events", position.to_bytes(8, "big"), flip)


def test_a_damaged_entry_in_the_tail_replayed_at_open_is_placed_or_refused_never_misplaced(
    tmp_path: Path,
) -> None:
    """A crash leaves heads unwritten, so the open replays the tail: an entry there that
    fails its checksum is placed by its link only if its own bytes name that stream."""
    pristine = tmp_path / "pristine"
    crash_after(pristine, every=1_000, groups=9)
    positions = stream_positions(9)
    last_c = positions["c"][-1]
    link = positions["c"][-2]
    assert (last_c, link, link ^ 2) == (12, 9, positions["a"][-1])
    for name, offset, bit, placed in [
        ("payload", -6, 3, True),
        ("crc", -1, 0, True),
        ("link bit 0", 7, 0, False),  # names a's event 8, not its head (11): no owner
        ("link bit 1", 7, 1, False),  # names a's head, 11: only its own bytes say "c"
        ("stream id", 8 + 3, 2, False),
    ]:
        copy = tmp_path / name.replace(" ", "-")
        shutil.copytree(pristine, copy)
        _flip_entry(copy, last_c, offset, bit)
        if not placed:
            with pytest.raises(StorageError, match="cannot be rebuilt"):
                LmdbEventLog(copy)
            continue
        log = LmdbEventLog(copy)
        try:
            assert {s: log.stream_version(s) for s in "abc"} == expected_versions(9), name
            with pytest.raises(StorageError, match=f"position {last_c}\\b"):
                log.read_all(last_c)
            with pytest.raises(StorageError, match=f"position {last_c}\\b"):
                log.read_stream("c")
        finally:
            log.close()


def test_a_damaged_tail_entry_whose_stream_head_was_written_back_is_placed_by_the_table(
    tmp_path: Path,
) -> None:
    pristine = tmp_path / "pristine"
    crash_after(pristine, every=5, groups=9)  # heads written back at 6 and 12; tail: 13
    positions = stream_positions(9)
    assert positions["b"][-2:] == [10, 13]  # 13 links to 10, which the table holds as b's head
    payload = tmp_path / "payload"
    shutil.copytree(pristine, payload)
    _flip_entry(payload, 13, -6, 5)
    log = LmdbEventLog(payload)
    try:
        assert {s: log.stream_version(s) for s in "abc"} == expected_versions(9)
        with pytest.raises(StorageError, match="position 13"):
            log.read_all(13)
    finally:
        log.close()
    link = tmp_path / "link"
    shutil.copytree(pristine, link)
    _flip_entry(link, 13, 7, 0)  # 11: a's head in the table, but the entry names "b"
    with pytest.raises(StorageError, match="cannot be rebuilt"):
        LmdbEventLog(link)


def _rewrite(path: Path, db_name: bytes, key: bytes, change: Any) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(db_name, create=False)) as txn:
            value = txn.get(key)
            assert value is not None
            assert txn.put(key, change(bytes(value)))
    finally:
        env.close()


def _flip_byte(needle: bytes, replacement: bytes) -> Any:
    def change(value: bytes) -> bytes:
        assert value.count(needle) == 1
        return value.replace(needle, replacement)

    return change


def test_a_flipped_snapshot_or_saved_projection_that_still_decodes_counts_as_none(
    tmp_path: Path,
) -> None:
    log = LmdbEventLog(tmp_path)
    log.append_batch(
        [],
        snapshots=[("a", Snapshot(1, 0, b"state-A"))],
        projector_caches=[("P", ProjectorCache(1, 0, b"cache-A"))],
    )
    log.close()
    _rewrite(tmp_path, b"snapshots", b"a", _flip_byte(b"state-A", b"state-C"))
    _rewrite(tmp_path, b"projections", b"P", _flip_byte(b"cache-A", b"cache-C"))
    log = LmdbEventLog(tmp_path)
    try:
        assert log.load_snapshot("a") is None
        assert log.load_projector_cache("P") is None
    finally:
        log.close()


def test_a_flipped_stream_head_is_a_storage_error_for_that_stream_only(tmp_path: Path) -> None:
    _fill_log(tmp_path, streams=2, events=6)
    LmdbEventLog(tmp_path).close()  # the heads are written back at close
    _rewrite(tmp_path, b"heads", b"s0", lambda v: v[:7] + bytes([v[7] ^ 2]) + v[8:])
    log = LmdbEventLog(tmp_path)
    try:
        with pytest.raises(StorageError):
            log.stream_version("s0")
        with pytest.raises(StorageError):
            log.read_stream("s0")
        outcomes, _ = log.append_batch(
            [Append("s0", 3, (_tick("x"),)), Append("s1", 3, (_tick("y"),))]
        )
        assert type(outcomes[0]) is StorageError and isinstance(outcomes[1], AppendResult)
    finally:
        log.close()


def _make_layout_2(path: Path) -> None:
    """Turn a closed log into what ``actorlog-2`` wrote: nothing sealed."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        for name in (b"events", b"heads", b"snapshots", b"projections"):
            with env.begin(write=True, db=env.open_db(name, create=False)) as txn:
                for key, value in list(txn.cursor()):
                    assert intact(value)
                    txn.put(key, value[:-TRAILER])
        with env.begin(write=True, db=env.open_db(b"meta", create=False)) as txn:
            txn.put(b"format", b"actorlog-2")
            txn.put(b"heads_at", (txn.get(b"heads_at") or b"")[:8])
            txn.delete(b"checked_from")
    finally:
        env.close()


def test_a_log_of_the_unchecksummed_layout_is_upgraded_in_place(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    log.append_batch(
        [Append("a", 0, (_tick("1"), _tick("2"))), Append("b", 0, (_tick("3"),))],
        projector_caches=[("P", ProjectorCache(3, 0, b"cache"))],
        snapshots=[("a", Snapshot(2, 0, b"state"))],
    )
    log.close()
    before = _read_everything(tmp_path)
    _make_layout_2(tmp_path)
    log = LmdbEventLog(tmp_path)
    try:
        assert log.read_all() == before
        assert log.load_projector_cache("P") == ProjectorCache(3, 0, b"cache")  # resealed
        assert log.load_snapshot("a") is None  # left as it was: retaken later
        outcomes, _ = log.append_batch([Append("a", 2, (_tick("4"),))])
        assert isinstance(outcomes[0], AppendResult)
        after = log.read_all()
        assert after[:3] == before and [e.version for e in log.read_stream("a")] == [1, 2, 3]
    finally:
        log.close()
    log = LmdbEventLog(tmp_path)  # upgraded for good
    try:
        assert log.read_all() == after
    finally:
        log.close()
    # Entries from the upgrade on are checked; the one appended since is position 4.
    _rewrite(tmp_path, b"events", (4).to_bytes(8, "big"), lambda v: v[:-5] + b"\x00" + v[-4:])
    log = LmdbEventLog(tmp_path)
    try:
        assert log.read_all() == after[:3]
        with pytest.raises(StorageError, match="position 4"):
            log.read_all(4)
    finally:
        log.close()


# -- 6. typed errors at open ----------------------------------------------------------------


def test_a_path_that_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError) as caught:
        LmdbEventLog(tmp_path / "file")
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(StorageError) as caught:
        LmdbEventLog(tmp_path / "file" / "log")  # a parent that is a file
    assert isinstance(caught.value.__cause__, OSError)


def test_a_lock_file_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "actorlog.lock").mkdir()  # opening it for writing fails, as read-only would
    with pytest.raises(StorageError) as caught:
        LmdbEventLog(tmp_path)
    assert isinstance(caught.value.__cause__, OSError)


def test_bad_arguments_are_definition_errors(tmp_path: Path) -> None:
    from actorlog import DefinitionError

    with pytest.raises(DefinitionError):
        LmdbEventLog(tmp_path / "a\x00b")
    with pytest.raises(DefinitionError):
        LmdbEventLog(42)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError):
        LmdbEventLog(tmp_path, map_size="big")  # type: ignore[arg-type]


@contextlib.contextmanager
def _read_only(disk: Path) -> Iterator[None]:
    subprocess.run(["mount", "-o", "remount,ro", disk], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", disk], check=True, capture_output=True)


def test_a_read_only_file_system_is_a_storage_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        LmdbEventLog(disk / "used").close()
        with _read_only(disk):
            for path in (disk / "new", disk / "used"):  # cannot create it; cannot lock it
                with pytest.raises(StorageError) as caught:
                    LmdbEventLog(path)
                assert isinstance(caught.value.__cause__, OSError), path


async def test_a_full_disk_is_always_storage_full(tmp_path: Path) -> None:
    """A third of the failures on a full disk came as a plain StorageError (LMDB reports a
    short page write as EIO); all are StorageFull now."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        from actorlog import Engine

        async with Engine.open(disk / "log", aggregates=[TortureAccount]) as engine:
            failures = await fill(engine, [], big_opens)
            assert len(failures) == 16
            assert all(type(e) is StorageFull for e in failures), failures
            assert lmdb_view(engine).head_position() > 0


def test_an_io_error_with_room_on_the_disk_stays_a_storage_error(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path)
    real_env = log._env

    def fail(txn: Any, db: Any) -> None:
        raise lmdb.Error("mdb_txn_commit: " + os.strerror(5))

    try:
        log._env = _EnvProxy(real_env, fail)  # type: ignore[assignment]
        outcomes, _ = log.append_batch([Append("a", 0, (_tick("1"),))])
        assert type(outcomes[0]) is StorageError
    finally:
        log._env = real_env
        log.close()
