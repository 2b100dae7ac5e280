"""Given/when/then for aggregates and projectors, as pure functions: no engine, no log, no I/O.

::

    from actorlog.testing import given, given_events

    def test_withdraw_within_the_balance() -> None:
        (given(Account, [AccountOpened("ann"), Deposited(5)])
            .when(Withdraw(3))
            .then([Withdrawn(3)])
            .then_state(lambda account: account.balance == 2))

    def test_overdraft_is_refused() -> None:
        given(Account, [Deposited(5)]).when(Withdraw(9)).then_rejected(
            InsufficientFunds, match="balance 5"
        )

    def test_balances_follow_deposits() -> None:
        given_events(
            Balances, [("acct-1", AccountOpened("ann")), ("acct-1", Deposited(5))]
        ).then_query(Balances.balance, "acct-1", equals=5)

The kit runs a command exactly as the engine does, with the same checks: the given
events are applied in order; the handler decides; its events are encoded with msgspec
(so a type the log could not store fails here too), decoded back, and applied. What the
engine would raise, the kit raises: :class:`~engine.UnknownCommand` for a command the
aggregate has no handler for, :class:`~engine.HandlerError` (with the original as
``__cause__``) when a handler or applier raises, :class:`~engine.EncodeError` when an
event cannot be stored and read back, :class:`~engine.DefinitionError` for an event type
the log cannot register. An expectation that is not met is an ``AssertionError`` whose
message shows what happened instead.

A projector folds ``(stream_id, event)`` pairs as a projector catching up from the log
does: each event gets the next position (from 1) and the next version of its stream, is
read back from its encoding, and reaches the applier with its metadata (a
:class:`~engine.StoredEvent`). An applier that raises halts the projector there (its
queries then raise :class:`~engine.ProjectorFaulted`, as ``Engine.query`` does) or, with
``on_error = "park"``, parks the event and goes on. Query results are copied as the
engine copies them, so a test sees what a caller of ``Engine.query`` would. Expect with
``then_query(query, *args, equals=...)``, ``then_parked([(stream_id, event), ...])`` and
``then_halted(error, at=(stream_id, event), match=...)``, or assert freely on
``query(...)``.

Both kits take events as an older version stored them: ``old_event("Deposited", 1,
{"amount": 5})`` stands for an event stored under that name at that version (or under a
former name, ``event_aliases``), with that plain data. It is read through the engine's own
registry, so it is upcast by the same ``@upcaster`` chain (and fails with the same
``UpcastError``), and skipped by an aggregate that retired its name, exactly as a load.

About 500 lines, one file on purpose: it is the one module users import, and both
kits share the check that an event survives the log (``_store``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import msgspec

from ..engine import (
    EventRegistry,
    HandlerError,
    InvalidArgument,
    Parked,
    ProjectorFaulted,
    Rejected,
    StoredEvent,
    UnknownCommand,
    UnknownQuery,
)

# The engine's own code, so the kit runs exactly what the engine runs:
from ..engine._actor import stream_reader  # an aggregate's decode (upcast, retired) and appliers
from ..engine._decide import decide  # handler call, checks, encode and read back, evolve
from ..engine._errors import describe
from ..engine._fold import appliers_by_name, fault_for, fold  # apply, park or halt
from ..engine._schema import RETIRED, SEPARATOR, stored_name
from ..engine.testing import call_query  # answers a query exactly as Engine.query does
from ._aggregate import Aggregate
from ._projector import Projector

__all__ = ["Given", "GivenEvents", "OldEvent", "When", "given", "given_events", "old_event"]

A = TypeVar("A", bound=Aggregate)
P = TypeVar("P", bound=Projector)
Q = ParamSpec("Q")
T = TypeVar("T")


class OldEvent(msgspec.Struct, frozen=True):
    """An event as it was stored at an older version (or under a former name): build one
    with :func:`old_event` and give it to :func:`given` or :func:`given_events`."""

    name: str
    """The event type's name as it was then (its name, or one of its ``event_aliases``)."""
    version: int
    """The version it was stored at (1 for every event written before versions)."""
    data: Any
    """Its plain data, as that version encoded it (a dict of field names to values)."""

    @property
    def stored_name(self) -> str:
        """The name it is stored under in the log (``"Deposited@2"`` at version 2)."""
        return stored_name(self.name, self.version)

    @property
    def payload(self) -> bytes:
        """Its stored payload: ``data`` encoded as the log holds it."""
        return msgspec.msgpack.encode(self.data)


