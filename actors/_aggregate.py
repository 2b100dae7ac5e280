"""The :class:`Aggregate` base class: how users define the write side.

No I/O and no tasks here: an aggregate is a plain object whose handlers decide and whose
appliers evolve. The engine hosts it as an actor (``engine/_aggregates.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

import msgspec

from ..engine import DefinitionError, InvalidArgument
from ..engine._codec import event_name
from ..engine._log import check_label
from ..engine._schema import event_aliases, retired_events
from ._dispatch import (
    check_event_type,
    check_no_arguments,
    decorated,
    message_type,
    returned_event_types,
)
from ._snapshot import check_snapshot_options, decode_state, encode_state, state_struct

__all__ = ["Aggregate"]

Handler = Callable[[Any, Any], Sequence[Any] | None]
Applier = Callable[[Any, Any], None]


class Aggregate:
    """Base class of aggregates: consistency boundaries that turn commands into events.

    Subclass it, give ``__init__`` no required arguments (it builds the empty state), mark
    command handlers with ``@handles`` and event appliers with ``@applies`` (plain ``def``,
    never ``async def``). The class is checked when it is created: two handlers for one
    command type, two appliers for one event type, a handler that emits an event type
    without an applier, an ``async`` handler or applier, an event type that is not frozen,
    or an ``__init__`` that needs arguments raise :class:`~actorlog.DefinitionError`.

    Class options:
        aggregate_name: the type's name in the log (default: the class name). A stream
            created by one aggregate type cannot be loaded as another; set it to the old
            name when renaming the class, so its streams stay loadable.
        snapshot_every: take a snapshot every N events (None: never, the default).
        snapshot_format: bump it whenever the state's shape changes; snapshots of another
            format are ignored (the aggregate is rebuilt from its events instead).
        retired_events: names of event types the aggregate no longer has (a tuple of str):
            their stored events, at any version, are skipped when a stream is loaded.
            Without it such an event stops the load with
            :class:`~actorlog.UnknownEventType`: dropping an event type is a decision.

    State is saved in snapshots from the annotated instance attributes (``balance: int``),
    encoded with msgspec; override :meth:`snapshot_state` and :meth:`from_snapshot` for
    anything else.
    """

    command_handlers: ClassVar[Mapping[type, Handler]] = {}
    event_appliers: ClassVar[Mapping[type, Applier]] = {}
    emitted_types: ClassVar[frozenset[type]] = frozenset()
    aggregate_name: ClassVar[str] = "Aggregate"
    snapshot_every: ClassVar[int | None] = None
    snapshot_format: ClassVar[int] = 1
    retired_events: ClassVar[tuple[str, ...]] = ()
    _state_type: ClassVar[type[msgspec.Struct] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "aggregate_name" not in vars(cls):
            cls.aggregate_name = cls.__name__
        if not isinstance(cls.aggregate_name, str) or not cls.aggregate_name:
            raise DefinitionError(f"{cls.__qualname__}.aggregate_name must be a non-empty str")
        try:  # stored in the log: refused when the class is created, not at open
            check_label(cls.aggregate_name, "aggregate_name")
        except InvalidArgument as e:
            raise DefinitionError(f"{cls.__qualname__}: {e}") from None
        check_no_arguments(cls, "state")
        handlers: dict[type, Handler] = dict(cls.command_handlers)
        appliers: dict[type, Applier] = dict(cls.event_appliers)
        emitted: set[type] = set(cls.emitted_types)
        own_handlers: set[type] = set()
        own_appliers: set[type] = set()
        for name, fn in decorated(cls, "handles"):
            command = message_type(fn, cls)
            if command in own_handlers:
                raise DefinitionError(
                    f"{cls.__qualname__} has two handlers for {command.__name__} "
                    f"(the second is {name})"
                )
            own_handlers.add(command)
            handlers[command] = fn
            emitted |= returned_event_types(fn, cls)
        for name, fn in decorated(cls, "applies"):
            event = message_type(fn, cls)
            check_event_type(event, f"{cls.__qualname__}.{name}")
            if event in own_appliers:
                raise DefinitionError(
                    f"{cls.__qualname__} has two appliers for {event.__name__} "
                    f"(the second is {name})"
                )
            own_appliers.add(event)
            appliers[event] = fn
        missing = sorted(t.__name__ for t in emitted if t not in appliers)
        if missing:
            raise DefinitionError(
                f"{cls.__qualname__} emits {', '.join(missing)} but has no @applies for it"
            )
        cls.command_handlers = handlers
        cls.event_appliers = appliers
        cls.emitted_types = frozenset(emitted)
        _check_retired(cls, appliers)
        check_snapshot_options(cls)
        cls._state_type = _state_struct(cls)

    def snapshot_state(self) -> bytes:
        """Encode the state for a snapshot (the annotated instance attributes)."""
        return encode_state(self, type(self)._state_type)

    @classmethod
    def from_snapshot(cls, data: bytes) -> Self:
        """Rebuild an aggregate from :meth:`snapshot_state`'s bytes."""
        return decode_state(cls, data, cls._state_type)


def _check_retired(cls: type[Aggregate], appliers: Mapping[type, Applier]) -> None:
    """Refuse a ``retired_events`` that is malformed or names a type the class applies."""
    retired = retired_events(cls)
    for event in appliers:
        names = {event_name(event), *event_aliases(event)} & retired
        if names:
            raise DefinitionError(
                f"{cls.__qualname__} retires {sorted(names)[0]!r} but applies "
                f"{event.__qualname__}, which is read under that name"
            )


def _state_struct(cls: type[Aggregate]) -> type[msgspec.Struct] | None:
    """A msgspec Struct mirroring the class's annotated, non-ClassVar attributes."""
    # The struct is needed only by the default snapshot_state/from_snapshot, and only
    # if snapshots are on: otherwise a class that cannot have one is fine.
    needed = cls.snapshot_every is not None and (
        cls.snapshot_state is Aggregate.snapshot_state
        or cls.from_snapshot.__func__ is Aggregate.from_snapshot.__func__  # type: ignore[attr-defined]
    )
    return state_struct(cls, needed=needed, reserved=_BASE_NAMES)


_BASE_NAMES = frozenset(
    (
        "aggregate_name",
        "command_handlers",
        "event_appliers",
        "emitted_types",
        "snapshot_every",
        "snapshot_format",
        "retired_events",
    )
)
