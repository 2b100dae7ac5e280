"""Engine.query on trio: waits are event-driven, a query without ``after`` never yields."""

from __future__ import annotations

import pickle

import pytest
import trio
import trio.testing

from actorlog import Engine, EngineClosed, ProjectorFaulted, Recorded, UnknownQuery, applies
from actorlog.storage import MemoryEventLog
from benchmarks.bank import Account, Balances, Deposit, Deposited, Totals
from tests.engine.projector_scenarios import POISON, Fragile, stats


async def test_after_is_woken_by_the_event_not_by_polling(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The mock clock never advances by itself: a waiter that slept between polls would
    # never see its position, and one that spun would keep wait_all_tasks_blocked waiting.
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]
    ) as engine:
        first = await engine.send(Account, "a", Deposit(5))
        results: list[int] = []

        async def reader() -> None:
            results.append(await engine.query(Balances.balance, "a", after=first.position + 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert results == []
            started = trio.current_time()
            await engine.send(Account, "a", Deposit(7))
            await trio.testing.wait_all_tasks_blocked()
            assert results == [12]
            assert trio.current_time() == started


async def test_query_without_after_has_no_checkpoint() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]
    ) as engine:
        ack = await engine.send(Account, "a", Deposit(5))
        await engine.wait_projected(ack.position)
        with trio.testing.assert_no_checkpoints():
            assert await engine.query(Balances.balance, "a") == 5
            # after= a position already applied does not wait either
            assert await engine.query(Balances.balance, "a", after=ack.position) == 5


async def test_query_of_an_unhosted_projector_raises() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]
    ) as engine:
        with pytest.raises(UnknownQuery):
            await engine.query(Totals.net)
        with pytest.raises(UnknownQuery):
            await engine.query(len, "not a query")


async def test_after_a_position_never_written_fails_when_the_engine_closes() -> None:
    errors: list[BaseException] = []
    async with (
        trio.open_nursery() as nursery,
        Engine.open(log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]) as engine,
    ):

        async def reader() -> None:
            try:
                await engine.query(Balances.balance, "a", after=10)
            except EngineClosed as e:
                errors.append(e)

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1


async def test_cancelling_a_waiting_query_leaves_the_projector_working(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances]
    ) as engine:
        with trio.move_on_after(1) as scope:
            await engine.query(Balances.balance, "a", after=1)
        assert scope.cancelled_caught
        ack = await engine.send(Account, "a", Deposit(3))
        assert await engine.query(Balances.balance, "a", after=ack.position) == 3


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