def old_event(name: str, version: int, data: Any) -> OldEvent:
    """An event stored as ``name`` at ``version`` with the plain ``data`` (field names to
    values, as that version encoded them), for the kits' given events.

    Raises:
        InvalidArgument: ``name`` is not a non-empty str without ``@``, ``version`` is not
            an int >= 1, or ``data`` cannot be encoded.
    """
    if type(name) is not str or not name or SEPARATOR in name:
        raise InvalidArgument(f"name must be an event name (a str without @), not {describe(name)}")
    if type(version) is not int or version < 1:
        raise InvalidArgument(f"version must be an int >= 1, not {describe(version)}")
    try:
        msgspec.msgpack.encode(data)
    except (TypeError, OverflowError, msgspec.EncodeError) as e:
        raise InvalidArgument(f"data {describe(data)} cannot be encoded: {e}") from e
    return OldEvent(name, version, data)


def given(aggregate: type[A], events: Iterable[Any] = ()) -> Given[A]:
    """Start a scenario: an ``aggregate`` whose stream already holds ``events`` (events,
    or :func:`old_event` for ones stored at an older version)."""
    return Given(aggregate, events)


class Given(Generic[A]):
    """An aggregate type and the events already in its stream (see :func:`given`)."""

    def __init__(self, aggregate: type[A], events: Iterable[Any] = ()) -> None:
        self.aggregate = aggregate
        self.events = list(events)
        self._registry = EventRegistry(aggregate.event_appliers)

    @property
    def state(self) -> A:
        """A fresh aggregate with the given events applied (each call builds a new one).

        Raises:
            UnknownEventType: an old event's name is neither registered nor retired.
            UpcastError: an old event's upcaster raised or gave invalid data.
            HandlerError: an applier raised.
        """
        state = self.aggregate()
        decode, _ = stream_reader(self._registry, self.aggregate)
        for event in self.events:
            if isinstance(event, OldEvent):  # read as a load reads it: upcast or skipped
                event = decode(event.stored_name, event.payload)
                if event is RETIRED:
                    continue
            else:
                event = self._round_trip(event)
            self._apply(state, event, "a given event")
        return state

    def when(self, command: Any) -> When[A]:
        """Decide ``command`` on :attr:`state` and apply the events it emits.

        A :class:`~engine.Rejected` (or subclass) is kept for :meth:`When.then_rejected`;
        any other exception from user code is raised here as a ``HandlerError``.

        Raises:
            UnknownCommand: the aggregate has no handler for the command's type.
            HandlerError: the handler or an applier raised, or the handler returned
                something that is not a list of events.
        """
        kind = self.aggregate
        handler = kind.command_handlers.get(type(command))
        if handler is None:
            raise UnknownCommand(f"{kind.__name__} has no handler for {type(command).__name__}")
        state = self.state
        try:
            emitted, encoded, _ = decide(
                kind, state, handler, command, self._registry.encode_read_back
            )
        except Rejected as e:
            # The engine undoes whatever the handler changed before refusing (or reloads
            # the state): the state after a rejection is the state before the command.
            return When(self.state, command, [], e)
        for event, (name, payload) in zip(emitted, encoded, strict=True):
            # ``decide`` encoded the event and read it back as its type; a test also wants
            # it read back equal (a NaN field is not).
            _read_back(self._registry, event, name, payload)
        return When(state, command, list(emitted), None)

    def _round_trip(self, event: Any) -> Any:
        if type(event) not in self.aggregate.event_appliers:
            raise HandlerError(
                f"{self.aggregate.__name__} has no @applies for {type(event).__name__}"
            )
        return _store(self._registry, event)[2]

    def _apply(self, state: A, event: Any, what: str) -> None:
        applier = self.aggregate.event_appliers[type(event)]
        try:
            applier(state, event)
        except Exception as e:
            raise HandlerError(
                f"{self.aggregate.__name__} failed to apply {what}, {event!r}: {e!r}"
            ) from e


