"""The LMDB event log: one environment, six named databases, checksummed records.

The key layout is chosen for the write path, whose cost is the pages each commit dirties
(LMDB writes every dirty page whole, then fsyncs). Measured with 64 single-event appends per
commit to 64 streams: a per-append index keyed by stream and version dirties ~85 pages per
commit (one leaf per stream, random order); this layout dirties ~7 (``benchmarks/
probe_writer.py`` and the figures in its report):

- ``events``:  position (u64 BE) -> link (u64 BE) + StoredEvent (msgpack array) + CRC.
  Positions only grow, so every put is an ordered ``append=True`` insert. The link is the
  position of the stream's previous event (0 for its first): a stream is a chain through
  the log, so appending to it writes nothing outside ``events`` but its head.
- ``heads``:   stream id -> version (u64 BE) + position of its last event (u64 BE) + CRC.
  An index the log can rebuild, so it is written back lazily: heads live in memory (this
  process is the only writer; two file locks make sure of that) and the ones that moved are
  written in the group that crosses ``HEADS_FLUSH_EVERY`` events since the last such write,
  together with ``meta[heads_at]``, the position up to which the table is complete. Opening
  the log replays the events after ``heads_at`` (at most about that many) into memory. A
  commit thus dirties only ``events`` pages and the meta page: with 64 appends to 64 of
  1,000 streams, writing heads every group cost ~90 µs of a ~500 µs durable commit.
- ``anchors``: stream id + NUL + version (u64 BE) -> position, every ``ANCHOR_EVERY``
  versions, so reading an old slice of a long stream walks at most that far past it.
- ``snapshots``: stream id -> Snapshot + CRC;  ``projections``: projector name ->
  ProjectorCache + CRC (its fields are a Snapshot's first three, so caches an older
  actorlog saved as Snapshots decode unchanged). Logs made before round two may also hold
  a ``checkpoints`` table, which nothing reads any more.
- ``meta``: ``format`` -> ``FORMAT``; ``heads_at`` (above) + CRC; ``checked_from`` + CRC,
  the first position whose entry carries a checksum (1 unless upgraded from
  ``actorlog-2``). A log of another layout is refused at open rather than misread, except
  the one before this one, which is upgraded in place (below).

Checksums (``_checksum.py``): every value above but ``format`` and ``anchors`` ends in the
pure CRC-32 of the rest, so any run of entries checks with one CRC over their concatenation:
``read_all`` verifies a whole batch in one C pass (read_all of 4,096-event batches: 324 ->
355 ns an event, same run, against W4's ~650 ns all-in), ``read_stream`` once per call, and
only a mismatch sends a reader entry by entry, to name the position. A bad event entry is
a ``StorageError`` naming its position wherever it is read; a bad snapshot or saved
projector cache counts as none (each is only a shortcut); a bad ``heads_at`` counts as
absent (every head is rebuilt from the events); a bad head is a ``StorageError``.
Writing costs one CRC an event (~0.27 µs; with the envelope checks and the head check,
``append_batch`` of 64 one-event appends went from 1.40 to 1.92 µs an event, ``sync=False``
on tmpfs, same run: ~0.5 µs of W1's ~19 µs a command).

Upgrade: ``actorlog-2`` (no checksums) is upgraded in place, in one transaction at open:
``checked_from`` = head + 1 (older entries are read as they are, unchecked), and the small
values (heads, projector caches, ``heads_at``) are sealed. (``actorlog-1``, from 0.1, is
refused like any unknown layout.) Old snapshots are left as they are and so count as none: they
are retaken, and the stream replays from its events meanwhile. A version that reads only an
older layout then refuses the log rather than misread it.

What open checks, before LMDB maps anything (a map over a short file dies of SIGBUS when
touched): that ``data.mdb``'s two meta pages are LMDB's and the file holds every page the
current one counts; and that the data file is there and not empty if the marker file
``actorlog.data`` says this directory already held a log (it is written once the log's
first commit is durable). Either way the log is refused with a ``StorageError``, never
opened as a new empty log.

One writer: the directory lock (``flock`` on ``actorlog.lock``) is one; a second
``flock`` on ``data.mdb`` (LMDB locks only ``lock.mdb``, with ``fcntl``) keeps a second
engine out even if ``actorlog.lock`` is deleted. Each write transaction also checks that
the log's last position is the head this process committed; if another writer got in
anyway, the group fails with a ``StorageError`` and the log refuses every later append (it
would have to guess which of the two histories is right). Reads carry on.

Durability: ``sync=True`` (default) fsyncs data and meta pages before commit returns;
``sync=False`` leaves flushing to the OS: it survives a process crash, not an OS crash.
The map grows by itself between transactions, doubling up to ``max_map_size``; a group that
does not fit under the cap fails whole with ``StorageFull`` and leaves nothing behind.
Why one file over 400 lines: the key layout above is one decision; the writer, the readers,
the open checks and the map-growth lock all depend on it, and reading them side by side is
how it is checked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Container, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, TypeVar

import lmdb
import msgspec

from ._checksum import TRAILER, all_intact, intact, intact_bytes, seal
from ._codec import (
    DECODE_FAILURES,
    decode_stored,
    decode_stored_many,
    decode_stored_runs,
    encode_stored,
)
from ._command_ids import (
    CommandIdRetention,
    Ident,
    retention,
)
from ._errors import (
    DecodeError,
    DefinitionError,
    DuplicateCommand,
    EncodeError,
    StorageError,
    StorageFull,
    StorageLocked,
)
from ._log import (
    AppendOutcome,
    ReadBatch,
    check_command_id,
    check_expected_version,
    check_name,
    check_stream_id,
    expected_ok,
)
from ._records import Append, AppendResult, ProjectorCache, Snapshot, StoredEvent

__all__ = ["ANCHOR_EVERY", "FORMAT", "MARKER", "LmdbEventLog"]

ANCHOR_EVERY: Final = 1024
"""A stream gets an anchor every this many versions (~1 extra put per 1024 events)."""

_u64: Final = struct.Struct(">Q")
_u64x2: Final = struct.Struct(">QQ")
_MAX_POSITION: Final = 2**64 - 1  # the largest a key (big-endian u64) holds
_LINK: Final = _u64.size
_HEAD_CACHE_LIMIT: Final = 100_000
HEADS_FLUSH_EVERY: Final = 16_384
"""Stream heads are written back once this many events have been appended since the last
write-back (bounding the replay at open), or once this many streams have unwritten heads
(bounding the memory they pin)."""
FORMAT: Final = b"actorlog-4"
"""The on-disk layout this module reads and writes; bump it when the layout changes."""
_FORMAT_3: Final = b"actorlog-3"
"""No command ids (the ``command_ids`` table), events without the
command id, principal and headers fields (they decode as absent): upgraded by writing the
format, since the table starts empty."""
_FORMAT_2: Final = b"actorlog-2"
"""Heads written back lazily, no checksums."""
CommandEntry = tuple[float, list[tuple[Ident, AppendResult]]]
"""A ``command_ids`` entry: the group's commit time, then each id (stream id, command id)
with its append's result; msgpack, then the CRC. Encoded in one C call a group (a Python
loop packing each id cost ~2,500 instructions an id, callgrind)."""
_entry_encoder: Final = msgspec.msgpack.Encoder()
_entry_decoder: Final = msgspec.msgpack.Decoder(CommandEntry)
_PRUNE_MOST: Final = 4096
"""The most command ids one group commit drops (~1 ms of deletions): a backlog (ids that
aged out while nothing was recorded) is worked off over a few groups instead."""
MARKER: Final = "actorlog.data"
"""The file that says this directory held a log: written once the first commit is durable,
so a ``data.mdb`` missing or empty beside it is refused at open, not taken for a new log."""
_snapshot_encoder: Final = msgspec.msgpack.Encoder()
_snapshot_decoder: Final = msgspec.msgpack.Decoder(Snapshot)
_cache_decoder: Final = msgspec.msgpack.Decoder(ProjectorCache)
# Walks one msgpack value without building it and refuses trailing bytes (~50 ns for a
# small payload): a payload that is not exactly one value would make its envelope unreadable.
_one_value: Final = msgspec.msgpack.Decoder(msgspec.Raw).decode
_body: Final = itemgetter(slice(_LINK, -TRAILER))
"""The envelope of a checksummed event entry (link and CRC cut off)."""
# The append loop seals inline rather than calling ``seal``: a Python call per event is
# ~60 ns on top of the ~0.27 µs the checksum costs there.
_ONES: Final = 0xFFFFFFFF
_crc32: Final = zlib.crc32
_le32: Final = struct.Struct("<I").pack
_STORE_FAILURES: Final = (
    TypeError,
    ValueError,
    OverflowError,
    msgspec.EncodeError,
    *DECODE_FAILURES,
)
"""What checking and encoding an envelope can raise: a lone surrogate is a ValueError
(UnicodeEncodeError), an int past 64 bits an OverflowError, a payload that is not one
msgpack value one of ``DECODE_FAILURES``."""

FOLLOW_POLL: Final = 0.001
"""Seconds between two looks at the head while a read-only log waits for the writer
(``wait_for_head``): a visibility lag of about a millisecond, for a few microseconds of
work a look."""

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
        command_ids: how long command ids are kept (see ``CommandIdRetention``).
        readonly: open a log that another process owns and writes, to read it beside that
            writer (reader engines, tools): no lock of the writer's is taken (a shared one
            on ``actorlog.readers`` instead, which readers share), every append fails with
            ``StorageError``, the head is read from the log each time (so reads see what
            the writer commits, once it is committed), and ``wait_for_head`` follows it.
            The directory must hold a log of this version's layout (a writer creates it);
            ``sync`` does not apply. One open per process: LMDB refuses a second open of
            an environment in one process, so a reader lives in another process than its
            writer (``StorageError`` otherwise).

    Raises:
        StorageLocked: another process (or another log in this one) has the directory open.
        DefinitionError: a bad argument (a path that is not one, sizes that are not
            positive ints or are inconsistent).
        StorageError: the directory cannot be used (a file, not writable, ...), its data
            file is truncated, missing or not LMDB's, its layout is unknown, or LMDB could
            not open it; the OS or ``lmdb`` error is ``__cause__``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        command_ids: CommandIdRetention | None = None,
        readonly: bool = False,
    ) -> None:
        self._retention = retention(command_ids)
        self._readonly = readonly is True
        if type(readonly) is not bool:
            raise DefinitionError(f"readonly must be a bool, not {readonly!r}")
        for name, size in (("map_size", map_size), ("max_map_size", max_map_size)):
            if type(size) is not int or size <= 0:
                raise DefinitionError(f"{name} must be a positive int, not {size!r}")
        if max_map_size < map_size:
            raise DefinitionError(f"max_map_size ({max_map_size}) < map_size ({map_size})")
        try:
            empty = os.fspath(path) in ("", b"")
        except TypeError:
            empty = False  # not a path: Path() says so below
        if empty:  # Path("") is the current directory: a log opened there by mistake
            raise DefinitionError("an empty path is not a log directory (pass '.' for this one)")
        if readonly:
            self._open_reader(path, map_size)
            return
        try:
            self._path = Path(path)
            created = not self._path.exists()
        except (TypeError, ValueError) as e:  # not a path; a NUL in it
            raise DefinitionError(f"not a usable path: {path!r}") from e
        except OSError as e:  # e.g. a parent we may not search
            raise StorageError(f"cannot use {path!r} as a log directory: {e}") from e
        try:
            self._path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file where the directory or a parent should be, no room
            raise StorageError(f"cannot create the log directory {self._path}: {e}") from e
        except ValueError as e:  # a NUL in the path
            raise DefinitionError(f"not a usable path: {path!r}") from e
        self._sync = sync
        self._max_map_size = max_map_size
        self._poisoned: str | None = None
        self._lock_fd = _lock_directory(self._path)
        self._data_fd = -1
        self._here: tuple[int, int] | None = None
        # Growing the map invalidates every open transaction of this process. Reads hold
        # this lock, and growth takes it, so a read on another thread (the protocol lets
        # readers use any thread) never sees its transaction vanish.
        self._remap = threading.Lock()
        self._closed = False
        try:
            self._here = _claim_here(self._path)
            used = (self._path / MARKER).exists()
            _check_data_file(self._path, used)
            # The second lock, on the data file itself: deleting actorlog.lock is then not
            # enough for a second engine to open this log.
            self._data_fd = _lock_data_file(self._path)
            self._env = lmdb.open(
                str(self._path),
                map_size=map_size,
                max_dbs=8,
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
            self._projections = self._env.open_db(b"projections")
            self._meta = self._env.open_db(b"meta")
            self._command_ids = self._env.open_db(b"command_ids")
            head, heads_at, checked_from = self._initialize()
            self._load_command_ids()
            if not used:
                # The first commit (the format) is durable first, then the marker says so.
                self._env.sync(True)
                _write_marker(self._path)
        except BaseException as e:
            with contextlib.suppress(lmdb.Error, AttributeError):
                self._env.close()
            if self._data_fd >= 0:
                os.close(self._data_fd)
            _release_here(self._here)
            os.close(self._lock_fd)
            if isinstance(e, lmdb.Error):
                raise StorageError(f"cannot open the log at {self._path}: {e}") from e
            if isinstance(e, OSError):
                raise StorageError(f"cannot open the log at {self._path}: {e}") from e
            raise
        # stream id -> (version, position of its last event); committed state only. Holds
        # every head not yet written back (``_unwritten``) plus a bounded cache of others.
        self._heads: dict[str, tuple[int, int]] = {}
        self._unwritten: dict[str, tuple[int, int]] = {}
        self._head: int = head
        # No (intact) ``heads_at`` means nothing vouches for the heads table: rebuild every
        # head from the events (correct whatever the table holds).
        self._heads_at: int = heads_at
        self._checked_from: int = checked_from
        try:
            self._replay_heads()
        except BaseException:
            self._unwritten.clear()  # incomplete: close must not write it back
            self.close()
            raise

    def _open_reader(self, path: str | os.PathLike[str], map_size: int) -> None:
        """Open an existing log read-only, beside the process that writes it (see the class
        doc): a shared lock, LMDB's read-only mode, the heads rebuilt as at a writer's
        open, and every append refused."""
        try:
            self._path = Path(path)
            exists = (self._path / MARKER).exists()
        except (TypeError, ValueError) as e:
            raise DefinitionError(f"not a usable path: {path!r}") from e
        except OSError as e:
            raise StorageError(f"cannot use {path!r} as a log directory: {e}") from e
        if not exists:
            raise StorageError(
                f"no log at {self._path} to open read-only (its writer creates it: {MARKER} "
                "is written once the log's first commit is durable)"
            )
        self._sync = False  # this process commits nothing
        self._max_map_size = map_size
        self._poisoned = (
            f"the log at {self._path} is open read-only (readonly=True): appends go through "
            "the process that owns it"
        )
        self._lock_fd = _lock_readers(self._path)
        self._data_fd = -1
        self._here = None
        self._remap = threading.Lock()
        self._closed = False
        try:
            self._here = _claim_here(self._path)
            _check_data_file(self._path, True)
            # LMDB's open, and each database's, reads in a transaction of its own, beside
            # a writer that may grow the file past what this open mapped.
            self._env = _adopting_growth(lambda: _open_read_only(self._path, map_size))
            _adopting_growth(self._open_databases, self._env)
            with self._reading() as txn:
                found = txn.get(b"format", db=self._meta)
                if found != FORMAT:
                    raise StorageError(
                        f"the log at {self._path} has format {found!r}; a read-only open "
                        f"reads {FORMAT!r} only (open it once with a writer to upgrade it)"
                    )
                cur = txn.cursor(db=self._events)
                head = _u64.unpack(cur.key())[0] if cur.last() else 0
                data = txn.get(b"checked_from", db=self._meta)
                if data is None or len(data) != _LINK + TRAILER or not intact(data):
                    raise StorageError(
                        f"corrupt log at {self._path}: meta[checked_from] is missing or damaged"
                    )
                checked_from = _u64.unpack_from(data)[0]
                heads_at = self._written_back(txn)
            self._load_command_ids()
        except BaseException as e:
            with contextlib.suppress(lmdb.Error, AttributeError):
                self._env.close()
            _release_here(self._here)
            os.close(self._lock_fd)
            if isinstance(e, lmdb.Error | OSError):
                raise StorageError(f"cannot open the log at {self._path} read-only: {e}") from e
            raise
        self._heads = {}
        self._unwritten = {}
        self._head = head
        self._heads_at = min(heads_at, head)
        self._checked_from = checked_from
        self._follow_lock = threading.Lock()
        try:
            self._replay_heads()
        except BaseException:
            self.close()
            raise

    def _written_back(self, txn: Any) -> int:
        """``meta[heads_at]``: the position up to which the heads table is complete (0 if
        it is missing or damaged: then nothing vouches for the table)."""
        data = txn.get(b"heads_at", db=self._meta)
        ok = data is not None and len(data) == _LINK + TRAILER and intact(data)
        return _u64.unpack_from(data)[0] if ok and data is not None else 0

    @property
    def readonly(self) -> bool:
        """True if this log was opened read-only, beside the process that writes it."""
        return self._readonly

    @property
    def others_append(self) -> bool:
        """True if another process may move the head (a read-only open): the engine then
        follows the log (``wait_for_head``) to feed its projectors."""
        return self._readonly

    def wait_for_head(self, known: int, timeout: float) -> int:
        """The log's head position, once it is past ``known`` or ``timeout`` seconds have
        passed (blocking: the engine runs it in a worker thread).

        LMDB says nothing when another process commits, so this polls the last key every
        ``FOLLOW_POLL`` seconds (a read transaction and a cursor: a few microseconds).
        """
        deadline = time.monotonic() + timeout
        while True:
            head = self.head_position()
            if head > known:
                return head
            left = deadline - time.monotonic()
            if left <= 0:
                return head
            time.sleep(min(FOLLOW_POLL, left))

    def _follow(self) -> None:
        """A read-only log: bring the in-memory stream heads up to the log's head (the
        writer keeps the newest heads in memory, not in the table), so ``read_stream`` and
        ``stream_version`` see every committed event. Bounded: once this process holds
        many heads, those the writer has since written back are dropped."""
        with self._follow_lock:
            head = self.head_position()
            if head <= self._head:
                return
            self._replay_heads(self._head + 1, head)
            self._head = head
            if len(self._unwritten) > _HEAD_CACHE_LIMIT:
                with self._reading() as txn:
                    written = self._written_back(txn)
                for heads in (self._unwritten, self._heads):
                    for stream_id in [k for k, (_, at) in heads.items() if at <= written]:
                        del heads[stream_id]

    def _open_databases(self) -> None:
        """A read-only log's databases (the writer creates them)."""
        self._events = self._env.open_db(b"events", create=False)
        self._heads_db = self._env.open_db(b"heads", create=False)
        self._anchors = self._env.open_db(b"anchors", create=False)
        self._snapshots = self._env.open_db(b"snapshots", create=False)
        self._projections = self._env.open_db(b"projections", create=False)
        self._meta = self._env.open_db(b"meta", create=False)
        self._command_ids = self._env.open_db(b"command_ids", create=False)

    def _load_command_ids(self) -> None:
        """Bring the command ids' bookkeeping into memory (at open; it then moves only
        when a commit does): ``_id_index``, the next entry's sequence number, how many ids
        are kept, and the oldest one's time.

        ``_id_index`` maps ``hash((stream id, command id))`` of each kept id to the
        sequence number of the entry holding it (a list of them for ids that share a
        hash): an id whose hash is not there is certainly not kept, so a new id (the usual
        case) costs no read and no encoding (a str caches its hash); one that is there is
        read from its entry and compared whole. ~100 bytes an id in memory.
        """
        index: dict[int, int | list[int]] = {}
        count = 0
        with self._reading() as txn:  # a reader in another process: the file may grow
            cur = txn.cursor(db=self._command_ids)
            for seq_key, value in cur:
                entry = _readable_entry(value)
                if entry is not None:  # a damaged entry cannot say which ids it held
                    seq = _u64.unpack(seq_key)[0]
                    for ident, _ in entry[1]:
                        _index_add(index, hash(ident), seq)
                        count += 1
            self._command_seq = _u64.unpack(cur.key())[0] + 1 if cur.last() else 1
            first = cur.value() if cur.first() else None
        self._id_index = index
        # The same dict, published for the engine's check before it decides (see
        # EventLog.command_hashes): a hash that is not a key is certainly not kept.
        self.command_hashes: Container[int] = index
        self._command_count = count
        first_entry = None if first is None else _readable_entry(first)
        self._oldest_command = 0.0 if first_entry is None else first_entry[0]

    def _initialize(self) -> tuple[int, int, int]:
        """Check (or write, for a new log; or upgrade, for an older layout) the layout, in
        one transaction; return (head, heads_at, checked_from). An upgrade that does not
        fit the map grows it, up to the cap."""
        while True:
            try:
                return self._initialize_once()
            except lmdb.MapFullError:
                current = int(self._env.info()["map_size"])
                if current >= self._max_map_size:
                    raise
                self._env.set_mapsize(min(current * 2, self._max_map_size))

    def _initialize_once(self) -> tuple[int, int, int]:
        meta = self._meta
        with self._env.begin(write=True) as txn:
            cur = txn.cursor(db=self._events)
            head = _u64.unpack(cur.key())[0] if cur.last() else 0
            found = txn.get(b"format", db=meta)
            if found is None and head == 0:
                _put(txn, b"format", FORMAT, meta)
                _put(txn, b"heads_at", seal(_u64.pack(0)), meta)
                _put(txn, b"checked_from", seal(_u64.pack(1)), meta)
                return 0, 0, 1
            if found == _FORMAT_2:
                return self._upgrade(txn, head)
            if found == _FORMAT_3:
                _put(txn, b"format", FORMAT, meta)  # see _FORMAT_3
                found = FORMAT
            if found != FORMAT:
                raise StorageError(
                    f"the log at {self._path} has format {found!r}; this version of "
                    f"actorlog reads {FORMAT!r} (and upgrades {_FORMAT_3!r} and {_FORMAT_2!r})"
                )
            data = txn.get(b"checked_from", db=meta)
            if data is None or len(data) != _LINK + TRAILER or not intact(data):
                raise StorageError(
                    f"corrupt log at {self._path}: meta[checked_from] is missing or damaged"
                )
            checked_from = _u64.unpack_from(data)[0]
            data = txn.get(b"heads_at", db=meta)
            # A damaged heads_at counts as none: rebuilding every head is always correct.
            ok = data is not None and len(data) == _LINK + TRAILER and intact(data)
            heads_at = _u64.unpack_from(data)[0] if ok and data is not None else 0
            return head, min(heads_at, head), checked_from

    def _upgrade(self, txn: Any, head: int) -> tuple[int, int, int]:
        """Upgrade an ``actorlog-2`` log in place, within ``txn`` (see the module doc)."""
        meta = self._meta
        data = txn.get(b"heads_at", db=meta)
        heads_at = 0 if data is None or len(data) != _LINK else _u64.unpack(data)[0]
        for db in (self._heads_db, self._projections):
            for key, value in list(txn.cursor(db=db)):
                _put(txn, key, seal(value), db)
        _put(txn, b"heads_at", seal(_u64.pack(min(heads_at, head))), meta)
        _put(txn, b"checked_from", seal(_u64.pack(head + 1)), meta)
        _put(txn, b"format", FORMAT, meta)
        return head, min(heads_at, head), head + 1

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
        if type(value) is not int or value <= 0:
            raise DefinitionError(f"max_map_size must be a positive int, not {value!r}")
        self._max_map_size = value

    # -- writes ---------------------------------------------------------------------------

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Commit a group in one write transaction; see :class:`~engine._log.EventLog`.

        Durable when it returns if ``sync``. A full map is grown (no transaction is open
        then) and the group retried from scratch; past the cap (or with the disk full)
        the group is retried once without its best-effort writes (the heads write-back,
        ``snapshots``, ``projector_caches``: dropped, as a snapshot or cache that does not
        fit must not fail the commands it rides with; it is retaken when next due), and if
        it still does not fit every append of the group gets the same ``StorageFull`` and
        nothing of it is written. An append whose
        envelope cannot be stored and read back (metadata of the wrong type, a str with no
        UTF-8 form, a payload that is not one msgpack value) fails alone with
        ``EncodeError``, nothing of it written; the rest of the group commits. If another
        writer got into the log (its last position is not this process's head), the group
        fails with ``StorageError`` and so does every later one (see the module doc).

        Raises:
            DefinitionError: a stream id or projector name is invalid; nothing is written.
            StorageError: the log is closed.
        """
        self._check_open()
        if self._poisoned is not None:
            return _fail_all(appends, StorageError(self._poisoned), None)
        write_back = True
        caches = projector_caches
        while True:
            try:
                return self._try_append(appends, snapshots, caches, write_back)
            except StorageError as e:  # our own checks; the transaction was aborted
                return _fail_all(appends, e, e.__cause__)
            except lmdb.MapFullError as e:
                # Before growing the map for good: a dead reader's slot may be what holds
                # the pages that would have been reused.
                with contextlib.suppress(lmdb.Error):
                    if self._env.reader_check():
                        continue
                try:
                    grown = self._grow()
                except lmdb.Error as e2:
                    return _fail_all(appends, StorageError(f"cannot grow the map: {e2}"), e2)
                if not grown:
                    if (write_back and self._may_write_back(appends)) or snapshots or caches:
                        # Once more without the best-effort writes (the heads write-back,
                        # snapshots, saved caches): the heads can wait (the log rebuilds
                        # them), a snapshot or cache is only a shortcut (retaken when next
                        # due), and the appends must not fail for the room they take.
                        write_back, snapshots, caches = False, (), ()
                        continue
                    full = StorageFull(
                        f"the log at {self._path} reached its cap of {self._max_map_size} bytes"
                    )
                    return _fail_all(appends, full, e)
            except lmdb.Error as e:
                out_of_space = _out_of_space(e) or self._disk_filled(e, appends)
                if out_of_space and (
                    (write_back and self._may_write_back(appends)) or snapshots or caches
                ):
                    write_back, snapshots, caches = False, (), ()
                    continue
                if out_of_space:
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
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
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
        encode, crc32, le32, ones = encode_stored, _crc32, _le32, _ONES
        # Command ids recorded by this group, for a duplicate within it.
        recorded: dict[Ident, AppendResult] = {}
        recorded_hashes: list[int] = []  # theirs, in the same order
        id_index = self._id_index
        with self._env.begin(write=True) as txn:
            put = txn.put
            events_db = self._events
            # Another writer (one that got past both locks) shows as a last position that
            # is not ours: refuse before writing on top of it. One cursor.last() a group
            # (~0.3 µs). LMDB's own write lock holds from here to the commit, so no writer
            # that uses lock.mdb can slip in between (one opened with lock=False could).
            cur = txn.cursor(db=events_db)
            if (cur.key() if cur.last() else b"") != (pack(position) if position else b""):
                raise self._foreign_writer(cur.key())
            for append in appends:
                stream_id = append.stream_id
                check_expected_version(append.expected_version)  # raised: nothing is written
                # The group's own heads first, then the cache, then the table.
                head = new_heads.get(stream_id) or cached.get(stream_id)
                if head is None:
                    try:
                        head = self._table_head(txn, check_stream_id(stream_id))
                    except UnicodeEncodeError as e:  # a lone surrogate: no key can hold it
                        outcomes.append(_unstorable(append, e))
                        continue
                    except StorageError as e:  # its head is damaged: this stream only
                        outcomes.append(e)
                        continue
                version, link = head
                corr, caus, kind = append.correlation_id, append.causation_id, append.aggregate_name
                cid, who, headers = append.command_id, append.principal, append.headers
                command = cid is not None or who is not None or headers is not None
                # Everything that could keep an envelope from being stored or read back is
                # checked before any of the append's events is put, so a bad append fails
                # alone and leaves nothing: exact str types, a UTF-8 form (a lone surrogate
                # has none), each payload exactly one msgpack value.
                events = append.events
                try:
                    if corr is not None or caus is not None or kind is not None:
                        _check_metadata(corr, caus, kind)
                    if command:
                        # _check_metadata(cid, who), the usual ASCII strs inline.
                        if cid is not None and (type(cid) is not str or not cid.isascii()):
                            _check_str(cid)
                        if who is not None and (type(who) is not str or not who.isascii()):
                            _check_str(who)
                        if headers is not None:
                            _check_headers(headers)
                    if type(stream_id) is not str:  # msgspec encodes no str subclass
                        raise TypeError(f"a stream id must be a str, not {stream_id!r}")
                    for name, payload in events:
                        if type(name) is not str or not name.isascii():  # inline: hot
                            _check_str(name)
                        _one_value(payload)
                except _STORE_FAILURES as e:
                    outcomes.append(_unstorable(append, e))
                    continue
                if cid is not None:
                    # Before the version check: a retry that comes late learns it was done.
                    # The pair's hash once (a tuple does not cache it): for the index here
                    # and after the commit.
                    ident = (stream_id, cid)
                    ident_hash = hash(ident)
                    try:
                        original = (recorded.get(ident) if recorded else None) or (
                            self._recorded(txn, ident, timestamp)
                            if ident_hash in id_index
                            else None
                        )
                    except StorageError as e:  # its id's entry is damaged: this append only
                        outcomes.append(e)
                        continue
                    if original is not None:
                        outcomes.append(DuplicateCommand(cid, original))
                        continue
                if append.expected_version != version:
                    error = expected_ok(append, version)
                    if error is not None:
                        outcomes.append(error)
                        continue
                first_version, first_position = version + 1, position + 1
                for name, payload in events:
                    position += 1
                    version += 1
                    if command:
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
                            command_id=cid,
                            principal=who,
                            headers=headers,
                        )
                    else:  # positional only: the usual event, ~40 ns cheaper
                        raw = msgspec.Raw(payload)
                        event = StoredEvent(
                            position, stream_id, version, name, timestamp, corr, caus, raw, kind
                        )
                        # Stored without the absent command metadata: the nine fields
                        # before it, as an array msgspec writes from this tuple exactly as
                        # from the struct. Readers then skip three nils an event (~330 of
                        # W4's ~9,000 instructions an event, callgrind); a shorter array
                        # decodes with those fields absent.
                        envelope: Any = (
                            position,
                            stream_id,
                            version,
                            name,
                            timestamp,
                            corr,
                            caus,
                            raw,
                            kind,
                        )
                    try:
                        body = pack(link) + encode(event if command else envelope)
                    except _STORE_FAILURES as e:  # the checks above missed a case: a bug
                        raise StorageError(f"cannot encode {event!r}: {e}") from e
                    record = body + le32(crc32(body, ones) ^ ones)
                    # put() returns False, not raises, when it did not write (an append=True
                    # key not past the last one): that must fail the group, not vanish.
                    # Positional arguments (dupdata, overwrite, append, db): py-lmdb parses
                    # keywords through a dict, ~1,100 instructions a put (callgrind).
                    if not put(pack(position), record, True, True, True, events_db):
                        raise StorageError(f"the log did not store position {position}")
                    stored.append(event)
                    link = position
                if version // ANCHOR_EVERY != (first_version - 1) // ANCHOR_EVERY:
                    for v in range(first_version, version + 1):
                        if v % ANCHOR_EVERY == 0:
                            at = first_position + v - first_version
                            _put(txn, _anchor_key(stream_id, v), pack(at), self._anchors)
                if append.events:  # an empty append checks the version, moves nothing
                    new_heads[stream_id] = (version, link)
                result = AppendResult(
                    stream_id, first_version, version, first_position, position, timestamp
                )
                if cid is not None:
                    recorded[ident] = result
                    recorded_hashes.append(ident_hash)
                outcomes.append(result)
            pruned = self._record_commands(txn, recorded, timestamp) if recorded else None
            write_back = write_back and self._write_back_due(position)
            if write_back:
                self._write_heads(txn, {**self._unwritten, **new_heads}, position)
            for stream_id, snapshot in snapshots:
                key = check_stream_id(stream_id).encode()
                _put(txn, key, seal(_snapshot_encoder.encode(snapshot)), self._snapshots)
            for name, cache in projector_caches:
                key = check_name(name).encode()
                _put(txn, key, seal(_snapshot_encoder.encode(cache)), self._projections)
        # Committed: only now may the in-memory view move forward.
        crossed = position >> 10 != self._head >> 10  # a multiple of 1,024 (see below)
        self._head = position
        if pruned is not None:
            index, seq = id_index, self._command_seq
            for h in recorded_hashes:
                if h in index:
                    _index_add(index, h, seq)
                else:  # the usual case, inline
                    index[h] = seq
            for ident, dropped_seq in pruned[0]:
                _index_drop(index, hash(ident), dropped_seq)
            self._command_seq = seq + 1
            self._command_count += len(recorded) - len(pruned[0])
            self._oldest_command = pruned[1]
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
        if crossed:
            # A read-only reader killed mid-transaction leaves its slot in LMDB's reader
            # table, pinning every page freed since the snapshot it saw: the writer would
            # grow the file (for good) instead of reusing them. Clear such slots every
            # 1,024 events (a scan of the 254 slots: microseconds), so a dead reader pins
            # that much at most. Last: nothing may come between a commit and the view.
            with contextlib.suppress(lmdb.Error):
                self._env.reader_check()
        return outcomes, stored

    def _recorded(self, txn: Any, ident: Ident, now: float) -> AppendResult | None:
        """The result recorded for a command id, if it is kept (read from the entries the
        index holds for its hash, compared whole). An id older than ``max_age`` at ``now``
        counts as gone even before pruning removes it, so every log answers an id's age
        alike: its entry's time is read anyway."""
        seqs = self._id_index.get(hash(ident))
        if seqs is None:
            return None
        oldest = now - self._retention.max_age
        for seq in (seqs,) if type(seqs) is int else seqs:  # type: ignore[union-attr]
            data = txn.get(_u64.pack(seq), db=self._command_ids)
            if data is None and self._readonly:
                continue  # pruned by the writer since this reader indexed it
            if data is None or not intact(data):
                # Not "absent": that would run a retried command a second time.
                raise StorageError(
                    f"corrupt log at {self._path}: command id entry {seq} (stream "
                    f"{ident[0]!r}) is missing or damaged"
                )
            recorded_at, ids = _group_ids(data)
            if recorded_at <= oldest:
                continue  # expired (a later entry may hold the id again)
            for kept, result in ids:
                if kept == ident:
                    return result
        return None

    def _follow_command_ids(self) -> None:
        """A read-only log: index the command id entries the writer recorded since (entries
        it pruned stay in the index and read as absent; the index is rebuilt once it holds
        twice what the log keeps)."""
        with self._follow_lock, self._reading() as txn:
            cur = txn.cursor(db=self._command_ids)
            if not cur.set_range(_u64.pack(self._command_seq)):
                return
            for seq_key, value in cur:
                entry = _readable_entry(value)
                seq = _u64.unpack(seq_key)[0]
                if entry is not None:
                    for ident, _ in entry[1]:
                        _index_add(self._id_index, hash(ident), seq)
                        self._command_count += 1
                self._command_seq = seq + 1
        if self._command_count > 2 * self._retention.max_ids:
            self._load_command_ids()

    def _record_commands(
        self, txn: Any, recorded: dict[Ident, AppendResult], timestamp: float
    ) -> tuple[list[tuple[Ident, int]], float]:
        """Record the group's command ids and drop the ids retention no longer keeps;
        return the (id, entry) pairs dropped and the oldest kept one's time.

        One entry a group: its time, then each id with its append's result, sealed once.
        Keyed by sequence number, so recording is one ordered append a group (a table
        keyed by id dirtied a page per id; a put per id cost ~2,500 instructions of a
        ~89,000-instruction W1 command) and the oldest ids are always first. Dropping is
        whole entries, batched: by count once the ids pass ``max_ids`` by a 64th of it
        (then down to no fewer than ``max_ids``: never this group's own entry), by age
        once the oldest is due; at most ``_PRUNE_MOST`` ids a group, so no commit does
        unbounded work.
        """
        table = self._command_ids
        seq = self._command_seq
        _put_appended(
            txn,
            _u64.pack(seq),
            seal(_entry_encoder.encode((timestamp, list(recorded.items())))),
            table,
        )
        kept = self._command_count + len(recorded)
        retention = self._retention
        cutoff = timestamp - retention.max_age
        oldest = self._oldest_command if self._command_count else timestamp
        if kept - retention.max_ids <= retention.max_ids // 64 and oldest >= cutoff:
            return [], oldest
        dropped: list[tuple[Ident, int]] = []
        cur = txn.cursor(db=table)
        more = cur.first()
        this_group = _u64.pack(seq)
        while more and len(dropped) < _PRUNE_MOST and cur.key() != this_group:
            value = cur.value()
            entry = _readable_entry(value)
            oldest = entry[0] if entry is not None else 0.0
            count = len(entry[1]) if entry is not None else 0
            # An expired entry goes (a damaged one counts as expired: only its ids' lookups
            # are lost); a live one only while the newest ``max_ids`` stay kept whole: the
            # bound is "at least the newest max_ids, younger than max_age", never fewer.
            if oldest >= cutoff and kept - count < retention.max_ids:
                break
            if entry is not None:
                seq_dropped = _u64.unpack(cur.key())[0]
                dropped.extend((ident, seq_dropped) for ident, _ in entry[1])
            kept -= count
            if not cur.delete():
                raise StorageError("the log did not delete an expired command id entry")
            more = bool(cur.key())
        if not more or cur.key() == this_group:
            oldest = timestamp  # nothing left but what this group recorded
        return dropped, oldest

    def find_command(self, stream_id: str, command_id: str) -> AppendResult | None:
        """The result of the append that recorded ``command_id`` on ``stream_id``, if the
        log still keeps it (see ``CommandIdRetention``); None otherwise, including for
        ids no append could have carried (the index is asked first: a new id, the usual
        case, costs one hash and no read).

        Raises:
            InvalidArgument: ``stream_id`` or ``command_id`` is not a str.
            StorageError: the recorded entry is damaged, or the log is closed.
        """
        if type(stream_id) is not str or type(command_id) is not str:
            check_stream_id(stream_id)
            check_command_id(command_id)
        if self._closed:
            self._check_open()  # raises
        if self._readonly:
            self._follow_command_ids()
        ident = (stream_id, command_id)
        if hash(ident) not in self._id_index:  # certainly not kept: see _load_command_ids
            return None
        with self._reading() as txn:
            return self._recorded(txn, ident, time.time())

    def _foreign_writer(self, last: bytes | None) -> StorageError:
        """Poison the log: another writer moved its last position (see the module doc)."""
        found = _u64.unpack(last)[0] if last and len(last) == _LINK else 0
        self._poisoned = (
            f"another writer wrote to the log at {self._path}: its last position is {found}, "
            f"this process committed up to {self._head}. Nothing more is appended through "
            "this log object; close it, stop the other writer and reopen"
        )
        return StorageError(self._poisoned)

    def _disk_filled(self, error: lmdb.Error, appends: Sequence[Append]) -> bool:
        """True if ``error`` is an EIO while the file system is nearly full: LMDB turns a
        short page write (the disk filled mid-write) into EIO, so only the free space left
        tells it from a failing device."""
        if os.strerror(errno.EIO) not in str(error):
            return False
        try:
            st = os.statvfs(self._path)
        except OSError:
            return False
        # What the group may have needed, generously (events are rarely over 2 KB).
        want = 4096 * sum(len(a.events) for a in appends)
        return st.f_bavail * st.f_frsize < max(want, _NEARLY_FULL)

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
        heads_db, pack2 = self._heads_db, _u64x2.pack
        for stream_id, head in heads.items():
            _put(txn, stream_id.encode(), seal(pack2(*head)), heads_db)
        _put(txn, b"heads_at", seal(_u64.pack(position)), self._meta)

    def _replay_heads(self, position: int = 0, end: int = -1) -> None:
        """Bring the heads of the events from ``position`` to ``end`` (by default: after
        ``heads_at``, up to the head) into memory (at open; and as a read-only log follows)."""
        if end < 0:
            position, end = self._heads_at + 1, self._head
        checked_from = self._checked_from
        while position <= end:
            values = self._scan(position, 4096)
            if not values:
                raise StorageError(f"corrupt log: position {position} is missing")
            for value in values:
                try:
                    if position < checked_from:
                        event = decode_stored(value[_LINK:])
                    elif intact(value):
                        event = decode_stored(value[_LINK:-TRAILER])
                    else:
                        raise DecodeError(f"checksum mismatch at position {position}")
                    stream_id, version = event.stream_id, event.version
                    if event.position != position:
                        raise DecodeError(f"position {position} holds {event.position}")
                except DecodeError:
                    stream_id, version = self._owner_of(value, position)
                self._unwritten[stream_id] = (version, position)
                position += 1
        self._heads.update(self._unwritten)

    def _owner_of(self, value: bytes, position: int) -> tuple[str, int]:
        """(stream id, version) of an unreadable entry in the replayed tail, found through
        its link, which is trusted only when corroborated twice. The link must point
        strictly backwards to the current head of a stream (one replayed so far, or an
        intact entry that the heads table names as its stream's head); and the entry's own
        bytes, as far as they go, must be what an entry of that stream at that version
        starts with (a flipped link that lands on another stream's head fails this: the
        bytes name the real stream). Then the entry is that stream's next version.
        Otherwise the stream's head cannot be rebuilt, and appending to it could reuse a
        version, so the log is refused."""
        link = _u64.unpack_from(value)[0] if len(value) >= _LINK else 0
        owner: tuple[str, int] | None = None
        if 0 < link < position:
            for stream_id, (version, at) in self._unwritten.items():
                if at == link:
                    owner = stream_id, version + 1
                    break
            else:
                if link <= self._heads_at:
                    owner = self._table_owner(link)
        if owner is not None:
            # The link, then the envelope's array header (nine fields, or twelve with
            # command metadata), then what every envelope of that stream and version holds.
            expected = _u64.pack(link) + _entry_prefix(position, *owner)
            header = value[_LINK : _LINK + 1]
            if header in _ENVELOPE_HEADERS:
                expected = expected[:_LINK] + header + expected[_LINK + 1 :]
            size = min(len(value), len(expected))
            if value[:size] == expected[:size]:
                return owner
        raise StorageError(
            f"corrupt log: the entry at position {position} is unreadable and no readable "
            "event names its stream, so the stream index cannot be rebuilt"
        )

    def _table_owner(self, link: int) -> tuple[str, int] | None:
        """(stream id, version + 1) if the intact entry at ``link`` is its stream's head in
        the heads table (and the stream has no replayed head past it), else None."""
        with self._reading() as txn:
            found = txn.get(_u64.pack(link), db=self._events)
            try:
                event = None if found is None else self._decode(found, link)
            except StorageError:
                return None
            if (
                event is not None
                and event.stream_id not in self._unwritten
                and self._table_head(txn, event.stream_id) == (event.version, link)
            ):
                return event.stream_id, event.version + 1
        return None

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
        if len(data) != _u64x2.size + TRAILER or not intact(data):
            raise StorageError(f"corrupt log: the head of stream {stream_id!r} is damaged")
        head: tuple[int, int] = _u64x2.unpack_from(data)
        return head

    # -- reads ----------------------------------------------------------------------------
    # Reads take the remap lock and their own read transaction, and return only decoded
    # records or bytes: nothing that points into the map outlives the transaction.

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order.

        Raises:
            StorageError: an entry of the slice is corrupt (named by its position).
        """
        key = check_stream_id(stream_id).encode()
        want = max(from_version, 1)
        if limit is not None and limit <= 0:
            return []
        # The in-memory head first, then the transaction: a head is in memory only once its
        # commit is, so the transaction below sees every event the head points to.
        if self._readonly:
            self._follow()
        head = self._heads.get(stream_id)
        with self._reading() as txn:
            if head is None:
                head = self._table_head(txn, stream_id)
                if head == (0, 0):
                    return []
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
            # Walk the chain first, verify every entry read with one CRC, then decode: a
            # CRC per entry would cost W3 (10,000 events) about a millisecond.
            walked: list[tuple[int, bytes]] = []
            get = txn.get
            events_db = self._events
            while version >= want:
                value = get(_u64.pack(position), db=events_db)
                if value is None:
                    self._verify(walked)  # a damaged link is the likelier story
                    raise StorageError(
                        f"corrupt log: stream {stream_id!r} lost position {position}"
                    )
                if version <= last:
                    walked.append((position, value))
                position = _u64.unpack_from(value)[0] if len(value) >= _LINK else 0
                version -= 1
        self._verify(walked)
        out: list[StoredEvent] = []
        version = last
        checked_from = self._checked_from
        for position, value in walked:
            try:
                event = decode_stored(
                    value[_LINK:-TRAILER] if position >= checked_from else value[_LINK:]
                )
            except DecodeError as e:
                raise StorageError(f"corrupt log entry at position {position}: {e}") from e
            if event.version != version or event.stream_id != stream_id:
                raise StorageError(
                    f"corrupt log: position {position} is not {stream_id!r} version {version}"
                )
            out.append(event)
            version -= 1
        out.reverse()
        return out

    def _verify(self, entries: list[tuple[int, bytes]]) -> None:
        """Check the checksums of (position, entry) pairs; a ``StorageError`` names the
        first bad one. One CRC over them all, then one each only on a mismatch."""
        checked_from = self._checked_from
        values = [v for p, v in entries if p >= checked_from] if checked_from > 1 else None
        if all_intact([v for _, v in entries] if values is None else values):
            return
        for position, value in entries:
            if position >= checked_from and not intact(value):
                raise _checksum_mismatch(position)

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order.

        An unreadable entry (corrupt: it fails its checksum or does not decode) ends the
        batch just before it, so a reader applies everything readable and then, reading
        from that entry, gets a ``StorageError`` naming it.
        """
        values = self._scan(from_position, limit)
        start = max(from_position, 1)  # positions are consecutive: the n-th is start + n
        if not values:
            return []
        end = start + len(values) - 1
        checked_from = self._checked_from
        # One C-level pass each to verify and decode is ~1.4x the per-event loop (W4
        # rebuild, catch-up); only a corrupt entry sends us down the slow path that finds it.
        try:
            if start >= checked_from:
                size = intact_bytes(values)  # the checksums, and the bytes read for free
                if size >= 0:
                    # Checksummed bodies are each exactly one envelope, as written: decoded
                    # in runs (see decode_stored_runs), the count and ends checked.
                    events = decode_stored_runs(values, _body)
                    if (
                        len(events) == len(values)
                        and events[0].position == start
                        and events[-1].position == end
                    ):
                        return ReadBatch(events, size)
            elif end < checked_from:  # written before the upgrade: no checksum
                events = decode_stored_many(values, _LINK)
                if events[0].position == start and events[-1].position == end:
                    return ReadBatch(events, sum(map(len, values)))
        except DecodeError:
            pass
        out: list[StoredEvent] = []
        for value in values:
            try:
                out.append(self._decode(value, start + len(out)))
            except StorageError:
                if out:
                    break
                raise
        return out

    def _scan(self, from_position: int, limit: int) -> list[bytes]:
        if limit <= 0 or from_position > _MAX_POSITION:  # no key holds it: nothing there
            self._check_open()
            return []
        with self._reading() as txn:
            cur = txn.cursor(db=self._events)
            if not cur.set_range(_u64.pack(max(from_position, 1))):
                return []
            return list(itertools.islice(cur.iternext(keys=False, values=True), limit))

    def _decode(self, value: bytes, position: int) -> StoredEvent:
        """The event stored at ``position``, checked; ``StorageError`` if it is corrupt."""
        if position >= self._checked_from:
            if not intact(value):
                raise _checksum_mismatch(position)
            body = value[_LINK:-TRAILER]
        else:
            body = value[_LINK:]
        try:
            event = decode_stored(body)
        except DecodeError as e:
            raise StorageError(f"corrupt log entry at position {position}: {e}") from e
        if event.position != position:
            raise StorageError(
                f"corrupt log entry at position {position}: it holds position {event.position}"
            )
        return event

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log.

        Read-only, the log's own last key (the writer is another process); else this
        process's head, which no one else moves.
        """
        self._check_open()
        if self._readonly:
            with self._reading() as txn:
                cur = txn.cursor(db=self._events)
                return _u64.unpack(cur.key())[0] if cur.last() else 0
        return self._head

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if it does not exist."""
        check_stream_id(stream_id)
        if self._readonly:
            self._follow()
        cached = self._heads.get(stream_id)
        if cached is not None:
            self._check_open()
            return cached[0]
        with self._reading() as txn:
            return self._table_head(txn, stream_id)[0]

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved snapshot, if any.

        One that fails its checksum or cannot be decoded counts as none: a snapshot is only
        a shortcut, and the stream's events, replayed from version 1, remain the truth.
        """
        key = check_stream_id(stream_id).encode()
        with self._reading() as txn:
            data = txn.get(key, db=self._snapshots)
        snapshot: Snapshot | None = _load_shortcut(data, _snapshot_decoder)
        return snapshot

    def load_projector_cache(self, name: str) -> ProjectorCache | None:
        """The named projector's last saved cache; one that fails its checksum or cannot be
        decoded counts as none (the projector then replays the log, which remains the truth)."""
        key = check_name(name).encode()
        with self._reading() as txn:
            data = txn.get(key, db=self._projections)
        cache: ProjectorCache | None = _load_shortcut(data, _cache_decoder)
        return cache

    def _reading(self) -> _ReadTxn:
        self._check_open()
        return _ReadTxn(self)

    # -- lifetime -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the log at {self._path} is closed")

    def close(self) -> None:
        """Close the environment and release the directory locks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._remap:
            if self._unwritten and self._poisoned is None:
                # Saves the next open its replay; if it fails, that replay is the remedy.
                # (Not after another writer got in: these heads may describe neither log.)
                with (
                    contextlib.suppress(lmdb.Error, StorageError),
                    self._env.begin(write=True) as txn,
                ):
                    self._write_heads(txn, self._unwritten, self._head)
            self._env.close()
        if self._data_fd >= 0:
            os.close(self._data_fd)
        _release_here(self._here)
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
            # No transaction of ours is open: we hold the remap lock.
            self._txn = _adopting_growth(lambda: log._env.begin(buffers=False), log._env)
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


# -- helpers ----------------------------------------------------------------------------

_NEARLY_FULL: Final = 4 << 20
"""Free bytes below which an EIO at commit is taken for a full disk (see ``_disk_filled``)."""


def _group_ids(entry: bytes) -> CommandEntry:
    """A (checked) ``command_ids`` entry: its time, and each id with its result.

    Raises:
        StorageError: it does not decode (its CRC held: written so by a bug).
    """
    try:
        return _entry_decoder.decode(entry[:-TRAILER])
    except DECODE_FAILURES as e:
        raise StorageError(f"a command id entry does not decode: {e}") from e


def _readable_entry(value: bytes) -> CommandEntry | None:
    """A ``command_ids`` entry, or None if it is damaged: what open and pruning make of
    one (its ids can no longer be told; a lookup that reaches it raises instead)."""
    if not intact(value):
        return None
    try:
        return _group_ids(value)
    except StorageError:
        return None


def _put_appended(txn: Any, key: bytes, value: bytes, db: Any) -> None:
    """``_put`` of a key past the table's last one (an ordered append)."""
    if not txn.put(key, value, db=db, append=True):
        raise StorageError(f"the log did not store the key {key[:40]!r}")


def _index_add(index: dict[int, int | list[int]], h: int, seq: int) -> None:
    """Note in the command-id index that the key hashing to ``h`` is entry ``seq``."""
    found = index.get(h)
    if found is None:
        index[h] = seq
    elif type(found) is int:
        index[h] = [found, seq]
    else:
        found.append(seq)  # type: ignore[union-attr]


def _index_drop(index: dict[int, int | list[int]], h: int, seq: int) -> None:
    """Forget that entry ``seq``'s key hashes to ``h`` (it was dropped)."""
    found = index.get(h)
    if found == seq:
        del index[h]
    elif type(found) is list:
        if seq in found:
            found.remove(seq)
        if len(found) == 1:
            index[h] = found[0]


def _put(txn: Any, key: bytes, value: bytes, db: Any) -> None:
    """``txn.put`` that fails loudly: py-lmdb returns False, not raises, when it did not
    write, and a write that never happened must not be acknowledged."""
    if not txn.put(key, value, db=db):
        raise StorageError(f"the log did not store the key {key[:40]!r}")


def _check_metadata(*values: object) -> None:
    """Raise unless each value is None or a str with a UTF-8 form: anything else either
    fails to encode or encodes into an envelope that never decodes again (an int
    correlation id, say). Cheaper than decoding the envelope back (~230 ns an event)."""
    for value in values:
        if value is not None:
            _check_str(value)


def _check_headers(headers: object) -> None:
    """Raise unless ``headers`` is a tuple of (str, str) tuples with UTF-8 forms."""
    if type(headers) is not tuple:
        raise TypeError(f"headers must be a tuple of pairs, not {headers!r}")
    for pair in headers:
        if type(pair) is not tuple or len(pair) != 2:
            raise TypeError(f"a header must be a (name, value) tuple, not {pair!r}")
        _check_str(pair[0])
        _check_str(pair[1])


def _check_str(value: object) -> None:
    """Raise unless ``value`` is an exact str (msgspec encodes no subclass) with a UTF-8
    form (a lone surrogate has none): ~30 ns for an ASCII str."""
    if type(value) is not str:
        raise TypeError(f"expected a str, not {value!r}")
    if not value.isascii():
        value.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate


def _unstorable(append: Append, cause: BaseException) -> EncodeError:
    error = EncodeError(
        f"cannot store the append to stream {append.stream_id!r}: {cause}; nothing of it "
        "was written"
    )
    error.__cause__ = cause
    return error


def _checksum_mismatch(position: int) -> StorageError:
    return StorageError(f"corrupt log entry at position {position}: checksum mismatch")


def _load_shortcut(data: bytes | None, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    """A sealed snapshot or projector cache; None if absent, damaged or undecodable."""
    if data is None or not intact(data):
        return None
    try:
        return decoder.decode(data[:-TRAILER])
    except DECODE_FAILURES:
        return None


_ENVELOPE_HEADERS: Final = (b"\x99", b"\x9c")
"""The msgpack array headers an event's envelope starts with: nine fields (no command
metadata) or twelve."""


def _entry_prefix(position: int, stream_id: str, version: int) -> bytes:
    """The bytes every envelope of ``stream_id`` at ``version`` and ``position`` starts
    with: up to its version, where two probes that differ from the type name on part."""
    one = encode_stored(StoredEvent(position, stream_id, version, "a", 0.0))
    two = encode_stored(StoredEvent(position, stream_id, version, "b", 0.0))
    differ = next(i for i, (x, y) in enumerate(zip(one, two, strict=True)) if x != y)
    return one[: differ - 1]  # less the type's one-byte str header: its length varies


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
    appends: Sequence[Append], error: StorageError, cause: BaseException | None
) -> tuple[list[AppendOutcome], list[StoredEvent]]:
    error.__cause__ = cause
    return [error for _ in appends], []


def _lock_directory(path: Path) -> int:
    """Take an exclusive lock on ``path/actorlog.lock``; the OS releases it if we die."""
    try:
        fd = os.open(path / "actorlog.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only file system, no permission, a directory there
        raise StorageError(f"cannot lock the log directory {path}: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageLocked(
            f"{path} is already open (by another process, or by another engine or log in this "
            "one); one engine per log directory"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock the log directory {path}: {e}") from e
    return fd


_OPEN_HERE: set[tuple[int, int]] = set()
"""The log directories (device, inode) an ``LmdbEventLog`` of this process has open."""
_OPEN_HERE_LOCK = threading.Lock()


def _claim_here(path: Path) -> tuple[int, int]:
    """Note that this process opens the log at ``path``, refusing a
    second open of it here: LMDB's locks on ``lock.mdb`` are POSIX record locks, which a
    process holds once per file, so closing one of two environments on it would release
    the other's (a read-only open beside this process's own writer, say; newer py-lmdb
    refuses that itself, 1.4 does not). Writers never get this far twice (``flock``)."""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino)
    with _OPEN_HERE_LOCK:
        if key in _OPEN_HERE:
            raise StorageLocked(
                f"{path} is already open in this process: LMDB allows one open of a log "
                "per process (a read-only log lives in another process than its writer)"
            )
        _OPEN_HERE.add(key)
    return key


def _release_here(key: tuple[int, int] | None) -> None:
    if key is not None:
        with _OPEN_HERE_LOCK:
            _OPEN_HERE.discard(key)


def _lock_readers(path: Path) -> int:
    """Take a shared lock on ``path/actorlog.readers`` (a read-only open): readers share
    it with each other and never meet the writer's exclusive locks, so a maintenance tool
    that needs the directory to itself takes this one exclusively as well. The OS releases
    it if the reader dies."""
    try:
        fd = os.open(path / "actorlog.readers", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:  # a directory we may read but not write: the lock file must exist already
            fd = os.open(path / "actorlog.readers", os.O_RDONLY)
        except OSError as e:
            raise StorageError(f"cannot lock the log directory {path} to read: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageLocked(
            f"{path} is held exclusively by a maintenance tool (actorlog.readers)"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock the log directory {path} to read: {e}") from e
    return fd


def _lock_data_file(path: Path) -> int:
    """Take an exclusive ``flock`` on ``data.mdb`` (created empty if missing, which LMDB
    takes for a new environment). LMDB never locks this file itself."""
    fd = os.open(path / "data.mdb", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageLocked(
            f"{path}/data.mdb is in use elsewhere (another process, or another log in this one; "
            "its actorlog.lock was removed?); "
            "one engine per log directory"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_marker(path: Path) -> None:
    """Write ``MARKER`` durably (see its docstring)."""
    fd = os.open(path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"this directory holds an actorlog event log in data.mdb\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_directory(path)


# An LMDB meta page (pages 0 and 1 of data.mdb), 64-bit little-endian build: a 16-byte page
# header (page number, pad, flags, lower, upper), then the meta: magic, version, address,
# map size, two 48-byte database records (the first's leading u32 is the page size), the
# last page number used, the transaction id.
_META: Final = struct.Struct("<QHHHHIIQQ I44x 48x QQ")
_P_META: Final = 0x08
_MAGIC: Final = 0xBEEFC0DE
_LMDB_DATA_VERSION: Final = 1


_T = TypeVar("_T")

_REMAP_TRIES: Final = 16
"""How many times in a row a read-only log adopts its writer's growth of the file before a
read (or its open) gives up with ``StorageError``. Once adopted, the reader maps the
whole of the writer's map, so only the writer growing its map again in those
microseconds sends it round once more."""


def _adopting_growth(read: Callable[[], _T], env: Any = None) -> _T:
    """``read()``, again after each ``MapResizedError``, at most ``_REMAP_TRIES`` times.

    A read-only log lives in another process than its writer, and a file bigger than its
    ``map_size`` is mapped at exactly its size: a commit of the writer that adds a page, or
    grows the map, makes its next read transaction fail so. ``env``, when given, first
    adopts the file's new size (``set_mapsize(0)``: none of its transactions may be open);
    without it (LMDB's own open) a new try maps the new size by itself."""
    for attempt in range(_REMAP_TRIES):
        try:
            return read()
        except lmdb.MapResizedError:
            if attempt == _REMAP_TRIES - 1:
                raise
            if env is not None:
                env.set_mapsize(0)
    raise AssertionError("unreachable: the last try returned or raised")


def _open_read_only(path: Path, map_size: int) -> Any:
    """LMDB's environment of ``path``, read-only, beside the process that writes it."""
    return lmdb.open(
        str(path),
        map_size=map_size,  # LMDB takes the file's own size if that is larger
        max_dbs=8,
        readonly=True,
        create=False,
        # LMDB's reader table (lock.mdb) is what keeps the writer from reusing the pages a
        # read transaction here still sees: required, not optional.
        lock=True,
        max_readers=254,
    )


def _check_data_file(path: Path, used: bool) -> None:
    """Refuse (``StorageError``) a data file LMDB must not map: one shorter than its meta
    page says, one whose meta pages are not LMDB's, or (when ``used``: the marker says the
    directory held a log) one missing or empty. Reads with ``pread``, never a map."""
    data = path / "data.mdb"
    try:
        fd = os.open(data, os.O_RDONLY)
    except FileNotFoundError:
        if used:
            raise StorageError(
                f"the log at {path} lost its data file: {MARKER} says it held a log, but "
                "data.mdb is missing. Restore it from a backup; this is not a new log"
            ) from None
        return
    try:
        size = os.fstat(fd).st_size
        if size == 0 and not used:
            return  # created, never written: a new log
        metas = []
        page_size = mmap.PAGESIZE
        for index in (0, 1):
            raw = os.pread(fd, _META.size, index * page_size)
            meta = _META.unpack(raw) if len(raw) == _META.size else None
            if (
                meta is None
                or meta[0] != index
                or not meta[2] & _P_META
                or meta[5] != _MAGIC
                or meta[6] != _LMDB_DATA_VERSION
                or meta[9] & (meta[9] - 1)  # the page size is a power of two
                or not 512 <= meta[9] <= 65536
                or meta[10] < 1
            ):
                raise StorageError(
                    f"the log at {path} is damaged: data.mdb ({size} bytes) has no valid "
                    f"LMDB meta page {index}"
                    + (f"; {MARKER} says it held a log" if used and size == 0 else "")
                )
            if index == 0:
                page_size = meta[9]
            metas.append(meta)
        current = max(metas, key=lambda m: m[11])
        needed = (current[10] + 1) * current[9]
        # The size again, after the meta pages: a writer commits beside a reader's open,
        # and writes a commit's pages before its meta page, so a meta page read after the
        # first size may count pages that size missed, but none past this one.
        size = os.fstat(fd).st_size
        if metas[0][9] != metas[1][9] or size < needed:
            raise StorageError(
                f"the log at {path} is damaged: data.mdb has {size} bytes, its meta page "
                f"says {needed} (truncated?)"
            )
    except OSError as e:
        raise StorageError(f"cannot read the data file of the log at {path}: {e}") from e
    finally:
        os.close(fd)
