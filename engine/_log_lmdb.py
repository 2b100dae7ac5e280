"""The LMDB event log: one environment, seven named databases.

The key layout is chosen for the write path, whose cost is the pages each commit dirties
(LMDB writes every dirty page whole, then fsyncs). Measured with 64 single-event appends per
commit to 64 streams: a per-append index keyed by stream and version dirties ~85 pages per
commit (one leaf per stream, random order); this layout dirties ~7 (``benchmarks/
probe_writer.py`` and the figures in its report):

- ``events``:  position (u64 BE) -> link (u64 BE) + StoredEvent (msgpack array).
  Positions only grow, so every put is an ordered ``append=True`` insert. The link is the
  position of the stream's previous event (0 for its first): a stream is a chain through
  the log, so appending to it writes nothing outside ``events`` but its head.
- ``heads``:   stream id -> version (u64 BE) + position of its last event (u64 BE).
  An index the log can rebuild, so it is written back lazily: heads live in memory (this
  process is the only writer; a file lock makes sure of that) and the ones that moved are
  written in the group that crosses ``HEADS_FLUSH_EVERY`` events since the last such write,
  together with ``meta[heads_at]``, the position up to which the table is complete. Opening
  the log replays the events after ``heads_at`` (at most about that many) into memory. A
  commit thus dirties only ``events`` pages and the meta page: with 64 appends to 64 of
  1,000 streams, writing heads every group cost ~90 µs of a ~500 µs durable commit.
- ``anchors``: stream id + NUL + version (u64 BE) -> position, every ``ANCHOR_EVERY``
  versions, so reading an old slice of a long stream walks at most that far past it.
- ``snapshots``: stream id -> Snapshot;  ``checkpoints``: name -> position (u64 BE);
  ``projections``: projector name -> Snapshot (its ``version`` is a log position).
- ``meta``: ``format`` -> ``FORMAT``, and ``heads_at`` (above). A log of another layout is
  refused at open rather than misread, except ``actorlog-1`` (heads written every group, so
  complete), which is upgraded in place.

``read_stream`` walks a stream's chain back from its head (or the nearest anchor past the
slice), so it costs one lookup per event read, plus under ``ANCHOR_EVERY`` skipped ones.

Durability: ``sync=True`` (default) fsyncs data and meta pages before commit returns;
``sync=False`` leaves flushing to the OS: it survives a process crash, not an OS crash.
The map grows by itself between transactions, doubling up to ``max_map_size``; a group that
does not fit under the cap fails whole with ``StorageFull`` and leaves nothing behind.
Why one file over 400 lines: the key layout above is one decision; the writer, the readers and
the map-growth lock all depend on it, and reading them side by side is how it is checked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import lmdb
import msgspec

from ._codec import DECODE_FAILURES, decode_stored, decode_stored_many, encode_stored
from ._errors import DecodeError, DefinitionError, StorageError, StorageFull, StorageLocked
from ._log import AppendOutcome, check_name, check_stream_id, expected_ok
from ._records import Append, AppendResult, Snapshot, StoredEvent

__all__ = ["ANCHOR_EVERY", "FORMAT", "LmdbEventLog"]

ANCHOR_EVERY: Final = 1024
"""A stream gets an anchor every this many versions (~1 extra put per 1024 events)."""

_u64: Final = struct.Struct(">Q")
_u64x2: Final = struct.Struct(">QQ")
_LINK: Final = _u64.size
_HEAD_CACHE_LIMIT: Final = 100_000
HEADS_FLUSH_EVERY: Final = 16_384
"""Stream heads are written back once this many events have been appended since the last
write-back (bounding the replay at open), or once this many streams have unwritten heads
(bounding the memory they pin)."""
FORMAT: Final = b"actorlog-2"
"""The on-disk layout this module reads and writes; bump it when the layout changes."""
_FORMAT_1: Final = b"actorlog-1"
"""The layout before heads were written back lazily: its heads table is always complete.
Opening one upgrades it in place (a version that reads only this one then refuses it,
rather than trusting a heads table that may lag)."""
_snapshot_encoder: Final = msgspec.msgpack.Encoder()
_snapshot_decoder: Final = msgspec.msgpack.Decoder(Snapshot)

DEFAULT_MAP_SIZE: Final = 64 << 20
DEFAULT_MAX_MAP_SIZE: Final = 1 << 40


class LmdbEventLog:
    """An :class:`~engine._log.EventLog` on LMDB. Open one per directory per process.

    One writer at a time: ``append_batch`` is called by one task or thread (the
    :class:`~engine.Writer`); reads may come from any thread, concurrently with it.

    Args:
        path: directory holding the environment (created if missing).
        sync: fsync every commit (durable against OS crashes). ``False`` survives only a
            process crash.
        map_size: initial map size in bytes.
        max_map_size: the cap the map may grow to; past it appends fail with ``StorageFull``.

    Raises:
        StorageLocked: another process (or another log in this one) has the directory open.
        DefinitionError: inconsistent sizes.
        StorageError: LMDB could not open the environment.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    ) -> None:
        if map_size <= 0 or max_map_size <= 0:
            raise DefinitionError("map_size and max_map_size must be positive")
        if max_map_size < map_size:
            raise DefinitionError(f"max_map_size ({max_map_size}) < map_size ({map_size})")
        self._path = Path(path)
        created = not self._path.exists()
        self._path.mkdir(parents=True, exist_ok=True)
        self._sync = sync
        self._max_map_size = max_map_size
        self._lock_fd = _lock_directory(self._path)
        try:
            self._env = lmdb.open(
                str(self._path),
                map_size=map_size,
                max_dbs=7,
                # sync and metasync go together: data fsync'd without its meta page would
                # roll back to the previous commit after an OS crash, losing acknowledged data.
                sync=sync,
                metasync=sync,
                # writemap would let a stray pointer scribble on the file, and readahead
                # only helps when the log is far larger than RAM; keep LMDB's safe defaults.
                writemap=False,
                max_readers=254,
            )
            if sync:
                # LMDB fsyncs its files, not the directory entries that name them: without
                # this, a power cut soon after creating a log could lose the files whole.
                _fsync_directory(self._path)
                if created:
                    _fsync_directory(self._path.parent)
            self._events = self._env.open_db(b"events")
            self._heads_db = self._env.open_db(b"heads")
            self._anchors = self._env.open_db(b"anchors")
            self._snapshots = self._env.open_db(b"snapshots")
            self._checkpoints = self._env.open_db(b"checkpoints")
            self._projections = self._env.open_db(b"projections")
            self._meta = meta = self._env.open_db(b"meta")
            with self._env.begin(write=True) as txn:
                cur = txn.cursor(db=self._events)
                head = _u64.unpack(cur.key())[0] if cur.last() else 0
                heads_at = txn.get(b"heads_at", db=meta)
                found = txn.get(b"format", db=meta)
                if found is None and head == 0:
                    txn.put(b"format", FORMAT, db=meta)
                    heads_at = _u64.pack(0)
                    txn.put(b"heads_at", heads_at, db=meta)
                elif found == _FORMAT_1:
                    txn.put(b"format", FORMAT, db=meta)
                    heads_at = _u64.pack(head)  # written through: complete
                    txn.put(b"heads_at", heads_at, db=meta)
                elif found != FORMAT:
                    raise StorageError(
                        f"the log at {self._path} has format {found!r}; this version of "
                        f"actorlog reads {FORMAT!r} only"
                    )
        except BaseException as e:
            with contextlib.suppress(lmdb.Error, AttributeError):
                self._env.close()
            os.close(self._lock_fd)
            if isinstance(e, lmdb.Error):
                raise StorageError(f"cannot open the log at {self._path}: {e}") from e
            raise
        # stream id -> (version, position of its last event); committed state only. Holds
        # every head not yet written back (``_unwritten``) plus a bounded cache of others.
        self._heads: dict[str, tuple[int, int]] = {}
        self._unwritten: dict[str, tuple[int, int]] = {}
        self._head: int = head
        # No ``heads_at`` in this format means nothing vouches for the heads table: rebuild
        # every head from the events (correct whatever the table holds).
        self._heads_at: int = 0 if heads_at is None else _u64.unpack(heads_at)[0]
        # Growing the map invalidates every open transaction of this process. Reads hold
        # this lock, and growth takes it, so a read on another thread (a writer committing
        # with ``in_thread=True``) never sees its transaction vanish.
        self._remap = threading.Lock()
        self._closed = False
        try:
            self._replay_heads()
        except BaseException:
            self._unwritten.clear()  # incomplete: close must not write it back
            self.close()
            raise

    # -- properties -----------------------------------------------------------------------

    @property
    def sync(self) -> bool:
        """True if commits are fsync'd (durable against an OS crash)."""
        return self._sync

    @property
    def path(self) -> Path:
        """The environment's directory."""
        return self._path

    @property
    def map_size(self) -> int:
        """The current map size in bytes."""
        self._check_open()
        return int(self._env.info()["map_size"])

    @property
    def max_map_size(self) -> int:
        """The cap the map may grow to; raise it to let writes resume after ``StorageFull``."""
        return self._max_map_size

    @max_map_size.setter
    def max_map_size(self, value: int) -> None:
        if not isinstance(value, int) or value <= 0:
            raise DefinitionError(f"max_map_size must be a positive int, not {value!r}")
        self._max_map_size = value

    # -- writes ---------------------------------------------------------------------------

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        checkpoints: Sequence[tuple[str, int]] = (),
        projections: Sequence[tuple[str, Snapshot]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Commit a group in one write transaction; see :class:`~engine._log.EventLog`.

        Durable when it returns if ``sync``. A full map is grown (no transaction is open
        then) and the group retried from scratch; past the cap every append of the group
        gets the same ``StorageFull`` and nothing of it is written.

        Raises:
            DefinitionError: a stream id or checkpoint name is invalid; nothing is written.
            StorageError: the log is closed.
        """
        self._check_open()
        write_back = True
        while True:
            try:
                return self._try_append(appends, snapshots, checkpoints, projections, write_back)
            except lmdb.MapFullError as e:
                try:
                    grown = self._grow()
                except lmdb.Error as e2:
                    return _fail_all(appends, StorageError(f"cannot grow the map: {e2}"), e2)
                if not grown:
                    if write_back and self._may_write_back(appends):
                        # Once more without a heads write-back: the heads can wait (the log
                        # rebuilds them), the appends should not fail for the room they take.
                        write_back = False
                        continue
                    full = StorageFull(
                        f"the log at {self._path} reached its cap of {self._max_map_size} bytes"
                    )
                    return _fail_all(appends, full, e)
            except lmdb.Error as e:
                if _out_of_space(e) and write_back and self._may_write_back(appends):
                    write_back = False
                    continue
                if _out_of_space(e):
                    # The disk, not the map, is full: same promise (nothing written), same
                    # remedy (make room, retry), so the same error as the map cap.
                    full = StorageFull(f"the disk holding {self._path} is full: {e}")
                    return _fail_all(appends, full, e)
                failed = StorageError(f"write to the log at {self._path} failed: {e}")
                return _fail_all(appends, failed, e)

    def _try_append(
        self,
        appends: Sequence[Append],
        snapshots: Sequence[tuple[str, Snapshot]],
        checkpoints: Sequence[tuple[str, int]],
        projections: Sequence[tuple[str, Snapshot]] = (),
        write_back: bool = True,
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        outcomes: list[AppendOutcome] = []
        stored: list[StoredEvent] = []
        # stream id -> (version, last position) as of this group.
        new_heads: dict[str, tuple[int, int]] = {}
        position = self._head
        timestamp = time.time()
        pack = _u64.pack
        # The context manager aborts on any exception, so a failed group leaves nothing,
        # and the in-memory view (head, cache) only moves after the commit below.
        cached = self._heads
        encode = encode_stored
        with self._env.begin(write=True) as txn:
            put = txn.put
            events_db = self._events
            for append in appends:
                stream_id = append.stream_id
                # The group's own heads first, then the cache, then the table.
                head = new_heads.get(stream_id) or cached.get(stream_id)
                if head is None:
                    head = self._table_head(txn, check_stream_id(stream_id))
                version, link = head
                if append.expected_version != version:
                    error = expected_ok(append, version)
                    if error is not None:
                        outcomes.append(error)
                        continue
                first_version, first_position = version + 1, position + 1
                corr, caus, kind = append.correlation_id, append.causation_id, append.aggregate
                for name, payload in append.events:
                    position += 1
                    version += 1
                    event = StoredEvent(
                        position,
                        stream_id,
                        version,
                        name,
                        timestamp,
                        corr,
                        caus,
                        msgspec.Raw(payload),
                        kind,
                    )
                    put(pack(position), pack(link) + encode(event), db=events_db, append=True)
                    link = position
                    stored.append(event)
                    if version % ANCHOR_EVERY == 0:
                        put(_anchor_key(stream_id, version), pack(position), db=self._anchors)
                if append.events:  # an empty append checks the version, moves nothing
                    new_heads[stream_id] = (version, link)
                outcomes.append(
                    AppendResult(
                        stream_id, first_version, version, first_position, position, timestamp
                    )
                )
            write_back = write_back and self._write_back_due(position)
            if write_back:
                self._write_heads(txn, {**self._unwritten, **new_heads}, position)
            for stream_id, snapshot in snapshots:
                put(
                    check_stream_id(stream_id).encode(),
                    _snapshot_encoder.encode(snapshot),
                    db=self._snapshots,
                )
            for name, checkpoint in checkpoints:
                put(check_name(name).encode(), pack(checkpoint), db=self._checkpoints)
            for name, state in projections:
                put(
                    check_name(name).encode(),
                    _snapshot_encoder.encode(state),
                    db=self._projections,
                )
        # Committed: only now may the in-memory view move forward.
        self._head = position
        if write_back:
            self._unwritten.clear()
            self._heads_at = position
        else:
            self._unwritten.update(new_heads)
        if len(self._heads) > _HEAD_CACHE_LIMIT:
            # One assignment, never clear-then-refill: a reader on another thread must not
            # catch a moment without the unwritten heads (the table lacks them).
            self._heads = {**self._unwritten, **new_heads}
        else:
            self._heads.update(new_heads)
        return outcomes, stored

    def _may_write_back(self, appends: Sequence[Append]) -> bool:
        """Whether committing ``appends`` could have included a heads write-back."""
        return self._write_back_due(self._head + sum(len(a.events) for a in appends))

    def _write_back_due(self, position: int) -> bool:
        """True once the heads written back lag ``position`` enough."""
        return (
            position - self._heads_at >= HEADS_FLUSH_EVERY
            or len(self._unwritten) >= HEADS_FLUSH_EVERY
        )

    def _write_heads(self, txn: Any, heads: dict[str, tuple[int, int]], position: int) -> None:
        """Write ``heads`` and mark the table complete up to ``position``, in ``txn``."""
        put, heads_db, pack2 = txn.put, self._heads_db, _u64x2.pack
        for stream_id, head in heads.items():
            put(stream_id.encode(), pack2(*head), db=heads_db)
        txn.put(b"heads_at", _u64.pack(position), db=self._meta)

    def _replay_heads(self) -> None:
        """Bring the heads of the events after ``heads_at`` into memory (at open)."""
        position = self._heads_at + 1
        while position <= self._head:
            values = self._scan(position, 4096)
            if not values:
                raise StorageError(f"corrupt log: position {position} is missing")
            for value in values:
                try:
                    event = decode_stored(value[_LINK:])
                    stream_id, version = event.stream_id, event.version
                except DecodeError:
                    stream_id, version = self._owner_of(value, position)
                self._unwritten[stream_id] = (version, position)
                position += 1
        self._heads.update(self._unwritten)

    def _owner_of(self, value: bytes, position: int) -> tuple[str, int]:
        """(stream id, version) of an unreadable entry, found through its stream's chain:
        the nearest readable event before it names the stream, the hops give the version.
        Without one the stream's head cannot be rebuilt, and appending to it could reuse a
        version, so the log is refused."""
        hops = 1
        at = position
        with self._reading() as txn:
            # Links must point strictly backwards: a corrupt one that does not would loop.
            while len(value) >= _LINK and 0 < (link := _u64.unpack_from(value)[0]) < at:
                found = txn.get(_u64.pack(link), db=self._events)
                if found is None:
                    break
                value, at = found, link
                try:
                    event = decode_stored(value[_LINK:])
                except DecodeError:
                    hops += 1
                    continue
                return event.stream_id, event.version + hops
        raise StorageError(
            f"corrupt log: the entry at position {position} is unreadable and no readable "
            "event names its stream, so the stream index cannot be rebuilt"
        )

    def _grow(self) -> bool:
        """Double the map (no transaction is open), up to the cap; False if at the cap."""
        current = self.map_size
        if current >= self._max_map_size:
            return False
        with self._remap:
            self._env.set_mapsize(min(current * 2, self._max_map_size))
        return True

    def _table_head(self, txn: Any, stream_id: str) -> tuple[int, int]:
        """(version, position of the last event) of a stream not in ``_heads``, from the
        heads table (which is current for it: every unwritten head is in memory); (0, 0)
        if it has none."""
        data = txn.get(stream_id.encode(), db=self._heads_db)
        if data is None:
            return 0, 0
        head: tuple[int, int] = _u64x2.unpack(data)
        return head

    # -- reads ----------------------------------------------------------------------------
    # Reads take the remap lock and their own read transaction, and return only decoded
    # records or bytes: nothing that points into the map outlives the transaction.

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order."""
        key = check_stream_id(stream_id).encode()
        want = max(from_version, 1)
        if limit is not None and limit <= 0:
            return []
        # The in-memory head first, then the transaction: a head is in memory only once its
        # commit is, so the transaction below sees every event the head points to.
        head = self._heads.get(stream_id)
        with self._reading() as txn:
            if head is None:
                data = txn.get(key, db=self._heads_db)
                if data is None:
                    return []
                head = _u64x2.unpack(data)
            version, position = head
            last = version if limit is None else min(version, want + limit - 1)
            if last < want:
                return []
            if version - last >= ANCHOR_EVERY:
                # Start from the first anchor at or past the slice instead of the head.
                cur = txn.cursor(db=self._anchors)
                if cur.set_range(_anchor_key(stream_id, last)):
                    anchor = cur.key()
                    if anchor[: len(key) + 1] == key + b"\x00":
                        version = _u64.unpack(anchor[-_LINK:])[0]
                        position = _u64.unpack(cur.value())[0]
            out: list[StoredEvent] = []
            get = txn.get
            events_db = self._events
            while version >= want:
                value = get(_u64.pack(position), db=events_db)
                if value is None:
                    raise StorageError(
                        f"corrupt log: stream {stream_id!r} lost position {position}"
                    )
                if version <= last:
                    event = self._decode(value, position)
                    if event.version != version or event.stream_id != stream_id:
                        raise StorageError(
                            f"corrupt log: position {position} is not {stream_id!r} "
                            f"version {version}"
                        )
                    out.append(event)
                position = _u64.unpack_from(value)[0]
                version -= 1
        out.reverse()
        return out

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order.

        An unreadable entry ends the batch just before it, so a reader applies everything
        readable and then, reading from that entry, gets a ``StorageError`` naming it.
        """
        values = self._scan(from_position, limit)
        try:
            # One C-level pass is ~1.4x the per-event loop (W4 rebuild, catch-up); only a
            # corrupt entry sends us down the slow path that finds it.
            return decode_stored_many(values, _LINK)
        except DecodeError:
            pass
        out: list[StoredEvent] = []
        position = max(from_position, 1)  # positions are consecutive: the n-th is start + n
        for value in values:
            try:
                out.append(self._decode(value, position + len(out)))
            except StorageError:
                if out:
                    break
                raise
        return out

    def _scan(self, from_position: int, limit: int) -> list[bytes]:
        if limit <= 0:
            self._check_open()
            return []
        with self._reading() as txn:
            cur = txn.cursor(db=self._events)
            if not cur.set_range(_u64.pack(max(from_position, 1))):
                return []
            return list(itertools.islice(cur.iternext(keys=False, values=True), limit))

    @staticmethod
    def _decode(value: bytes, position: int) -> StoredEvent:
        try:
            return decode_stored(value[_LINK:])
        except DecodeError as e:
            raise StorageError(f"corrupt log entry at position {position}: {e}") from e

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        self._check_open()
        return self._head

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if it does not exist."""
        check_stream_id(stream_id)
        cached = self._heads.get(stream_id)
        if cached is not None:
            self._check_open()
            return cached[0]
        with self._reading() as txn:
            return self._table_head(txn, stream_id)[0]

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved snapshot, if any.

        One that cannot be decoded counts as none: a snapshot is only a shortcut, and the
        stream's events, replayed from version 1, remain the truth.
        """
        key = check_stream_id(stream_id).encode()
        with self._reading() as txn:
            data = txn.get(key, db=self._snapshots)
        if data is None:
            return None
        try:
            snapshot: Snapshot = _snapshot_decoder.decode(data)
        except DECODE_FAILURES:
            return None
        return snapshot

    def load_projection(self, name: str) -> Snapshot | None:
        """A projector's last saved state; one that cannot be decoded counts as none (the
        projector then replays the log, which remains the truth)."""
        key = check_name(name).encode()
        with self._reading() as txn:
            data = txn.get(key, db=self._projections)
        if data is None:
            return None
        try:
            state: Snapshot = _snapshot_decoder.decode(data)
        except DECODE_FAILURES:
            return None
        return state

    def load_checkpoint(self, name: str) -> int:
        """A named checkpoint; 0 if never saved."""
        key = check_name(name).encode()
        with self._reading() as txn:
            data = txn.get(key, db=self._checkpoints)
        return 0 if data is None else int(_u64.unpack(data)[0])

    def _reading(self) -> _ReadTxn:
        self._check_open()
        return _ReadTxn(self)

    # -- lifetime -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the log at {self._path} is closed")

    def close(self) -> None:
        """Close the environment and release the directory lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._remap:
            if self._unwritten:
                # Saves the next open its replay; if it fails, that replay is the remedy.
                with contextlib.suppress(lmdb.Error), self._env.begin(write=True) as txn:
                    self._write_heads(txn, self._unwritten, self._head)
            self._env.close()
        os.close(self._lock_fd)


