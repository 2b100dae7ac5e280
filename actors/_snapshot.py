"""Snapshot encoding shared by aggregates and projectors: the annotated instance attributes
of a class, as a msgspec Struct built for it.

Only attributes annotated on the class are state; private ones (``_cache``) are caches by
convention, rebuilt rather than saved. A public attribute that is not annotated makes the
snapshot fail loudly: restoring would silently leave it at its ``__init__`` value.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar, TypeVar

import msgspec

from ..engine import DecodeError, DefinitionError, HandlerError
from ..engine._codec import DECODE_FAILURES
from ._dispatch import resolve_hints

__all__ = ["check_snapshot_options", "decode_state", "encode_state", "state_struct"]

T = TypeVar("T")


def check_snapshot_options(cls: Any) -> int | None:
    """Check a class's ``snapshot_every`` and ``snapshot_format``; return ``snapshot_every``.

    Raises:
        DefinitionError: ``snapshot_every`` is not None or an int >= 1, or
            ``snapshot_format`` is not an int.
    """
    every = cls.snapshot_every
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise DefinitionError(
            f"{cls.__qualname__}.snapshot_every must be None or an int >= 1, not {every!r}"
        )
    fmt = cls.snapshot_format
    if not isinstance(fmt, int) or isinstance(fmt, bool) or not -(2**63) <= fmt < 2**64:
        raise DefinitionError(f"{cls.__qualname__}.snapshot_format must be a 64-bit int")
    return every


def state_struct(
    cls: type, *, needed: bool, reserved: frozenset[str]
) -> type[msgspec.Struct] | None:
    """A msgspec Struct mirroring ``cls``'s annotated, non-ClassVar, public attributes.

    ``needed``: snapshots are on and use the default encoding, so a class without such
    attributes is a definition error; otherwise it just gets None. ``reserved``: the base
    class's own option names, never state.
    """
    try:
        hints = resolve_hints(cls, cls)
    except Exception:
        if needed:
            raise DefinitionError(
                f"{cls.__qualname__}: cannot resolve the state annotations for snapshots"
            ) from None
        return None
    fields = [
        (name, tp)
        for name, tp in hints.items()
        if not name.startswith("_")
        and typing.get_origin(tp) is not ClassVar
        and name not in reserved
    ]
    if not fields:
        if needed:
            raise DefinitionError(
                f"{cls.__qualname__} takes snapshots but annotates no state attributes "
                "(declare them, e.g. 'balance: int', or override snapshot_state and "
                "from_snapshot)"
            )
        return None
    return msgspec.defstruct(f"{cls.__name__}State", fields)


def encode_state(obj: Any, state_type: type[msgspec.Struct] | None) -> bytes:
    """Encode ``obj``'s annotated attributes, and leave them as a restore would give them.

    A snapshot must restore what the live object holds: when a value may not survive
    encoding unchanged (anything but a plain ``str``/``int``/``float``/``bool``/``bytes``
    of its annotated type), the encoding is decoded back and its attributes are set on
    ``obj``, so the live state is what restarting from this snapshot gives (one decode a
    snapshot, only for such states).

    Raises:
        HandlerError: the class annotates no state, ``obj`` has public attributes that
            are not annotated (they would be lost), or its state does not decode as the
            annotations say (it could not be restored).
    """
    name = type(obj).__qualname__
    if state_type is None:
        raise HandlerError(f"{name} has no annotated attributes to snapshot")
    fields = state_type.__struct_fields__
    public = (a for a in getattr(obj, "__dict__", {}) if not a.startswith("_"))
    missing = sorted(set(public) - set(fields))
    if missing:
        raise HandlerError(
            f"{name} cannot snapshot: attribute(s) {', '.join(missing)} are not annotated "
            "on the class (annotate them, or override snapshot_state)"
        )
    values = {f: getattr(obj, f) for f in fields}
    data = msgspec.msgpack.encode(state_type(**values))
    exact = _EXACT.get(state_type)
    if exact is None:
        exact = _EXACT[state_type] = _exact_types(state_type)
    for field, tp in exact:
        if type(values[field]) is not tp:
            break
    else:
        return data  # every value is a str, int, float, bool or bytes as annotated
    # A value that may not read back unchanged (a datetime's offset becomes UTC, a list in
    # a tuple field a tuple, an int in a float field a float): a restart would restore what
    # decoding gives, so the live object takes exactly that now. Live state then equals
    # what any later load from this snapshot gives, and a state that cannot be restored at
    # all is refused here rather than found unreadable at the next start.
    try:
        back = msgspec.msgpack.decode(data, type=state_type)
    except DECODE_FAILURES as e:
        raise HandlerError(
            f"{name} cannot snapshot: its state does not read back as annotated: {e}"
        ) from e
    for field in fields:
        setattr(obj, field, getattr(back, field))
    return data


_EXACT: dict[type[msgspec.Struct], tuple[tuple[str, type | None], ...]] = {}
"""State struct -> (field, the exact type whose values read back unchanged, or None)."""

_SCALARS = frozenset({int, float, str, bool, bytes})


def _exact_types(state_type: type[msgspec.Struct]) -> tuple[tuple[str, type | None], ...]:
    """For each field of ``state_type``, its annotation if a value of exactly that type
    reads back as itself (a plain scalar), else None (its values must be read back)."""
    return tuple(
        (f.name, f.type if f.type in _SCALARS else None) for f in msgspec.structs.fields(state_type)
    )


def decode_state(cls: type[T], data: bytes, state_type: type[msgspec.Struct] | None) -> T:
    """A new ``cls()`` with the attributes ``encode_state`` saved set on it.

    Raises:
        HandlerError: the class annotates no state.
        DecodeError: ``data`` is not such a state (the msgspec error is ``__cause__``).
    """
    if state_type is None:
        raise HandlerError(f"{cls.__qualname__} has no annotated attributes to restore")
    try:
        state = msgspec.msgpack.decode(data, type=state_type)
    except DECODE_FAILURES as e:
        raise DecodeError(f"cannot restore {cls.__qualname__} from its snapshot: {e}") from e
    obj = cls()
    for field in state_type.__struct_fields__:
        setattr(obj, field, getattr(state, field))
    return obj
