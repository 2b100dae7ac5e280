"""Schema evolution: event versions, upcasters, renamed and retired event types.

Pure: no I/O. The log's envelope is not involved: an event's version lives in the name it
is stored under. A type at version 1 is stored under its name (so every log written before
versions existed is a version-1 log); at version ``v >= 2`` under ``f"{name}@{v}"``. Event
names may not contain ``@``, so the two never meet.

An event type declares its schema with two class attributes, both optional::

    class Deposited(msgspec.Struct, frozen=True):
        event_version: ClassVar[int] = 2              # default 1
        event_aliases: ClassVar[tuple[str, ...]] = ("MoneyIn",)   # its former names
        cents: int

    @upcaster(Deposited, from_version=1)
    def _amount_to_cents(data: dict[str, Any]) -> dict[str, Any]:
        return {"cents": data["amount"] * 100}

The registry (``engine/_codec.py``) maps the current stored name to the type's own typed
decoder, exactly as before, so current events pay nothing. Every older name (each former
name at each version up to the current one) maps to an :class:`UpcastingDecoder`: the same
``decode(payload)`` interface, which decodes to plain data, runs the upcasters from the
stored version to the current one, encodes the result and decodes it with the type's own
decoder. Re-encoding costs less than ``msgspec.convert`` (~155 ns against ~260 for a small
event, measured here) and validates the upcast data by the one rule every current payload
meets. An aggregate that dropped an event type lists its name in ``retired_events``: its
stored events of that name (at any version) are skipped by the aggregate's loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import msgspec

from ._errors import DefinitionError, UpcastError, describe
from ._reply import must_propagate

__all__ = [
    "RETIRED",
    "SEPARATOR",
    "UpcastingDecoder",
    "event_aliases",
    "event_version",
    "retag_for",
    "retired_events",
    "stored_name",
    "upcaster",
    "upcasters_of",
]

SEPARATOR: Final = "@"
"""Between an event's name and its version in the stored name; refused in event names."""

_UPCASTERS: Final = "__actorlog_upcasters__"

Upcaster = Callable[[Any], Any]
F = TypeVar("F", bound=Upcaster)


def stored_name(name: str, version: int) -> str:
    """The name an event of type ``name`` at ``version`` is stored under."""
    return name if version == 1 else f"{name}{SEPARATOR}{version}"


def _base_name(stored: str) -> str:
    """``stored`` without its version suffix (``"Deposited@2"`` -> ``"Deposited"``)."""
    base, sep, version = stored.rpartition(SEPARATOR)
    return base if sep and version.isdigit() else stored


def event_version(cls: type) -> int:
    """The version of event type ``cls`` (its ``event_version`` class attribute, default 1).

    Raises:
        DefinitionError: it is not an int >= 1.
    """
    version = getattr(cls, "event_version", 1)
    if type(version) is not int or version < 1:
        raise DefinitionError(
            f"{cls.__qualname__}.event_version must be an int >= 1 (a ClassVar), "
            f"not {describe(version)}"
        )
    return version


def event_aliases(cls: type) -> tuple[str, ...]:
    """The former names of event type ``cls`` (its ``event_aliases``, default none).

    Raises:
        DefinitionError: it is not a tuple (or list, or frozenset) of str.
    """
    aliases = getattr(cls, "event_aliases", ())
    if not isinstance(aliases, tuple | list | frozenset) or not all(
        type(a) is str for a in aliases
    ):
        raise DefinitionError(
            f"{cls.__qualname__}.event_aliases must be a tuple of str (a ClassVar), "
            f"not {describe(aliases)}"
        )
    return tuple(sorted(aliases)) if isinstance(aliases, frozenset) else tuple(aliases)


def retired_events(kind: object) -> frozenset[str]:
    """The event names aggregate type ``kind`` retired (its ``retired_events``, default none).

    Raises:
        DefinitionError: it is not a tuple (or list, or frozenset) of non-empty str
            without ``@``.
    """
    names = getattr(kind, "retired_events", ())
    if not isinstance(names, tuple | list | frozenset) or not all(
        type(n) is str and n and SEPARATOR not in n for n in names
    ):
        raise DefinitionError(
            f"{getattr(kind, '__qualname__', kind)}.retired_events must be a tuple of "
            f"event names (str, without {SEPARATOR!r}: a name is retired at every "
            f"version), not {describe(names)}"
        )
    return frozenset(names)


def is_retired(stored: str, retired: frozenset[str]) -> bool:
    """True if an event stored as ``stored`` has a name in ``retired`` (at any version)."""
    return stored in retired or _base_name(stored) in retired


