"""Record types that cross the engine's boundaries: what goes into the log and what comes back.

Pure data, no I/O. The records made per command or per event are ``gc=False``: they hold
only strings, numbers, bytes and tuples of those, so they can never be part of a reference
cycle, and leaving them out of the cyclic collector keeps its collections (and the latency
spikes they cause) rarer on the command path.

Positions (global, 1-based) and versions (per stream, 1-based) are consecutive integers;
0 means "nothing yet".
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "ANY",
    "NO_STREAM",
    "Append",
    "AppendResult",
    "Committed",
    "ProjectorCache",
    "Recorded",
    "Snapshot",
    "StoredEvent",
]

ANY: Final = -1
"""``expected_version`` that accepts whatever version the stream has."""

NO_STREAM: Final = 0
"""``expected_version`` that requires the stream not to exist yet (version 0)."""


class Committed(msgspec.Struct, frozen=True, gc=False):
    """What ``Engine.send`` returns: the command's events are durable.

    Attributes:
        stream_id: the aggregate's id.
        version: the stream's version after this command (unchanged if it emitted no event).
        position: the global position of the command's last event; 0 if it emitted none.
            Pass it as ``after=`` to a query to read your own write.
        events: how many events the command appended.
    """

    stream_id: str
    version: int
    position: int
    events: int = 0


class _CommandMetadata(msgspec.Struct, frozen=True, array_like=True, gc=False, kw_only=True):
    # Keyword-only, so msgspec places these fields after every positional field of the
    # subclasses, StoredEvent's payload and aggregate included: in the stored array they
    # come last, after the fields logs written before them hold, which therefore decode
    # unchanged (a shorter array takes the defaults). Each costs one nil byte when absent.
    command_id: str | None = None
    principal: str | None = None
    headers: tuple[tuple[str, str], ...] | None = None


class Recorded(_CommandMetadata, frozen=True, array_like=True, gc=False):
    """An event's metadata as recorded in the log; projector appliers receive it.

    Attributes:
        position: global position in the log (1-based, consecutive).
        stream_id: the stream (aggregate id) the event belongs to.
        version: the event's version within its stream (1-based, consecutive).
        type: the event type's registered name.
        timestamp: commit time, seconds since the epoch (the wall clock of the group
            commit that wrote it).
        correlation_id: the id of the request that started the chain, if given.
        causation_id: the id of the message that caused this event, if given.
        command_id: the id of the command that appended it, if ``send`` was given one
            (the idempotency key: a retry with it returns the original result).
        principal: who sent the command, as the host recorded it (``send(principal=)``, a
            str, or what ``Engine.open(record_principal=)`` made of it); None if unknown.
        headers: free-form ``(name, value)`` pairs passed to ``send(headers=)``, in the
            order given (a W3C ``traceparent``, a tenant, a client version); None if none.
    """

    position: int
    stream_id: str
    version: int
    type: str
    timestamp: float
    correlation_id: str | None = None
    causation_id: str | None = None


class StoredEvent(Recorded, frozen=True, array_like=True):
    """A :class:`Recorded` with its still-encoded payload, exactly as read from the log.

    ``aggregate`` names the aggregate type that created the stream, on the stream's first
    appended events only (None elsewhere, and for streams appended to without an
    aggregate): it lets the engine refuse to load one type's stream as another's.

    The payload stays ``msgspec.Raw`` so readers decode only the event types they handle.
    """

    payload: msgspec.Raw = msgspec.Raw(b"")
    aggregate: str | None = None


class Append(msgspec.Struct, frozen=True, gc=False):
    """One all-or-nothing append to one stream, as handed to the log.

    Attributes:
        stream_id: the stream to append to.
        expected_version: the stream's version before this append, or ``ANY``
            (``NO_STREAM`` is 0).
        events: ``(type name, encoded payload)`` pairs, appended in order; may be empty,
            in which case only the expected version is checked. A payload is exactly one
            msgpack value (what ``EventRegistry.encode`` returns): the log embeds it in its
            envelope as it is.
        correlation_id: stored on every event of the append.
        causation_id: stored on every event of the append.
        aggregate_name: the ``aggregate_name`` of the aggregate type creating the stream,
            stored on every event of the append (as ``StoredEvent.aggregate``); given only
            by the append that creates the stream.
        command_id: stored on every event of the append, and recorded with the append's
            result in the same transaction: an append whose ``command_id`` the stream
            already recorded writes nothing and fails with ``DuplicateCommand`` carrying
            the original result (the log keeps ids as its retention says).
        principal: stored on every event of the append.
        headers: ``(name, value)`` pairs stored on every event of the append.
    """

    stream_id: str
    expected_version: int
    events: tuple[tuple[str, bytes], ...]
    correlation_id: str | None = None
    causation_id: str | None = None
    aggregate_name: str | None = None
    command_id: str | None = None
    principal: str | None = None
    headers: tuple[tuple[str, str], ...] | None = None


class AppendResult(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The outcome of one successful :class:`Append`.

    ``first_position``/``first_version`` are those of the append's first event; for an
    empty append they are one past the last ones (nothing was written).
    """

    stream_id: str
    first_version: int
    last_version: int
    first_position: int
    last_position: int
    timestamp: float


class Snapshot(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An aggregate's encoded state at a stream version.

    Attributes:
        version: the stream version the state reflects.
        format: the aggregate class's ``snapshot_format`` when it was taken; a snapshot of
            another format is ignored, never misread.
        state: the msgpack-encoded state.
        aggregate: the aggregate type that took it (None if unknown).
    """

    version: int
    format: int
    state: bytes
    aggregate: str | None = None


class ProjectorCache(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A projector's saved cache: its encoded state as of a log position.

    Stored as an array, like :class:`Snapshot`, whose first three fields these are: the
    values an older actorlog saved as a ``Snapshot`` (``version`` holding the position, a
    trailing nil ``aggregate``) decode as this record unchanged.

    Attributes:
        position: the last log position the state includes.
        format: the projector class's ``snapshot_format`` when it was saved; a cache of
            another format is ignored, never misread.
        state: the msgpack-encoded cache.
    """

    position: int
    format: int
    state: bytes
