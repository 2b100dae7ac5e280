"""Everything that reaches the log is validated before it is decided (issue 11).

A malformed argument (stream id, correlation or causation id, a query's ``after``, a field
of an ``Append``) gets ``InvalidArgument`` at the call, before any handler runs; nothing is
appended; other callers' commands in the same group commit still commit; and everything
that was acknowledged reads back after a restart. ``Engine.open`` refuses every malformed
option with ``DefinitionError``. A query that fails is reported as user code failing
(``HandlerError``), like a handler.

The send and query scenarios run on trio (pytest-trio) and again on asyncio.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actorlog import (
    Aggregate,
    Committed,
    DefinitionError,
    EncodeError,
    Engine,
    HandlerError,
    InvalidArgument,
    Projector,
    Recorded,
    UnknownCommand,
    UnknownQuery,
    applies,
    handles,
)
from actorlog.engine._engine import call_query
from actorlog.engine.testing import make_append
from actorlog.lowlevel import EventRegistry, Writer, decode_command
from actorlog.storage import (
    ANY,
    NO_STREAM,
    Append,
    LmdbEventLog,
    MemoryEventLog,
    ProjectorCache,
    Snapshot,
    assert_log_consistent,
)

# -- the test domain ---------------------------------------------------------------------


class Bump(msgspec.Struct, frozen=True):
    n: int


class Say(msgspec.Struct, frozen=True):
    text: str


class Bumped(msgspec.Struct, frozen=True):
    n: int


class Said(msgspec.Struct, frozen=True):
    text: str


HANDLED: list[str] = []  # every stream a handler ran for: "before the handler runs" is seen


class Tally(Aggregate):
    total: int

    def __init__(self) -> None:
        self.total = 0

    @handles
    def bump(self, c: Bump) -> list[Bumped]:
        HANDLED.append("bump")
        return [Bumped(c.n)]

    @handles
    def say(self, c: Say) -> list[Said]:
        HANDLED.append("say")
        return [Said(c.text)]

    @applies
    def bumped(self, e: Bumped) -> None:
        self.total += e.n

    @applies
    def said(self, e: Said) -> None:
        pass


class Seen(Projector):
    """Every event's metadata, as projectors receive it."""

    def __init__(self) -> None:
        self.metas: list[tuple[str, str | None, str | None]] = []
        self.exact: bool = True  # every id a plain str (what a restart reads back)

    @applies
    def bumped(self, e: Bumped, meta: Recorded) -> None:
        self.metas.append((meta.stream_id, meta.correlation_id, meta.causation_id))
        for value in (meta.stream_id, meta.correlation_id, meta.causation_id):
            self.exact = self.exact and (value is None or type(value) is str)

    def seen(self) -> list[tuple[str, str | None, str | None]]:
        return self.metas

    def all_exact(self) -> bool:
        return self.exact

    def fails(self) -> int:
        raise LookupError("the query itself failed")

    def generator(self) -> Iterator[int]:
        return (n for n in range(3))

    def keys(self) -> Any:
        return {"a": 1}.keys()


class Id(str):
    """A str subclass, as ``numpy.str_`` or a typed-id class is: msgspec encodes none."""

    def __hash__(self) -> int:
        return 0  # must not decide which actor the id names

    def __eq__(self, other: object) -> bool:
        return True


