"""``@handles`` and ``@applies``: dispatch tables built from type annotations.

A decorated method's message type is the annotation of its first parameter after ``self``.
Annotations are resolved once, when the class is created, so a mistake fails there and the
hot path is a single dict lookup.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec

from ..engine import DefinitionError

__all__ = [
    "applies",
    "check_event_type",
    "check_no_arguments",
    "handles",
    "message_type",
    "resolve_hints",
    "returned_event_types",
]

F = TypeVar("F", bound=Callable[..., Any])

_ROLE = "__actorlog_role__"


def handles(fn: F) -> F:
    """Mark a method as the command handler for the type of its first parameter.

    The handler returns the events to append (a list, possibly empty, or None) and declares
    their types in its return annotation (``-> list[Deposited | Withdrawn]``). To refuse the
    command it raises :class:`~engine.Rejected` (or a subclass); nothing is appended then.

    A handler decides; only appliers change the state. If a handler changes the state anyway
    and then raises (``Rejected`` or any other exception), the change is discarded: the
    next command sees exactly the state that replaying the log gives. The engine restores
    the attributes the handler found when they are all immutable (numbers, strings, tuples,
    frozensets, frozen Structs of those), else it reloads the aggregate from its snapshot
    and events before its next command, which costs a replay of the events since the last
    snapshot: keep state in immutable values, or set ``snapshot_every``, if commands to
    long streams are often refused. Any other exception from a handler, including a
    ``BaseException`` that is not an ``Exception``, reaches the caller as
    :class:`~engine.HandlerError`; cancellation, ``KeyboardInterrupt`` and ``SystemExit``
    pass through unchanged.
    """
    setattr(fn, _ROLE, "handles")
    return fn


def applies(fn: F) -> F:
    """Mark a method as the applier of the event type of its first parameter.

    On an aggregate it evolves the state (``def f(self, e: Deposited) -> None``); on a
    projector it updates the read cache and may take the event's metadata as a second
    parameter (``def f(self, e: Deposited, meta: Recorded) -> None``).
    """
    setattr(fn, _ROLE, "applies")
    return fn


def role_of(fn: object) -> str | None:
    """``"handles"``, ``"applies"`` or None for an undecorated attribute."""
    return getattr(fn, _ROLE, None)


def decorated(cls: type, role: str) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The ``(name, function)`` pairs of ``cls``'s own body marked with ``role``."""
    for name, value in vars(cls).items():
        if callable(value) and role_of(value) == role:
            yield name, value


_PACKAGE = __name__.rpartition(".")[0] + "."  # "actorlog.actors.": frames of this package


def resolve_hints(obj: Any, owner: type) -> dict[str, Any]:
    """Resolve the annotations of ``obj`` (a method or class), also in ``owner``'s scope.

    A class defined inside a function (tests do this) annotates with that function's
    locals, which ``get_type_hints`` cannot see; borrow them from the nearest frames
    outside this package (the class statement's, then its callers').
    """
    localns: dict[str, Any] = {}
    frame: types.FrameType | None = sys._getframe(1)
    borrowed = 0
    while frame is not None and borrowed < 3:
        if not frame.f_globals.get("__name__", "").startswith(_PACKAGE):
            localns = {**frame.f_locals, **localns}  # nearer frames win
            borrowed += 1
        frame = frame.f_back
    localns[owner.__name__] = owner
    return typing.get_type_hints(obj, localns=localns)


def _hints(fn: Callable[..., Any], owner: type) -> dict[str, Any]:
    try:
        return resolve_hints(fn, owner)
    except Exception as e:
        raise DefinitionError(
            f"{owner.__qualname__}.{fn.__name__}: cannot resolve its annotations ({e})"
        ) from e


def message_type(fn: Callable[..., Any], owner: type) -> type:
    """The annotated type of ``fn``'s first parameter after ``self``.

    Raises:
        DefinitionError: ``fn`` is ``async`` (the engine calls handlers and appliers
            synchronously, inside one turn of the actor: a coroutine would never run), or
            its message parameter is missing, unannotated or not a Struct type.
    """
    where = f"{owner.__qualname__}.{fn.__name__}"
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise DefinitionError(
            f"{where} is async: handlers and appliers are plain functions (a decision or an "
            "update of state in memory; the engine does the I/O around them)"
        )
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise DefinitionError(f"{where} needs a parameter annotated with the message type")
    hint = _hints(fn, owner).get(params[1].name)
    if hint is None:
        raise DefinitionError(f"{where}: annotate {params[1].name!r} with the message type")
    if not (isinstance(hint, type) and issubclass(hint, msgspec.Struct)):
        raise DefinitionError(f"{where}: {hint!r} is not a msgspec.Struct type")
    return hint


def check_event_type(event: type, where: str) -> None:
    """Refuse an event type that is not frozen, when the class naming it is created (the
    engine would refuse it at open or at the first command).

    Raises:
        DefinitionError: ``event`` is not a frozen Struct.
    """
    config = getattr(event, "__struct_config__", None)
    if config is None or not config.frozen:
        # Live projectors receive the very object the aggregate emitted: frozen makes
        # sharing it safe without copying.
        raise DefinitionError(
            f"{where}: event type {event.__name__} must be frozen "
            f"(class {event.__name__}(msgspec.Struct, frozen=True))"
        )


def check_no_arguments(cls: type, builds: str) -> None:
    """Refuse a class whose ``__init__`` needs arguments: the engine builds the empty state
    (or cache) with ``cls()``.

    Raises:
        DefinitionError: ``cls()`` cannot be called without arguments.
    """
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise DefinitionError(
            f"{cls.__qualname__}() must take no arguments: it builds the empty {builds}"
        ) from None
    except ValueError:  # no signature to read (a C-level __init__): let it be
        pass


def returned_event_types(fn: Callable[..., Any], owner: type) -> frozenset[type]:
    """The event types a handler declares in its return annotation.

    Accepted forms: ``None``, ``E``, ``list[E]``, ``Sequence[E | F]``, ``tuple[E, ...]``,
    ``list[E] | None``.
    """
    where = f"{owner.__qualname__}.{fn.__name__}"
    hints = _hints(fn, owner)
    if "return" not in hints:
        raise DefinitionError(
            f"{where}: annotate the return type with the events it emits, "
            "e.g. -> list[Deposited] (or -> None if it emits none)"
        )
    found: set[type] = set()

    def walk(tp: Any) -> None:
        if tp is None or tp is type(None):
            return
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(tp):
                walk(arg)
        elif origin is not None:
            for arg in typing.get_args(tp):
                if arg is not Ellipsis:
                    walk(arg)
        elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            found.add(tp)
        else:
            raise DefinitionError(f"{where}: {tp!r} in the return annotation is not an event")

    walk(hints["return"])
    return frozenset(found)
