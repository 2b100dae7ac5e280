"""The group-commit writer: own results and errors per caller, batching, close, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
import trio
import trio.lowlevel
import trio.testing

from actorlog import (
    ConcurrencyError,
    DefinitionError,
    Engine,
    EngineClosed,
    EngineError,
    StorageError,
    StorageFull,
)
from actorlog.engine._log import AppendOutcome
from actorlog.engine._writer import CommitBatch
from actorlog.engine.testing import make_append
from actorlog.lowlevel import Writer
from actorlog.storage import (
    ANY,
    NO_STREAM,
    Append,
    AppendResult,
    LmdbEventLog,
    MemoryEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
    assert_log_consistent,
)
from benchmarks.bank import (
    Account,
    Deposit,
)


async def append_into(
    writer: Writer, append: Append, results: dict[int, AppendResult | EngineError], key: int
) -> None:
    try:
        results[key] = await writer.append(append)
    except EngineError as e:
        results[key] = e


async def test_each_caller_gets_its_own_result() -> None:
    log = MemoryEventLog()
    writer = Writer(log)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for i in range(40):
            nursery.start_soon(
                append_into, writer, make_append(f"s{i}", NO_STREAM, i % 3 + 1), results, i
            )
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    events = {e.position: e for e in log.read_all(1, 1000)}
    for i, result in results.items():
        assert isinstance(result, AppendResult)
        assert (result.stream_id, result.first_version, result.last_version) == (
            f"s{i}",
            1,
            i % 3 + 1,
        )
        mine = [events[p] for p in range(result.first_position, result.last_position + 1)]
        assert [(e.stream_id, e.version) for e in mine] == [
            (f"s{i}", v) for v in range(1, i % 3 + 2)
        ]
    assert len(events) == sum(i % 3 + 1 for i in range(40))


async def test_each_caller_gets_its_own_error_in_a_shared_batch() -> None:
    log = MemoryEventLog()
    log.append_batch([make_append("taken", NO_STREAM, 2)])
    writer = Writer(log)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        # Every caller queues before the writer starts: they share one transaction.
        for i in range(10):
            append = make_append("taken", 7) if i % 3 == 0 else make_append(f"s{i}", NO_STREAM)
            nursery.start_soon(append_into, writer, append, results, i)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    assert writer.statistics().commits == 1
    for i, result in results.items():
        if i % 3 == 0:
            assert isinstance(result, ConcurrencyError)
            assert (result.stream_id, result.expected, result.actual) == ("taken", 7, 2)
        else:
            assert isinstance(result, AppendResult) and result.stream_id == f"s{i}"
    assert writer.statistics().failed_appends == 4
    assert_log_consistent(log)


async def test_appends_group_into_few_commits(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path, sync=False)
    writer = Writer(log)
    per_task, tasks = 20, 64

    async def appender(stream_id: str) -> None:
        for version in range(per_task):
            result = await writer.append(make_append(stream_id, version))
            assert result.last_version == version + 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            async with trio.open_nursery() as appenders:
                for i in range(tasks):
                    appenders.start_soon(appender, f"s{i}")
            writer.close()
        stats = writer.statistics()
        assert stats.appends == stats.events == per_task * tasks
        assert stats.commits < stats.appends // 8
        assert 8 < stats.largest_batch <= tasks
        assert stats.mean_batch == stats.appends / stats.commits
        assert (stats.failed_appends, stats.pending) == (0, 0)
        assert assert_log_consistent(log) == {f"s{i}": per_task for i in range(tasks)}
    finally:
        log.close()


async def test_close_commits_what_is_queued() -> None:
    log = MemoryEventLog()
    writer = Writer(log)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(append_into, writer, make_append(f"s{i}", NO_STREAM), results, i)
        writer.save_projector_cache("p", ProjectorCache(3, 0, b"c"))
        await trio.testing.wait_all_tasks_blocked()
        writer.close()  # before the writer even started
        nursery.start_soon(writer.run)
        await writer.wait_stopped()
    assert all(isinstance(r, AppendResult) for r in results.values()) and len(results) == 5
    assert log.head_position() == 5
    assert log.load_projector_cache("p") == ProjectorCache(3, 0, b"c")


async def test_submit_and_append_after_close_raise_engine_closed() -> None:
    writer = Writer(MemoryEventLog())
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(EngineClosed):
        writer.submit(make_append("a", ANY), lambda outcome: None)
    with pytest.raises(EngineClosed):
        await writer.append(make_append("a", ANY))


async def test_append_waits_for_room_when_max_pending_are_queued() -> None:
    log = MemoryEventLog()
    writer = Writer(log, max_pending=4)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(append_into, writer, make_append(f"s{i}", NO_STREAM), results, i)
        await trio.testing.wait_all_tasks_blocked()
        assert writer.statistics().pending == 4  # the other six wait for room
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        assert len(results) == 10
        assert writer.statistics().largest_batch <= 4
        writer.close()
    assert all(isinstance(r, AppendResult) for r in results.values())


async def cancellable_append(
    writer: Writer,
    append: Append,
    results: dict[int, AppendResult | EngineError],
    key: int,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await append_into(writer, append, results, key)


async def test_max_pending_below_one_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError):
        Writer(MemoryEventLog(), max_pending=0)


async def test_cancelled_waiter_for_room_does_not_strand_the_others() -> None:
    log = MemoryEventLog()
    writer = Writer(log, max_pending=1)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(append_into, writer, make_append("a", NO_STREAM), results, 0)
        await trio.testing.wait_all_tasks_blocked()
        doomed = await nursery.start(
            cancellable_append, writer, make_append("b", NO_STREAM), results, 1
        )
        nursery.start_soon(append_into, writer, make_append("c", NO_STREAM), results, 2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer.run)
        doomed.cancel()  # "b" gives up its wait for room in the same pass as the commit
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    assert isinstance(results[0], AppendResult) and isinstance(results[2], AppendResult)
    assert 1 not in results
    assert [e.stream_id for e in log.read_all()] == ["a", "c"]


async def test_close_refuses_appends_waiting_for_room() -> None:
    writer = Writer(MemoryEventLog(), max_pending=1)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(append_into, writer, make_append(f"s{i}", NO_STREAM), results, i)
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
        nursery.start_soon(writer.run)
    # trio runs the three in no fixed order: one got the room, the others were refused.
    kinds = sorted(type(r).__name__ for r in results.values())
    assert kinds == ["AppendResult", "EngineClosed", "EngineClosed"]


async def test_cancelling_the_writer_fails_queued_appends_with_engine_closed() -> None:
    writer = Writer(MemoryEventLog())
    outcomes: list[AppendOutcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
        writer.submit(make_append("a", NO_STREAM), outcomes.append)
    assert len(outcomes) == 1 and isinstance(outcomes[0], EngineClosed)
    with pytest.raises(EngineClosed):
        writer.submit(make_append("a", NO_STREAM), outcomes.append)


async def test_full_storage_fails_the_group_and_the_writer_goes_on() -> None:
    log = MemoryEventLog(max_events=2)
    writer = Writer(log)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for i in range(3):
            nursery.start_soon(append_into, writer, make_append(f"s{i}", NO_STREAM), results, i)
        await trio.testing.wait_all_tasks_blocked()
        assert all(isinstance(r, StorageFull) for r in results.values()) and len(results) == 3
        log.max_events = None
        assert (await writer.append(make_append("s0", NO_STREAM))).last_position == 1
        writer.close()


class ExplodingLog(MemoryEventLog):
    """A backend with a bug: its next append_batch raises a plain exception."""

    explode = True

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        if self.explode:
            self.explode = False
            raise RuntimeError("boom")
        return super().append_batch(appends, snapshots=snapshots, projector_caches=projector_caches)


async def test_a_backend_exception_fails_its_group_not_the_writer() -> None:
    log = ExplodingLog()
    writer = Writer(log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        with pytest.raises(StorageError, match="boom") as caught:
            await writer.append(make_append("a", NO_STREAM))
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert (await writer.append(make_append("a", NO_STREAM))).last_version == 1
        writer.close()


async def test_invalid_stream_id_fails_only_its_caller() -> None:
    log = MemoryEventLog()
    writer = Writer(log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        with pytest.raises(DefinitionError):
            await writer.append(make_append("", NO_STREAM))
        with pytest.raises(DefinitionError):
            writer.save_projector_cache("", ProjectorCache(1, 0, b""))
        with pytest.raises(DefinitionError):
            writer.save_snapshot("a\x00", Snapshot(1, 0, b""))
        assert (await writer.append(make_append("ok", NO_STREAM))).last_position == 1
        writer.close()


async def test_on_commit_sees_each_batch_in_log_order_with_its_objects() -> None:
    batches: list[CommitBatch] = []
    writer = Writer(MemoryEventLog(), on_commit=batches.append)
    outcomes: list[AppendOutcome] = []
    writer.submit(make_append("a", NO_STREAM, 2), outcomes.append, ["a1", "a2"])
    writer.submit(make_append("b", 5), outcomes.append, ["lost"])
    writer.submit(make_append("c", NO_STREAM), outcomes.append)
    writer.close()
    await writer.run()
    assert [(e.position, e.stream_id, obj) for e, obj in batches[0]] == [
        (1, "a", "a1"),
        (2, "a", "a2"),
        (3, "c", None),
    ]
    assert isinstance(outcomes[1], ConcurrencyError)


async def test_snapshots_and_projector_caches_ride_along_with_appends() -> None:
    log = MemoryEventLog()
    writer = Writer(log)
    writer.submit(make_append("a", NO_STREAM), lambda outcome: None)
    writer.save_snapshot("a", Snapshot(1, 0, b"s"))
    writer.save_projector_cache("p", ProjectorCache(1, 0, b"c"))
    writer.close()
    await writer.run()
    assert writer.statistics().commits == 1
    assert log.load_snapshot("a") == Snapshot(1, 0, b"s")
    assert log.load_projector_cache("p") == ProjectorCache(1, 0, b"c")


async def test_cancelled_caller_still_commits_what_it_queued() -> None:
    log = MemoryEventLog()
    writer = Writer(log)
    results: dict[int, AppendResult | EngineError] = {}
    async with trio.open_nursery() as nursery:
        caller = await nursery.start(
            cancellable_append, writer, make_append("a", NO_STREAM), results, 0
        )
        await trio.testing.wait_all_tasks_blocked()
        caller.cancel()  # after it queued its append
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    assert caller.cancelled_caught and results == {}
    assert log.head_position() == 1


async def scenario_writer_serves_many_callers() -> None:
    log = MemoryEventLog()
    writer = Writer(log)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        async with anyio.create_task_group() as callers:
            for i in range(20):
                callers.start_soon(writer.append, make_append(f"s{i % 4}", ANY))
        writer.close()
    assert assert_log_consistent(log) == {f"s{i}": 5 for i in range(4)}
    assert writer.statistics().commits < 20


async def test_writer_serves_many_callers() -> None:
    await scenario_writer_serves_many_callers()


def test_writer_serves_many_callers_asyncio() -> None:
    asyncio.run(scenario_writer_serves_many_callers())


async def test_a_group_wide_storage_error_is_a_distinct_object_per_caller() -> None:
    from actorlog.storage import MemoryEventLog

    log = MemoryEventLog(max_events=1)
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        pendings = [engine.send_nowait(Account, f"a{n}", Deposit(1)) for n in range(5)]
        errors = []
        for pending in pendings:
            with pytest.raises(StorageFull) as caught:
                await pending
            errors.append(caught.value)
        assert len({id(e) for e in errors}) == 5
