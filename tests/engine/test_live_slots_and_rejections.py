"""Regressions from a broad review of lifecycle and concurrency: each test failed before its
fix (lost live-slot wake-ups, rejections checked on the wrong actor or flag, a
``wait_projected`` that outlived its engine).

The mailbox tests drive ``Aggregates`` with the hand-cranked writer of
``tests/engine/actor_host.py``, so every interleaving is the test's choice, not the scheduler's.
"""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio.testing

from actorlog import Committed, Engine, EngineClosed, HandlerError, StorageError
from benchmarks.bank import Account, Balances, Deposit, Deposited, Totals
from tests.support import backlog, stats

from .actor_host import Sender, host, nowait, start
from .api_scenarios import Add, Explode, Ledger, Spend, TooLittle

# -- live slots (max_live_aggregates) ----------------------------------------------------


async def test_a_live_slot_wake_up_taken_by_a_cancelled_sender_is_passed_on() -> None:
    aggregates, writer, _log = host(max_live=1)
    nowait(aggregates, Add(1), "a")
    gone, next_ = Sender(aggregates, Add(2), "b"), Sender(aggregates, Add(3), "c")
    async with trio.open_nursery() as nursery:
        await start(nursery, gone, next_)  # both wait for "a" to go idle
        gone.scope.cancel()  # trio aborts the wait; its entry is still queued ...
        writer.commit()  # ... so "a" going idle wakes the sender that is leaving
        await trio.testing.wait_all_tasks_blocked()
        activated = aggregates.is_live("c")
        next_.scope.cancel()
    assert isinstance(gone.result, trio.Cancelled)
    assert activated, "the sender for 'c' still waits although 'a' is idle"


async def test_an_actor_left_idle_by_a_woken_sender_wakes_a_sender_waiting_for_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    aggregates, writer, _log = host(max_live=1, mailbox_size=1)
    nowait(aggregates, Add(1), "a")
    refused = Sender(aggregates, Spend(100), "a")

    async def commit_now_and_then() -> None:
        while True:
            await trio.sleep(1)
            writer.commit()

    result: Committed | None = None
    async with trio.open_nursery() as nursery:
        await start(nursery, refused)  # waits for room in "a"
        writer.commit()  # "a" hands `refused` its slot: busy, nothing in flight
        nursery.start_soon(commit_now_and_then)
        with trio.move_on_after(60):
            # Runs up to its wait before `refused` runs: "a" is busy, so it waits for a
            # live slot; then `refused` is rejected and leaves "a" idle.
            result = await aggregates.send(Ledger, "b", Add(2), None, None)
        nursery.cancel_scope.cancel()
    assert isinstance(refused.result, TooLittle)
    assert result == Committed("b", 1, 2, 1)


# -- rejections decided on state still in flight ------------------------------------------


async def test_a_rejection_on_in_flight_state_of_a_reactivated_actor_is_decided_again() -> None:
    aggregates, writer, _log = host(max_live=1, mailbox_size=2)
    nowait(aggregates, Add(1), "a")
    with pytest.raises(HandlerError):
        nowait(aggregates, Explode(), "a")  # "a" is stale with a command in flight
    spender = Sender(aggregates, Spend(50), "a")
    async with trio.open_nursery() as nursery:
        await start(nursery, spender)  # waits for "a" to drain
        writer.commit()  # drained: `spender` is woken, "a" is idle until it runs
        nowait(aggregates, Add(1), "b")  # passivates "a"
        writer.commit()
        nowait(aggregates, Add(100), "a")  # a new "a" (balance 101) ...
        doomed = nowait(aggregates, Spend(100), "a")  # ... and 1 once this lands
        await trio.testing.wait_all_tasks_blocked()  # `spender` waits for room
        writer.commit(1)  # Add(100) is durable; `spender` decides on balance 1
        await trio.testing.wait_all_tasks_blocked()
        writer.fail_first(StorageError("injected"))  # Spend(100) never happened
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(StorageError):
        await doomed
    # The durable balance is 101: Spend(50) must be decided again on it, and commit.
    assert spender.result == Committed("a", 3, 4, 1)


async def test_a_rejection_is_decided_again_even_if_another_sender_reloaded_first() -> None:
    aggregates, writer, _log = host(mailbox_size=4)
    nowait(aggregates, Add(10))
    writer.commit()  # durable balance 10
    doomed = nowait(aggregates, Spend(10))  # in flight: the state says 0
    spender = Sender(aggregates, Spend(5))
    async with trio.open_nursery() as nursery:
        await start(nursery, spender)  # rejected on balance 0: waits for `doomed`
        writer.fail_first(StorageError("injected"))  # `doomed` fails; `spender` is woken
        nowait(aggregates, Add(1))  # but another sender runs first and reloads "a"
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(StorageError):
        await doomed
    # Durable: 10, then Add(1); Spend(5) must be decided again on 11, and commit.
    assert spender.result == Committed("a", 3, 3, 1)


# -- closing -------------------------------------------------------------------------------


async def _wait_projected_across_close() -> None:
    waiter: asyncio.Future[None] | None = None
    async with Engine.open(
        log=backlog(steps=16, event=Deposited(1)),
        aggregates=[Account],
        projectors=[Balances, Totals],
    ) as engine:
        # Totals starts over on the backlog, 16 of its largest batches or more; Balances
        # stays at the head.
        engine.rebuild(Totals)
        ack = await engine.send(Account, "acct-0", Deposit(1))
        # A waiter outside the engine's task group (a request handler, say), for a written
        # position: it gets past Balances and waits on Totals.
        waiter = asyncio.ensure_future(engine.wait_projected(ack.position))
        await asyncio.sleep(0)
        assert stats(engine, "Totals").checkpoint < ack.position
    # The close failed the waiters of every projector and stopped them: it ends too. (The
    # path where Balances releases it during the close, after Totals' waiters were failed,
    # is pinned in test_projector_host.py: a later wait on a closed projector raises.)
    with pytest.raises(EngineClosed):
        await asyncio.wait_for(waiter, 1)


def test_wait_projected_across_projectors_ends_when_the_engine_closes_asyncio() -> None:
    asyncio.run(_wait_projected_across_close())
