"""Service commands through the public API: idempotent command ids, authorization and the
metadata every event records. Each ``@scenario`` is an ``async def (tmp_path)`` written
against anyio; ``test_service_commands.py`` runs every one on trio and on asyncio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from actorlog import (
    Aggregate,
    CommandIdRetention,
    Committed,
    DefinitionError,
    Engine,
    InvalidArgument,
    Policy,
    Projector,
    Recorded,
    Rejected,
    Unauthorized,
    applies,
    handles,
)
from actorlog.storage import ANY, Append, AppendResult, MemoryEventLog

# -- the domain --------------------------------------------------------------------------


class Add(msgspec.Struct, frozen=True):
    n: int


class Touch(msgspec.Struct, frozen=True):
    """Accepted, appends nothing."""


class Added(msgspec.Struct, frozen=True):
    n: int


DECIDED: list[int] = []
"""Every ``Add`` a handler decided, in order: a retry answered from its first attempt adds
nothing here."""


class Counter(Aggregate):
    total: int

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, command: Add) -> list[Added]:
        DECIDED.append(command.n)
        if self.total + command.n < 0:
            raise Rejected(f"total would be {self.total + command.n}")
        return [Added(command.n)]

    @handles
    def touch(self, command: Touch) -> None:
        return None

    @applies
    def added(self, event: Added) -> None:
        self.total += event.n


class SnapCounter(Counter):
    snapshot_every = 1


class Entry(msgspec.Struct, frozen=True):
    stream_id: str
    version: int
    n: int
    command_id: str | None
    principal: str | None
    correlation_id: str | None
    causation_id: str | None
    headers: tuple[tuple[str, str], ...] | None
    timestamp: float


class Audit(Projector):
    """Every event with the metadata its ``Recorded`` carries."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    @applies
    def added(self, event: Added, meta: Recorded) -> None:
        self.entries.append(
            Entry(
                meta.stream_id,
                meta.version,
                event.n,
                meta.command_id,
                meta.principal,
                meta.correlation_id,
                meta.causation_id,
                meta.headers,
                meta.timestamp,
            )
        )

    def all(self) -> list[Entry]:
        return list(self.entries)

    def total(self, stream_id: str) -> int:
        return sum(e.n for e in self.entries if e.stream_id == stream_id)


Scenario = Callable[[Path], Coroutine[Any, Any, None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


def _events(engine: Engine, stream_id: str) -> list[tuple[int, str | None]]:
    """The stream's events as the log holds them: (version, command id)."""
    return [(e.version, e.command_id) for e in engine.log.read_stream(stream_id)]


# -- idempotency -------------------------------------------------------------------------


@scenario
async def a_retried_command_returns_the_original_result_without_deciding(tmp_path: Path) -> None:
    DECIDED.clear()
    async with Engine.open(tmp_path / "log", aggregates=[Counter], sync=False) as engine:
        first = await engine.send(Counter, "a", Add(5), command_id="c-1")
        await engine.send(Counter, "a", Add(1))  # the stream moves on
        again = await engine.send(Counter, "a", Add(5), command_id="c-1")
        assert again == first == Committed("a", 1, 1, 1)
        # Even a retry whose command now differs: the id names the command.
        assert await engine.send(Counter, "a", Add(99), command_id="c-1") == first
        assert DECIDED == [5, 1]
        assert _events(engine, "a") == [(1, "c-1"), (2, None)]


@scenario
async def a_retry_is_answered_across_passivation_snapshots_and_restarts(tmp_path: Path) -> None:
    DECIDED.clear()
    path = tmp_path / "log"
    async with Engine.open(
        path, aggregates=[SnapCounter], sync=False, max_live_aggregates=1
    ) as engine:
        first = await engine.send(SnapCounter, "a", Add(2), command_id="x")
        second = await engine.send(SnapCounter, "a", Add(3), command_id="y")
        await engine.send(SnapCounter, "b", Add(1))  # passivates "a"
        assert not engine.is_live("a")
        assert await engine.send(SnapCounter, "a", Add(2), command_id="x") == first
    async with Engine.open(path, aggregates=[SnapCounter], sync=False) as engine:
        assert await engine.send(SnapCounter, "a", Add(3), command_id="y") == second
        assert await engine.send(SnapCounter, "a", Add(2), command_id="x") == first
        assert DECIDED == [2, 3, 1]
        assert _events(engine, "a") == [(1, "x"), (2, "y")]


@scenario
async def concurrent_sends_of_one_id_append_once(tmp_path: Path) -> None:
    DECIDED.clear()
    results: list[Committed] = []
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter]) as engine:

        async def send() -> None:
            results.append(await engine.send(Counter, "a", Add(1), command_id="same"))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(send)
        pendings = [engine.send_nowait(Counter, "a", Add(1), command_id="now") for _ in range(5)]
        results.extend([await p for p in pendings])
        assert results[:20] == [Committed("a", 1, 1, 1)] * 20
        assert results[20:] == [Committed("a", 2, 2, 1)] * 5
        assert DECIDED == [1, 1]
        assert _events(engine, "a") == [(1, "same"), (2, "now")]


