"""engine/_aggregates.py and engine/_reply.py, white-box: the mailbox with a hand-cranked
writer, so every interleaving is chosen by the test rather than the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from actorlog import (
    Committed,
    ConcurrencyError,
    DefinitionError,
    EngineClosed,
    HandlerError,
    Overloaded,
    StorageError,
)
from actorlog.engine._reply import Reply, reply_factory

from .actor_host import Sender, amounts, host, nowait, peek, start
from .api_scenarios import Add, Explode, Ledger, Noop, Peek, Peeked, SnapLedger, Spend, TooLittle


async def test_send_waits_for_room_until_a_commit_frees_a_slot() -> None:
    aggregates, writer, _log = host(mailbox_size=1)
    first = nowait(aggregates, Add(1))
    waiter = Sender(aggregates, Add(2))
    async with trio.open_nursery() as nursery:
        await start(nursery, waiter)
        stats = aggregates.statistics()
        assert (stats.in_flight, stats.waiting, len(writer.queue)) == (1, 1, 1)
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        assert len(writer.queue) == 1  # the waiter decided as soon as it had room
        writer.commit()
    assert await first == Committed("a", 1, 1, 1)
    assert waiter.result == Committed("a", 2, 2, 1)


async def test_room_is_handed_out_in_arrival_order() -> None:
    aggregates, writer, log = host(mailbox_size=1)
    nowait(aggregates, Add(0))
    senders = [Sender(aggregates, Add(n)) for n in range(1, 6)]
    async with trio.open_nursery() as nursery:
        await start(nursery, *senders)
        while writer.queue:
            writer.commit()
            await trio.testing.wait_all_tasks_blocked()
    assert amounts(log) == [0, 1, 2, 3, 4, 5]


async def test_no_sender_barges_past_a_woken_waiter() -> None:
    aggregates, writer, log = host(mailbox_size=1)
    nowait(aggregates, Add(1))
    woken, late = Sender(aggregates, Add(2)), Sender(aggregates, Add(3))
    async with trio.open_nursery() as nursery:
        await start(nursery, woken)
        writer.commit()  # the freed slot is handed to `woken`, which has not run yet
        with pytest.raises(Overloaded):
            nowait(aggregates, Add(99))
        await start(nursery, late)  # queues behind; `woken` runs and decides
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
    assert amounts(log) == [1, 2, 3]


async def test_cancelled_waiter_leaves_the_queue_and_the_next_gets_the_slot() -> None:
    aggregates, writer, log = host(mailbox_size=1)
    nowait(aggregates, Add(1))
    gone, next_ = Sender(aggregates, Add(2)), Sender(aggregates, Add(3))
    async with trio.open_nursery() as nursery:
        await start(nursery, gone, next_)
        gone.scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert aggregates.statistics().waiting == 1
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
    assert isinstance(gone.result, trio.Cancelled)
    assert next_.result == Committed("a", 2, 2, 1)
    assert amounts(log) == [1, 3]


async def test_waiter_cancelled_after_its_slot_was_handed_passes_it_on() -> None:
    aggregates, writer, log = host(mailbox_size=1)
    nowait(aggregates, Add(1))
    gone, next_ = Sender(aggregates, Add(2)), Sender(aggregates, Add(3))
    async with trio.open_nursery() as nursery:
        await start(nursery, gone, next_)
        gone.scope.cancel()  # trio aborts the wait: the entry is still queued ...
        writer.commit()  # ... and is handed the slot before its task runs again
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
    assert isinstance(gone.result, trio.Cancelled)
    assert amounts(log) == [1, 3]
    assert aggregates.statistics().waiting == 0


async def test_woken_sender_that_is_rejected_passes_its_slot_on() -> None:
    aggregates, writer, _log = host(mailbox_size=1)
    nowait(aggregates, Add(1))
    refused, next_ = Sender(aggregates, Spend(50)), Sender(aggregates, Add(2))
    async with trio.open_nursery() as nursery:
        await start(nursery, refused, next_)
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
    assert isinstance(refused.result, TooLittle)
    assert next_.result == Committed("a", 2, 2, 1)


async def test_woken_sender_whose_handler_raises_passes_its_slot_on() -> None:
    aggregates, writer, _log = host(mailbox_size=1)
    nowait(aggregates, Add(1))
    broken, next_ = Sender(aggregates, Explode()), Sender(aggregates, Add(2))
    async with trio.open_nursery() as nursery:
        await start(nursery, broken, next_)
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
    assert isinstance(broken.result, HandlerError)
    assert next_.result == Committed("a", 2, 2, 1)
    assert peek(aggregates) == (3, [1, 2])  # reloaded before `next_` decided


async def test_stale_actor_with_commands_in_flight_is_reloaded_once_drained() -> None:
    aggregates, writer, _log = host(mailbox_size=4)
    first = nowait(aggregates, Add(1))
    with pytest.raises(HandlerError):
        nowait(aggregates, Explode())
    with pytest.raises(Overloaded):  # stale, and cannot be reloaded while busy
        nowait(aggregates, Add(5))
    waiter = Sender(aggregates, Add(2))
    async with trio.open_nursery() as nursery:
        await start(nursery, waiter)
        assert aggregates.statistics().waiting == 1
        writer.commit()  # `first` commits: nothing in flight, the waiter reloads
        await trio.testing.wait_all_tasks_blocked()
        assert aggregates.statistics().reloads == 1
        writer.commit()
    assert await first == Committed("a", 1, 1, 1)
    assert waiter.result == Committed("a", 2, 2, 1)
    assert peek(aggregates) == (3, [1, 2])


async def test_failed_commit_fails_the_commands_decided_after_it() -> None:
    aggregates, writer, log = host(mailbox_size=4)
    pendings = [nowait(aggregates, Add(n)) for n in (1, 2, 3)]
    writer.fail_first(StorageError("disk on fire"))
    writer.commit()
    with pytest.raises(StorageError):
        await pendings[0]
    for later in pendings[1:]:  # decided on state that never became durable
        with pytest.raises(ConcurrencyError):
            await later
    assert log.stream_version("a") == 0
    assert peek(aggregates) == (0, [])  # reloaded
    nowait(aggregates, Add(4))
    writer.commit()
    assert amounts(log) == [4]


async def test_handler_returning_something_else_than_a_list_is_a_handler_error() -> None:
    class Sloppy(Ledger):
        def add(self, c: Add) -> list[Any]:
            self.balance = -1
            return "oops"  # type: ignore[return-value]

    Sloppy.command_handlers = {**Ledger.command_handlers, Add: Sloppy.add}
    aggregates, _writer, _log = host(kinds=[Sloppy])
    with pytest.raises(HandlerError, match="returned str"):
        aggregates.send_nowait(Sloppy, "a", Add(1), None)
    with pytest.raises(Peeked) as seen:
        aggregates.send_nowait(Sloppy, "a", Peek(), None)
    assert seen.value.balance == 0  # reloaded: the scribble is gone


async def test_submit_failure_marks_the_actor_stale_and_counts_nothing_in_flight() -> None:
    aggregates, writer, log = host()
    writer.closed = True
    with pytest.raises(EngineClosed):
        nowait(aggregates, Add(1))
    assert aggregates.statistics().in_flight == 0
    writer.closed = False
    assert peek(aggregates) == (0, [])  # the speculative Add(1) is gone
    nowait(aggregates, Add(2))
    writer.commit()
    assert amounts(log) == [2]


async def test_stream_live_as_another_aggregate_type_is_refused() -> None:
    aggregates, _writer, _log = host()
    nowait(aggregates, Noop())
    with pytest.raises(DefinitionError, match="is a live Ledger, not a SnapLedger"):
        aggregates.send_nowait(SnapLedger, "a", Noop(), None)


# -- closing -----------------------------------------------------------------------------


async def test_close_fails_waiting_senders_and_keeps_commands_in_flight() -> None:
    aggregates, writer, log = host(mailbox_size=2)
    in_flight = [nowait(aggregates, Add(n)) for n in (1, 2)]  # "a" is full
    waiting = Sender(aggregates, Add(3))  # will wait for room
    nowait(aggregates, Add(5), "c")
    with pytest.raises(HandlerError):
        nowait(aggregates, Explode(), "c")
    draining = Sender(aggregates, Add(4), "c")  # will wait for "c" to drain and reload
    async with trio.open_nursery() as nursery:
        await start(nursery, waiting, draining)
        assert aggregates.statistics().waiting == 2
        aggregates.close()
    assert isinstance(waiting.result, EngineClosed)
    assert isinstance(draining.result, EngineClosed)
    with pytest.raises(EngineClosed):
        nowait(aggregates, Add(6), "d")
    writer.commit()  # what was in a mailbox still commits
    assert [await p for p in in_flight] == [Committed("a", 1, 1, 1), Committed("a", 2, 2, 1)]
    assert amounts(log, "c") == [5]


async def test_sender_woken_just_before_close_decides_nothing() -> None:
    aggregates, writer, _log = host(mailbox_size=1)
    nowait(aggregates, Add(1))
    woken = Sender(aggregates, Add(2))
    async with trio.open_nursery() as nursery:
        await start(nursery, woken)
        writer.commit()  # hands `woken` the slot ...
        aggregates.close()  # ... but the engine closes before it runs
    assert isinstance(woken.result, EngineClosed)
    assert writer.queue == []


# -- snapshots ---------------------------------------------------------------------------


async def test_snapshot_waits_until_nothing_is_in_flight() -> None:
    aggregates, writer, _log = host(mailbox_size=8)
    for n in (1, 2, 3, 4):
        aggregates.send_nowait(SnapLedger, "a", Add(n), None)
    writer.commit(3)  # version 3 is durable, but the state already holds Add(4)
    assert writer.snapshots == []
    writer.commit()
    [(stream_id, snapshot)] = writer.snapshots
    assert (stream_id, snapshot.version) == ("a", 4)
    restored = SnapLedger.from_snapshot(snapshot.state)
    assert (restored.balance, restored.history) == (10, [1, 2, 3, 4])


async def test_no_snapshot_of_a_stale_actor() -> None:
    aggregates, writer, _log = host(mailbox_size=8)
    for n in (1, 2, 3):
        aggregates.send_nowait(SnapLedger, "a", Add(n), None)
    with pytest.raises(HandlerError):
        aggregates.send_nowait(SnapLedger, "a", Explode(), None)
    writer.commit()
    assert writer.snapshots == []


# -- replies -----------------------------------------------------------------------------


async def exercise_reply(new_reply: Callable[[], Reply], cancel: Callable[[], Any]) -> None:
    """Reply semantics both loops share; ``cancel`` cancels the waiting task."""
    ready = new_reply()
    assert ready.set_result(1) and not ready.set_result(2) and not ready.set_error(ValueError())
    assert await ready.wait() == 1
    assert await ready.wait() == 1  # may be awaited again

    failed = new_reply()
    assert failed.set_error(KeyError("k"))
    for _ in range(2):
        with pytest.raises(KeyError):
            await failed.wait()


async def test_trio_reply_semantics() -> None:
    new_reply = reply_factory()
    await exercise_reply(new_reply, lambda: None)
    late = new_reply()
    with trio.move_on_after(0) as scope:
        await late.wait()  # parks, is cancelled
    assert scope.cancelled_caught
    assert late.set_result("kept")
    assert await late.wait() == "kept"

    contested = new_reply()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(contested.wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="already waiting"):
            await contested.wait()
        contested.set_result(None)


def test_asyncio_reply_semantics() -> None:
    async def main() -> None:
        new_reply = reply_factory()
        await exercise_reply(new_reply, lambda: None)
        late = new_reply()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late.wait(), 0)
        assert late.set_result("kept")
        assert await late.wait() == "kept"

        unawaited = new_reply()  # completed with an error nobody reads: no warning
        unawaited.set_error(ValueError("ignored"))

        contested = new_reply()
        task = asyncio.create_task(contested.wait())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await contested.wait()
        contested.set_result(None)
        await task

    asyncio.run(main())
