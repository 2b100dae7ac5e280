"""The codecs: event names, the registry, lazy envelopes, and strict untrusted commands."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import (
    CodecError,
    DecodeError,
    DefinitionError,
    EngineError,
    PayloadTooLarge,
    UnknownEventType,
)
from actorlog.engine._codec import decode_stored, encode_stored
from actorlog.lowlevel import EventRegistry, decode_command, event_name
from actorlog.storage import StoredEvent


class Opened(msgspec.Struct, frozen=True):
    owner: str


class Renamed(msgspec.Struct, frozen=True, tag="account.renamed.v1"):
    name: str


class TaggedTrue(msgspec.Struct, frozen=True, tag=True):
    n: int


class Mutable(msgspec.Struct):
    n: int


class Deposit(msgspec.Struct, frozen=True):
    amount: int
    note: str = ""


class Transfer(msgspec.Struct, frozen=True, tag="transfer"):
    to: str
    amount: int
    tags: list[str] = msgspec.field(default_factory=list)


# -- names and the registry ----------------------------------------------------------------


def test_event_name_is_the_tag_if_set_else_the_class_name() -> None:
    assert event_name(Opened) == "Opened"
    assert event_name(Renamed) == "account.renamed.v1"
    assert event_name(TaggedTrue) == "TaggedTrue"


def test_registry_maps_types_to_names_and_back() -> None:
    registry = EventRegistry([Opened])
    assert registry.register(Renamed) == "account.renamed.v1"
    assert registry.register(Renamed) == "account.renamed.v1"  # again: a no-op
    assert registry.name_of(Opened) == "Opened"
    assert registry.type_of("account.renamed.v1") is Renamed


def test_two_types_under_one_name_is_a_definition_error() -> None:
    class Clash(msgspec.Struct, frozen=True, tag="Opened"):
        owner: str

    registry = EventRegistry([Opened])
    with pytest.raises(DefinitionError, match="Opened"):
        registry.register(Clash)
    assert registry.type_of("Opened") is Opened


def test_same_class_name_in_two_places_is_a_definition_error() -> None:
    def make() -> type[msgspec.Struct]:
        class Opened(msgspec.Struct, frozen=True):
            owner: str

        return Opened

    with pytest.raises(DefinitionError):
        EventRegistry([make(), make()])


def test_mutable_or_non_struct_event_types_are_definition_errors() -> None:
    registry = EventRegistry()
    with pytest.raises(DefinitionError, match="frozen"):
        registry.register(Mutable)
    with pytest.raises(DefinitionError, match="Struct"):
        registry.register(dict)  # type: ignore[arg-type]


def test_unknown_names_and_types_are_unknown_event_type() -> None:
    registry = EventRegistry([Opened])
    with pytest.raises(UnknownEventType):
        registry.type_of("Closed")
    with pytest.raises(UnknownEventType):
        registry.decode("Closed", b"\x90")
    with pytest.raises(UnknownEventType):
        registry.decoder_for("Closed")
    with pytest.raises(UnknownEventType):
        registry.name_of(Renamed)
    with pytest.raises(UnknownEventType):
        registry.encode(Renamed("x"))


def test_encode_then_decode_round_trips() -> None:
    registry = EventRegistry([Opened, Renamed])
    name, payload = registry.encode(Renamed("new"))
    assert name == "account.renamed.v1"
    assert registry.decode(name, payload) == Renamed("new")
    assert registry.decoder_for(name).decode(payload) == Renamed("new")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x91", msgspec.msgpack.encode({"owner": 5}), msgspec.msgpack.encode({})],
)
def test_malformed_or_mistyped_payload_is_a_decode_error(payload: bytes) -> None:
    registry = EventRegistry([Opened])
    with pytest.raises(DecodeError) as caught:
        registry.decode("Opened", payload)
    error = caught.value
    assert isinstance(error, CodecError) and isinstance(error, ValueError)
    assert isinstance(error, EngineError)
    assert error.__cause__ is not None  # the original is kept, whatever its class


# -- the envelope ----------------------------------------------------------------------------


def stored(payload: bytes, type: str = "Opened") -> StoredEvent:
    return StoredEvent(7, "acct-1", 3, type, 1.5, "corr", None, msgspec.Raw(payload))


def test_envelope_round_trips_and_leaves_the_payload_raw() -> None:
    payload = msgspec.msgpack.encode(Opened("ann"))
    decoded = decode_stored(encode_stored(stored(payload)))
    assert isinstance(decoded.payload, msgspec.Raw)
    assert bytes(decoded.payload) == payload
    assert decoded == stored(payload)


def test_envelope_decodes_even_if_its_payload_type_is_unknown_or_invalid() -> None:
    # The payload is valid msgpack but no registered type could read it: the envelope
    # never looks inside, so only a reader that asks for that type would fail.
    payload = msgspec.msgpack.encode({"unexpected": [1, 2, 3]})
    decoded = decode_stored(encode_stored(stored(payload, type="Nobody")))
    assert (decoded.position, decoded.type, bytes(decoded.payload)) == (7, "Nobody", payload)
    with pytest.raises(UnknownEventType):
        EventRegistry([Opened]).decode(decoded.type, decoded.payload)


@pytest.mark.parametrize(
    "data", [b"", b"\x00", b"\x93\x01\x02", b"\xff\xff", b"\x98" + b"\xc0" * 3]
)
def test_malformed_envelope_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_stored(data)


# -- untrusted commands ----------------------------------------------------------------------

COMMANDS: list[type[msgspec.Struct]] = [Deposit, Transfer]


def test_decode_command_builds_the_users_own_class() -> None:
    command = decode_command(b'{"type": "Deposit", "amount": 5}', COMMANDS)
    assert type(command) is Deposit
    assert command == Deposit(5)
    transfer = decode_command('{"type": "transfer", "to": "b", "amount": 2}', COMMANDS)
    assert transfer == Transfer("b", 2, [])


def test_decode_command_reads_msgpack_too() -> None:
    data = msgspec.msgpack.encode({"type": "Deposit", "amount": 5, "note": "hi"})
    assert decode_command(data, COMMANDS, format="msgpack") == Deposit(5, "hi")


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "Deposit", "amount": 5, "extra": 1}',  # unknown field
        b'{"type": "Deposit", "amount": "5"}',  # a str where an int belongs: strict
        b'{"type": "Deposit", "amount": 5.0}',  # a float where an int belongs
        b'{"type": "Deposit", "amount": true}',  # a bool is no int
        b'{"type": "Deposit"}',  # missing field
        b'{"type": "transfer", "to": "b", "amount": 1, "tags": [1]}',  # wrong item type
        b'{"amount": 5}',  # no type
        b'{"type": 5, "amount": 5}',  # a type that is not a str
        b'[{"type": "Deposit", "amount": 5}]',  # not an object
        b'{"type": "Deposit", "amount": 5',  # truncated
        b"\xff\xfe",  # not JSON at all
    ],
)
def test_decode_command_is_strict(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_command(data, COMMANDS)


def test_decode_command_with_unknown_type_is_unknown_event_type() -> None:
    with pytest.raises(UnknownEventType, match="Withdraw"):
        decode_command(b'{"type": "Withdraw", "amount": 5}', COMMANDS)
    with pytest.raises(UnknownEventType):  # the tag, not the class name, is the name
        decode_command(b'{"type": "Transfer", "to": "b", "amount": 5}', COMMANDS)


def test_decode_command_refuses_large_input_before_decoding() -> None:
    big = b'{"type": "Deposit", "amount": 5, "note": "' + b"x" * 100 + b'"}'
    with pytest.raises(PayloadTooLarge):
        decode_command(big, COMMANDS, max_bytes=64)
    with pytest.raises(PayloadTooLarge):  # refused by size even though it is garbage
        decode_command(b"\xff" * 65, COMMANDS, max_bytes=64)
    with pytest.raises(PayloadTooLarge):  # a str is measured in UTF-8 bytes
        decode_command(
            '{"type": "Deposit", "amount": 5, "note": "' + "é" * 20 + '"}', COMMANDS, max_bytes=64
        )
    assert decode_command(big, COMMANDS, max_bytes=len(big)) == Deposit(5, "x" * 100)


def test_decode_command_rejects_unknown_formats_and_unencodable_strings() -> None:
    with pytest.raises(DecodeError, match="format"):
        decode_command(b'{"type": "Deposit", "amount": 5}', COMMANDS, format="yaml")
    with pytest.raises(DecodeError):
        decode_command('{"type": "Deposit", "note": "\ud800"}', COMMANDS)


def test_invalid_utf8_inside_an_envelope_is_a_decode_error() -> None:
    data = encode_stored(stored(msgspec.msgpack.encode(1))).replace(b"acct-1", b"\xff" * 6)
    with pytest.raises(DecodeError) as caught:
        decode_stored(data)
    assert caught.value.__cause__ is not None


def test_input_nested_past_msgspecs_depth_limit_is_a_decode_error() -> None:
    deep = b'{"type": "Deposit", "amount": 5, "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(DecodeError):
        decode_command(deep, COMMANDS)
    with pytest.raises(DecodeError):
        EventRegistry([Opened]).decode("Opened", b"\x91" * 5000 + b"\xc0")


def test_invalid_utf8_in_a_command_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_command(b'{"type": "Deposit", "amount": 5, "note": "\xff"}', COMMANDS)
    with pytest.raises(DecodeError):
        decode_command(b'{"type": "\xff"}', COMMANDS)