@scenario
async def a_rejected_command_records_nothing_and_its_retry_decides_again(tmp_path: Path) -> None:
    DECIDED.clear()
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter]) as engine:
        with pytest.raises(Rejected):
            await engine.send(Counter, "a", Add(-1), command_id="r")
        await engine.send(Counter, "a", Add(5))
        assert await engine.send(Counter, "a", Add(-1), command_id="r") == Committed("a", 2, 2, 1)
        assert DECIDED == [-1, 5, -1]


@scenario
async def a_command_with_no_event_records_its_id(tmp_path: Path) -> None:
    async with Engine.open(tmp_path / "log", aggregates=[Counter], sync=False) as engine:
        await engine.send(Counter, "a", Add(1))
        touched = await engine.send(Counter, "a", Touch(), command_id="t")
        assert touched == Committed("a", 1, 0, 0)
        await engine.send(Counter, "a", Add(1))
        assert await engine.send(Counter, "a", Touch(), command_id="t") == touched
        assert engine.log.head_position() == 2


@scenario
async def command_ids_are_per_stream_and_may_be_long(tmp_path: Path) -> None:
    long_id = "k" * 1024  # with a 400-byte stream id, past LMDB's key limit: stored digested
    stream = "s" * 400
    async with Engine.open(tmp_path / "log", aggregates=[Counter], sync=False) as engine:
        a = await engine.send(Counter, "a", Add(1), command_id="same")
        b = await engine.send(Counter, "b", Add(1), command_id="same")
        assert (a.stream_id, b.stream_id, b.position) == ("a", "b", 2)
        first = await engine.send(Counter, stream, Add(1), command_id=long_id)
        other = await engine.send(Counter, stream, Add(1), command_id=long_id[:-1] + "j")
        assert other.version == 2
        assert await engine.send(Counter, stream, Add(1), command_id=long_id) == first


@scenario
async def retention_drops_the_oldest_ids_by_count_and_by_age(tmp_path: Path) -> None:
    DECIDED.clear()
    logs = [
        ("lmdb", {"path": tmp_path / "log", "command_ids": CommandIdRetention(max_ids=2)}),
        ("memory", {"log": MemoryEventLog(command_ids=CommandIdRetention(max_ids=2))}),
    ]
    for _, where in logs:
        async with Engine.open(aggregates=[Counter], **where) as engine:  # type: ignore[arg-type]
            for cid in ("1", "2", "3"):
                await engine.send(Counter, "a", Add(1), command_id=cid)
            assert (await engine.send(Counter, "a", Add(1), command_id="3")).version == 3
            # "1" is gone: a retry decides again.
            assert (await engine.send(Counter, "a", Add(1), command_id="1")).version == 4
    aged = CommandIdRetention(max_age=1e-9)
    async with Engine.open(tmp_path / "aged", aggregates=[Counter], command_ids=aged) as engine:
        await engine.send(Counter, "a", Add(1), command_id="old")
        await engine.send(Counter, "a", Add(1), command_id="new")  # its commit prunes "old"
        assert (await engine.send(Counter, "a", Add(1), command_id="old")).version == 3


def _both_logs(tmp_path: Path, retention: CommandIdRetention) -> list[dict[str, Any]]:
    """Engine.open arguments for an LMDB and a memory log with ``retention``: the two must
    answer every id alike."""
    return [
        {"path": tmp_path / "lmdb", "command_ids": retention, "sync": False},
        {"log": MemoryEventLog(command_ids=retention)},
    ]


@scenario
async def an_expired_id_is_a_new_command_on_every_log(tmp_path: Path) -> None:
    # Age is the subject here, so time passes for real (0.3 s): an id older than max_age
    # is never answered, even before the log has pruned it, and once sent again it is
    # the newest id (the count bound then drops older ones first).
    for where in _both_logs(tmp_path, CommandIdRetention(max_ids=2, max_age=0.2)):
        DECIDED.clear()
        async with Engine.open(aggregates=[Counter], **where) as engine:
            await engine.send(Counter, "a", Add(1), command_id="x")
            await anyio.sleep(0.3)
            await engine.send(Counter, "a", Add(2), command_id="w")
            again = await engine.send(Counter, "a", Add(3), command_id="x")  # expired: new
            assert again.version == 3
            await engine.send(Counter, "a", Add(4), command_id="z")  # drops "w", not "x"
            assert await engine.send(Counter, "a", Add(3), command_id="x") == again
            assert DECIDED == [1, 2, 3, 4], where


