"""Untrusted commands: whatever bytes arrive, ``decode_command`` answers with a valid command
or a typed codec error, and nothing but a valid, accepted command ever appends an event."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import hypothesis.strategies as st
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, Phase, example, given, reject, settings

from actorlog import CodecError, DecodeError, Engine, EngineError, PayloadTooLarge, UnknownEventType
from actorlog.lowlevel import decode_command
from actorlog.storage import MemoryEventLog
from benchmarks.bank import Account, Deposit, OpenAccount, Withdraw

Format = Literal["json", "msgpack"]
FORMATS: tuple[Format, ...] = ("json", "msgpack")
LIMITS = (64, 1024, 64 * 1024)
STREAM = "acct-1"
# Derandomized in CI: the same examples every run, so it never flakes on a new find. For a
# deeper, random search: ACTORLOG_FUZZ_EXAMPLES=5000 pytest tests/engine/test_untrusted_input.py
FUZZ_EXAMPLES = os.environ.get("ACTORLOG_FUZZ_EXAMPLES")
SETTINGS = settings(
    max_examples=int(FUZZ_EXAMPLES or 150),
    derandomize=FUZZ_EXAMPLES is None,
    report_multiple_bugs=False,
    # No shrinking in CI: it multiplies the runtime of a failure (the deep search shrinks).
    phases=tuple(Phase) if FUZZ_EXAMPLES else (Phase.explicit, Phase.reuse, Phase.generate),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- payload strategies --------------------------------------------------------------------

_names = st.sampled_from(
    ["Deposit", "Withdraw", "OpenAccount", "Deposited", "deposit", "", "__init__", "Account"]
) | st.text(max_size=20)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # includes values far beyond 64 bits
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.integers(0, 100_000).map(lambda n: "x" * n)  # huge strings, cheaply
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def _nested(draw: st.DrawFn) -> Any:
    """A value nested up to 200 levels deep (lists and objects)."""
    value: Any = draw(_scalars)
    for _ in range(draw(st.integers(1, 200))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


@st.composite
def _objects(draw: st.DrawFn) -> dict[Any, Any]:
    """A command-shaped object: a type name, maybe the right fields, maybe wrong ones."""
    obj: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):  # now and then no type at all
        obj["type"] = draw(_names | _values)
    for name in draw(st.sets(st.sampled_from(["amount", "owner", "extra", "type2"]))):
        obj[name] = draw(st.integers(-5, 200) | st.text(max_size=10) | _values | _nested())
    return obj


def _encode(obj: Any, fmt: Format) -> bytes:
    if fmt == "json":
        return json.dumps(obj).encode()
    try:
        return msgspec.msgpack.encode(obj)
    except OverflowError:  # an int beyond 64 bits has no msgpack form
        reject()


@st.composite
def _payloads(draw: st.DrawFn) -> tuple[bytes | str, Format, int]:
    """(data, format, max_bytes): random bytes or text, command-like objects, and valid
    commands with a few bytes flipped, inserted or deleted."""
    fmt = draw(st.sampled_from(FORMATS))
    limit = draw(st.sampled_from(LIMITS))
    kind = draw(st.sampled_from(["bytes", "text", "object", "valid", "mutated"]))
    data: bytes | str
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
    elif kind == "text":
        data = draw(st.text(max_size=300))
    elif kind == "object":
        data = _encode(draw(_objects()), fmt)
    else:
        name = draw(st.sampled_from(["Deposit", "Withdraw", "OpenAccount"]))
        command: dict[str, Any] = {"type": name}
        if name == "OpenAccount":
            command["owner"] = draw(st.text(max_size=20))
        else:
            command["amount"] = draw(st.integers(-3, 300))
        data = _encode(command, fmt)
        if kind == "mutated":
            buffer = bytearray(data)
            for _ in range(draw(st.integers(1, 4))):
                i = draw(st.integers(0, max(len(buffer) - 1, 0)))
                action = draw(st.sampled_from(["flip", "insert", "delete"]))
                if action == "flip" and buffer:
                    buffer[i] ^= 1 << draw(st.integers(0, 7))
                elif action == "insert":
                    buffer.insert(i, draw(st.integers(0, 255)))
                elif buffer:
                    del buffer[i]
            data = bytes(buffer)
        if draw(st.booleans()) and fmt == "json":
            data = data.decode(errors="replace")  # str input, as from a web framework
    return data, fmt, limit


# -- the oracle ----------------------------------------------------------------------------


def _size(data: bytes | str) -> int:
    return len(data.encode(errors="surrogatepass")) if isinstance(data, str) else len(data)


def _check_command(command: object) -> None:
    """A decoded command is exactly one of Account's commands, with fields of its types."""
    assert type(command) in Account.command_handlers
    if isinstance(command, Deposit | Withdraw):
        assert type(command.amount) is int
    else:
        assert isinstance(command, OpenAccount)
        assert type(command.owner) is str


async def _decode_then_send(
    engine: Engine, data: bytes | str, fmt: Format, limit: int, escaped: list[Exception]
) -> None:
    """Decode ``data``; send it if valid; check that only an accepted command appended.

    A raw (untyped) error escaping ``decode_command`` is collected in ``escaped``, to be
    raised by the test once the engine is closed (inside, its task group would wrap it).
    """
    head = engine.log.head_position()
    try:
        command = engine.decode_command(Account, data, format=fmt, max_bytes=limit)
    except CodecError as e:
        if isinstance(e, PayloadTooLarge):
            assert _size(data) > limit
        elif e.__cause__ is not None:
            # The original msgspec/Unicode error is kept as the cause.
            assert isinstance(e.__cause__, msgspec.DecodeError | UnicodeError | ValueError)
        assert engine.log.head_position() == head
        return
    except Exception as e:
        escaped.append(e)
        assert engine.log.head_position() == head
        return
    assert _size(data) <= limit
    _check_command(command)
    try:
        ack = await engine.send(Account, STREAM, command)
    except EngineError:
        # Rejected by the domain, or a value the log cannot store (an int beyond 64 bits):
        # typed either way, and nothing was appended.
        assert engine.log.head_position() == head
        return
    assert ack.position == head + 1 == engine.log.head_position()
    (event,) = engine.log.read_all(ack.position, 1)
    assert event.stream_id == STREAM


