"""Engine.query on trio: waits are event-driven, a query without ``after`` never yields."""

from __future__ import annotations

import asyncio
import pickle

import pytest
import trio
import trio.testing

from actorlog import (
    Engine,
    EngineClosed,
    ProjectorFaulted,
    Recorded,
    UnknownPosition,
    UnknownQuery,
    applies,
)
from actorlog.storage import MemoryEventLog
from benchmarks.bank import Account, Balances, Deposit, Deposited, Totals
from tests.engine.projector_scenarios import POISON, Fragile
from tests.support import backlog, stats


class _Steps(trio.abc.Instrument):
    """Counts the scheduling steps of the task in ``task``, once it is set."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_after_is_woken_by_the_event_not_by_polling(
    mock_clock: trio.testing.MockClock, bank_behind: Engine
) -> None:
    # The mock clock never advances by itself: a waiter that slept between polls would
    # never see its position. One that polled without sleeping would take a step for each
    # of the projector's steps through the backlog (16 or more); woken by the projector
    # once it applied the position, the waiter takes one step after it first parks.
    engine = bank_behind
    target = engine.statistics().head
    results: list[int] = []
    steps = _Steps()
    behind: list[bool] = []

    async def reader() -> None:
        steps.task = trio.lowlevel.current_task()
        behind.append(stats(engine, "Balances").checkpoint < target)
        results.append(await engine.query(Balances.balance, "backlog", after=target))

    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            started = trio.current_time()
            await trio.testing.wait_all_tasks_blocked()
            assert behind == [True]  # it had to wait: written, not yet applied
            assert results == [target]
            assert trio.current_time() == started
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 1


async def test_query_without_after_has_no_checkpoint(bank: Engine) -> None:
    engine = bank
    ack = await engine.send(Account, "a", Deposit(5))
    await engine.wait_projected(ack.position)
    with trio.testing.assert_no_checkpoints():
        assert await engine.query(Balances.balance, "a") == 5
        # after= a position already applied does not wait either
        assert await engine.query(Balances.balance, "a", after=ack.position) == 5


async def test_query_of_an_unhosted_projector_raises(bank: Engine) -> None:
    engine = bank
    with pytest.raises(UnknownQuery):
        await engine.query(Totals.net)
    with pytest.raises(UnknownQuery):
        await engine.query(len, "not a query")


async def test_after_a_position_not_yet_applied_fails_when_the_engine_closes() -> None:
    log = backlog(steps=16, event=Deposited(1))
    target = log.head_position()
    errors: list[BaseException] = []
    async with (
        trio.open_nursery() as nursery,
        Engine.open(
            log=log, aggregates=[Account], projectors=[Balances], wait_for_projectors=False
        ) as engine,
    ):
        # A position no command wrote is refused at once, not waited for until the close.
        with pytest.raises(UnknownPosition):
            await engine.query(Balances.balance, "a", after=target + 1)

        async def reader() -> None:
            try:
                await engine.query(Balances.balance, "a", after=target)
            except EngineClosed as e:
                errors.append(e)

        nursery.start_soon(reader)
        host = engine._projectors[Balances]  # white box: the waiter heap
        while not host._waiters:
            await trio.lowlevel.checkpoint()
    assert len(errors) == 1
    assert stats(engine, "Balances").checkpoint < target  # the close ended it, not the event


async def test_beyond_the_head_is_refused_without_a_checkpoint_and_the_head_waits(
    bank_behind: Engine,
) -> None:
    engine = bank_behind
    head = engine.statistics().head
    # Refused before anything is awaited: nothing of the wait was set up.
    with trio.testing.assert_no_checkpoints(), pytest.raises(UnknownPosition):
        await engine.query(Balances.balance, "backlog", after=head + 1)
    with trio.testing.assert_no_checkpoints(), pytest.raises(UnknownPosition):
        await engine.wait_projected(head + 1, timeout=1)
    assert engine._projectors[Balances]._waiters == []  # white box: nothing queued
    # The head itself, written but not yet applied, is waited for.
    assert stats(engine, "Balances").checkpoint < head
    assert await engine.query(Balances.balance, "backlog", after=head) == head
    await engine.wait_projected(head)


async def test_cancelling_a_waiting_query_leaves_the_projector_working(
    bank_behind: Engine,
) -> None:
    engine = bank_behind
    target = engine.statistics().head
    assert stats(engine, "Balances").checkpoint < target
    with trio.move_on_after(0) as scope:
        await engine.query(Balances.balance, "backlog", after=target)
    assert scope.cancelled_caught
    ack = await engine.send(Account, "a", Deposit(3))
    assert await engine.query(Balances.balance, "a", after=ack.position) == 3
    assert await engine.query(Balances.balance, "backlog") == target


async def test_cancelled_after_waits_leave_nothing_behind() -> None:
    # Each cancelled wait costs the projector at most one step: 100 of them stay far
    # inside a backlog of 128 steps.
    log = backlog(steps=128, event=Deposited(1))
    target = log.head_position()
    async with Engine.open(
        log=log, aggregates=[Account], projectors=[Balances], wait_for_projectors=False
    ) as engine:
        for _ in range(100):
            with trio.move_on_after(0) as scope:
                await engine.query(Balances.balance, "a", after=target)
            assert scope.cancelled_caught  # it waited: cancelled, not answered
        host = engine._projectors[Balances]  # white box: the waiter heap
        assert host._waiters == []
        assert stats(engine, "Balances").checkpoint < target


async def test_each_query_on_a_halted_projector_raises_a_fresh_error() -> None:
    Fragile.broken = True
    try:
        async with Engine.open(
            log=MemoryEventLog(), aggregates=[Account], projectors=[Fragile]
        ) as engine:
            ack = await engine.send(Account, "a", Deposit(POISON))
            errors: list[ProjectorFaulted] = []
            for _ in range(3):
                with pytest.raises(ProjectorFaulted) as caught:
                    await engine.query(Fragile.total, after=ack.position)
                errors.append(caught.value)
            assert stats(engine, "Fragile").state == "halted"
            assert errors[1] is not errors[2]
    finally:
        Fragile.broken = True


class Doubled(Balances):
    """Inherits Balances' queries, answers them from its own, different cache."""

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) + 2 * e.amount


async def test_a_query_goes_to_the_projector_that_defines_it() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances, Doubled]
    ) as engine:
        ack = await engine.send(Account, "a", Deposit(5))
        assert await engine.query(Balances.balance, "a", after=ack.position) == 5


async def test_wait_projected_after_close_raises(autojump_clock: trio.testing.MockClock) -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]
    ) as engine:
        pass
    with trio.fail_after(1), pytest.raises(EngineClosed):
        await engine.wait_projected(1)


def test_projector_faulted_survives_pickling() -> None:
    error = ProjectorFaulted("Balances", 3, "Deposited", "ValueError('x')")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.projector, copy.position, copy.event_type, copy.error) == (
        "Balances",
        3,
        "Deposited",
        "ValueError('x')",
    )
    assert str(copy) == str(error)


# -- on asyncio: a wait_projected from outside the engine's task group, across a close ------


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