@scenario
async def a_group_commit_keeps_its_own_ids_past_the_count_bound(tmp_path: Path) -> None:
    # Two ids in one group commit with max_ids=1: the newest (the group's last) is kept
    # on every log; the LMDB log drops whole group entries and so keeps both.
    for where in _both_logs(tmp_path, CommandIdRetention(max_ids=1)):
        DECIDED.clear()
        async with Engine.open(aggregates=[Counter], **where) as engine:
            first = engine.send_nowait(Counter, "s1", Add(1), command_id="a")
            second = engine.send_nowait(Counter, "s2", Add(2), command_id="b")
            done = await second
            await first
            assert await engine.send(Counter, "s2", Add(2), command_id="b") == done
            assert DECIDED == [1, 2], where


@scenario
async def the_callers_own_failures_are_typed(tmp_path: Path) -> None:
    class Boom(BaseException):
        pass

    def record(principal: Any) -> str:
        raise Boom

    def broken_headers() -> Any:
        yield ("a", "1")
        raise ValueError("the caller's generator failed")

    class Items(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise RuntimeError("the caller's mapping failed")

    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Counter], record_principal=record
    ) as engine:
        for kwargs in (
            {"principal": User("ann")},
            {"headers": broken_headers()},
            {"headers": Items(a="1")},
        ):
            with pytest.raises(InvalidArgument):
                await engine.send(Counter, "a", Add(1), **kwargs)
        assert engine.log.head_position() == 0


class Meddler(Policy):
    def may_query(
        self,
        principal: Any,
        query: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> bool:
        kwargs["stream_id"] = "someone-else"  # type: ignore[index]
        return True


@scenario
async def a_policy_cannot_rewrite_a_querys_arguments(tmp_path: Path) -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Counter], projectors=[Audit], authorize=Meddler()
    ) as engine:
        with pytest.raises(Unauthorized) as refused:
            await engine.query(Audit.total, stream_id="a")
        assert isinstance(refused.value.__cause__, TypeError)  # a read-only mapping


@scenario
async def malformed_command_ids_are_refused_before_deciding(tmp_path: Path) -> None:
    DECIDED.clear()
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter]) as engine:
        for bad in ("", 5, b"id", "\ud800", "x" * 1025, "a\x00b"):
            with pytest.raises(InvalidArgument):
                await engine.send(Counter, "a", Add(1), command_id=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument):
                engine.send_nowait(Counter, "a", Add(1), command_id=bad)  # type: ignore[arg-type]
        assert DECIDED == []
        assert engine.log.head_position() == 0
    for bad_retention in ({"max_ids": 0}, {"max_age": math.nan}, {"max_age": 0}):
        with pytest.raises(DefinitionError):
            CommandIdRetention(**bad_retention)


# -- authorization -----------------------------------------------------------------------


class Tellers(Policy):
    """Tellers may add to any account; an owner reads only their own total."""

    def may_send(self, principal: Any, aggregate: Any, stream_id: str, command: Any) -> bool:
        return principal == "teller" and aggregate is Counter

    def may_query(
        self,
        principal: Any,
        query: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> bool:
        return query is Audit.total and args == (principal,)


@scenario
async def a_policy_refuses_commands_and_queries_fail_closed(tmp_path: Path) -> None:
    DECIDED.clear()
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Counter], projectors=[Audit], authorize=Tellers()
    ) as engine:
        done = await engine.send(Counter, "a", Add(3), principal="teller")
        for who in ("a", None):
            with pytest.raises(Unauthorized):
                await engine.send(Counter, "a", Add(1), principal=who)
            with pytest.raises(Unauthorized):
                engine.send_nowait(Counter, "a", Add(1), principal=who)
        assert DECIDED == [3]
        assert engine.log.head_position() == 1
        assert await engine.query(Audit.total, "a", principal="a", after=done.position) == 3
        with pytest.raises(Unauthorized):
            await engine.query(Audit.total, "a", principal="b")
        with pytest.raises(Unauthorized):
            await engine.query(Audit.all, principal="a")


class Broken(Policy):
    def may_send(self, principal: Any, aggregate: Any, stream_id: str, command: Any) -> bool:
        raise KeyError(principal)

    def may_query(self, *args: Any) -> bool:
        return 1  # type: ignore[return-value]  # truthy is not True: refused


@scenario
async def a_policy_that_raises_or_answers_vaguely_refuses(tmp_path: Path) -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Counter], projectors=[Audit], authorize=Broken()
    ) as engine:
        with pytest.raises(Unauthorized) as refused:
            await engine.send(Counter, "a", Add(1), principal="p")
        assert isinstance(refused.value.__cause__, KeyError)
        with pytest.raises(Unauthorized):
            await engine.query(Audit.all)
        assert engine.log.head_position() == 0
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter], authorize=Policy()) as e:
        with pytest.raises(Unauthorized):  # the base policy refuses everything
            await e.send(Counter, "a", Add(1))


