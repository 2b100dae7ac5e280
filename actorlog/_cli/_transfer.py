"""``actorlog export`` / ``import``: a log as a stream of events, between backends.

Two formats, both streamed (one event at a time, never the whole log in memory):

- ``jsonl``: JSON lines. The first line is the header ``{"format": "actorlog-export-1",
  "head": N, ...}``, then one event a line, its payload the exact stored msgpack bytes in
  base64 (``payload``), so an import stores the very bytes that were exported.
- ``msgpack``: the same records as msgpack, each framed by its length (4 bytes,
  little-endian), the header first.

An import appends the events in position order to an **empty** log, one append per run of
events that came from one append (same stream, consecutive versions, the same metadata),
with the exact expected version, so every event lands at its own position and version
with its type, payload and metadata. What it cannot keep: the timestamps (a log stamps
its own commit time; the protocol has no way to set one), saved snapshots and projector
caches (derived data, rebuilt from the events).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import IO, Any, Final, Literal

import msgspec

from ..engine import StorageError
from ..engine._errors import InvalidArgument
from ..engine._log import EventLog
from ..engine._records import Append, AppendResult

__all__ = ["EXPORT_FORMAT", "Format", "ExportedEvent", "export_log", "import_log", "read_export"]

EXPORT_FORMAT: Final = "actorlog-export-1"
Format = Literal["jsonl", "msgpack"]
READ_BATCH = 1000
APPEND_EVENTS = 2000  # events a group commit of the import (one transaction)


class Header(msgspec.Struct, frozen=True):
    """The first record of an export."""

    format: str
    head: int
    source: str


class ExportedEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event of an export: the envelope, the metadata and the exact payload bytes."""

    position: int
    stream_id: str
    version: int
    type: str
    timestamp: float
    payload: bytes
    correlation_id: str | None = None
    causation_id: str | None = None
    command_id: str | None = None
    principal: str | None = None
    headers: tuple[tuple[str, str], ...] | None = None
    aggregate: str | None = None


_json_encode = msgspec.json.Encoder().encode
_msgpack_encode = msgspec.msgpack.Encoder().encode
_frame = struct.Struct("<I")


