"""Engine.open's edges and the newcomer traps (issue 12, part 2): one of path or log=,
LMDB options refused with log=, the host's own exception unwrapped, projectors caught up
at open, query timeouts, the read-only log view, typed errors at send."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing

from actorlog import (
    Aggregate,
    DefinitionError,
    Engine,
    InvalidArgument,
    Overloaded,
    Projector,
    QueryTimeout,
    StorageLocked,
    UnknownCommand,
    applies,
    handles,
)
from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, Append, LmdbEventLog, MemoryEventLog, StoredEvent
from benchmarks.bank import (
    Account,
    OpenAccount,
)
from tests.support import backlog, filled, stats


class Add(msgspec.Struct, frozen=True):
    n: int


class Added(msgspec.Struct, frozen=True):
    n: int


class Counter(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Added]:
        return [Added(c.n)]

    @applies
    def added(self, e: Added) -> None:
        self.total += e.n


class Sum(Projector):
    def __init__(self) -> None:
        self.total = 0

    @applies
    def added(self, e: Added) -> None:
        self.total += e.n

    def value(self) -> int:
        return self.total


# -- path or log=, never both, never neither -------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"log": MemoryEventLog(), "sync": False},
        {"log": MemoryEventLog(), "sync": True},  # even the default value, passed, is refused
        {"log": MemoryEventLog(), "map_size": 1 << 20},
        {"log": MemoryEventLog(), "max_map_size": 1 << 30},
    ],
)
async def test_open_refuses_neither_or_ignored_options(options: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        async with Engine.open(aggregates=[Counter], **options):
            pass


async def test_open_refuses_both_path_and_log(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError):
        async with Engine.open(tmp_path, log=MemoryEventLog(), aggregates=[Counter]):
            pass


async def test_open_refuses_none_as_path() -> None:
    with pytest.raises(DefinitionError):
        async with Engine.open(None, aggregates=[Counter]):
            pass


# -- the host's exception comes out as itself --------------------------------------------------


async def _raise_in_block(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Counter], projectors=[Sum]) as engine:
        await engine.send(Counter, "a", Add(1))
        raise KeyError("mine")


async def test_the_blocks_own_error_is_not_wrapped_on_trio(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="mine"):
        await _raise_in_block(tmp_path)
    # The engine closed properly: the directory opens again and kept the command.
    async with Engine.open(tmp_path, aggregates=[Counter], projectors=[Sum]) as engine:
        assert await engine.query(Sum.value) == 1


def test_the_blocks_own_error_is_not_wrapped_on_asyncio(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="mine"):
        asyncio.run(_raise_in_block(tmp_path))


async def test_cancelling_the_block_still_cancels(tmp_path: Path) -> None:
    with trio.move_on_after(0.01) as scope:
        async with Engine.open(tmp_path, aggregates=[Counter]):
            await trio.sleep_forever()
    assert scope.cancelled_caught


class _Fatal(BaseException):
    """A failure no engine task may contain (not an Exception)."""


class _DyingLog(MemoryEventLog):
    """A backend whose reads kill the task that makes them."""

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        raise _Fatal("the log died")


async def _engine_task_dies() -> None:
    log = _DyingLog()
    log.append_batch([Append("a", ANY, (EventRegistry([Added]).encode(Added(1)),))])
    async with Engine.open(
        log=log, aggregates=[Counter], projectors=[Sum], wait_for_projectors=False
    ):
        await anyio.sleep(1)  # the projector's catch-up read fails meanwhile


async def test_an_engine_tasks_failure_still_comes_out_as_a_group_on_trio() -> None:
    with pytest.RaisesGroup(_Fatal):
        await _engine_task_dies()


def test_an_engine_tasks_failure_still_comes_out_as_a_group_on_asyncio() -> None:
    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(_engine_task_dies())
    assert [type(e) for e in caught.value.exceptions] == [_Fatal]


# -- projectors are caught up when open returns ----------------------------------------------


async def test_open_returns_with_projectors_caught_up() -> None:
    async with Engine.open(
        log=filled(3000, Added(1)), aggregates=[Counter], projectors=[Sum]
    ) as engine:
        assert await engine.query(Sum.value) == 3000
        assert engine.statistics().projectors[0].state == "live"


async def test_open_can_skip_the_wait_and_statistics_say_catching_up() -> None:
    async with Engine.open(
        log=filled(3000, Added(1)),
        aggregates=[Counter],
        projectors=[Sum],
        wait_for_projectors=False,
    ) as engine:
        assert engine.statistics().projectors[0].state == "catching_up"
        assert await engine.query(Sum.value, after=3000) == 3000


# -- waits end --------------------------------------------------------------------------------


async def test_query_after_times_out_typed(mock_clock: trio.testing.MockClock) -> None:
    # A position written but not yet applied (Sum catches up on a backlog); the mock
    # clock moves only when the test says, so the waits end by their timeout, not by luck.
    log = backlog(steps=16, event=Added(1))
    target = log.head_position()
    async with Engine.open(
        log=log, aggregates=[Counter], projectors=[Sum], wait_for_projectors=False
    ) as engine:
        errors: list[Exception] = []

        async def wait(call: Callable[[], Awaitable[object]]) -> None:
            try:
                await call()
            except Exception as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, lambda: engine.query(Sum.value, after=target, timeout=5))
            nursery.start_soon(wait, lambda: engine.wait_projected(target, timeout=5))
            host = engine._projectors[Sum]  # white box: the waiter heap
            while len(host._waiters) < 2:  # both wait (the clock has not moved yet)
                await trio.lowlevel.checkpoint()
            mock_clock.jump(5)
        assert stats(engine, "Sum").checkpoint < target  # they timed out still waiting
        assert [type(e) for e in errors] == [QueryTimeout, QueryTimeout]
        assert all(isinstance(e, TimeoutError) for e in errors)  # a TimeoutError too
        ack = await engine.send(Counter, "a", Add(2))
        assert await engine.query(Sum.value, after=ack.position, timeout=5) == target + 2


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "1"])
async def test_query_refuses_a_bad_timeout(bad: Any) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter], projectors=[Sum]) as engine:
        with pytest.raises(InvalidArgument):
            await engine.query(Sum.value, after=0, timeout=bad)


# -- the log view ----------------------------------------------------------------------------


async def test_engine_log_reads_but_cannot_write_or_close(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Counter], map_size=1 << 20) as engine:
        ack = await engine.send(Counter, "a", Add(1))
        view = engine.log
        assert view.head_position() == ack.position == 1
        assert [e.version for e in view.read_stream("a")] == [1]
        assert [e.position for e in view.read_all()] == [1]
        assert view.stream_version("a") == 1
        assert view.map_size == 1 << 20
        assert not hasattr(view, "append_batch") and not hasattr(view, "close")
        engine.set_max_map_size(1 << 30)
        assert view.max_map_size == 1 << 30
        with pytest.raises(InvalidArgument):
            engine.set_max_map_size(1 << 10)  # below the current map
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter]) as engine:
        assert engine.log.map_size is None
        with pytest.raises(DefinitionError):
            engine.set_max_map_size(1 << 30)


# -- typed errors at send --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [{"type": "Add", "n": 1}, b'{"type":"Add"}', '{"type":"Add"}'])
async def test_raw_input_as_a_command_hints_at_decode_command(raw: object) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Counter]) as engine:
        with pytest.raises(UnknownCommand, match="decode_command"):
            await engine.send(Counter, "a", raw)
        with pytest.raises(UnknownCommand, match="decode_command"):
            engine.send_nowait(Counter, "a", raw)


async def test_send_nowait_without_a_live_slot_raises_exactly_overloaded() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Counter], max_live_aggregates=1
    ) as engine:
        engine.send_nowait(Counter, "a", Add(1))  # "a" is live and busy
        with pytest.raises(Overloaded) as caught:
            engine.send_nowait(Counter, "b", Add(1))
        assert type(caught.value) is Overloaded


async def test_the_same_directory_twice_in_one_process_says_so(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Counter]):
        with pytest.raises(StorageLocked, match="in this process"):
            async with Engine.open(tmp_path, aggregates=[Counter]):
                pass
    async with Engine.open(tmp_path, aggregates=[Counter]):  # released at close
        pass


# -- closing ---------------------------------------------------------------------------------


async def test_outside_cancellation_still_commits_what_was_decided(tmp_path: Path) -> None:
    with trio.CancelScope() as scope:
        async with Engine.open(tmp_path, aggregates=[Account], sync=False) as engine:
            pendings = [engine.send_nowait(Account, f"a{n}", OpenAccount("x")) for n in range(10)]
            scope.cancel()
            await trio.sleep_forever()
    results = [await p for p in pendings]  # every caller is answered, none with an error
    assert [r.position for r in results] == list(range(1, 11))
    log = LmdbEventLog(tmp_path)
    try:
        assert log.head_position() == 10
    finally:
        log.close()
