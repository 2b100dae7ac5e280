"""The event-log protocol every storage backend meets, and the checks they share.

A backend is synchronous: the writer calls it inline (see ``_writer.py`` for why), and
readers call it between awaits, never holding a transaction across one. Only ``bytes`` and
decoded records leave a backend's transactions.

Contract (``actorlog.storage.check_event_log`` runs it against any backend):

- ``append_batch`` commits every append of the group in ONE transaction; each append is all
  or nothing; an expected-version mismatch fails that append only (``ConcurrencyError``).
- positions and versions are consecutive from 1; global order is commit order; no gaps.
- a storage failure fails the whole group with a ``StorageError`` and writes nothing;
  an invalid stream id or projector name raises ``InvalidArgument`` (a
  ``DefinitionError``) and writes nothing.
- an empty append (no events) only checks the expected version.
- reads after ``close`` raise ``StorageError``.

Slow reads. A backend whose reads may block for long (a round trip to a database server)
says so with a ``blocking_reads`` attribute that is true (``PostgresEventLog``); the engine
then runs its activation loads and projector catch-up reads in worker threads
(``anyio.to_thread``), so the event loop keeps serving other aggregates and queries
meanwhile. Such a backend's reads must be safe to call from any thread. A backend without
the attribute, or with it false (LMDB, memory: reads of microseconds), is read inline,
where a thread hop would cost more than the read (see ``docs/design.md``).

Why one module over 450 lines: the protocol and the rules for what may enter it (stream
ids, names, metadata, headers, events, snapshots) are one contract: every backend, the
writer and the engine's front door call these same checks, so a rule changes in one place.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import anyio
import msgspec

from ._codec import DECODE_FAILURES
from ._errors import ConcurrencyError, EngineError, InvalidArgument, describe
from ._records import ANY, Append, AppendResult, ProjectorCache, Snapshot, StoredEvent

Headers = tuple[tuple[str, str], ...]

__all__ = [
    "MAX_HEADERS_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_STREAM_ID_BYTES",
    "AppendOutcome",
    "EventLog",
    "ReadBatch",
    "check_append",
    "check_command_id",
    "check_headers",
    "check_events",
    "check_label",
    "check_metadata",
    "check_name",
    "check_projector_cache",
    "check_snapshot",
    "READ_THREADS",
    "check_stream_id",
    "expected_ok",
    "read_limiter",
    "reads_block",
    "stored_events",
]

AppendOutcome = AppendResult | EngineError
"""What each append comes to, in order: its result, or the error that failed it alone.

``append_batch`` reports ``ConcurrencyError`` or ``StorageError``; the writer may also
report ``EngineClosed`` (closed before the append was written)."""

MAX_STREAM_ID_BYTES: Final = 400  # LMDB keys are at most 511 bytes; the index adds 9.

MAX_METADATA_BYTES: Final = 1024
"""The bound on a correlation or causation id, in UTF-8 bytes. Larger than a stream id's
because a causation id is often built from one (a stream id and a position); small enough
that an event carrying both ids stays well inside an LMDB page (a record over ~2 KB spills
to overflow pages) and that one caller cannot make each event it appends megabytes long."""

MAX_HEADERS_BYTES: Final = 4096
"""The bound on a command's headers, names and values together, in UTF-8 bytes: room for
a W3C ``traceparent`` and ``tracestate`` and a few more, while every event of the command
stays well inside a page."""

# Walks one msgpack value without building it, and refuses trailing bytes: the framing
# check of a payload the writer did not see encoded (~50 ns for a small event).
_skip_one_value: Final = msgspec.msgpack.Decoder(msgspec.Raw).decode


class EventLog(Protocol):
    """The storage backend protocol: an append-only log of events with a stream index.

    A log may also have a ``command_hashes`` attribute (it is optional, so it is not a
    protocol member): a container, the same object for the log's life, of
    ``hash((stream_id, command_id))`` for every command id it may keep. The engine calls
    ``find_command`` only for an id whose hash is in it: a new id (the usual case) then
    costs a hash and a lookup, not a call. A log whose ids other writers also record
    (a database server) has none, and is always asked.
    """

    @property
    def sync(self) -> bool:
        """True if a committed group is durable against an OS crash when commit returns."""
        ...

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Commit a group of appends (plus aggregate snapshots and projector caches, each
        keyed by stream id or projector name, the last write winning) in one transaction.

        Returns each append's outcome, in order, and the stored events in log order. Durable
        on return if ``sync``; with ``sync=False`` it survives a process crash, not an OS one.
        """
        ...

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order.

        At most ``limit`` of them if given (``0`` gives none).
        """
        ...

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order.

        Fewer than ``limit`` does not mean the head was reached: a backend may end a batch
        early (the LMDB log ends one just before an unreadable entry, and the read that
        starts at it raises ``StorageError``). Read on from the last position + 1 until
        ``head_position()``; an empty list means nothing is stored from ``from_position``.

        A backend may return a :class:`ReadBatch`, which also says how many bytes it read:
        readers that bound their memory in bytes (the projectors' shared catch-up reads)
        then need not measure the events one by one.
        """
        ...

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        ...

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if the stream does not exist."""
        ...

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved snapshot, if any."""
        ...

    def load_projector_cache(self, name: str) -> ProjectorCache | None:
        """The named projector's last saved cache, if any."""
        ...

    def find_command(self, stream_id: str, command_id: str) -> AppendResult | None:
        """The result of the append that recorded ``command_id`` on ``stream_id``, while the
        log keeps it (its retention); None otherwise, including for an id no append could
        have carried (an empty one, say). A stream id or command id that is not a str is
        ``InvalidArgument``."""
        ...

    def close(self) -> None:
        """Release the storage. Idempotent. Later calls raise ``StorageError``."""
        ...