def export_log(
    log: EventLog,
    out: IO[bytes],
    fmt: Format,
    *,
    source: str,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Write every event up to the head found at the start; returns how many.

    ``progress`` is called with each batch's count of events."""
    head = log.head_position()
    write = out.write

    def record(value: msgspec.Struct) -> None:
        if fmt == "jsonl":
            write(_json_encode(value) + b"\n")
        else:
            data = _msgpack_encode(value)
            write(_frame.pack(len(data)) + data)

    record(Header(EXPORT_FORMAT, head, source))
    position = 0
    while position < head:
        events = log.read_all(position + 1, min(READ_BATCH, head - position))
        if not events:
            raise StorageError(f"the log ends at {position}, below its head {head}")
        for e in events:
            if e.position != position + 1:
                raise StorageError(f"position {position + 1} is missing from the log")
            position = e.position
            record(
                ExportedEvent(
                    e.position,
                    e.stream_id,
                    e.version,
                    e.type,
                    e.timestamp,
                    bytes(e.payload),
                    e.correlation_id,
                    e.causation_id,
                    e.command_id,
                    e.principal,
                    e.headers,
                    e.aggregate,
                )
            )
        progress(len(events))
    return position


def read_export(source: IO[bytes], fmt: Format) -> tuple[Header, Iterator[ExportedEvent]]:
    """The header of an export and an iterator over its events.

    Raises:
        InvalidArgument: the stream is not an actorlog export (of this format).
    """
    if fmt == "jsonl":
        records: Iterator[bytes] = iter(source)
        decode_header: Any = msgspec.json.Decoder(Header).decode
        decode_event: Any = msgspec.json.Decoder(ExportedEvent).decode
    else:
        records = _frames(source)
        decode_header = msgspec.msgpack.Decoder(Header).decode
        decode_event = msgspec.msgpack.Decoder(ExportedEvent).decode
    try:
        header = decode_header(next(records))
    except (StopIteration, msgspec.DecodeError) as e:
        raise InvalidArgument(f"not an actorlog export in {fmt}: {e}") from None
    if header.format != EXPORT_FORMAT:
        raise InvalidArgument(f"an export of format {header.format!r}; this reads {EXPORT_FORMAT}")

    def events() -> Iterator[ExportedEvent]:
        for n, data in enumerate(records, start=1):
            try:
                yield decode_event(data)
            except msgspec.DecodeError as e:
                raise InvalidArgument(f"record {n} of the export does not decode: {e}") from None

    return header, events()


def _frames(source: IO[bytes]) -> Iterator[bytes]:
    while True:
        prefix = source.read(4)
        if not prefix:
            return
        if len(prefix) < 4:
            raise InvalidArgument("the export ends inside a record's length")
        (size,) = _frame.unpack(prefix)
        data = source.read(size)
        if len(data) < size:
            raise InvalidArgument("the export ends inside a record")
        yield data


def _key(e: ExportedEvent) -> tuple[Any, ...]:
    """Events of one original append share all of this."""
    return (
        e.stream_id,
        e.correlation_id,
        e.causation_id,
        e.command_id,
        e.principal,
        e.headers,
        e.aggregate,
    )


def import_log(
    log: EventLog,
    events: Iterator[ExportedEvent],
    *,
    head: int | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Append an export's events to the empty ``log``, each at its own position; returns
    how many. Durable as the log's appends are, group by group. ``head``: the export's
    header's, checked against its last event (an export cut at a record boundary reads
    as a whole one otherwise).

    Raises:
        InvalidArgument: the log is not empty, or the export's positions or versions do
            not run on (an export cut or edited by hand): raised before the group holding
            the record is appended, so no event lands at another position; or the export
            ends before ``head`` (what came before is imported, group by group).
        StorageError: an append failed (what came before it is in the log).
    """
    if log.head_position() != 0:
        raise InvalidArgument(
            f"the target log is not empty (head {log.head_position()}): import into a new one"
        )
    position = 0
    group: list[Append] = []
    counts: list[int] = []
    run: list[ExportedEvent] = []

    def close_run() -> None:
        if run:
            first = run[0]
            group.append(
                Append(
                    first.stream_id,
                    first.version - 1,
                    tuple((e.type, e.payload) for e in run),
                    correlation_id=first.correlation_id,
                    causation_id=first.causation_id,
                    aggregate_name=first.aggregate,
                    command_id=first.command_id,
                    principal=first.principal,
                    headers=first.headers,
                )
            )
            counts.append(len(run))
            run.clear()

    def flush() -> None:
        close_run()
        if not group:
            return
        outcomes, _ = log.append_batch(group)
        at = group_start
        for append, outcome in zip(group, outcomes, strict=True):
            if not isinstance(outcome, AppendResult):
                raise StorageError(
                    f"the append of {append.stream_id!r} at position {at} failed: {outcome}"
                ) from outcome
            if outcome.first_position != at:
                raise StorageError(
                    f"the events of {append.stream_id!r} landed at {outcome.first_position}, "
                    f"not {at}: the target log moved under the import"
                )
            at = outcome.last_position + 1
        progress(sum(counts))
        group.clear()
        counts.clear()

    group_start = 1
    pending = 0
    # Each stream's last version (the log would refuse a gap only when its group is
    # appended, after the groups before it, and with the rest of its own group in place:
    # events at other positions). 8 bytes a stream, as verify keeps.
    versions: dict[str, int] = {}
    for e in events:
        if e.position != position + 1:
            raise InvalidArgument(f"the export holds position {e.position} after {position}")
        if head is not None and e.position > head:
            raise InvalidArgument(f"the export holds position {e.position} beyond its head {head}")
        expected = versions.get(e.stream_id, 0) + 1
        if e.version != expected:
            raise InvalidArgument(
                f"the export holds version {e.version} of stream {e.stream_id!r} at position "
                f"{e.position}, where version {expected} comes next"
            )
        versions[e.stream_id] = e.version
        position = e.position
        if run and (
            _key(e) != _key(run[0])
            or e.version != run[-1].version + 1
            # A run without a command id may be many commands' appends: cut it, or a long
            # stream would be held whole and appended in one transaction. (One with an id
            # is one original append, which the log took whole: split, the second half
            # would record the id again.)
            or (e.command_id is None and len(run) >= APPEND_EVENTS)
        ):
            close_run()
            # Commit between original appends only: one split in two would record its
            # command id twice (the second refused as a duplicate).
            if pending >= APPEND_EVENTS:
                flush()
                group_start, pending = position, 0
        run.append(e)
        pending += 1
    flush()
    if head is not None and position != head:
        raise InvalidArgument(
            f"the export ends at position {position}, but its header says the log's head "
            f"was {head}: it was cut (the {position} events before are imported)"
        )
    return position
