"""The :class:`ProcessManager` base class: work that spans aggregates (a saga).

A process manager reacts to committed events, remembers where it is, sends commands to
other aggregates and sets deadlines. One instance per process id (a transfer's id), routed
from the events it is interested in. Pure definitions here; the engine hosts them
(``engine/_process_managers.py``), durably and exactly once in effect.

What a reaction returns (a list of effects, or None):

- :class:`Send` a command to an aggregate (dispatched after the step is durable, with a
  command id derived from the step, so a re-send after a crash has no second effect);
- :class:`Schedule` a deadline: a message delivered back to this instance at a time, or a
  :class:`Send` dispatched at that time (a scheduled command);
- :class:`Cancel` a deadline by its key;
- :class:`Finish` the instance: it is forgotten (its record stays in the log).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, overload

import msgspec

from ..engine import DefinitionError, InvalidArgument, Recorded
from ..engine._fold import DEFAULT_MAX_PARKED, check_max_parked
from ..engine._log import check_label
from ._dispatch import check_no_arguments, decorated, message_type

__all__ = [
    "Cancel",
    "Effect",
    "Finish",
    "ProcessManager",
    "Schedule",
    "Send",
    "SendFailed",
    "reacts",
    "starts",
]

F = TypeVar("F", bound=Callable[..., Any])

Key = Callable[[Any, Recorded], "str | None"]
"""Routes an event to a process id (None: not for this process manager)."""

_ROUTE = "__actorlog_route__"


class Send(msgspec.Struct, frozen=True):
    """Send ``command`` to the aggregate ``aggregate`` (a hosted class) ``stream_id``.

    Dispatched once the step that decided it is durable; a command the aggregate rejects
    (or that fails) comes back to the instance as a :class:`SendFailed`."""

    aggregate: type
    stream_id: str
    command: Any


class Schedule(msgspec.Struct, frozen=True):
    """Deliver ``message`` (a Struct) back to this instance at ``at`` (seconds since the
    epoch) or ``after`` seconds from now: exactly one of the two. ``key`` names the
    deadline (default: the message's class name); scheduling a key again replaces it.

    ``message`` may be a :class:`Send` instead: a scheduled command. When due it is
    dispatched as a ``Send`` decided then would be (the firing is a step of the instance's
    stream, durable before dispatch; the command id is derived from that step; a refusal
    comes back as a :class:`SendFailed`); no reaction runs. Its key defaults to the
    command's class name. Like any deadline it is cancelled by :class:`Cancel` and by
    :class:`Finish`, and one due while the engine was down fires at restart."""

    message: Any
    at: float | None = None
    after: float | None = None
    key: str | None = None


class Cancel(msgspec.Struct, frozen=True):
    """Cancel the deadline named ``key`` (nothing if none is set)."""

    key: str


class Finish(msgspec.Struct, frozen=True):
    """The process is over: its deadlines are cancelled and the instance is forgotten.
    Commands it sent are still delivered; their failures are no longer reported to it."""


Effect = Send | Schedule | Cancel | Finish
"""What a reaction may return, in a list."""


class SendFailed(msgspec.Struct, frozen=True):
    """Delivered to the instance that sent a command the aggregate did not accept.

    Attributes:
        command_id: the command's (deterministic) id.
        aggregate: the aggregate's name in the log.
        stream_id: the aggregate's id.
        command_type: the command's class name.
        error_type: the error's class name (``"InsufficientFunds"``, ``"HandlerError"``).
        error: the error's message.
        rejected: True if the aggregate refused it (a ``Rejected``); False if it failed
            otherwise (a handler error, an unknown command).
    """

    command_id: str
    aggregate: str
    stream_id: str
    command_type: str
    error_type: str
    error: str
    rejected: bool


class _Route(msgspec.Struct, frozen=True):
    """How a reaction is reached: ``start`` or continue, by ``key`` (None: a message
    delivered to the instance itself, a deadline or a :class:`SendFailed`)."""

    start: bool
    key: Key | None


def _key_of(key: str | Key) -> Key:
    if isinstance(key, str):
        name = key

        def by_attribute(event: Any, meta: Recorded) -> str | None:
            value = getattr(event, name, None)
            return value if isinstance(value, str) else None

        return by_attribute
    if callable(key):
        return key
    raise DefinitionError(f"a route key is an attribute name or a callable, not {key!r}")


def starts(key: str | Key) -> Callable[[F], F]:
    """Mark a reaction to an event that starts a process (or continues it, if it runs).

    ``key`` names the event's attribute holding the process id (``"transfer_id"``), or is
    a callable ``(event, meta) -> str | None`` (None: not for us). An event for a process
    that finished is ignored: a process id is used once.
    """
    route = _Route(True, _key_of(key))

    def mark(fn: F) -> F:
        setattr(fn, _ROUTE, route)
        return fn

    return mark


@overload
def reacts(target: F) -> F: ...
@overload
def reacts(target: str | None = None, *, key: Key | None = None) -> Callable[[F], F]: ...
def reacts(target: Any = None, *, key: Key | None = None) -> Any:
    """Mark a reaction: ``@reacts("transfer_id")`` (or ``key=callable``) for an event that
    continues a running process (ignored when none runs), bare ``@reacts`` for a message
    delivered to the instance itself: a deadline's message or a :class:`SendFailed`.

    A reaction returns the effects (a list of :class:`Send`, :class:`Schedule`,
    :class:`Cancel`, :class:`Finish`, or None). It runs before the instance's applier of
    the same message, if any, so it decides on the state before the message (as an
    aggregate's handler does); it must not change the state: only appliers run again when
    an instance is loaded from its stream.
    """
    if callable(target) and not isinstance(target, str) and key is None:
        setattr(target, _ROUTE, _Route(False, None))
        return target
    if target is not None and key is not None:
        raise DefinitionError("reacts takes an attribute name or key=, not both")
    given: str | Key | None = target if target is not None else key
    route = _Route(False, None if given is None else _key_of(given))

    def mark(fn: F) -> F:
        setattr(fn, _ROUTE, route)
        return fn

    return mark


Reaction = Callable[[Any, Any], Any]
Applier = Callable[[Any, Any], None]


class ProcessManager:
    """Base class of process managers: one instance per process, routed from events.

    Subclass it, build the empty state in an argument-free ``__init__``, mark appliers
    with ``@applies`` (they evolve the state from any message the instance receives,
    after its reaction) and reactions with ``@starts(key)``, ``@reacts(key)`` or bare
    ``@reacts``. The engine hosts it (``Engine.open(process_managers=[...])``): each
    step (the message, the commands decided, the deadlines set) is one event of the
    instance's own stream, written in one group commit; commands are dispatched after it
    is durable.

    Class options:
        name: its name in the log (default: the class name): the instance streams are
            ``"$pm:<name>:<process id>"``. Keep it stable.
        on_error: ``"halt"`` (default): a reaction or applier that raises halts that
            instance at its message (the others go on; its later messages wait; listed
            in statistics; retried after a restart, or by ``Engine.resume``);
            ``"park"``: the message is skipped for that instance and listed in
            ``Engine.parked``.
        max_parked: how many parked messages are kept (the most recent).
        max_live: the most instances kept in memory; idle ones beyond are passivated
            (reloaded from their stream when next needed).
        cache_every: save the router's position and pending work every N log positions
            (a restart then reads only what came after).
    """

    reactions: ClassVar[Mapping[type, Reaction]] = {}
    routes: ClassVar[Mapping[type, tuple[bool, Key | None]]] = {}
    message_appliers: ClassVar[Mapping[type, Applier]] = {}
    name: ClassVar[str] = "ProcessManager"
    on_error: ClassVar[Literal["halt", "park"]] = "halt"
    max_parked: ClassVar[int] = DEFAULT_MAX_PARKED
    max_live: ClassVar[int] = 10_000
    cache_every: ClassVar[int] = 1_000

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            cls.name = cls.__name__
        try:
            check_label(cls.name, "a process manager's name")
        except InvalidArgument as e:
            raise DefinitionError(f"{cls.__qualname__}: {e}") from None
        if ":" in cls.name:
            raise DefinitionError(f"{cls.__qualname__}.name must not contain ':'")
        if cls.on_error not in ("halt", "park"):
            raise DefinitionError(
                f"{cls.__qualname__}.on_error must be 'halt' or 'park', not {cls.on_error!r}"
            )
        check_max_parked(cls, cls.max_parked)
        for option in ("max_live", "cache_every"):
            value = getattr(cls, option)
            if type(value) is not int or value < 1:
                raise DefinitionError(f"{cls.__qualname__}.{option} must be an int >= 1")
        check_no_arguments(cls, "state")
        reactions: dict[type, Reaction] = dict(cls.reactions)
        routes: dict[type, tuple[bool, Key | None]] = dict(cls.routes)
        appliers: dict[type, Applier] = dict(cls.message_appliers)
        own: set[type] = set()
        for fname, fn in vars(cls).items():
            route = getattr(fn, _ROUTE, None) if callable(fn) else None
            if not isinstance(route, _Route):
                continue
            message = message_type(fn, cls)
            if message in own:
                raise DefinitionError(
                    f"{cls.__qualname__} has two reactions to {message.__name__} ({fname})"
                )
            own.add(message)
            reactions[message] = fn
            routes[message] = (route.start, route.key)
        seen: set[type] = set()
        for fname, fn in decorated(cls, "applies"):
            message = message_type(fn, cls)
            if message in seen:
                raise DefinitionError(
                    f"{cls.__qualname__} has two appliers for {message.__name__} ({fname})"
                )
            seen.add(message)
            appliers[message] = fn
        if routes and not any(start for start, _ in routes.values()):
            raise DefinitionError(
                f"{cls.__qualname__} has no @starts reaction: nothing would start it"
            )
        cls.reactions = reactions
        cls.routes = routes
        cls.message_appliers = appliers


def schedule_key(effect: Schedule) -> str:
    """The key of a :class:`Schedule`: its ``key``, else the class name of its message
    (of its command, for a scheduled :class:`Send`)."""
    if effect.key is not None:
        return effect.key
    message = effect.message
    return type(message.command if type(message) is Send else message).__name__


def check_schedule(effect: Schedule, now: float) -> float:
    """The wall-clock time a :class:`Schedule` is due.

    Raises:
        InvalidArgument: neither or both of ``at`` and ``after``, or a time that is not a
            finite number (``after`` must be >= 0).
    """
    at, after = effect.at, effect.after
    if (at is None) == (after is None):
        raise InvalidArgument("Schedule needs exactly one of at= or after=")
    value = at if at is not None else after
    try:  # an int beyond a float's range is no time either (float() overflows)
        seconds = float(value) if type(value) in (int, float) else math.nan  # type: ignore[arg-type]
    except OverflowError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise InvalidArgument(f"Schedule's time must be a finite number, not {value!r}")
    if after is not None:
        if seconds < 0:
            raise InvalidArgument(f"Schedule(after=) must be >= 0, not {after!r}")
        return now + seconds
    return seconds