class When(Generic[A]):
    """The outcome of one command: the events it emitted or the rejection it raised.

    Attributes:
        state: the aggregate after the command (unchanged if it was rejected).
        command: the command.
        events: the events it emitted (empty if rejected).
        error: the :class:`~engine.Rejected` it raised, or None.

    Every ``then*`` method returns ``self``, so expectations chain.
    """

    def __init__(self, state: A, command: Any, events: list[Any], error: Rejected | None) -> None:
        self.state = state
        self.command = command
        self.events = events
        self.error = error

    def then(self, expected: Sequence[Any]) -> When[A]:
        """Expect exactly these events, in this order (``[]``: none)."""
        if self.error is not None:
            raise AssertionError(
                f"{self.command!r} was rejected ({_show(self.error)}); "
                f"expected events {list(expected)!r}"
            )
        if self.events != list(expected):
            raise AssertionError(
                f"{self.command!r} emitted {self.events!r}; expected {list(expected)!r}"
            )
        return self

    def then_rejected(
        self, error: type[Rejected] = Rejected, *, match: str | None = None
    ) -> When[A]:
        """Expect a rejection of type ``error`` (or a subclass), nothing emitted.

        ``match`` is a regular expression searched for in the rejection's message.
        """
        if self.error is None:
            raise AssertionError(
                f"{self.command!r} was accepted, emitting {self.events!r}; "
                f"expected {error.__name__}"
            )
        if not isinstance(self.error, error):
            raise AssertionError(
                f"{self.command!r} was rejected with {_show(self.error)}; expected {error.__name__}"
            )
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(
                f"the rejection message {str(self.error)!r} does not match {match!r}"
            )
        return self

    def then_state(self, check: Callable[[A], object]) -> When[A]:
        """Check the aggregate after the command: ``check(state)`` must not return False.

        ``check`` may also assert by itself and return None.
        """
        if check(self.state) is False:
            raise AssertionError(
                f"the state after {self.command!r} fails the check: {_attrs(self.state)}"
            )
        return self


def given_events(
    projector: type[P], events: Iterable[tuple[str, Any]] = (), *, timestamp: float = 0.0
) -> GivenEvents[P]:
    """Start a projector scenario: ``projector`` has folded ``events`` as the log holds them.

    Args:
        projector: the projector class.
        events: ``(stream_id, event)`` pairs in log order. Positions run from 1 and
            versions from 1 per stream, as the log assigns them.
        timestamp: the commit time recorded for every event (seconds since the epoch).

    Raises:
        DefinitionError: an event (or applier) type is not a frozen ``msgspec.Struct``, or
            two types share a name.
        EncodeError: an event cannot be stored and read back (the engine refuses to
            append it with the same error).
        AssertionError: an event is read back from its encoding as something else.
    """
    return GivenEvents(projector, events, timestamp=timestamp)