READ_THREADS: Final = 4
"""The most worker threads one engine reads a blocking log with at once (activations and
projector catch-up together): enough to overlap a few round trips, few enough that a burst
of first sends to cold streams queues in the engine instead of spawning threads."""


def read_limiter(log: object) -> anyio.CapacityLimiter | None:
    """The bound on the worker threads reading ``log`` (one per engine), or None when its
    reads run inline."""
    return anyio.CapacityLimiter(READ_THREADS) if reads_block(log) else None


def reads_block(log: object) -> bool:
    """True if ``log`` declares that its reads may block for long (``blocking_reads``): the
    engine then reads it in worker threads. False for a backend that does not say."""
    return bool(getattr(log, "blocking_reads", False))


class ReadBatch(list[StoredEvent]):
    """The events of one ``read_all``, and ``nbytes``: the bytes the backend read for
    them (its stored records; at least their payloads).

    Optional for a backend: a reader that gets a plain list measures the payloads itself.
    The LMDB log gets the figure free from its checksum pass (the length of the runs it
    joins), where a reader's pass over the decoded events' payloads cost ~1,300
    instructions an event, 9% of a W4 rebuild (callgrind).
    """

    __slots__ = ("nbytes",)

    def __init__(self, events: Iterable[StoredEvent], nbytes: int) -> None:
        super().__init__(events)
        self.nbytes = nbytes


def check_stream_id(stream_id: object) -> str:
    """Validate a stream id: a non-empty str without NUL, at most 400 UTF-8 bytes.

    Returns it as a plain ``str``: a str subclass is accepted and converted, since msgspec
    encodes only exact strs and the subclass's own ``__eq__``/``__hash__`` must not decide
    which actor or key the id names.

    Raises:
        InvalidArgument: anything else, including a str that is not valid UTF-8 (a lone
            surrogate such as ``"\\ud800"``), which no log could store.
    """
    # The usual id, in one test: an ASCII str (``isascii`` reads a flag, it does not scan)
    # is its own UTF-8 encoding, so its length is its size and nothing is encoded.
    if (
        type(stream_id) is str
        and stream_id.isascii()
        and 0 < len(stream_id) <= MAX_STREAM_ID_BYTES
        and "\x00" not in stream_id
    ):
        return stream_id
    if type(stream_id) is not str:
        if not isinstance(stream_id, str):
            raise InvalidArgument(
                f"stream id must be a non-empty str, not {type(stream_id).__name__}"
            )
        stream_id = str.__str__(stream_id)  # a plain copy, whatever the subclass overrides
    # Others are encoded once (unless too long anyway), which measures them and refuses
    # what has no UTF-8 form.
    size = (
        len(stream_id)
        if stream_id.isascii()
        else _utf8_size(stream_id, "stream id", MAX_STREAM_ID_BYTES)
    )
    if not size or size > MAX_STREAM_ID_BYTES or "\x00" in stream_id:
        raise InvalidArgument(
            f"stream id must be a non-empty str without NUL of at most {MAX_STREAM_ID_BYTES} "
            f"UTF-8 bytes, not {describe(stream_id)}"
        )
    return stream_id


def check_expected_version(expected: object) -> None:
    """Validate an append's expected version: an ``int`` (a version, or ``ANY``).

    Why: a bool or a float equal to a version compares equal to it, and a log would decide
    on it as on that int (or its server refuse it, failing the whole group).

    Raises:
        InvalidArgument: any other type (bool and int subclasses included).
    """
    if type(expected) is not int:
        raise InvalidArgument(
            f"expected version must be an int (a version, or ANY), not {describe(expected)}"
        )


