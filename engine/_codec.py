"""msgspec codecs: event type registry, envelopes, payloads, untrusted commands, snapshots.

Pure: no I/O. Encoders and decoders are created once and reused. Every msgspec error that
leaves this module is wrapped in a :mod:`engine._errors` codec error; so are the two that
msgspec lets through itself on hostile bytes: ``UnicodeDecodeError`` (invalid UTF-8 in a
string) and ``RecursionError`` (input nested past its depth limit).

A little over 400 lines, one file on purpose: every msgspec Encoder and Decoder the engine
uses lives here (what versions mean and how old events are upcast is ``_schema.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any, Final

import msgspec

from ._errors import (
    DecodeError,
    DefinitionError,
    EncodeError,
    InvalidArgument,
    PayloadTooLarge,
    UnknownEventType,
    describe,
)
from ._records import StoredEvent
from ._reply import must_propagate
from ._schema import (
    RETIRED,
    SEPARATOR,
    UpcastingDecoder,
    event_aliases,
    event_version,
    is_retired,
    retag_for,
    stored_name,
    upcasters_of,
)

__all__ = [
    "DECODE_FAILURES",
    "DEFAULT_MAX_COMMAND_BYTES",
    "EventRegistry",
    "decode_command",
    "decode_stored",
    "decode_stored_many",
    "decode_stored_runs",
    "encode_stored",
    "snapshot_bytes",
    "event_name",
]

DEFAULT_MAX_COMMAND_BYTES: Final = 64 * 1024

DECODE_FAILURES: Final = (msgspec.DecodeError, ValueError, RecursionError)
"""What decoding bytes can raise. ``msgspec.DecodeError`` is named on its own: it is a
``ValueError`` only from msgspec 0.19 on, and the declared range starts below that."""

_encoder: Final = msgspec.msgpack.Encoder()
_stored_decoder: Final = msgspec.msgpack.Decoder(StoredEvent)


def event_name(cls: type[msgspec.Struct]) -> str:
    """The stable name of an event type: its msgspec ``tag`` if set, else its class name.

    At ``event_version`` 1 events are stored under this name; at version ``v >= 2`` under
    ``f"{name}@{v}"``. To rename a class, keep the old name as its ``tag`` or list it in
    ``event_aliases``."""
    tag = cls.__struct_config__.tag
    return tag if isinstance(tag, str) else cls.__name__


def _check_event_type(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        raise DefinitionError(f"{cls!r} is not a msgspec.Struct; events must be Structs")
    if not cls.__struct_config__.frozen:
        # Live projectors receive the object the aggregate applied (read back from its
        # payload); frozen makes sharing it between them and queries safe without copying.
        raise DefinitionError(f"event type {cls.__name__} must be frozen (frozen=True)")


_MAX_NAME_BYTES: Final = 400  # as a stream id: a name is written into every envelope


def _check_event_name(cls: type, name: str) -> None:
    """Refuse a name a log could not store: a ``tag`` with no UTF-8 form (a lone
    surrogate) would fail every group commit that carries one of its events, and one with
    a NUL every commit to PostgreSQL."""
    try:
        size = len(name.encode()) if type(name) is str and "\x00" not in name else 0
    except UnicodeEncodeError:
        size = 0
    if not 0 < size <= _MAX_NAME_BYTES:
        raise DefinitionError(
            f"{cls.__qualname__}: an event or command name must be a non-empty str without "
            f"NUL of at most {_MAX_NAME_BYTES} UTF-8 bytes, not {name[:60]!r}"
        )


class EventRegistry:
    """Maps event types to their stable names and back, with one decoder per stored name.

    A type is read under every name it was ever stored under: its current stored name with
    its own typed decoder, and each older version and former name (``event_aliases``) with
    an :class:`~engine._schema.UpcastingDecoder` that upcasts to the current version.
    Registering the same class twice is a no-op; two classes under one stored name is a
    :class:`DefinitionError`.
    """

    def __init__(self, types: Iterable[type[msgspec.Struct]] = ()) -> None:
        self._by_name: dict[str, type[msgspec.Struct]] = {}
        self._names: dict[type[msgspec.Struct], str] = {}
        self._decoders: dict[str, Any] = {}  # msgspec Decoders, and UpcastingDecoders
        # Each type's stored names, the current one first (what a projector reads).
        self._readable: dict[type[msgspec.Struct], tuple[str, ...]] = {}
        # Types whose instances nothing can change (frozen all the way down): live
        # projectors may receive the object an aggregate applied (read back from its
        # payload, so it has the declared types). Others are decoded from the stored bytes
        # for each projector, so a list inside an event cannot alias two caches.
        self._shareable: set[type[msgspec.Struct]] = set()
        for cls in types:
            self.register(cls)

    def register(self, cls: type[msgspec.Struct]) -> str:
        """Register ``cls`` and return its (current) stored name.

        Raises:
            DefinitionError: ``cls`` is not a frozen Struct; its name, version or aliases
                are malformed; a step of its upcaster chain is missing; or one of the names
                it is read under belongs to another registered type.
        """
        known = self._names.get(cls)
        if known is not None:
            return known
        _check_event_type(cls)
        name = event_name(cls)
        version = event_version(cls)
        aliases = event_aliases(cls)
        steps = upcasters_of(cls)
        for base in (name, *aliases):
            _check_event_name(cls, base)
            if SEPARATOR in base:
                raise DefinitionError(
                    f"{cls.__qualname__}: event name {base!r} contains {SEPARATOR!r}, which "
                    "separates a name from its version in the log"
                )
        current = stored_name(name, version)
        decoder = msgspec.msgpack.Decoder(cls)
        readers: dict[str, Any] = {current: decoder}
        for base in (name, *aliases):
            retag = retag_for(cls, base)
            for v in range(1, version + 1):
                old = stored_name(base, v)
                if old in readers:
                    continue
                if v == version and retag is None:  # as current: the type's own decoder
                    readers[old] = decoder
                else:
                    readers[old] = UpcastingDecoder(old, steps[v - 1 :], decoder, retag=retag)
        for stored in readers:
            other = self._by_name.get(stored)
            if other is not None and other is not cls:
                raise DefinitionError(
                    f"event name {stored!r} is read by both {other.__qualname__} and "
                    f"{cls.__qualname__}; give one a distinct tag (or drop the alias)"
                )
        for stored, reader in readers.items():
            self._by_name[stored] = cls
            self._decoders[stored] = reader
        self._names[cls] = current
        self._readable[cls] = tuple(readers)
        if _deeply_immutable(msgspec.inspect.type_info(cls)):
            self._shareable.add(cls)
        return current

    def readers(self, cls: type[msgspec.Struct]) -> list[tuple[str, Callable[[Any], Any]]]:
        """Register ``cls``; return ``(stored name, payload decoder)`` for every name it is
        read under, the current one first (a projector's appliers by stored name)."""
        self.register(cls)
        return [(name, self._decoders[name].decode) for name in self._readable[cls]]

    def shareable(self, cls: type) -> bool:
        """True if instances of a registered ``cls`` are immutable all the way down."""
        return cls in self._shareable

    def name_of(self, cls: type[msgspec.Struct]) -> str:
        """The stored name of a registered type."""
        try:
            return self._names[cls]
        except KeyError:
            raise UnknownEventType(f"{cls.__qualname__} is not a registered event type") from None

    def type_of(self, name: str) -> type[msgspec.Struct]:
        """The registered type stored under ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventType(f"no event type is registered as {name!r}") from None

    def encode(self, event: msgspec.Struct) -> tuple[str, bytes]:
        """Encode one event into ``(name, payload)``, checking that it reads back.

        msgspec does not validate a Struct when it is built, so ``Deposited("5")`` for an
        ``int`` field encodes fine and would then fail every later read: the aggregate could
        never be loaded again. Decoding each payload once here (well under a microsecond for
        a small event) keeps such an event out of the log.

        Raises:
            UnknownEventType: the event's type is not registered.
            EncodeError: it cannot be encoded, or does not decode as its own type.
        """
        name = self.name_of(type(event))
        try:
            payload = _encoder.encode(event)
            self._decoders[name].decode(payload)
        except (TypeError, OverflowError, msgspec.EncodeError, *DECODE_FAILURES) as e:
            raise EncodeError(f"cannot store {describe(event)}: {e}") from e
        return name, payload

    def encode_read_back(self, event: msgspec.Struct) -> tuple[tuple[str, bytes], Any]:
        """Encode one event as :meth:`encode` does; return ``((name, payload), read back)``.

        The read-back is what every later reader of the log gets: the command path hands
        it, not ``event``, to the aggregate's appliers and to live projectors, so live state
        equals replayed state even where a value does not survive encoding unchanged (a
        datetime's offset becomes UTC, a list in a tuple field a tuple, an int in a float
        field a float), and nothing the caller still holds (a list) ends up in a cache. It
        costs nothing more: the decode is the one :meth:`encode` does to check the event.

        Raises:
            UnknownEventType: the event's type is not registered.
            EncodeError: it cannot be encoded, or does not decode as its own type.
        """
        name = self._names.get(type(event))  # name_of, inline: once per event emitted
        if name is None:
            name = self.name_of(type(event))  # raises UnknownEventType
        try:
            payload = _encoder.encode(event)
            back = self._decoders[name].decode(payload)
        except (TypeError, OverflowError, msgspec.EncodeError, *DECODE_FAILURES) as e:
            raise EncodeError(f"cannot store {describe(event)}: {e}") from e
        return (name, payload), back

    def decode(self, name: str, payload: bytes | msgspec.Raw) -> Any:
        """Decode one payload stored under ``name`` into its registered type, upcast to the
        current version if ``name`` is an older one.

        Raises:
            UnknownEventType: no registered type is read under ``name``.
            UpcastError: an older event's upcaster raised or gave invalid data.
            DecodeError: the payload is malformed or does not validate.
        """
        decoder = self._decoders.get(name)
        if decoder is None:
            raise UnknownEventType(f"no event type is registered as {name!r}")
        try:
            return decoder.decode(payload)
        except DECODE_FAILURES as e:
            if isinstance(e, DecodeError):  # our UpcastError: it names the upcaster
                raise
            raise DecodeError(f"cannot decode a {name} payload: {e}") from e

    def retiring_decode(self, retired: frozenset[str]) -> Callable[[str, Any], Any]:
        """:meth:`decode`, except that an event under a name in ``retired`` (at any version)
        decodes to ``RETIRED``, for the aggregate that retired it to skip."""
        decode = self.decode

        def read(name: str, payload: bytes | msgspec.Raw) -> Any:
            if is_retired(name, retired):
                return RETIRED
            return decode(name, payload)

        return read

    def decoder_for(self, name: str) -> Any:
        """The reusable decoder of ``name`` (for hot loops that catch errors themselves):
        a ``msgspec.msgpack.Decoder``, or an upcasting one with its ``decode`` method."""
        try:
            return self._decoders[name]
        except KeyError:
            raise UnknownEventType(f"no event type is registered as {name!r}") from None


_IMMUTABLE_LEAVES: Final = (
    msgspec.inspect.IntType,
    msgspec.inspect.FloatType,
    msgspec.inspect.StrType,
    msgspec.inspect.BoolType,
    msgspec.inspect.NoneType,
    msgspec.inspect.BytesType,
    msgspec.inspect.DateTimeType,
    msgspec.inspect.DateType,
    msgspec.inspect.TimeType,
    msgspec.inspect.TimeDeltaType,
    msgspec.inspect.UUIDType,
    msgspec.inspect.DecimalType,
    msgspec.inspect.EnumType,
    msgspec.inspect.LiteralType,
)


def _deeply_immutable(info: msgspec.inspect.Type, seen: set[type] | None = None) -> bool:
    """True if no value of this msgspec type can be changed after it is built."""
    seen = set() if seen is None else seen
    if isinstance(info, _IMMUTABLE_LEAVES):
        return True
    if isinstance(info, msgspec.inspect.UnionType):
        return all(_deeply_immutable(t, seen) for t in info.types)
    if isinstance(info, msgspec.inspect.FrozenSetType | msgspec.inspect.VarTupleType):
        return _deeply_immutable(info.item_type, seen)
    if isinstance(info, msgspec.inspect.TupleType):
        return all(_deeply_immutable(t, seen) for t in info.item_types)
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls in seen:
            return True  # a recursive type: judged by its other fields
        if not info.cls.__struct_config__.frozen:
            return False
        seen.add(info.cls)
        return all(_deeply_immutable(f.type, seen) for f in info.fields)
    return False  # lists, dicts, sets, bytearrays, Any, custom types: assume mutable


encode_stored: Final[Callable[[StoredEvent], bytes]] = _encoder.encode
"""Encode a log entry (metadata and raw payload) as one msgpack array. The encoder's bound
method itself, not a function around it: the append loop calls it once per event."""


def snapshot_bytes(obj: Any) -> bytes | None:
    """``obj.snapshot_state()`` if it returns bytes; None if it raises or returns anything
    else. A snapshot is only a shortcut (the events stay the truth), and a bad one handed
    to the writer would fail the whole group it rides with. A user's ``BaseException``
    counts as a failure too (it runs in the writer's completion callback, which it must not
    take down); only what :func:`must_propagate` names gets out."""
    try:
        data = obj.snapshot_state()
    except BaseException as e:
        if must_propagate(e):
            raise
        return None
    return data if isinstance(data, bytes) else None


def decode_stored_many(values: Iterable[bytes], skip: int = 0) -> list[StoredEvent]:
    """Decode many log entries (each after ``skip`` leading bytes) in one C-level pass.

    Raises:
        DecodeError: one of them is corrupt; decode them one by one to find which.
    """
    try:
        if skip:
            values = map(itemgetter(slice(skip, None)), values)
        return list(map(_stored_decoder.decode, values))
    except DECODE_FAILURES as e:
        raise DecodeError(f"corrupt log entry: {e}") from e


_run_decoder: Final = msgspec.msgpack.Decoder(list[StoredEvent])
_ARRAY_HEADER: Final = struct.Struct(">BI")  # msgpack array32: 0xdd, then the count
_RUN: Final = 512  # entries joined a time: a join past malloc's mmap threshold faults pages


def decode_stored_runs(
    values: Sequence[bytes], body: Callable[[bytes], bytes]
) -> list[StoredEvent]:
    """Decode many log entries, ``body(value)`` of each, with one decode call per 512: an
    msgpack array header, then the bodies joined, decoded as a list.

    Only for bodies that are each exactly one envelope (what the log wrote and its
    checksum vouches for): then this is :func:`decode_stored_many`, less its per-entry
    call (~280 instructions an event of a W4 rebuild, callgrind). Bodies that are not
    could shift the boundaries between entries; the caller checks the count and the
    positions it gets back, as it does anyway.

    Raises:
        DecodeError: the joined bodies do not decode; decode them one by one to find which.
    """
    events: list[StoredEvent] = []
    join, decode = b"".join, _run_decoder.decode
    try:
        for start in range(0, len(values), _RUN):
            run = values[start : start + _RUN]
            events += decode(join([_ARRAY_HEADER.pack(0xDD, len(run)), *map(body, run)]))
    except DECODE_FAILURES as e:
        raise DecodeError(f"corrupt log entry: {e}") from e
    return events


def decode_stored(data: bytes) -> StoredEvent:
    """Decode a log entry without decoding its payload (it stays ``msgspec.Raw``)."""
    try:
        return _stored_decoder.decode(data)
    except DECODE_FAILURES as e:
        raise DecodeError(f"corrupt log entry: {e}") from e


def decode_command(
    data: bytes | str,
    types: Iterable[type[msgspec.Struct]],
    *,
    format: str = "json",
    max_bytes: int = DEFAULT_MAX_COMMAND_BYTES,
) -> msgspec.Struct:
    """Decode and strictly validate an untrusted command into one of ``types``.

    The input is a tagged object: ``{"type": "<command name>", ...fields}``, where the name is
    the command class's ``tag`` or class name. The size is checked before any decoding.

    Raises:
        InvalidArgument: ``data`` is neither bytes nor str, or ``max_bytes`` is not an
            int >= 0 (the caller's mistake, not the input's).
        PayloadTooLarge: ``data`` is longer than ``max_bytes``.
        UnknownEventType: the ``type`` field names none of ``types``.
        DecodeError: malformed input, wrong field types, missing or extra fields.
    """
    # The caller's own arguments first: a wrong type is the program's bug, not the input's.
    if not isinstance(data, str | bytes | bytearray | memoryview):
        raise InvalidArgument(f"data must be bytes or str, not {type(data).__name__}")
    if type(max_bytes) is not int or max_bytes < 0:
        raise InvalidArgument(f"max_bytes must be an int >= 0, not {describe(max_bytes)}")
    # A str has at most as many characters as its UTF-8 bytes: refuse by length first, so
    # a huge input is never encoded, then check the bytes themselves.
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"command of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError as e:
        raise DecodeError(f"malformed command: {e}") from e
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"command of {len(raw)} bytes exceeds the limit of {max_bytes}")
    if format not in ("json", "msgpack"):
        raise DecodeError(f"unknown command format {format!r}; use 'json' or 'msgpack'")
    by_name = {event_name(t): t for t in types}
    try:
        if format == "json":
            header = msgspec.json.decode(raw, type=_TypeHeader)
        else:
            header = msgspec.msgpack.decode(raw, type=_TypeHeader)
    except DECODE_FAILURES as e:
        raise DecodeError(f"malformed command: {e}") from e
    cls = by_name.get(header.type)
    if cls is None:
        raise UnknownEventType(f"unknown command type {header.type!r}")
    try:
        if format == "json":
            obj = msgspec.json.decode(raw, type=_tagged(cls), strict=True)
        else:
            obj = msgspec.msgpack.decode(raw, type=_tagged(cls), strict=True)
    except DECODE_FAILURES as e:
        raise DecodeError(f"invalid {header.type} command: {e}") from e
    # The strict twin carries the tag; user code only ever sees its own class.
    return cls(**{name: getattr(obj, name) for name in cls.__struct_fields__})


class _TypeHeader(msgspec.Struct):
    """Just the discriminator of a tagged command; other fields are ignored here."""

    type: str


_tagged_cache: dict[type[msgspec.Struct], Any] = {}


def _tagged(cls: type[msgspec.Struct]) -> Any:
    """A strict twin of ``cls``: ``type``-tagged and forbidding unknown fields."""
    twin = _tagged_cache.get(cls)
    if twin is None:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for f in msgspec.structs.fields(cls):
            if f.default is not msgspec.NODEFAULT:
                fields.append((f.name, f.type, f.default))
            elif f.default_factory is not msgspec.NODEFAULT:
                fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
            else:
                fields.append((f.name, f.type))
        twin = msgspec.defstruct(
            cls.__name__,
            fields,
            tag_field="type",
            tag=event_name(cls),
            forbid_unknown_fields=True,
        )
        _tagged_cache[cls] = twin
    return twin