class _ReadTxn:
    """A read transaction under the remap lock; ``lmdb.Error`` leaves as ``StorageError``."""

    __slots__ = ("_log", "_txn")

    def __init__(self, log: LmdbEventLog) -> None:
        self._log = log
        self._txn: Any = None

    def __enter__(self) -> Any:
        log = self._log
        log._remap.acquire()
        try:
            log._check_open()  # closed while we waited for the lock
            self._txn = log._env.begin(buffers=False)
        except BaseException as e:
            log._remap.release()
            if isinstance(e, lmdb.Error):
                raise StorageError(f"cannot read the log at {log._path}: {e}") from e
            raise
        return self._txn

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        try:
            self._txn.abort()
        finally:
            self._log._remap.release()
        if isinstance(error, lmdb.Error):
            raise StorageError(f"cannot read the log at {self._log._path}: {error}") from error


def _anchor_key(stream_id: str, version: int) -> bytes:
    return stream_id.encode() + b"\x00" + _u64.pack(version)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _out_of_space(error: lmdb.Error) -> bool:
    """True if LMDB failed because the file system ran out of space (ENOSPC/EDQUOT)."""
    text = str(error)
    return any(
        os.strerror(code) in text or f"errno {code}" in text.lower()
        for code in (errno.ENOSPC, errno.EDQUOT)
    )


def _fail_all(
    appends: Sequence[Append], error: StorageError, cause: BaseException
) -> tuple[list[AppendOutcome], list[StoredEvent]]:
    error.__cause__ = cause
    return [error for _ in appends], []


def _lock_directory(path: Path) -> int:
    """Take an exclusive lock on ``path/actorlog.lock``; the OS releases it if we die."""
    fd = os.open(path / "actorlog.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageLocked(
            f"{path} is open in another process; one engine per log directory"
        ) from None
    return fd
