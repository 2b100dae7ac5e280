"""The engine's one error tree.

Every error that crosses the public API is an :class:`EngineError`; raw ``lmdb`` and
``msgspec`` errors are wrapped, with the original as ``__cause__``::

    EngineError
    ├── DefinitionError (TypeError)      a class, option or call is wrong: fix the code
    │   └── InvalidArgument (ValueError) an argument of a call is malformed; nothing was decided
    │       └── UnknownPosition              a query's ``after`` beyond the log's head
    ├── UnknownCommand (TypeError)       send() got a command type the aggregate does not handle
    ├── UnknownQuery (TypeError)         query() got a function that is not a projector query
    ├── EngineClosed (RuntimeError)      the engine is closed or closing
    ├── Overloaded                       send_nowait() found no room (mailbox or live slots)
    ├── QueryTimeout (TimeoutError)      a wait for a projector outlasted its timeout
    ├── Rejected                         the domain said no; user code subclasses it
    ├── HandlerError                     user code (handler, applier, query) raised
    ├── ConcurrencyError                 expected_version did not match the stream's version
    ├── DuplicateCommand                 an append's command id was recorded already (logs)
    ├── Unauthorized (PermissionError)   the engine's policy refused the caller
    ├── CodecError (ValueError)          bytes could not be encoded/decoded
    │   ├── EncodeError                  an event that cannot be stored and read back
    │   ├── DecodeError                  malformed bytes, wrong field types, extra fields
    │   │   └── UpcastError              an older event's upcaster raised or gave invalid data
    │   ├── UnknownEventType             a type name nobody registered
    │   └── PayloadTooLarge              input over the size limit, refused before decoding
    ├── StorageError                     the log failed; nothing of the failed write remains
    │   ├── StorageFull                  the map reached its cap
    │   └── StorageLocked                another process holds the log
    └── ProjectorFaulted                 a projector halted at a position; queries say so
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CodecError",
    "ConcurrencyError",
    "DecodeError",
    "DefinitionError",
    "DuplicateCommand",
    "EncodeError",
    "EngineClosed",
    "EngineError",
    "HandlerError",
    "InvalidArgument",
    "Overloaded",
    "PayloadTooLarge",
    "ProjectorFaulted",
    "QueryTimeout",
    "Rejected",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "Unauthorized",
    "UnknownCommand",
    "UnknownEventType",
    "UnknownPosition",
    "UnknownQuery",
    "UpcastError",
]


def describe(value: object) -> str:
    """How an error message shows a caller's value: its ``repr``, cut short, and never
    failing (a 10 MB str is not copied whole; an int of 5,000 digits has no ``repr`` under
    Python's default digit limit; a user's ``__repr__`` may raise)."""
    if isinstance(value, str | bytes) and len(value) > 80:
        return f"{value[:60]!r}... ({len(value)} long)"
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:60]}... (a {type(value).__name__})"


class EngineError(Exception):
    """Base of every error the engine raises; catch this to catch them all."""


class DefinitionError(EngineError, TypeError):
    """An aggregate, projector, event type, option or call is wrong: fix the code.

    Raised when an ``Aggregate`` or ``Projector`` subclass is created (a handler or applier
    that is ``async`` or badly annotated, a non-frozen message type, an ``__init__`` that
    needs arguments, a bad class option), by ``Engine.open`` (an option out of range or of
    the wrong type, contradictory arguments such as both ``path`` and ``log``, a class the
    log cannot store), and at a call, where it means the caller is wrong, never the state:
    a malformed argument (:class:`InvalidArgument`), a stream that belongs to another
    aggregate type (``send``, ``send_nowait``), or an operation the engine's log does not
    offer (``set_max_map_size`` on a log without a map). Nothing was decided or written.
    """


class InvalidArgument(DefinitionError, ValueError):
    """An argument of a call is malformed: a stream id, a correlation or causation id, a
    query's ``after`` or ``timeout``, an untrusted command's aggregate, or a field of an
    :class:`~actorlog.storage.Append` handed to the writer.

    Raised by ``send``, ``send_nowait``, ``query``, ``wait_projected``, ``is_live``,
    ``decode_command``, ``set_max_map_size``, the log's reads and the writer before anything
    is decided or queued, so no handler ran and nothing was appended; other callers'
    commands are unaffected. Fix the caller. A :class:`DefinitionError` (and a ``ValueError``) so
    code that caught those for a bad stream id keeps working.
    """


class UnknownPosition(InvalidArgument):
    """``query(..., after=)`` or ``wait_projected(position)`` named a position beyond the
    head of the engine's log.

    No acknowledgement ever gave that position (``Committed.position`` is at most the head
    once ``send`` returns), and the engine is its log's only writer, so the wait could last
    forever: it is refused at once. Usually a position from another log, or arithmetic on
    one (``position + 1``).
    """


class UnknownCommand(EngineError, TypeError):
    """``send`` or ``send_nowait`` got an aggregate the engine does not host, or a command
    type that the aggregate has no handler for (a dict, bytes or str is not a command:
    decode untrusted input with ``engine.decode_command(Aggregate, data)`` first).

    Raised before anything is queued, so nothing was written. Fix the caller.
    """


class UnknownQuery(EngineError, TypeError):
    """``query`` got a function that is not a query of a projector the engine hosts, or
    ``rebuild``, ``resume`` or ``parked`` got a projector class the engine does not host.
    Fix the caller."""


class EngineClosed(EngineError, RuntimeError):
    """The engine is closed or closing and accepts no more work.

    Raised by ``send``, ``send_nowait``, ``query(..., after=...)``, ``wait_projected`` and
    ``set_max_map_size`` once the engine is closing (a plain ``query`` still reads the
    cache); commands still in flight at close are either committed or failed with this
    error, never dropped silently, and waits are released with it.
    """


class Overloaded(EngineError):
    """``send_nowait`` found no room: the aggregate's mailbox is full, or
    ``max_live_aggregates`` aggregates are live and all busy.

    Nothing was queued. Retry later, or use ``send`` to wait for room (backpressure).
    """


class QueryTimeout(EngineError, TimeoutError):
    """``query(..., after=p, timeout=t)`` or ``wait_projected(p, timeout=t)`` waited ``t``
    seconds and the projector had not yet applied ``p``.

    Nothing changed; the projector carries on (look at ``engine.statistics()``: it may be
    catching up on a long log, or busy). Retry, or answer "try later" to your own caller.
    """


class Rejected(EngineError):
    """The domain refused a command; no event was appended.

    Raised by user handlers (subclass it for domain-specific reasons) and passed to the
    caller of ``send`` unchanged.
    """


class HandlerError(EngineError):
    """User code (a command handler, an event applier, a query) raised unexpectedly.

    The original exception is ``__cause__``. A failed command appended nothing and the
    aggregate's state is restored (or, if it holds mutable values, reloaded from the log
    before its next command), so half-applied state never survives. A failed query (it
    raised, or returned something that cannot be copied) changed nothing: the projector
    carries on.
    """


class ConcurrencyError(EngineError):
    """An append's ``expected_version`` did not match the stream's actual version, or
    (``after_failed``, on a log other processes append to) it was decided on top of an
    append of the same group that failed: the versions up to ``expected`` hold other
    events than the ones it counted on, even if ``expected == actual``.

    Only that append failed; the others in its group commit still committed. Re-read the
    stream and decide again.
    """

    def __init__(
        self, stream_id: str, expected: int, actual: int, *, after_failed: bool = False
    ) -> None:
        if after_failed:
            message = (
                f"stream {stream_id!r}: expected version {expected} was decided on an "
                f"append of the same group that failed (actual version {actual}: other "
                "events)"
            )
        else:
            message = f"stream {stream_id!r}: expected version {expected}, actual version {actual}"
        super().__init__(message)
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        self.after_failed = after_failed

    def __reduce__(self) -> Any:
        return (_concurrency_error, (self.stream_id, self.expected, self.actual, self.after_failed))


def _concurrency_error(
    stream_id: str, expected: int, actual: int, after_failed: bool
) -> ConcurrencyError:
    """Unpickles a ConcurrencyError (its keyword argument included)."""
    return ConcurrencyError(stream_id, expected, actual, after_failed=after_failed)


class DuplicateCommand(EngineError):
    """An append carried a ``command_id`` its stream has recorded already: nothing of it
    was written. ``result`` is the original append's result.

    A log's answer, for those who append through the writer or a log directly;
    ``Engine.send`` never raises it: a retried command returns the original
    ``Committed`` instead.
    """

    def __init__(self, command_id: str, result: Any) -> None:
        super().__init__(
            f"command {command_id!r} was appended to stream {result.stream_id!r} already "
            f"(versions {result.first_version} to {result.last_version})"
        )
        self.command_id = command_id
        self.result = result

    def __reduce__(self) -> tuple[type[DuplicateCommand], tuple[str, Any]]:
        return (type(self), (self.command_id, self.result))


class Unauthorized(EngineError, PermissionError):
    """The engine's policy (``Engine.open(authorize=)``) refused this caller this command
    or query; nothing was decided, appended or read.

    A policy that raised refuses too (fail closed): its exception is ``__cause__``.
    """


class CodecError(EngineError, ValueError):
    """Bytes could not be encoded or decoded; base of the codec errors."""


class EncodeError(CodecError):
    """An event cannot be stored, or would not read back as its own type.

    Raised on the command path before anything is written (e.g. a field holding a value of
    the wrong type, or an int beyond msgpack's 64 bits); the command appended nothing and
    the aggregate is reloaded. Fix the handler that built the event.
    """


class DecodeError(CodecError):
    """Malformed bytes, or a value that fails validation (wrong type, extra field, ...)."""


class UpcastError(DecodeError):
    """A stored event of an older version (or a former name) could not be upcast: an
    ``@upcaster`` raised, or its result is not a valid event of the current type.

    Raised wherever the event is read: loading an aggregate (``send``; the message names the
    stream, version and position), or halting (or parking) a projector, whose
    :class:`ProjectorFaulted` names the position. The upcaster's exception is
    ``__cause__``. Fix the upcaster; the stored event is unchanged, so the next read
    (``resume`` a halted projector, send again) tries again.
    """


class UnknownEventType(CodecError):
    """A type name (tag) that no registered event or command type carries."""


class PayloadTooLarge(CodecError):
    """Input is larger than the configured limit; refused before any decoding."""


class StorageError(EngineError):
    """The event log failed. The failed write transaction left nothing behind.

    The original ``lmdb`` error, if any, is ``__cause__``.
    """


class StorageFull(StorageError):
    """The log's map reached its configured cap, or the disk is full; the write was not made.

    Queries keep working. Raise the cap (``engine.set_max_map_size(n)``, or
    ``Engine.open(..., max_map_size=n)`` next time) or free disk space, then retry.
    """


class StorageLocked(StorageError):
    """The log directory is already open: in another process, or by another engine (or
    log) in this one. One engine per log directory at a time; raised by ``Engine.open``."""


class ProjectorFaulted(EngineError):
    """A projector halted because its applier raised at ``position``.

    Queries on it raise this until it is resumed or rebuilt; other projectors and the write
    side are unaffected. The applier's exception is ``__cause__``.
    """

    def __init__(self, projector: str, position: int, event_type: str, error: str) -> None:
        super().__init__(
            f"projector {projector} halted at position {position} ({event_type}): {error}"
        )
        self.projector = projector
        self.position = position
        self.event_type = event_type
        self.error = error

    def __reduce__(self) -> tuple[type[ProjectorFaulted], tuple[str, int, str, str]]:
        return (type(self), (self.projector, self.position, self.event_type, self.error))