class AsyncPolicy(Policy):
    async def may_send(self, *args: Any) -> bool:  # type: ignore[override]
        return True


@scenario
async def a_policy_must_be_a_synchronous_policy(tmp_path: Path) -> None:
    for bad in (AsyncPolicy(), object(), lambda *a: True):
        with pytest.raises(DefinitionError):
            async with Engine.open(log=MemoryEventLog(), aggregates=[Counter], authorize=bad):  # type: ignore[arg-type]
                pass


# -- metadata ----------------------------------------------------------------------------


class User(msgspec.Struct, frozen=True):
    name: str
    roles: frozenset[str] = frozenset()


@scenario
async def every_event_records_who_why_and_headers_live_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "log"
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

    def name_of(principal: Any) -> str | None:
        return principal.name if isinstance(principal, User) else None

    async with Engine.open(
        path, aggregates=[Counter], projectors=[Audit], record_principal=name_of, sync=False
    ) as engine:
        before = await anyio.to_thread.run_sync(lambda: __import__("time").time())
        done = await engine.send(
            Counter,
            "a",
            Add(4),
            command_id="c",
            principal=User("ann"),
            correlation_id="req-1",
            causation_id="msg-7",
            headers=headers,
        )
        await engine.send(Counter, "a", Add(1), principal="bob", headers=[("a", "1"), ("a", "2")])
        await engine.send(Counter, "a", Add(1))
        live = await engine.query(Audit.all, after=done.position + 2)
    expected = [
        ("c", "ann", "req-1", "msg-7", tuple(headers.items())),
        (None, "bob", None, None, (("a", "1"), ("a", "2"))),
        (None, None, None, None, None),
    ]
    got = [(e.command_id, e.principal, e.correlation_id, e.causation_id, e.headers) for e in live]
    assert got == expected
    assert live[0].timestamp >= before - 1  # the commit's wall clock
    async with Engine.open(path, aggregates=[Counter], projectors=[Audit], sync=False) as engine:
        rebuilt = await engine.query(Audit.all)
    assert rebuilt == live


@scenario
async def malformed_metadata_is_refused_before_deciding(tmp_path: Path) -> None:
    DECIDED.clear()
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter]) as engine:
        bad_calls: list[dict[str, Any]] = [
            {"principal": User("ann")},  # not a str, and no record_principal
            {"principal": "\ud800"},
            {"principal": "a\x00"},
            {"correlation_id": "\x00"},
            {"headers": {"a\x00": "x"}},
            {"headers": {"a": "x\x00"}},
            {"headers": {"a": 1}},
            {"headers": {"": "x"}},
            {"headers": {"a": "\ud800"}},
            {"headers": "a=1"},
            {"headers": [("a",)]},
            {"headers": {"a": "x" * 5000}},
            {"headers": 5},
        ]
        for kwargs in bad_calls:
            with pytest.raises(InvalidArgument):
                await engine.send(Counter, "a", Add(1), **kwargs)
            with pytest.raises(InvalidArgument):
                engine.send_nowait(Counter, "a", Add(1), **kwargs)
        assert DECIDED == []
        assert engine.log.head_position() == 0

    def broken(principal: Any) -> str:
        raise LookupError(principal)

    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Counter], record_principal=broken
    ) as engine:
        with pytest.raises(InvalidArgument):
            await engine.send(Counter, "a", Add(1), principal=User("x"))
        assert engine.log.head_position() == 0


@scenario
async def a_command_id_recorded_by_another_writer_answers_the_send(tmp_path: Path) -> None:
    # The log's own check, under the engine's: an id another writer of the log records
    # after the engine looked (between the decision and its commit) is answered from the
    # log, and the decision is dropped (the actor reloads).
    log = MemoryEventLog()
    async with Engine.open(log=log, aggregates=[Counter]) as engine:
        await engine.send(Counter, "a", Add(1))
        pending = engine.send_nowait(Counter, "a", Add(2), command_id="dup")  # decided
        other = Append("a", ANY, (("Added", msgspec.msgpack.encode(Added(5))),), command_id="dup")
        [theirs], _ = log.append_batch([other])  # the other writer commits first
        assert await pending == Committed("a", 2, 2, 1)
        assert theirs == AppendResult("a", 2, 2, 2, 2, theirs.timestamp)  # type: ignore[union-attr]
        assert (await engine.send(Counter, "a", Add(1))).version == 3  # reloaded: 1 + 5 + 1
        assert await engine.send(Counter, "a", Add(-7)) == Committed("a", 4, 4, 1)  # total 0
        with pytest.raises(Rejected):
            await engine.send(Counter, "a", Add(-1))