def upcaster(event_type: type[msgspec.Struct], *, from_version: int) -> Callable[[F], F]:
    """Register the decorated function as the upcaster of ``event_type`` from one version
    to the next: it takes the plain data of an event stored at ``from_version`` and returns
    the plain data of the same event at ``from_version + 1``.

    Plain data is what msgspec's untyped decoder gives for the stored payload, with field
    names as encoded: a ``dict`` for a Struct (a ``list`` for an ``array_like`` one), its
    nested Structs dicts too; a type with a msgspec ``tag`` finds it there as stored. The
    function may build a new value or change the one it gets.
    Whatever it returns is encoded and, after the last upcaster, decoded as the current
    type exactly as a current event would be, so strict validation applies.

    The chain is checked when the type is registered (``Engine.open``, the test kits): a
    type at version 3 needs upcasters from versions 1 and 2. An upcaster that raises when
    an event is read, or whose result does not validate, is an
    :class:`~actorlog.UpcastError` naming the stored type (and the event's position, where
    the reader knows it); it is never skipped silently.

    Returns the function unchanged (so it can be tested on its own).

    Raises:
        DefinitionError: ``event_type`` is not a msgspec Struct, ``from_version`` is not an
            int from 1 to the type's version - 1, or that step already has an upcaster.
    """
    if not (isinstance(event_type, type) and issubclass(event_type, msgspec.Struct)):
        raise DefinitionError(
            f"@upcaster needs an event type (a msgspec.Struct), not {event_type!r}"
        )
    version = event_version(event_type)
    if type(from_version) is not int or not 1 <= from_version < version:
        raise DefinitionError(
            f"@upcaster({event_type.__qualname__}, from_version={describe(from_version)}): "
            f"from_version must be an int from 1 to {version - 1} "
            f"({event_type.__qualname__}.event_version is {version})"
        )

    def register(fn: F) -> F:
        if not callable(fn):
            raise DefinitionError(f"@upcaster decorates a function, not {describe(fn)}")
        table: dict[int, Upcaster] | None = vars(event_type).get(_UPCASTERS)
        if table is None:
            table = {}
            setattr(event_type, _UPCASTERS, table)
        if from_version in table:
            raise DefinitionError(
                f"{event_type.__qualname__} has two upcasters from version {from_version} "
                f"({_qualname(table[from_version])} and {_qualname(fn)})"
            )
        table[from_version] = fn
        return fn

    return register


def upcasters_of(cls: type) -> list[Upcaster]:
    """The upcasters of ``cls`` from version 1 on, one per step to its current version.

    Raises:
        DefinitionError: a step of the chain has no upcaster, or one is registered from a
            version at or beyond the current one (``event_version`` lowered after it).
    """
    version = event_version(cls)
    table: dict[int, Upcaster] = vars(cls).get(_UPCASTERS) or {}
    beyond = sorted(v for v in table if v >= version)
    if beyond:
        raise DefinitionError(
            f"{cls.__qualname__} is at version {version} but has an upcaster from version "
            f"{beyond[0]}"
        )
    missing = [v for v in range(1, version) if v not in table]
    if missing:
        steps = ", ".join(f"{v} -> {v + 1}" for v in missing)
        raise DefinitionError(
            f"{cls.__qualname__} is at version {version} but has no @upcaster for {steps}: "
            "events stored at older versions could not be read"
        )
    return [table[v] for v in range(1, version)]


def _qualname(fn: object) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))


_plain: Final = msgspec.msgpack.Decoder()
_encode: Final = msgspec.msgpack.Encoder().encode


class UpcastingDecoder:
    """Decodes a payload stored at an older version (or under a former name) into the
    current type: plain data, each upcaster in turn, then the type's own decoder.

    Has the ``decode(payload)`` interface of a ``msgspec.msgpack.Decoder``, so every reader
    that takes a decoder from the registry reads old events with no change of its own.
    """

    __slots__ = ("_decode", "_retag", "_steps", "_stored")

    def __init__(
        self,
        stored: str,
        steps: Iterable[Upcaster],
        decoder: msgspec.msgpack.Decoder[Any],
        *,
        retag: tuple[str, str, str] | None = None,
    ) -> None:
        self._stored = stored
        self._steps = tuple(steps)
        self._decode = decoder.decode
        # (tag field, old tag, current tag) for a msgspec-tagged type read under a former
        # name: its payloads carry the old tag, which the current type would refuse.
        self._retag = retag

    def decode(self, payload: bytes | msgspec.Raw) -> Any:
        """The event stored as ``payload`` under this decoder's name, at the current version.

        Raises:
            UpcastError: an upcaster raised, or its result is not a valid current event.
            msgspec.DecodeError: the payload itself is malformed (callers wrap it, as for
                any payload).
        """
        data = _plain.decode(payload)
        step: Upcaster | None = None
        try:
            for step in self._steps:
                data = step(data)
            step = None
            if self._retag is not None:
                data = _retagged(data, *self._retag)
            return self._decode(_encode(data))
        except BaseException as e:
            if must_propagate(e):
                raise
            what = (
                f"upcaster {_qualname(step)} raised {e!r}"
                if step is not None
                else f"the upcast data is not a valid current event: {e}"
            )
            raise UpcastError(f"cannot read a stored {self._stored} event: {what}") from e


def _retagged(data: Any, field: str, old: str, new: str) -> Any:
    """``data`` with msgspec's tag ``old`` (in ``field``, or first for ``array_like``)
    replaced by ``new``; anything else unchanged."""
    if type(data) is dict and data.get(field) == old:
        data[field] = new
    elif type(data) is list and data and data[0] == old:
        data[0] = new
    return data


def retag_for(cls: type[msgspec.Struct], former: str) -> tuple[str, str, str] | None:
    """What reading ``cls`` under its former name ``former`` must re-tag, if anything:
    a type with a msgspec ``tag`` stores it in each payload, so its old payloads carry the
    old name."""
    config = cls.__struct_config__
    tag, field = config.tag, config.tag_field
    if isinstance(tag, str) and field is not None and tag != former:
        return field, former, tag
    return None


class _Retired:
    """The type of :data:`RETIRED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RETIRED"


RETIRED: Final = _Retired()
"""What a retired event decodes to for the aggregate that retired it: skipped on load."""
