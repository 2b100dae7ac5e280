"""Given/when/then for aggregates, as pure functions: no engine, no log, no I/O.

::

    from actors.testing import given

    def test_withdraw_within_the_balance() -> None:
        (given(Account, [AccountOpened("ann"), Deposited(5)])
            .when(Withdraw(3))
            .then([Withdrawn(3)])
            .then_state(lambda account: account.balance == 2))

    def test_overdraft_is_refused() -> None:
        given(Account, [Deposited(5)]).when(Withdraw(9)).then_rejected(
            InsufficientFunds, match="balance 5"
        )

The kit runs a command exactly as the engine does, with the same checks: the given
events are applied in order; the handler decides; its events are encoded with msgspec
(so a type the log could not store fails here too), decoded back, and applied. What the
engine would raise, the kit raises: :class:`~engine.UnknownCommand` for a command the
aggregate has no handler for, :class:`~engine.HandlerError` (with the original as
``__cause__``) when a handler or applier raises, :class:`~engine.DefinitionError` for an
event type the log cannot register. An expectation that is not met is an
``AssertionError`` whose message shows what happened instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from engine import EventRegistry, HandlerError, Rejected, UnknownCommand

from ._aggregate import Aggregate

__all__ = ["Given", "When", "given"]

A = TypeVar("A", bound=Aggregate)


def given(aggregate: type[A], events: Iterable[Any] = ()) -> Given[A]:
    """Start a scenario: an ``aggregate`` whose stream already holds ``events``."""
    return Given(aggregate, events)


class Given(Generic[A]):
    """An aggregate type and the events already in its stream (see :func:`given`)."""

    def __init__(self, aggregate: type[A], events: Iterable[Any] = ()) -> None:
        self.aggregate = aggregate
        self.events = list(events)
        self._registry = EventRegistry(aggregate.event_appliers)

    @property
    def state(self) -> A:
        """A fresh aggregate with the given events applied (each call builds a new one)."""
        state = self.aggregate()
        for event in self.events:
            self._apply(state, self._round_trip(event), "a given event")
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
            emitted = handler(state, command)
        except Rejected as e:
            return When(state, command, [], e)
        except Exception as e:
            raise HandlerError(
                f"{kind.__name__}.{getattr(handler, '__name__', 'handler')} raised "
                f"{type(e).__name__}: {e}"
            ) from e
        if emitted is None:
            emitted = []
        elif not isinstance(emitted, list | tuple):
            raise HandlerError(
                f"{kind.__name__} handler returned {type(emitted).__name__}, not a list of events"
            )
        for event in emitted:
            # The engine evolves the state with the object it emitted; the round trip
            # proves the event is one the log can store and give back unchanged.
            self._apply(state, self._round_trip(event), "an emitted event")
        return When(state, command, list(emitted), None)

    def _round_trip(self, event: Any) -> Any:
        if type(event) not in self.aggregate.event_appliers:
            raise HandlerError(
                f"{self.aggregate.__name__} has no @applies for {type(event).__name__}"
            )
        name, payload = self._registry.encode(event)
        back = self._registry.decode(name, payload)
        if back != event:
            raise AssertionError(
                f"{event!r} does not survive encoding: it is read back as {back!r}"
            )
        return back

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


def _show(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _attrs(state: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in vars(state).items()) or repr(state)