def check_name(name: object) -> str:
    """Validate a projector name (the key of its saved cache): a non-empty str of at most
    400 UTF-8 bytes.

    Returns it as a plain ``str``, like :func:`check_stream_id`.

    Raises:
        InvalidArgument: anything else, including a str that is not valid UTF-8.
    """
    if type(name) is not str:
        if not isinstance(name, str):
            raise InvalidArgument(
                f"a projector name must be a non-empty str, not {type(name).__name__}"
            )
        name = str.__str__(name)
    size = (
        len(name) if name.isascii() else _utf8_size(name, "a projector name", MAX_STREAM_ID_BYTES)
    )
    if not size or size > MAX_STREAM_ID_BYTES:
        raise InvalidArgument(
            f"a projector name must be a non-empty str of at most {MAX_STREAM_ID_BYTES} "
            f"bytes, not {describe(name)}"
        )
    return name


def check_metadata(value: object, what: str = "metadata") -> str | None:
    """Validate a correlation or causation id: None, or a str of at most 1024 UTF-8 bytes.

    Returns it as a plain ``str`` (or None), like :func:`check_stream_id`. The empty str
    is allowed. ``what`` names the argument in the error.

    Raises:
        InvalidArgument: another type, over the bound, not valid UTF-8 (a lone
            surrogate), or holding a NUL (PostgreSQL's text cannot store one; refused for
            every log, so a service can move between them): such an id would be
            acknowledged and then make the events that carry it unreadable, or fail the
            whole group commit it rode in.
    """
    if value is None:
        return None
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidArgument(f"{what} must be a str or None, not {type(value).__name__}")
        value = str.__str__(value)
    size = len(value) if value.isascii() else _utf8_size(value, what, MAX_METADATA_BYTES)
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{what} must be at most {MAX_METADATA_BYTES} UTF-8 bytes; this one has "
            f"{len(value)} characters"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not hold a NUL character: {describe(value)}")
    return value


def check_command_id(value: object) -> str:
    """Validate a command id: a non-empty str of at most 1024 UTF-8 bytes (any content).

    Returns it as a plain ``str``, like :func:`check_stream_id`.

    Raises:
        InvalidArgument: anything else.
    """
    checked = check_metadata(value, "command_id")
    if not checked:
        raise InvalidArgument(f"command_id must be a non-empty str, not {describe(value)}")
    return checked


def check_headers(headers: object) -> Headers | None:
    """Validate a command's headers: None, a mapping or an iterable of ``(name, value)``
    pairs of strs (names non-empty), at most 4096 UTF-8 bytes in all.

    Returns them as a tuple of ``(str, str)`` tuples in the order given (None for none):
    immutable, so every projector can be handed the same record.

    Raises:
        InvalidArgument: anything else, including a str that is not valid UTF-8.
    """
    if headers is None:
        return None
    if type(headers) is dict:
        # The usual headers: a small dict of non-empty ASCII strs, checked in one pass
        # without the per-pair calls below (~0.4 µs for one traceparent).
        given = tuple(headers.items())
        size = 0
        for name, value in given:
            if not (
                type(name) is str
                and type(value) is str
                and name
                and name.isascii()
                and value.isascii()
                and "\x00" not in name
                and "\x00" not in value
            ):
                break
            size += len(name) + len(value)
        else:
            if size <= MAX_HEADERS_BYTES:
                return given if given else None
    if isinstance(headers, str | bytes):
        raise InvalidArgument("headers must be a mapping or (name, value) pairs, not a str")
    try:
        pairs: list[Any] = list(
            headers.items() if isinstance(headers, Mapping) else headers  # type: ignore[call-overload]
        )
    except Exception as e:  # not iterable, or the caller's mapping or generator raised
        raise InvalidArgument(
            f"headers must be a mapping or (name, value) pairs, not {describe(headers)}: {e!r}"
        ) from e
    checked: list[tuple[str, str]] = []
    size = 0
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidArgument(f"a header must be a (name, value) pair, not {describe(pair)}")
        name = check_label(pair[0], "a header name")
        value = check_metadata(pair[1], "a header value")
        if value is None:
            raise InvalidArgument(f"header {name!r} has no value (None)")
        size += len(name.encode()) + len(value.encode())
        if size > MAX_HEADERS_BYTES:
            raise InvalidArgument(f"headers must be at most {MAX_HEADERS_BYTES} UTF-8 bytes in all")
        checked.append((name, value))
    return tuple(checked) if checked else None


