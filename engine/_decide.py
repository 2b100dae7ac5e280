"""The decide step: one command on one aggregate's state, as the engine and the kit run it.

``decide`` calls the handler, checks what it returned, encodes each event (the registry
reads it back, so an event the log could not store fails here) and evolves the state
with the event *as read back*: what a replay applies, so live state equals replayed state
even for a value that does not survive encoding unchanged (a datetime's offset, a list
given for a tuple field). ``Aggregates`` runs it on a live actor, ``actorlog.testing.given``
on a fresh state: one implementation, so the kit cannot drift from the engine.

Isolation: user code may change the state and then raise (``Rejected`` included), or an
applier may raise half-way. The caller copies the state's ``__dict__`` first (inline: a
call would cost more than the copy) and, after any raise, :func:`restore` puts it back
when that is an exact undo: every value immutable all the way down (ints, strings, tuples
and frozen Structs of such: the usual shape), the state a plain instance without slots.
Otherwise the caller must rebuild the state from the log (the engine marks the actor
stale; the kit builds a fresh one). A deep copy per command would cost ~40% of a W1
command; this costs one small dict copy.

User code's exceptions that are not ``Exception`` (a user's ``BaseException`` subclass)
are ``HandlerError`` too; only cancellation, ``KeyboardInterrupt`` and ``SystemExit`` reach
the caller unchanged (``_reply.must_propagate``).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from ._errors import EngineError, HandlerError, Rejected
from ._reply import must_propagate

__all__ = ["AggregateType", "decide", "kind_name", "restore"]


class AggregateType(Protocol):
    """What the engine needs of an aggregate class (``actors.Aggregate`` provides it).

    Read-only members, so that a class object matches it for type checkers (a ClassVar or
    a settable attribute in a protocol cannot be matched by a class object).
    """

    @property
    def command_handlers(self) -> Mapping[type, Callable[[Any, Any], Sequence[Any] | None]]:
        """Command type -> handler ``(state, command) -> events``."""

    @property
    def event_appliers(self) -> Mapping[type, Callable[[Any, Any], None]]:
        """Event type -> applier ``(state, event) -> None``."""

    @property
    def aggregate_name(self) -> str:
        """The type's name in the log: a stream created by one type is refused to another."""

    @property
    def snapshot_every(self) -> int | None:
        """Snapshot every this many events; None: never."""

    @property
    def snapshot_format(self) -> int:
        """The snapshot format version; snapshots of another are ignored."""

    def __call__(self) -> Any:
        """A new, empty state."""

    def from_snapshot(self, data: bytes) -> Any:
        """A state rebuilt from ``snapshot_state()``'s bytes."""


def kind_name(kind: AggregateType) -> str:
    """The class's name, for messages."""
    # Not a protocol member: type checkers do not see a class object's __name__ there.
    return getattr(kind, "__name__", repr(kind))


