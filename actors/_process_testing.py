"""Given/when/then for process managers, as pure functions: no engine, no log, no clock.

::

    from actorlog.testing import given_process

    (given_process(TransferProcess, [TransferDebited("t-1", "a", "b", 5)])
        .when(TransferCredited("t-1", 5))
        .then([Cancel("TransferTimedOut"), Finish()]))

The given messages (events, deadline messages, :class:`~actorlog.SendFailed`) are what the
instance's stream holds: each is read back from its encoding and replayed through the
appliers only, as the engine loads an instance. ``when(message)`` runs the engine's own
turn (``engine._process_managers.react``: the reaction on the state before the message,
then its applier, the effects checked) at the kit's time ``now`` (for ``Schedule(after=)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from ..engine._errors import HandlerError, InvalidArgument, describe
from ..engine._log import check_stream_id
from ..engine._process_steps import react  # the engine's turn, exactly
from ..engine._reply import must_propagate
from ._process_manager import ProcessManager, Schedule, Send, schedule_key

__all__ = ["GivenProcess", "ProcessWhen", "given_process"]

M = TypeVar("M", bound=ProcessManager)


def given_process(
    process: type[M], messages: Iterable[Any] = (), *, now: float = 1_000_000.0
) -> GivenProcess[M]:
    """Start a scenario: an instance of ``process`` whose stream already holds
    ``messages`` (replayed through its appliers), at the time ``now`` (seconds since the
    epoch: what ``Schedule(after=)`` counts from)."""
    return GivenProcess(process, messages, now=now)


def _read_back(message: Any) -> Any:
    if not isinstance(message, msgspec.Struct):
        raise InvalidArgument(f"a message is a msgspec Struct, not {describe(message)}")
    return msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=type(message))


class GivenProcess(Generic[M]):
    """An instance with a history; ``when`` delivers the next message."""

    def __init__(self, process: type[M], messages: Iterable[Any], *, now: float) -> None:
        if not (isinstance(process, type) and issubclass(process, ProcessManager)):
            raise InvalidArgument(f"{describe(process)} is not a ProcessManager class")
        self.process = process
        self.now = now
        self._messages = [_read_back(m) for m in messages]

    @property
    def state(self) -> M:
        """A fresh instance with the given messages applied."""
        state = self.process()
        for message in self._messages:
            applier = self.process.message_appliers.get(type(message))
            if applier is not None:
                applier(state, message)
        return state

    def when(self, message: Any) -> ProcessWhen[M]:
        """Deliver ``message``: its reaction runs, then its applier, as in the engine.

        A reaction (or applier) that raises is recorded, for ``then_raises``; a malformed
        effect is an :class:`~actorlog.InvalidArgument` recorded alike.
        """
        state = self.state
        message = _read_back(message)
        try:
            _, effects = react(self.process, state, message, self.now)
            for effect in effects:
                if type(effect) is Schedule and type(effect.message) is Send:
                    _check_send(effect.message)
                elif type(effect) is Send:
                    _check_send(effect)
        except BaseException as e:
            if must_propagate(e):
                raise
            return ProcessWhen(state, message, [], e)
        return ProcessWhen(state, message, effects, None)


_encode = msgspec.msgpack.Encoder().encode


def _check_send(send: Send) -> None:
    """What the engine checks of a ``Send`` when the turn decides it (``_outgoing`` in
    ``engine/_process_managers.py``), but whether the aggregate is hosted: a command its
    aggregate has a handler for, a valid stream id, a command that can be stored."""
    handlers = getattr(send.aggregate, "command_handlers", None)
    if not isinstance(send.aggregate, type) or not isinstance(handlers, Mapping):
        raise InvalidArgument(f"{describe(send.aggregate)} is not an aggregate class")
    if type(send.command) not in handlers:
        raise InvalidArgument(
            f"{describe(send.aggregate)} has no handler for {describe(send.command)}"
        )
    check_stream_id(send.stream_id)
    try:
        _encode(send.command)
    except (TypeError, msgspec.EncodeError) as e:
        raise InvalidArgument(f"cannot store {describe(send.command)}: {e}") from e


class ProcessWhen(Generic[M]):
    """The outcome of one message: the effects returned, or the error raised."""

    def __init__(
        self, state: M, message: Any, effects: list[Any], error: BaseException | None
    ) -> None:
        self.state = state
        self.message = message
        self.effects = effects
        self.error = error

    def _ok(self) -> None:
        if self.error is not None:
            failure = HandlerError(f"the reaction to {self.message!r} raised {self.error!r}")
            raise AssertionError(str(failure)) from self.error

    def then(self, expected: Sequence[Any]) -> ProcessWhen[M]:
        """Expect exactly these effects, in order (``Send``, ``Schedule``, ``Cancel``,
        ``Finish``; ``[]``: none)."""
        self._ok()
        if self.effects != list(expected):
            raise AssertionError(
                f"{self.message!r} gave {self.effects!r}; expected {list(expected)!r}"
            )
        return self

    def then_deadlines(self, expected: Sequence[tuple[str, float]]) -> ProcessWhen[M]:
        """Expect these deadlines set (scheduled commands too), as ``(key, seconds from
        now)`` pairs (``at`` for one set at a time), in order."""
        self._ok()
        got = [
            (schedule_key(e), e.after if e.after is not None else e.at)
            for e in self.effects
            if type(e) is Schedule
        ]
        if got != list(expected):
            raise AssertionError(f"{self.message!r} set deadlines {got!r}; expected {expected!r}")
        return self

    def then_raises(self, error: type[BaseException] = Exception) -> ProcessWhen[M]:
        """Expect the reaction (or applier, or an effect's check) to raise ``error``."""
        if self.error is None:
            raise AssertionError(
                f"{self.message!r} gave {self.effects!r}; expected {error.__name__}"
            )
        if not isinstance(self.error, error):
            raise AssertionError(f"{self.message!r} raised {self.error!r}, not {error.__name__}")
        return self

    def then_state(self, check: Callable[[M], object]) -> ProcessWhen[M]:
        """Check the instance after the message: ``check(state)`` must not return False."""
        self._ok()
        if check(self.state) is False:
            raise AssertionError(f"the state after {self.message!r} fails the check")
        return self