def check_append(append: Append) -> Append:
    """Validate every field of an append but its events (:func:`check_events`) before it
    goes near a write transaction.

    The log writes these fields into keys and envelopes as they are: one of the wrong type,
    or a str with no UTF-8 form, would fail the whole group commit it rides in, or be
    written and then never read back. Returns the append, or a copy whose str subclasses
    are plain strs.

    Raises:
        InvalidArgument: a field is malformed.
    """
    if type(append) is not Append:
        raise InvalidArgument(f"expected an Append, not {type(append).__name__}")
    stream_id = append.stream_id
    expected = append.expected_version
    if type(expected) is not int or not ANY <= expected < 2**64:  # versions are 64-bit
        raise InvalidArgument(
            f"expected_version must be an int from {ANY} (ANY) below 2**64, "
            f"not {describe(expected)}"
        )
    # Every command passes here: check_stream_id's fast path is inlined (a call is a third
    # of the cost), then the usual append (no metadata, an existing stream) is done.
    if not (
        type(stream_id) is str
        and stream_id.isascii()
        and 0 < len(stream_id) <= MAX_STREAM_ID_BYTES
        and "\x00" not in stream_id
    ):
        stream_id = check_stream_id(stream_id)
    if (
        stream_id is append.stream_id
        and append.correlation_id is None
        and append.causation_id is None
        and append.aggregate_name is None
        and append.command_id is None
        and append.principal is None
        and append.headers is None
    ):
        return append
    correlation_id = check_metadata(append.correlation_id, "correlation_id")
    causation_id = check_metadata(append.causation_id, "causation_id")
    aggregate_name = append.aggregate_name
    if aggregate_name is not None:
        aggregate_name = check_label(aggregate_name, "an aggregate name")
    command_id = append.command_id
    if command_id is not None:
        command_id = check_command_id(command_id)
    return msgspec.structs.replace(
        append,
        stream_id=stream_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        aggregate_name=aggregate_name,
        command_id=command_id,
        principal=check_metadata(append.principal, "principal"),
        headers=check_headers(append.headers),
    )


def check_events(events: object) -> None:
    """Validate an append's events: ``(type name, payload)`` pairs, each name a non-empty
    str of at most 400 UTF-8 bytes, each payload ``bytes`` holding exactly one msgpack value
    (the log embeds it in its envelope as it is, so anything else could not be read back).

    ``EventRegistry.encode`` output passes by construction: it proved a stronger thing
    (the payload decodes as its type), which is why the writer skips this for appends
    that come with the objects they were encoded from.

    Raises:
        InvalidArgument: an event is malformed.
    """
    if not isinstance(events, (tuple, list)):  # a tuple of types: faster than a union
        raise InvalidArgument(f"events must be a tuple, not {type(events).__name__}")
    # One pass, the usual event costing a few type tests and a walk over its payload; a
    # malformed pair fails the unpacking itself.
    try:
        for name, payload in events:
            if (
                type(name) is not str  # exact types: msgspec encodes no subclass
                or type(payload) is not bytes
                or not (
                    0 < len(name) <= MAX_STREAM_ID_BYTES and name.isascii() and "\x00" not in name
                )
            ):
                _check_event(name, payload)
            _skip_one_value(payload)
    except InvalidArgument:
        raise
    except _MALFORMED_EVENT as e:
        raise InvalidArgument(
            f"each event must be a (type name, payload) pair, its payload exactly one "
            f"msgpack value: {e}"
        ) from e


def check_snapshot(snapshot: object) -> Snapshot:
    """Validate an aggregate's snapshot before it is queued: its ints must fit msgpack's
    64 bits, its state must be bytes, its aggregate a name. One that does not would fail
    the whole group commit it rides in.

    Raises:
        InvalidArgument: a field is malformed.
    """
    if type(snapshot) is not Snapshot:
        raise InvalidArgument(f"expected a Snapshot, not {type(snapshot).__name__}")
    _check_saved_state("snapshot", "version", snapshot.version, snapshot.format, snapshot.state)
    aggregate = snapshot.aggregate
    if aggregate is not None:
        if type(aggregate) is not str:  # exact: msgspec encodes no subclass
            raise InvalidArgument(
                f"a snapshot's aggregate must be a str, not {describe(aggregate)}"
            )
        check_label(aggregate, "a snapshot's aggregate name")
    return snapshot


