"""What a process manager's turn produces, and how it is stored: pure, no I/O.

``react`` is the turn itself (the reaction on the state before the message, then its
applier, the effects checked): the engine (``_process_managers.py``) and the test kit
(``actorlog.testing.given_process``) both run it. The records are what the log holds: a
``ProcessStep`` per turn in the instance's stream, ``ProcessAcks`` in the process
manager's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from ._errors import DefinitionError, InvalidArgument, describe
from ._log import check_label

__all__ = [
    "SCHEDULED_SEND",
    "STEP_NAME",
    "Effects",
    "Outgoing",
    "ProcessAcks",
    "ProcessManagerStatistics",
    "ProcessStep",
    "Timer",
    "check_process_managers",
    "react",
]

STEP_NAME = "$process-step"
"""The stored name of a :class:`ProcessStep`."""
SCHEDULED_SEND = "$send"
"""The ``message_type`` of a :class:`Timer` that dispatches a command (its ``message`` is
an :class:`Outgoing` without a command id), and of the step that fires it (no message:
no applier runs). No class is named so: a ``$`` is not in a Python identifier."""


class Outgoing(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A command in a step's outbox."""

    command_id: str
    aggregate: str
    stream_id: str
    command_type: str
    command: bytes


class Timer(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A deadline: ``message`` (of ``message_type``) delivered to the instance at ``due``,
    or, if ``message_type`` is :data:`SCHEDULED_SEND`, a command sent then."""

    key: str
    due: float
    message_type: str
    message: bytes


class ProcessStep(msgspec.Struct, frozen=True, array_like=True, tag="$process-step"):
    """One turn of one instance, as stored in its stream (the only record it has).

    ``trigger`` is the log position of the event it reacted to (0 for a deadline or a
    failure); ``message`` the message's stored bytes, replayed through the appliers when
    the instance is loaded.
    """

    process_id: str
    trigger: int
    message_type: str
    message: bytes
    sends: tuple[Outgoing, ...] = ()
    schedules: tuple[Timer, ...] = ()
    cancels: tuple[str, ...] = ()
    fired: str | None = None
    failed: str | None = None
    finished: bool = False


class ProcessAcks(msgspec.Struct, frozen=True, array_like=True, tag="$process-acks"):
    """Commands of the outbox that committed (in the stream ``"$pm:<name>"``)."""

    command_ids: tuple[str, ...]


class ProcessManagerStatistics(msgspec.Struct, frozen=True):
    """Where a process manager stands.

    ``state``: ``"catching_up"``, ``"live"`` or ``"halted"`` (an instance's reaction
    raised, or a step could not be written: see ``fault``), or ``"standby"``: on a log
    several engines write, another engine runs it now (see ``leader``; every count is
    then 0). ``pending_sends`` are commands decided and not yet acknowledged,
    ``pending_deadlines`` deadlines set and not yet fired or cancelled. The counts are
    this engine's since its current term began (``terms``).
    """

    name: str
    state: Literal["catching_up", "live", "halted", "standby"]
    checkpoint: int
    lag: int
    live_instances: int
    started: int
    finished: int
    steps: int
    ignored: int
    pending_sends: int
    dispatched: int
    failures_delivered: int
    pending_deadlines: int
    deadlines_fired: int
    parked: int
    fault: str | None
    halted_instances: int = 0
    """Instances halted by a reaction that raised (``on_error = "halt"``): their messages
    wait for ``Engine.resume`` or a restart; the others go on. ``fault`` names the oldest."""
    leader: bool = True
    """True if this engine runs the process manager now: always on a log it alone writes;
    on a log several engines write (``PostgresEventLog(shared=True)``), while it holds the
    process managers' lease (one engine at a time; another takes over within about half a
    second of its loss)."""
    terms: int = 1
    """How many times this engine started running it: 1 on a log it alone writes; on a
    shared log, one more each time it gained the lease, or restarted its term because
    another engine wrote to one of its instances (a leader that had lost its lease)."""


class Effects(msgspec.Struct, frozen=True):
    """What one turn decided (the test kit compares these)."""

    sends: tuple[Any, ...]
    schedules: tuple[tuple[str, float, Any], ...]
    cancels: tuple[str, ...]
    finished: bool


def react(kind: Any, state: Any, message: Any, now: float) -> tuple[Effects, list[Any]]:
    """Run ``message``'s reaction on ``state``, then apply it: the effects, checked.

    The engine and ``actorlog.testing.given_process`` both turn an instance here. Returns
    the effects and the raw effect objects (``Send`` etc.) in order.

    Raises:
        InvalidArgument: the reaction returned something that is not a list of effects,
            or an effect is malformed.
        (whatever the applier or the reaction raises)
    """
    from ..actors._process_manager import (
        Cancel,
        Finish,
        Schedule,
        Send,
        check_schedule,
        schedule_key,
    )

    reaction = kind.reactions.get(type(message))
    returned = reaction(state, message) if reaction is not None else None
    applier = kind.message_appliers.get(type(message))
    if applier is not None:
        applier(state, message)
    if returned is None:
        returned = []
    if not isinstance(returned, list | tuple):
        raise InvalidArgument(
            f"a reaction returns a list of effects (Send, Schedule, Cancel, Finish) or "
            f"None, not {describe(returned)}"
        )
    sends: list[Any] = []
    schedules: list[tuple[str, float, Any]] = []
    cancels: list[str] = []
    finished = False
    for effect in returned:
        if type(effect) is Send:
            sends.append(effect)
        elif type(effect) is Schedule:
            due = check_schedule(effect, now)
            message_cls = type(effect.message)
            # A scheduled Send is checked as a Send is: by the engine, which knows the
            # aggregates it hosts.
            if message_cls is not Send and (
                not isinstance(effect.message, msgspec.Struct)
                or not (message_cls in kind.reactions or message_cls in kind.message_appliers)
            ):
                raise InvalidArgument(
                    f"a deadline's message must be a Send, or a Struct this process manager "
                    f"reacts to or applies, not {describe(effect.message)}"
                )
            key = check_label(schedule_key(effect), "a deadline's key")
            schedules.append((key, due, effect.message))
        elif type(effect) is Cancel:
            cancels.append(check_label(effect.key, "a deadline's key"))
        elif type(effect) is Finish:
            finished = True
        else:
            raise InvalidArgument(
                f"a reaction returns Send, Schedule, Cancel or Finish effects, "
                f"not {describe(effect)}"
            )
    return Effects(tuple(sends), tuple(schedules), tuple(cancels), finished), list(returned)


def check_process_managers(kinds: Iterable[Any]) -> list[Any]:
    """The process manager classes as a list, each checked.

    Raises:
        DefinitionError: one is not a ``ProcessManager`` subclass.
    """
    from ..actors._process_manager import ProcessManager

    try:
        listed = list(kinds)
    except TypeError as e:
        raise DefinitionError("process_managers must be an iterable of classes") from e
    for kind in listed:
        if not (isinstance(kind, type) and issubclass(kind, ProcessManager)):
            raise DefinitionError(f"{describe(kind)} is not a ProcessManager class")
    return listed