class GivenEvents(Generic[P]):
    """A projector after folding the given events, as the engine would (see :func:`given_events`).

    Attributes:
        projector: the projector class.
        events: the given ``(stream_id, event)`` pairs, in log order.
        recorded: the metadata each event was delivered with (``recorded[i].position``
            is ``i + 1``).
        instance: the projector's cache. Prefer queries, which see it as callers do.
        parked: the events a ``park`` projector skipped, as ``Engine.parked`` lists them.
        fault: why the projector halted, or None. It halts at the first event whose
            applier raises, unless ``on_error = "park"``; later events are not applied.

    Every ``then*`` method returns ``self``, so expectations chain.
    """

    def __init__(
        self,
        projector: type[P],
        events: Iterable[tuple[str, Any]] = (),
        *,
        timestamp: float = 0.0,
    ) -> None:
        self.projector = projector
        self.events = [_pair(entry) for entry in events]
        registry = EventRegistry(projector.event_appliers)
        appliers = appliers_by_name(registry, projector.event_appliers)
        # Store every event before applying any: a malformed scenario fails as a whole.
        versions: dict[str, int] = {}
        self.recorded: list[StoredEvent] = []
        read_back: list[Any] = []
        for position, (stream_id, event) in enumerate(self.events, 1):
            if isinstance(event, OldEvent):  # decoded (and upcast) by the fold, as from the log
                name, payload, back = event.stored_name, event.payload, None
            else:
                name, payload, back = _store(registry, event)
            version = versions[stream_id] = versions.get(stream_id, 0) + 1
            self.recorded.append(
                StoredEvent(
                    position, stream_id, version, name, timestamp, payload=msgspec.Raw(payload)
                )
            )
            read_back.append(back)
        self.instance: P = projector()
        self.parked: list[Parked] = []
        self.fault: ProjectorFaulted | None = None
        if self.recorded:
            # As a projector catching up from the log folds a batch: the engine's fold.
            _, _, parked, failure = fold(
                appliers, self.instance, self.recorded, read_back, projector.on_error
            )
            self.parked = list(parked)
            if failure is not None:
                meta, error = failure
                self.fault = fault_for(projector.name, meta.position, meta.type, error)

    def query(
        self, query: Callable[Concatenate[P, Q], T], /, *args: Q.args, **kwargs: Q.kwargs
    ) -> T:
        """Call ``query`` on the cache and return its result, copied as ``Engine.query`` does.

        Raises:
            UnknownQuery: ``query`` is not a query of this projector.
            ProjectorFaulted: the projector halted; the applier's exception is ``__cause__``.
            HandlerError: the query raised, or returned what cannot be copied (as in
                ``Engine.query``; the original is ``__cause__``).
        """
        if query not in self.projector.query_functions:
            raise UnknownQuery(f"{_name(query)} is not a query of {self.projector.__qualname__}")
        if self.fault is not None:
            raise _fresh(self.fault)
        result: T = call_query(query, self.instance, *args, **kwargs)
        return result

    def then_query(
        self, query: Callable[..., object], /, *args: Any, equals: object, **kwargs: Any
    ) -> GivenEvents[P]:
        """Expect ``query(*args, **kwargs)`` to return something equal to ``equals``.

        Raises:
            UnknownQuery, ProjectorFaulted: as :meth:`query`.
        """
        result = self.query(query, *args, **kwargs)
        if result != equals:
            call = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            raise AssertionError(
                f"{_name(query)}({call}) returned {result!r}; expected {equals!r}"
                + self._parked_note()
            )
        return self

    def then_parked(self, expected: Sequence[tuple[str, Any]]) -> GivenEvents[P]:
        """Expect exactly these ``(stream_id, event)`` pairs parked, in log order (``[]``: none)."""
        wanted = [_pair(entry) for entry in expected]
        if self.fault is not None:
            raise AssertionError(f"{self.fault}; expected parked {wanted!r}")
        parked = [self.events[p.position - 1] for p in self.parked]
        if parked != wanted:
            never = "" if self.projector.on_error == "park" else " (on_error is 'halt')"
            raise AssertionError(
                f"{self.projector.name} parked {parked!r}{never}; expected {wanted!r}"
                + self._parked_note()
            )
        return self

    def then_halted(
        self,
        error: type[BaseException] = Exception,
        *,
        at: tuple[str, Any] | None = None,
        match: str | None = None,
    ) -> GivenEvents[P]:
        """Expect the projector halted because an applier raised ``error`` (or a subclass).

        ``at`` is the ``(stream_id, event)`` pair it halted at; ``match`` is a regular
        expression searched for in the applier's exception message.
        """
        fault = self.fault
        name = self.projector.name
        if fault is None:
            raise AssertionError(
                f"{name} applied every event; expected it to halt with {error.__name__}"
                + self._parked_note()
            )
        cause = fault.__cause__
        if not isinstance(cause, error):
            raise AssertionError(f"{fault}; expected {error.__name__}")
        halted_at = self.events[fault.position - 1]
        if at is not None and halted_at != _pair(at):
            raise AssertionError(
                f"{name} halted at {halted_at!r} (position {fault.position}); "
                f"expected at {_pair(at)!r}"
            )
        if match is not None and not re.search(match, str(cause)):
            raise AssertionError(f"the applier's message {str(cause)!r} does not match {match!r}")
        return self

    def _parked_note(self) -> str:
        notes = [
            f"{self.events[p.position - 1]!r} at position {p.position}: {p.error}"
            for p in self.parked
        ]
        return f" (parked: {'; '.join(notes)})" if notes else ""


def _pair(entry: object) -> tuple[str, Any]:
    if isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str):
        return entry[0], entry[1]
    raise TypeError(f"expected a (stream_id, event) pair, got {entry!r}")


def _store(registry: EventRegistry, event: Any) -> tuple[str, bytes, Any]:
    """Encode ``event`` as the log stores it and decode it back, as a reader gets it.

    Returns ``(type name, payload, the event read back)``.

    Raises:
        DefinitionError: the event's type is not a frozen Struct, or its name is taken.
        EncodeError: it cannot be stored or read back as its type (the engine refuses to
            append it with the same error).
        AssertionError: it is read back as something unequal (e.g. a NaN field).
    """
    name = registry.register(type(event))
    payload = registry.encode(event)[1]  # EncodeError, exactly as on the command path
    return name, payload, _read_back(registry, event, name, payload)


def _read_back(registry: EventRegistry, event: Any, name: str, payload: bytes) -> Any:
    """``payload`` decoded as the reader of the log gets it; it must equal ``event``.

    Raises:
        AssertionError: it is read back as something unequal (e.g. a NaN field).
    """
    back = registry.decode(name, payload)
    if back != event:
        raise AssertionError(f"{event!r} does not survive encoding: it is read back as {back!r}")
    return back


def _fresh(fault: ProjectorFaulted) -> ProjectorFaulted:
    """A copy of ``fault`` to raise, as the engine raises one: raising the same object
    again and again would pile traceback frames onto it."""
    error = ProjectorFaulted(fault.projector, fault.position, fault.event_type, fault.error)
    error.__cause__ = fault.__cause__
    return error


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))


def _show(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _attrs(state: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in vars(state).items()) or repr(state)