def check_projector_cache(cache: object) -> ProjectorCache:
    """Validate a projector's cache before it is queued, as :func:`check_snapshot` does a
    snapshot: one that msgpack cannot store would fail the whole group commit it rode in.

    Raises:
        InvalidArgument: a field is malformed.
    """
    if type(cache) is not ProjectorCache:
        raise InvalidArgument(f"expected a ProjectorCache, not {type(cache).__name__}")
    _check_saved_state("cache", "position", cache.position, cache.format, cache.state)
    return cache


def _check_saved_state(what: str, counter: str, count: object, fmt: object, state: object) -> None:
    """The fields a snapshot and a projector cache share: a count (version or position)
    and a format that fit msgpack's 64 bits, and the state as bytes."""
    if type(count) is not int or not 0 <= count < 2**64:
        raise InvalidArgument(f"a {what}'s {counter} must be an int >= 0, not {describe(count)}")
    if type(fmt) is not int or not -(2**63) <= fmt < 2**64:
        raise InvalidArgument(f"a {what}'s format must be a 64-bit int, not {describe(fmt)}")
    if type(state) is not bytes:
        raise InvalidArgument(f"a {what}'s state must be bytes, not {type(state)}")


_MALFORMED_EVENT: Final = (TypeError, *DECODE_FAILURES)


def _check_event(name: object, payload: object) -> None:
    """The slow path of an event's check: refuse it with a precise message, or pass a
    name that is valid but not ASCII."""
    if type(name) is not str:
        raise InvalidArgument(f"an event type name must be a str, not {type(name).__name__}")
    check_label(name, "an event type name")
    if type(payload) is not bytes:
        raise InvalidArgument(f"a payload must be bytes, not {type(payload).__name__}")


def check_label(value: object, what: str) -> str:
    """Validate a name stored in envelopes (an event type, an aggregate type, a header): a
    non-empty str of at most 400 UTF-8 bytes, without NUL. Returns it as a plain ``str``.

    Raises:
        InvalidArgument: anything else.
    """
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidArgument(f"{what} must be a non-empty str, not {type(value).__name__}")
        value = str.__str__(value)
    size = len(value) if value.isascii() else _utf8_size(value, what, MAX_STREAM_ID_BYTES)
    if not size or size > MAX_STREAM_ID_BYTES or "\x00" in value:
        raise InvalidArgument(
            f"{what} must be a non-empty str without NUL of at most {MAX_STREAM_ID_BYTES} "
            f"UTF-8 bytes, not {describe(value)}"
        )
    return value


def _utf8_size(value: str, what: str, bound: int) -> int:
    """The UTF-8 size of a non-ASCII ``value``; its length, without encoding it, when it
    has more characters than ``bound`` (a character is at least one byte): a huge str is
    refused without being copied."""
    if len(value) > bound:
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what} is not valid UTF-8 (a lone surrogate?): {describe(value)}"
        ) from None


def stored_events(
    append: Append, stream_id: str, position: int, version: int, timestamp: float
) -> list[StoredEvent]:
    """``append``'s events as a log stores and hands them back: the first at ``position +
    1`` and ``version + 1`` of ``stream_id`` (the append's, checked), each payload a
    ``msgspec.Raw``, the append's metadata on each."""
    return [
        StoredEvent(
            position + i,
            stream_id,
            version + i,
            name,
            timestamp,
            append.correlation_id,
            append.causation_id,
            msgspec.Raw(payload),
            append.aggregate_name,
            command_id=append.command_id,
            principal=append.principal,
            headers=append.headers,
        )
        for i, (name, payload) in enumerate(append.events, 1)
    ]


def expected_ok(
    append: Append, actual: int, chained: Mapping[str, Container[int]] | None = None
) -> ConcurrencyError | None:
    """The error if ``append``'s expected version does not admit ``actual``, else None.

    ``chained``: for a stream of which an earlier append of the same batch, one that
    carried events, failed, the versions a decision made on top of it would expect (the
    failed one's expected version plus its events; on along a chain of such). An actor
    pipelines: its next decision expects exactly the version its previous one would
    leave, so once that one fails, an append expecting that version was decided on state
    that never existed, even if the log has reached that version anyway (others' events
    filled it). Only a log others append to can get there; a single writer's log never
    does, and passes nothing. Another caller's append to the stream is judged on its own
    unless it happens to expect exactly such a version (then it gets a conflict it may
    retry: never a wrong commit).
    """
    expected = append.expected_version
    if expected == ANY:
        return None
    if expected == actual:
        if chained is None or expected not in chained.get(append.stream_id, ()):
            return None
        return ConcurrencyError(append.stream_id, expected, actual, after_failed=True)
    return ConcurrencyError(append.stream_id, expected, actual)
