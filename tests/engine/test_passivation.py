"""Passivation (engine/_passivation.py): at most ``max_live_aggregates`` actors in memory,
busy ones never passivated, and a sender waiting for a live slot always gets one once an
actor goes idle, whoever took or refused the wake-up before it.

Most tests drive ``Aggregates`` with the hand-cranked writer of
``tests/engine/actor_host.py``, so every interleaving is the test's choice, not the
scheduler's.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actorlog import (
    Committed,
    Engine,
    Overloaded,
)
from actorlog.storage import MemoryEventLog
from benchmarks.bank import (
    Account,
    OpenAccount,
)

from .actor_host import Sender, host, nowait, start
from .api_scenarios import Add, Ledger, Spend, TooLittle


async def test_many_new_streams_by_send_nowait_stay_under_the_live_cap() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], max_live_aggregates=50
    ) as engine:
        accepted, refused = [], 0
        for n in range(500):
            try:
                accepted.append(engine.send_nowait(Account, f"n-{n}", OpenAccount("x")))
            except Overloaded:
                refused += 1
        assert (len(accepted), refused) == (50, 450)
        assert engine.statistics().aggregates.live == 50
        for pending in accepted:
            await pending


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
            result = await aggregates.send(Ledger, "b", Add(2), None)
        nursery.cancel_scope.cancel()
    assert isinstance(refused.result, TooLittle)
    assert result == Committed("b", 1, 2, 1)


async def test_busy_actors_are_never_passivated_and_the_cap_is_hard() -> None:
    aggregates, writer, _log = host(max_live=2)
    nowait(aggregates, Add(1), "a")
    nowait(aggregates, Add(1), "b")  # both busy: nothing commits yet
    with pytest.raises(Overloaded, match="max_live_aggregates"):
        nowait(aggregates, Add(1), "c")
    assert aggregates.statistics().live == 2
    writer.commit()  # both idle now
    nowait(aggregates, Add(1), "c")  # the least recently used ("a") makes room
    assert [aggregates.is_live(sid) for sid in "abc"] == [False, True, True]
    assert aggregates.statistics().passivations == 1
    assert aggregates.statistics().peak_live == 2


async def test_a_sender_waits_for_a_live_slot_and_gets_it_when_one_goes_idle() -> None:
    aggregates, writer, _log = host(max_live=1)
    nowait(aggregates, Add(1), "a")
    other = Sender(aggregates, Add(2), "b")
    async with trio.open_nursery() as nursery:
        await start(nursery, other)
        assert other.result is None  # waiting: "a" is busy and the cap is 1
        assert aggregates.statistics().waiting == 1
        writer.commit()  # "a" goes idle and wakes the waiter
        await trio.testing.wait_all_tasks_blocked()
        assert aggregates.is_live("b") and not aggregates.is_live("a")
        writer.commit()
    assert other.result == Committed("b", 1, 2, 1)


async def test_waiting_senders_keep_their_actor_live() -> None:
    aggregates, writer, _log = host(mailbox_size=1, max_live=1)
    nowait(aggregates, Add(1))
    waiter = Sender(aggregates, Add(2))
    async with trio.open_nursery() as nursery:
        await start(nursery, waiter)
        with pytest.raises(Overloaded):  # activating "b" cannot passivate busy "a"
            nowait(aggregates, Add(1), "b")
        assert aggregates.is_live("a")
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
    assert waiter.result == Committed("a", 2, 2, 1)
    assert aggregates.statistics().live == 1


async def test_idle_sweep_skips_busy_actors() -> None:
    aggregates, writer, _log = host()
    nowait(aggregates, Add(1), "idle")
    writer.commit()
    nowait(aggregates, Add(1), "busy")
    assert aggregates.sweep_idle() == 0  # both were used since the last sweep
    assert aggregates.sweep_idle() == 1  # "idle" goes; "busy" has a command in flight
    assert not aggregates.is_live("idle") and aggregates.is_live("busy")
    writer.commit()
    assert aggregates.sweep_idle() == 1
    assert aggregates.statistics().live == 0