Scenario = Callable[[Path], Coroutine[Any, Any, None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    """Run ``fn`` on trio and on asyncio."""
    SCENARIOS[fn.__name__] = fn
    return fn


def _open(path: Path) -> AbstractAsyncContextManager[Engine]:
    return Engine.open(path, aggregates=[Tally], projectors=[Seen])


def _events(path: Path) -> list[tuple[str, str | None, str | None]]:
    """Every event in the log at ``path`` (read back from disk), as (stream, corr, caus)."""
    log = LmdbEventLog(path)
    try:
        assert_log_consistent(log)
        return [(e.stream_id, e.correlation_id, e.causation_id) for e in log.read_all(1, 1000)]
    finally:
        log.close()


BAD_METADATA: list[Any] = [
    42,
    b"req-1",
    {"id": "req-1"},
    1.5,
    True,
    ["req-1"],
    "\ud800",  # a lone surrogate: no UTF-8 form
    "req-\udfff-1",
    "x" * 1025,  # one byte over the bound
    "€" * 342,  # 342 characters, 1026 UTF-8 bytes
    "x" * 10**7,
]


# -- metadata ----------------------------------------------------------------------------


@scenario
async def bad_metadata_is_refused_before_the_handler_runs(tmp_path: Path) -> None:
    HANDLED.clear()
    async with _open(tmp_path) as engine:
        for bad in BAD_METADATA:
            for name in ("correlation_id", "causation_id"):
                metadata: dict[str, Any] = {name: bad}
                with pytest.raises(InvalidArgument):
                    await engine.send(Tally, "a", Bump(1), **metadata)
                with pytest.raises(InvalidArgument):
                    engine.send_nowait(Tally, "a", Bump(1), **metadata)
        assert HANDLED == []
        assert engine.log.head_position() == 0
        ack = await engine.send(Tally, "a", Bump(1), correlation_id="r", causation_id="c")
        assert await engine.query(Seen.seen, after=ack.position) == [("a", "r", "c")]
    # Nothing bad was acknowledged, so everything reads back after a restart.
    assert _events(tmp_path) == [("a", "r", "c")]
    async with _open(tmp_path) as engine:
        await engine.wait_projected()
        assert await engine.query(Seen.seen) == [("a", "r", "c")]


@scenario
async def bad_metadata_is_an_invalid_argument_and_a_value_error(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        with pytest.raises(ValueError):
            await engine.send(Tally, "a", Bump(1), causation_id=42)  # type: ignore[arg-type]
        with pytest.raises(DefinitionError):  # what callers caught for bad stream ids
            await engine.send(Tally, "a", Bump(1), causation_id=42)  # type: ignore[arg-type]


@scenario
async def metadata_at_the_bound_is_stored_and_read_back(tmp_path: Path) -> None:
    longest = "x" * 1024
    widest = "€" * 341 + "x"  # 1024 UTF-8 bytes
    async with _open(tmp_path) as engine:
        await engine.send(Tally, "a", Bump(1), correlation_id=longest, causation_id=widest)
        await engine.send(Tally, "a", Bump(1), correlation_id="", causation_id="a\tb")
        # NUL is the one character refused: PostgreSQL's text cannot hold it, and an id
        # must be storable in every log a service may move to.
        with pytest.raises(InvalidArgument):
            await engine.send(Tally, "a", Bump(1), causation_id="a\x00b")
    assert _events(tmp_path) == [("a", longest, widest), ("a", "", "a\tb")]


@scenario
async def a_bad_id_never_fails_the_group_commit_of_another_caller(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        innocent = engine.send_nowait(Tally, "innocent", Bump(1), correlation_id="ok")
        # Queued behind the innocent append, in the same group commit if it were queued.
        with pytest.raises(InvalidArgument):
            await engine.send(Tally, "guilty", Bump(2), correlation_id="\ud800")
        with pytest.raises(InvalidArgument):
            await engine.send(Tally, "guilty", Bump(2), causation_id=Id("x" * 2000))
        assert await innocent == Committed("innocent", 1, 1, 1)
        assert await engine.send(Tally, "guilty", Bump(3)) == Committed("guilty", 1, 2, 1)
    assert _events(tmp_path) == [("innocent", "ok", None), ("guilty", None, None)]


@scenario
async def str_subclass_ids_are_stored_as_plain_str(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        ack = await engine.send(Tally, Id("a"), Bump(1), correlation_id=Id("r"))
        assert ack == Committed("a", 1, 1, 1) and type(ack.stream_id) is str
        # Id("b") == Id("a") and hashes alike: it must still name its own stream.
        pending = engine.send_nowait(Tally, Id("b"), Bump(2), causation_id=Id("c"))
        assert await pending == Committed("b", 1, 2, 1)
        assert await engine.query(Seen.seen, after=2) == [("a", "r", None), ("b", None, "c")]
        assert await engine.query(Seen.all_exact)  # live projectors see what a restart reads
    assert _events(tmp_path) == [("a", "r", None), ("b", None, "c")]


# -- stream ids --------------------------------------------------------------------------


@scenario
async def a_stream_id_with_no_utf8_form_is_refused(tmp_path: Path) -> None:
    HANDLED.clear()
    async with _open(tmp_path) as engine:
        for bad in ["\ud800", "acct-\udc80", "é\ud800", "\ud800" * 100, "a\ud800" * 200]:
            with pytest.raises(InvalidArgument):
                await engine.send(Tally, bad, Bump(1))
            with pytest.raises(InvalidArgument):
                engine.send_nowait(Tally, bad, Bump(1))
        for bad_id in [42, b"a", None, "", "a\x00", "x" * 401, "é" * 201]:
            with pytest.raises(InvalidArgument):
                await engine.send(Tally, bad_id, Bump(1))  # type: ignore[arg-type]
        assert HANDLED == []
        for read in (engine.log.read_stream, engine.log.stream_version, engine.log.load_snapshot):
            with pytest.raises(InvalidArgument):
                read("\ud800")
        widest = "é" * 200  # 400 UTF-8 bytes: the bound
        assert await engine.send(Tally, widest, Bump(1)) == Committed(widest, 1, 1, 1)
    assert _events(tmp_path) == [(widest, None, None)]


# -- events ------------------------------------------------------------------------------


@scenario
async def an_event_holding_a_lone_surrogate_is_an_encode_error(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        with pytest.raises(EncodeError):
            await engine.send(Tally, "a", Say("\ud800"))
        with pytest.raises(EncodeError):
            engine.send_nowait(Tally, "a", Say("a\udfffb"))
        assert engine.log.head_position() == 0
        assert await engine.send(Tally, "a", Say("fine")) == Committed("a", 1, 1, 1)
    assert [e[0] for e in _events(tmp_path)] == ["a"]


# -- queries -----------------------------------------------------------------------------


@scenario
async def a_malformed_after_is_refused(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        await engine.send(Tally, "a", Bump(1))
        for bad in ["3", True, False, -1, 1.5, 1.0, math.nan, b"1"]:
            with pytest.raises(InvalidArgument):
                await engine.query(Seen.seen, after=bad)  # type: ignore[arg-type]
        assert await engine.query(Seen.seen, after=0) is not None
        assert await engine.query(Seen.seen, after=1) == [("a", None, None)]


def test_the_testing_kits_query_call_fails_as_engine_query_does() -> None:
    cache = Seen()
    for query in (Seen.fails, Seen.generator, Seen.keys):
        with pytest.raises(HandlerError) as raised:
            call_query(query, cache)
        assert raised.value.__cause__ is not None
    cache.metas.append(("a", None, None))
    result = call_query(Seen.seen, cache)
    assert result == cache.metas and result is not cache.metas  # copied, as by the engine


@scenario
async def a_failing_query_is_a_handler_error(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        ack = await engine.send(Tally, "a", Bump(1))
        with pytest.raises(HandlerError) as raised:
            await engine.query(Seen.fails, after=ack.position)
        assert isinstance(raised.value.__cause__, LookupError)
        for uncopyable in (Seen.generator, Seen.keys):
            with pytest.raises(HandlerError) as raised:
                await engine.query(uncopyable)
            assert raised.value.__cause__ is not None
        # The projector carries on.
        assert await engine.query(Seen.seen) == [("a", None, None)]
        ack = await engine.send(Tally, "a", Bump(2))
        assert len(await engine.query(Seen.seen, after=ack.position)) == 2


@pytest.mark.parametrize("name", SCENARIOS)
async def test_on_trio(name: str, tmp_path: Path) -> None:
    await SCENARIOS[name](tmp_path)


@pytest.mark.parametrize("name", SCENARIOS)
def test_on_asyncio(name: str, tmp_path: Path) -> None:
    asyncio.run(SCENARIOS[name](tmp_path))


# -- Engine.open options -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"idle_timeout": math.nan},
        {"idle_timeout": math.inf},
        {"idle_timeout": -1.0},
        {"idle_timeout": 0},
        {"idle_timeout": "10"},
        {"idle_timeout": True},
        {"mailbox_size": True},
        {"mailbox_size": 1.5},
        {"mailbox_size": "64"},
        {"mailbox_size": 0},
        {"max_live_aggregates": math.inf},
        {"max_live_aggregates": 10.0},
        {"max_live_aggregates": -1},
        {"map_size": 0},
        {"map_size": 2**20 + 0.5},
        {"map_size": 2**64},
        {"map_size": True},
        {"max_map_size": -1},
        {"max_map_size": 2**64},
        {"map_size": 2**30, "max_map_size": 2**20},
        {"sync": 1},
        {"sync": "yes"},
        {"sync": None},
    ],
    ids=repr,
)
async def test_a_malformed_option_fails_at_open(options: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(DefinitionError):
        async with Engine.open(tmp_path, aggregates=[Tally], **options):
            pytest.fail("the engine opened")


async def test_well_formed_options_open(tmp_path: Path) -> None:
    async with Engine.open(
        tmp_path,
        aggregates=[Tally],
        sync=False,
        mailbox_size=1,
        max_live_aggregates=1,
        idle_timeout=0.5,
        map_size=2**20,
        max_map_size=2**20,
    ) as engine:
        assert await engine.send(Tally, "a", Bump(1)) == Committed("a", 1, 1, 1)
    async with Engine.open(log=MemoryEventLog(), aggregates=[Tally], idle_timeout=3) as engine:
        assert await engine.send(Tally, "a", Bump(1)) == Committed("a", 1, 1, 1)


# -- the writer: any path into the log ---------------------------------------------------


def _payload(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


BAD_APPENDS: dict[str, Append] = {
    "correlation_id int": Append("s", ANY, (("T", _payload(1)),), 42),  # type: ignore[arg-type]
    "causation_id surrogate": Append("s", ANY, (("T", _payload(1)),), None, "\ud800"),
    "correlation_id too long": Append("s", ANY, (("T", _payload(1)),), "x" * 1025),
    "stream id surrogate": Append("\ud800", ANY, (("T", _payload(1)),)),
    "stream id int": Append(7, ANY, (("T", _payload(1)),)),  # type: ignore[arg-type]
    "event name surrogate": Append("s", ANY, (("\ud800", _payload(1)),)),
    "event name empty": Append("s", ANY, (("", _payload(1)),)),
    "event name int": Append("s", ANY, ((1, _payload(1)),)),  # type: ignore[arg-type]
    "event name subclass": Append("s", ANY, ((Id("T"), _payload(1)),)),
    "payload str": Append("s", ANY, (("T", "x"),)),  # type: ignore[arg-type]
    "payload truncated": Append("s", ANY, (("T", _payload("abc")[:-1]),)),
    "payload two values": Append("s", ANY, (("T", _payload(1) + _payload(2)),)),
    "payload empty": Append("s", ANY, (("T", b""),)),
    "event not a pair": Append("s", ANY, (("T",),)),  # type: ignore[arg-type]
    "events not a tuple": Append("s", ANY, "TT"),  # type: ignore[arg-type]
    "expected_version str": Append("s", "0", (("T", _payload(1)),)),  # type: ignore[arg-type]
    "expected_version bool": Append("s", False, (("T", _payload(1)),)),
    "expected_version -2": Append("s", -2, (("T", _payload(1)),)),
    "expected_version 2**64": Append("s", 2**64, (("T", _payload(1)),)),
    "expected_version 10**5000": Append("s", 10**5000, (("T", _payload(1)),)),
    "aggregate surrogate": Append("s", NO_STREAM, (("T", _payload(1)),), aggregate_name="\ud800"),
    "aggregate int": Append("s", NO_STREAM, (("T", _payload(1)),), aggregate_name=3),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("bad", BAD_APPENDS.values(), ids=BAD_APPENDS.keys())
async def test_a_malformed_append_is_refused_alone_at_submit(
    bad: Append, lmdb_log: LmdbEventLog
) -> None:
    writer = Writer(lmdb_log)
    outcomes: list[object] = []
    writer.submit(make_append("before", NO_STREAM), outcomes.append)
    with pytest.raises(InvalidArgument):
        writer.submit(bad, outcomes.append)
    writer.submit(make_append("after", NO_STREAM), outcomes.append)
    writer.close()
    await writer.run()
    assert [getattr(o, "stream_id", o) for o in outcomes] == ["before", "after"]
    assert assert_log_consistent(lmdb_log) == {"before": 1, "after": 1}


async def test_a_malformed_append_is_refused_by_writer_append(lmdb_log: LmdbEventLog) -> None:
    writer = Writer(lmdb_log)  # not running: a refused append never waits for it
    for bad in BAD_APPENDS.values():
        with pytest.raises(InvalidArgument):
            await writer.append(bad)


async def test_str_subclasses_in_an_append_are_written_as_plain_str(lmdb_log: LmdbEventLog) -> None:
    writer = Writer(lmdb_log)
    outcomes: list[object] = []
    append = Append(Id("s"), NO_STREAM, (("T", _payload(1)),), Id("r"), Id("c"), Id("Agg"))
    writer.submit(append, outcomes.append)
    writer.close()
    await writer.run()
    [event] = lmdb_log.read_all(1, 10)
    assert (event.stream_id, event.correlation_id, event.causation_id) == ("s", "r", "c")
    assert event.aggregate == "Agg"


# -- definitions and untrusted commands -------------------------------------------------


def test_an_event_name_with_no_utf8_form_is_refused_at_registration() -> None:
    class Odd(msgspec.Struct, frozen=True, tag="odd-\ud800"):
        pass

    class Long(msgspec.Struct, frozen=True, tag="x" * 401):
        pass

    for cls in (Odd, Long):
        with pytest.raises(DefinitionError):
            EventRegistry().register(cls)


@pytest.mark.parametrize(
    ("data", "max_bytes"),
    [(None, 1024), (42, 1024), ({"type": "Bump"}, 1024), (b"{}", "1024"), (b"{}", -1)],
    ids=["None", "int", "dict", "max_bytes str", "max_bytes negative"],
)
def test_decode_command_refuses_arguments_of_the_wrong_type(data: Any, max_bytes: Any) -> None:
    with pytest.raises(InvalidArgument):
        decode_command(data, [Bump], max_bytes=max_bytes)


# -- the rest of the surface -------------------------------------------------------------


@scenario
async def other_malformed_arguments_get_typed_errors(tmp_path: Path) -> None:
    async with _open(tmp_path) as engine:
        await engine.send(Tally, "a", Bump(1))
        for bad in ["1", True, -1, 0.5]:
            with pytest.raises(InvalidArgument):
                await engine.wait_projected(bad)  # type: ignore[arg-type]
        await engine.wait_projected(1)
        with pytest.raises(UnknownQuery):
            await engine.query([Seen.seen])  # type: ignore[arg-type]
        with pytest.raises(UnknownQuery):
            engine.rebuild([Seen])  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            engine.is_live("\ud800")
        assert engine.is_live(Id("a")) and not engine.is_live("b")
        with pytest.raises(InvalidArgument):
            engine.decode_command(object(), b'{"type": "Bump", "n": 1}')  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            engine.decode_command(Tally, None)  # type: ignore[arg-type]
        assert engine.decode_command(Tally, b'{"type": "Bump", "n": 1}') == Bump(1)


def _huge_format() -> type[Tally]:
    class HugeFormat(Tally):
        snapshot_every = 1
        snapshot_format = 2**70  # beyond msgpack: every snapshot would fail its group

    return HugeFormat


def _long_name() -> type[Seen]:
    class LongName(Seen):
        name = "v" * 401  # beyond a checkpoint key

    return LongName


def _odd_name() -> type[Seen]:
    class OddName(Seen):
        name = "view-\ud800"

    return OddName


def _odd_aggregate_name() -> type[Tally]:
    class OddAggregateName(Tally):
        aggregate_name = "\udc00"

    return OddAggregateName


@pytest.mark.parametrize(
    "make",
    [_huge_format, _long_name, _odd_name, _odd_aggregate_name, lambda: object, lambda: 42],
    ids=[
        "snapshot_format 2**70",
        "name 401 bytes",
        "name surrogate",
        "aggregate_name",
        "object",
        "int",
    ],
)
async def test_a_class_the_log_cannot_store_fails_at_open(
    make: Callable[[], Any], tmp_path: Path
) -> None:
    # Refused where the class is defined, or at the latest when the engine opens; never
    # mid-flight, in a group commit.
    with pytest.raises(DefinitionError):
        kind = make()
        if isinstance(kind, type) and issubclass(kind, Projector):
            opened = Engine.open(tmp_path, aggregates=[Tally], projectors=[kind])
        else:
            opened = Engine.open(tmp_path, aggregates=[kind])
        async with opened:
            pytest.fail("the engine opened")


@pytest.mark.parametrize(
    "snapshot",
    [
        Snapshot(1, 2**64, b"s"),
        Snapshot(1, 10**5000, b"s"),  # not even repr() works on it
        Snapshot(1, -(2**63) - 1, b"s"),
        Snapshot(-1, 0, b"s"),
        Snapshot(1, 0, "s"),  # type: ignore[arg-type]
        Snapshot(1, 0, b"s", "\ud800"),
        Snapshot(1, 0, b"s", Id("Agg")),
        Snapshot(1.0, 0, b"s"),  # type: ignore[arg-type]
    ],
    ids=[
        "format 2**64",
        "format 10**5000",
        "format below -2**63",
        "version -1",
        "state str",
        "aggregate surrogate",
        "aggregate subclass",
        "version float",
    ],
)
async def test_a_malformed_snapshot_is_dropped_never_failing_the_group(
    snapshot: Snapshot, lmdb_log: LmdbEventLog
) -> None:
    writer = Writer(lmdb_log)
    outcomes: list[object] = []
    writer.submit(make_append("s", NO_STREAM), outcomes.append)
    writer.save_snapshot("s", snapshot)
    # The same fields as a projector's cache (which has no aggregate name): dropped
    # when they are what is malformed, saved otherwise.
    cache = ProjectorCache(snapshot.version, snapshot.format, snapshot.state)
    position, format = snapshot.version, snapshot.format
    cache_ok = (
        type(position) is int
        and 0 <= position < 2**64
        and type(format) is int
        and -(2**63) <= format < 2**64
        and type(snapshot.state) is bytes
    )
    writer.save_projector_cache("view", cache)
    writer.close()
    await writer.run()
    assert [getattr(o, "stream_id", o) for o in outcomes] == ["s"]
    assert lmdb_log.load_snapshot("s") is None
    assert lmdb_log.load_projector_cache("view") == (cache if cache_ok else None)


async def test_objects_must_match_the_events_one_for_one(lmdb_log: LmdbEventLog) -> None:
    writer = Writer(lmdb_log)
    for objects in ([], ["one", "two"]):
        with pytest.raises(InvalidArgument):
            writer.submit(make_append("s", NO_STREAM), lambda outcome: None, objects)
    assert writer.statistics().pending == 0


def test_names_the_log_cannot_store_are_refused_when_the_class_is_created() -> None:
    with pytest.raises(DefinitionError, match="aggregate_name"):

        class Surrogate(Aggregate):
            aggregate_name = "acct-\ud800"

    with pytest.raises(DefinitionError, match="Huge"):

        class Huge(Projector):
            name = "p" * 401

    with pytest.raises(DefinitionError, match="64-bit"):

        class Wide(Aggregate):
            snapshot_format = 2**70


async def test_an_unhashable_aggregate_is_unknown_not_a_type_error() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[]) as engine:
        with pytest.raises(UnknownCommand):
            await engine.send([], "a", object())  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [-1, 1.5, True, None, "64"])
async def test_the_projector_window_option_is_checked(window: object) -> None:
    with pytest.raises(DefinitionError, match="projector_window_bytes"):
        async with Engine.open(log=MemoryEventLog(), aggregates=[], projector_window_bytes=window):  # type: ignore[arg-type]
            pass


class Note(msgspec.Struct, frozen=True):
    text: str


class Noted(msgspec.Struct, frozen=True):
    text: str


async def test_the_projector_window_is_reported_and_bounded_by_the_option() -> None:
    class Seen(Projector):
        def __init__(self) -> None:
            self.count = 0

        @applies
        def noted(self, e: Noted, meta: Recorded) -> None:
            self.count += 1

        def seen(self) -> int:
            return self.count

    class Noter(Aggregate):
        @handles
        def note(self, c: Note) -> list[Noted]:
            return [Noted(c.text)]

        @applies
        def noted(self, e: Noted) -> None:
            pass

    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Noter], projectors=[Seen], projector_window_bytes=4096
    ) as engine:
        for i in range(20):
            ack = await engine.send(Noter, f"n-{i}", Note("x" * 1000))
        assert await engine.query(Seen.seen, after=ack.position) == 20
        window = engine.statistics().window
        assert 0 < window.bytes <= 4096
        assert window.events < 20  # older ones left; Seen had applied them all already