@SETTINGS
@given(payload=_payloads())
@example(payload=(b'{"type": "Deposit", "amount": 5}', "json", 64))
@example(payload=(b'{"type": "Deposit", "amount": 5, "extra": 1}', "json", 64))
@example(payload=(b'{"type": "Deposit", "amount": true}', "json", 64))
@example(payload=(b'{"type": "Deposit", "amount": 5.0}', "json", 64))
@example(payload=(b'{"type": "Deposit", "amount": "5"}', "json", 64))
@example(payload=(b'{"type": "Deposit", "amount": 1' + b"0" * 30 + b"}", "json", 64))
@example(payload=(b'{"type": "Shutdown"}', "json", 64))
@example(payload=(b'{"amount": 5}', "json", 64))
@example(payload=(b"\xc1", "msgpack", 64))
@example(payload=(b"", "json", 64))
@example(payload=(b"[" * 100 + b"]" * 100, "json", 64))
@example(payload=(msgspec.msgpack.encode({"type": b"Deposit", "amount": 5}), "msgpack", 64))
def test_any_input_decodes_to_a_valid_command_or_a_typed_error(
    payload: tuple[bytes | str, Format, int],
) -> None:
    # Sync, with trio.run per example: a raw error then fails the test as itself, not
    # wrapped in the exception group of pytest-trio's nursery.
    async def run() -> None:
        escaped: list[Exception] = []
        async with Engine.open(log=MemoryEventLog(), aggregates=[Account]) as engine:
            await engine.send(Account, STREAM, Deposit(100))  # so some withdrawals succeed
            await _decode_then_send(engine, *payload, escaped)
        if escaped:
            raise escaped[0]

    trio.run(run)


@settings(SETTINGS, max_examples=int(FUZZ_EXAMPLES or 60))
@given(data=st.data())
def test_many_inputs_in_a_row_append_only_the_accepted_commands(data: st.DataObject) -> None:
    """One engine, a stream of hostile inputs: the log ends with exactly the accepted ones."""

    async def run() -> None:
        escaped: list[Exception] = []
        async with Engine.open(log=MemoryEventLog(), aggregates=[Account]) as engine:
            accepted = 0
            for _ in range(data.draw(st.integers(1, 20))):
                before = engine.log.head_position()
                await _decode_then_send(engine, *data.draw(_payloads()), escaped)
                accepted += engine.log.head_position() - before
            assert engine.log.head_position() == accepted
            assert engine.log.stream_version(STREAM) == accepted
        if escaped:
            raise escaped[0]

    trio.run(run)


# -- specific rules --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_the_size_limit_is_checked_before_decoding(fmt: Format) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Account]) as engine:
        garbage = b"\xc1" * 65  # malformed in both formats, and one byte too many
        with pytest.raises(PayloadTooLarge):
            engine.decode_command(Account, garbage, format=fmt, max_bytes=64)
        exact = _encode({"type": "Deposit", "amount": 5}, fmt)
        assert engine.decode_command(Account, exact, format=fmt, max_bytes=len(exact)) == Deposit(5)


async def test_a_str_is_measured_in_utf8_bytes_not_characters() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Account]) as engine:
        text = json.dumps({"type": "OpenAccount", "owner": "€" * 100}, ensure_ascii=False)
        assert len(text) <= 200 < len(text.encode())
        with pytest.raises(PayloadTooLarge):
            engine.decode_command(Account, text, max_bytes=200)


async def test_an_unknown_type_name_is_unknown_event_type_and_an_event_name_is_not_a_command() -> (
    None
):
    async with Engine.open(log=MemoryEventLog(), aggregates=[Account]) as engine:
        for name in ("Shutdown", "Deposited", "__init__"):
            with pytest.raises(UnknownEventType):
                engine.decode_command(Account, json.dumps({"type": name, "amount": 1}))


async def test_an_unknown_format_is_a_decode_error() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Account]) as engine:
        with pytest.raises(DecodeError):
            engine.decode_command(Account, b"{}", format="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b'{"type": "OpenAccount", "owner": "\xff"}', "json"),
        (b'{"type": "\xff"}', "json"),
        (b"\x82\xa4type\xabOpenAccount\xa5owner\xa1\xff", "msgpack"),
    ],
)
def test_invalid_utf8_in_a_string_is_a_decode_error(data: bytes, fmt: Format) -> None:
    # engine.decode_command is this function applied to the aggregate's command types.
    with pytest.raises(DecodeError):
        decode_command(data, Account.command_handlers, format=fmt)


def _deep(fmt: Format, depth: int) -> bytes:
    """A Deposit whose ``amount`` (or an extra field) is nested ``depth`` levels deep."""
    if fmt == "json":
        return b'{"extra": ' + b"[" * depth + b"]" * depth + b', "type": "Deposit"}'
    return b"\x82\xa5extra" + b"\x91" * depth + b"\xc0" + b"\xa4type\xa7Deposit"


@pytest.mark.parametrize("fmt", FORMATS)
def test_input_nested_thousands_deep_is_a_decode_error(fmt: Format) -> None:
    with pytest.raises(DecodeError):
        decode_command(_deep(fmt, 5000), Account.command_handlers, format=fmt)