def decide(
    kind: AggregateType,
    state: Any,
    handler: Callable[[Any, Any], Any],
    command: Any,
    encode: Callable[[Any], tuple[tuple[str, bytes], Any]],
) -> tuple[Sequence[Any], list[tuple[str, bytes]], list[Any]]:
    """Decide ``command`` on ``state`` and evolve it.

    ``encode`` is ``EventRegistry.encode_read_back``. Returns the events the handler
    emitted, their encodings, and the events as read back from those encodings: the ones
    applied to ``state``, and the ones to hand on (live projectors), never the emitted
    objects, which may differ from what the log gives every later reader.

    Raises:
        Rejected: the handler refused the command (raised as it is).
        HandlerError: the handler or an applier raised (the original is ``__cause__``),
            the handler returned something that is not a list of events, or it emitted an
            event its class has no ``@applies`` for.
        EncodeError: an event cannot be stored and read back (from ``encode``).

    After a raise the state may hold part of the command's work: undo it with
    :func:`restore`, or rebuild it.
    """
    try:
        events = handler(state, command)
    except Rejected:
        raise
    except BaseException as e:
        if must_propagate(e):
            raise  # cancellation, Ctrl-C, sys.exit(): not the handler's failure
        raise HandlerError(
            f"{kind_name(kind)}.{getattr(handler, '__name__', 'handler')} raised "
            f"{type(e).__name__}: {e}"
        ) from e
    if events is None:
        events = ()
    # The exact-type test first: ``list | tuple`` builds a union object every time.
    elif type(events) is not list and not isinstance(events, list | tuple):
        raise HandlerError(
            f"{kind_name(kind)} handler returned {type(events).__name__}, not a list of events"
        )
    appliers = kind.event_appliers
    encoded = []
    decoded = []
    try:
        for event in events:
            applier = appliers.get(type(event))
            if applier is None:
                raise HandlerError(
                    f"{kind_name(kind)} emitted {type(event).__name__}, but has no @applies "
                    f"for {type(event).__name__}"
                )
            # Encode first: an event that cannot be stored must not evolve the state. Apply
            # what was read back: what replay applies.
            pair, back = encode(event)
            encoded.append(pair)
            decoded.append(back)
            applier(state, back)
    except BaseException as e:
        if isinstance(e, EngineError) or must_propagate(e):
            raise
        raise HandlerError(f"{kind_name(kind)} failed to apply its events: {e!r}") from e
    return events, encoded, decoded


_ATOMS: frozenset[type] = frozenset(
    {
        bool,
        bytes,
        complex,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        decimal.Decimal,
        float,
        fractions.Fraction,
        int,
        range,
        str,
        type(None),
        uuid.UUID,
    }
)
"""Types whose instances cannot change (exact types: a subclass may add a ``__dict__``)."""


def _immutable(value: Any, depth: int = 0) -> bool:
    """True if nothing reachable from ``value`` can be changed in place.

    Checked by value, and only after a handler raised (never on the command path): a frozen
    Struct or a tuple counts only if what it holds does. Enum members and classes are
    process-wide singletons, so replay would see the very same objects: they count too.
    """
    cls = type(value)
    if cls in _ATOMS:
        return True
    if depth > 64:
        return False  # absurdly deep: reloading is the safe answer
    if cls is tuple or cls is frozenset:
        return all(_immutable(item, depth + 1) for item in value)
    if isinstance(value, msgspec.Struct):
        config = cls.__struct_config__
        return (
            config.frozen
            and not config.dict
            and all(_immutable(getattr(value, f), depth + 1) for f in cls.__struct_fields__)
        )
    return isinstance(value, enum.Enum | type)


_PLAIN: dict[AggregateType, bool] = {}
"""Aggregate class -> its instances keep all their attributes in ``__dict__`` (no slots)."""


def restore(state: Any, kind: AggregateType, before: dict[str, Any] | None) -> bool:
    """Put ``before`` back as ``state``'s attributes if that is an exact undo; else False.

    Handler and appliers may have rebound attributes (undone by restoring ``before``, the
    attributes they found) and changed values in place (not undoable that way). So this
    restores only when nothing in ``before`` can have changed in place: every value
    immutable all the way down (``_immutable``), and the state a plain instance of its
    class that keeps everything in its ``__dict__``. ``before`` is consumed.
    """
    if before is None:
        return False
    cls: object = type(state)
    if cls is not kind:
        return False  # a handler that reassigned __class__, or a custom from_snapshot
    plain = _PLAIN.get(kind)
    if plain is None:
        plain = _PLAIN[kind] = not any(
            set(vars(c).get("__slots__", ())) - {"__dict__", "__weakref__"}
            for c in type(state).__mro__
            if c is not object
        )
    if not plain:
        return False
    # W1 refuses ~7% of its commands, each of which gets here: a plain loop with the
    # exact-type test first is the cheapest check for the usual numbers and strings.
    for value in before.values():
        if type(value) not in _ATOMS and not _immutable(value):
            return False
    try:
        state.__dict__ = before  # ours alone: a copy made for this turn (~6x clear+update)
    except Exception:
        return False  # a class that does not allow it: reload instead
    return True
