"""Walking a whole log to check it: one implementation of each consistency rule.

``assert_log_consistent`` (``actorlog.storage``, the tests' check) and ``actorlog verify``
(the CLI) both walk with :class:`LogWalk`; the first raises at the first problem, the
second reports every problem it finds with a progress bar. The rules, through the public
log protocol only (so every backend is checked the same way):

- every position from 1 to the head reads back (the backend's own checks run as it reads:
  LMDB's checksums and envelope decoding), with no gap and in order;
- each stream's versions run 1..n in log order;
- optionally, every payload decodes (``decode``: a msgpack value, for the CLI);
- each stream's ``stream_version`` and ``read_stream`` agree with what the walk saw (the
  LMDB log's stream chains and heads): same count, same positions, same payloads.

On a log another process is appending to (``live=True``) the walk stops at the head it
found first, and the per-stream checks compare what the walk saw with the prefix of each
stream up to that head (a stream may have grown since).

Memory: per stream, the positions seen (8 bytes an event) and a CRC-32 of its payloads.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from ._errors import StorageError
from ._log import EventLog
from ._records import StoredEvent

__all__ = ["LogDamage", "LogWalk"]


class LogDamage(msgspec.Struct, frozen=True):
    """One problem found in a log: where, and what.

    ``error`` is the log's own ``StorageError`` when reading failed (None for a rule the
    walk itself found broken)."""

    position: int | None
    stream_id: str | None
    problem: str
    error: StorageError | None = None


class _Stream:
    __slots__ = ("crc", "positions", "version")

    def __init__(self) -> None:
        self.positions = array("Q")
        self.crc = 0
        self.version = 0  # the last version seen


class LogWalk:
    """A walk over ``log`` from position 1 to its head, checking every rule on the way.

    Iterate :meth:`damage` (lazily: each step reads one batch); afterwards ``checked``
    says how many events were read, ``head`` the head walked to and :attr:`versions` each
    stream's version.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        batch: int = 1000,
        live: bool = False,
        decode: Callable[[StoredEvent], Any] | None = None,
    ) -> None:
        self._log = log
        self._batch = batch
        self._live = live
        self._decode = decode
        self._streams: dict[str, _Stream] = {}
        self.head = log.head_position()
        self.checked = 0
        self.position = 0
        """The last position walked (for a progress bar: out of ``head``)."""

    @property
    def versions(self) -> dict[str, int]:
        """Each stream's version, as the walk counted it."""
        return {stream_id: s.version for stream_id, s in self._streams.items()}

    def damage(self) -> Iterator[LogDamage]:
        """Walk the log, yielding each problem as it is found (nothing: the log is sound)."""
        log, head, streams, decode = self._log, self.head, self._streams, self._decode
        unreadable = 0  # entries that could not be read: any stream's events, for all we know
        while self.position < head:
            start = self.position + 1
            try:
                events = log.read_all(start, min(self._batch, head - self.position))
            except StorageError as e:
                yield LogDamage(start, None, f"position {start} cannot be read: {e}", e)
                unreadable += 1
                self.position = start  # carry on past it: report every damaged entry
                continue
            if not events:
                yield LogDamage(
                    start,
                    None,
                    f"read_all({start}) returned nothing, below the head position {head}",
                )
                return
            for event in events:
                position = event.position
                if position > head:
                    break
                if position != self.position + 1:
                    yield LogDamage(
                        self.position + 1,
                        None,
                        f"positions {self.position + 1}..{position - 1} are missing "
                        f"(the log went on at {position})"
                        if position > self.position + 1
                        else f"position {position} read again after {self.position}",
                    )
                    if position <= self.position:
                        continue
                self.position = position
                self.checked += 1
                stream = streams.get(event.stream_id)
                if stream is None:
                    stream = streams[event.stream_id] = _Stream()
                expected = stream.version + 1
                # A jump the unreadable entries could explain is theirs, reported already.
                if event.version != expected and not (
                    expected < event.version <= expected + unreadable
                ):
                    yield LogDamage(
                        position,
                        event.stream_id,
                        f"version {event.version} of {event.stream_id!r} at position "
                        f"{position}; the stream's next version is {expected}",
                    )
                stream.version = event.version
                stream.positions.append(position)
                stream.crc = zlib.crc32(event.payload, stream.crc)
                if decode is not None:
                    try:
                        decode(event)
                    except Exception as e:  # what a payload's decoder raises is the finding
                        yield LogDamage(
                            position,
                            event.stream_id,
                            f"the payload at position {position} ({event.type}) does not "
                            f"decode: {e}",
                        )
        if not self._live:
            past = log.read_all(head + 1, 1)
            if past or log.head_position() != head:
                yield LogDamage(head + 1, None, f"the log reads past its head {head}")
        yield from self._check_streams()

    def _check_streams(self) -> Iterator[LogDamage]:
        """Each stream's version and ``read_stream`` against what the walk saw."""
        log, head = self._log, self.head
        for stream_id, seen in self._streams.items():
            try:
                version = log.stream_version(stream_id)
                events = log.read_stream(stream_id)
            except StorageError as e:
                yield LogDamage(None, stream_id, f"stream {stream_id!r} cannot be read: {e}", e)
                continue
            count = seen.version
            if version != count and not (self._live and version > count):
                yield LogDamage(
                    None,
                    stream_id,
                    f"stream {stream_id!r}: its head says version {version}, its events {count}",
                )
            positions = array("Q")
            crc = 0
            for event in events:
                if event.position > head:
                    break
                positions.append(event.position)
                crc = zlib.crc32(event.payload, crc)
            if positions != seen.positions or crc != seen.crc:
                yield LogDamage(
                    None,
                    stream_id,
                    f"stream {stream_id!r}: read on its own it differs from the log "
                    f"({len(positions)} events from the stream, {count} from the log)",
                )
