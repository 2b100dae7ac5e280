"""The :class:`Projector` base class: how users define read models.

A projector is a plain object: ``@applies`` methods fold committed events into its read
cache, and its other public methods are queries. The engine hosts it as an actor
(``engine/_projectors.py``) and calls queries through ``Engine.query``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self

import msgspec

from ..engine import DefinitionError, InvalidArgument, Recorded
from ..engine._fold import DEFAULT_MAX_PARKED, check_max_parked
from ..engine._log import check_name
from ._dispatch import check_event_type, check_no_arguments, decorated, message_type, role_of
from ._snapshot import check_snapshot_options, decode_state, encode_state, state_struct

__all__ = ["Projector"]

ProjectorApplier = Callable[[Any, Any, Recorded], None]


class Projector:
    """Base class of projectors: read models built only from committed events.

    Subclass it, build the empty cache in an argument-free ``__init__``, mark appliers with
    ``@applies`` (``def f(self, e: Deposited, meta: Recorded) -> None``; ``meta`` is
    optional) and write queries as plain public methods. The class is checked when it is
    created: two appliers for one event type, an applier with other parameters, an
    ``async`` applier, an event type that is not frozen, an ``__init__`` that needs
    arguments or a bad option raise
    :class:`~engine.DefinitionError`. A query must only read; whatever it returns is copied
    by the engine unless it is immutable, so callers cannot alias the cache.

    Class options:
        on_error: ``"halt"`` (default) stops at an event whose applier raises and makes
            queries raise :class:`~engine.ProjectorFaulted`; ``"park"`` records the event
            as parked and carries on.
        max_parked: how many parked events ``Engine.parked`` keeps, the most recent
            (default 1,000; 0 keeps none); each keeps its error's ``repr`` up to 1,024
            characters. ``statistics().projectors[i].parked`` counts them all.
        name: the projector's name in statistics, errors and the log (default: the class
            name). Saved states are found by it: keep it stable.
        snapshot_every: save the cache to the log after every N log positions it has
            passed, and when the engine closes; a restart then loads it and replays only
            the events after it (None: never, the default: the cache is rebuilt from the
            whole log on every start).
        snapshot_format: bump it whenever the cache's shape *or what the appliers compute*
            changes: a saved cache of another format is ignored and the cache is rebuilt
            from the log.

    The cache is saved from the annotated attributes (``by_account: dict[str, int]`` in the
    class body), encoded with msgspec; override :meth:`snapshot_state` and
    :meth:`from_snapshot` for anything else. Parked events are not saved.
    """

    event_appliers: ClassVar[Mapping[type, ProjectorApplier]] = {}
    query_functions: ClassVar[frozenset[Callable[..., Any]]] = frozenset()
    on_error: ClassVar[Literal["halt", "park"]] = "halt"
    max_parked: ClassVar[int] = DEFAULT_MAX_PARKED
    name: ClassVar[str] = "Projector"
    snapshot_every: ClassVar[int | None] = None
    snapshot_format: ClassVar[int] = 1
    _state_type: ClassVar[type[msgspec.Struct] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            cls.name = cls.__name__
        if not isinstance(cls.name, str) or not cls.name:
            raise DefinitionError(f"{cls.__qualname__}.name must be a non-empty str")
        try:  # a key in the log (its saved cache): refused when the class is created
            check_name(cls.name)
        except InvalidArgument as e:
            raise DefinitionError(f"{cls.__qualname__}: {e}") from None
        if cls.on_error not in ("halt", "park"):
            raise DefinitionError(
                f"{cls.__qualname__}.on_error must be 'halt' or 'park', not {cls.on_error!r}"
            )
        check_max_parked(cls, cls.max_parked)
        check_no_arguments(cls, "cache")
        appliers: dict[type, ProjectorApplier] = dict(cls.event_appliers)
        own: set[type] = set()
        for fname, fn in decorated(cls, "applies"):
            event = message_type(fn, cls)
            check_event_type(event, f"{cls.__qualname__}.{fname}")
            if event in own:
                raise DefinitionError(
                    f"{cls.__qualname__} has two appliers for {event.__name__} "
                    f"(the second is {fname})"
                )
            own.add(event)
            appliers[event] = _with_meta(fn, cls)
        cls.event_appliers = appliers
        queries = set(cls.query_functions)
        for fname, value in vars(cls).items():
            if (
                not fname.startswith("_")
                and fname not in _NOT_QUERIES
                and inspect.isfunction(value)
                and role_of(value) is None
            ):
                queries.add(value)
        cls.query_functions = frozenset(queries)
        every = check_snapshot_options(cls)
        needed = every is not None and (
            cls.snapshot_state is Projector.snapshot_state
            or cls.from_snapshot.__func__ is Projector.from_snapshot.__func__  # type: ignore[attr-defined]
        )
        cls._state_type = state_struct(cls, needed=needed, reserved=_BASE_NAMES)

    def snapshot_state(self) -> bytes:
        """Encode the cache for the log (the annotated instance attributes)."""
        return encode_state(self, type(self)._state_type)

    @classmethod
    def from_snapshot(cls, data: bytes) -> Self:
        """Rebuild a projector from :meth:`snapshot_state`'s bytes."""
        return decode_state(cls, data, cls._state_type)


_NOT_QUERIES = frozenset(("snapshot_state",))
_BASE_NAMES = frozenset(
    (
        "event_appliers",
        "query_functions",
        "on_error",
        "max_parked",
        "name",
        "snapshot_every",
        "snapshot_format",
    )
)


def _with_meta(fn: Callable[..., Any], owner: type) -> ProjectorApplier:
    """Call every applier as ``fn(self, event, meta)``, adapting one that takes no meta.

    Raises:
        DefinitionError: ``fn`` requires more than ``(self, event, meta)``, or a
            keyword-only argument (the engine passes neither).
    """
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(required) > 3 or any(p.kind is p.KEYWORD_ONLY for p in required):
        raise DefinitionError(
            f"{owner.__qualname__}.{fn.__name__}: an applier takes (self, event) or "
            "(self, event, meta: Recorded), nothing more"
        )
    if len(positional) >= 3:
        return fn

    def without_meta(self: Any, event: Any, meta: Recorded) -> None:
        fn(self, event)

    # The engine's fold calls ``fn`` itself, without this frame (~490 instructions an
    # event, callgrind); anything else calling the applier gets one signature.
    without_meta.applies_without_meta = fn  # type: ignore[attr-defined]
    return without_meta
