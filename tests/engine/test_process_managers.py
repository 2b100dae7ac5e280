"""Process managers hosted by the engine, on trio: routing, durable steps, the outbox,
deadlines, failures, passivation (the public-API scenarios run on asyncio too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Postgres

from .process_manager_scenarios import SCENARIOS, Scenario


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_scenario_on_trio(scenario: Scenario, tmp_path: Path) -> None:
    await scenario(tmp_path)


async def test_open_refuses_what_is_not_a_process_manager(tmp_path: Path) -> None:
    from actorlog import DefinitionError, Engine
    from benchmarks.bank import Account, Balances, TransferProcess

    for bad in ({"process_managers": [Balances]}, {"process_managers": 3}, {"clock": object()}):
        with pytest.raises(DefinitionError):
            async with Engine.open(tmp_path, aggregates=[Account], **bad):
                pass
    with pytest.raises(DefinitionError, match="share a name"):
        async with Engine.open(
            tmp_path, aggregates=[Account], process_managers=[TransferProcess, TransferProcess]
        ):
            pass


async def test_a_send_to_an_aggregate_not_hosted_halts_at_the_event(tmp_path: Path) -> None:
    from actorlog import Engine
    from benchmarks.bank import (
        Deposit,
        OpenAccount,
        Transfer,
        TransferAccount,
        TransferProcess,
    )

    from .process_manager_scenarios import Booking, _until

    class Elsewhere(TransferProcess):  # credits a TransferAccount, not hosted below
        name = "Elsewhere"

    async with Engine.open(tmp_path, aggregates=[TransferAccount]) as engine:
        for account in ("a", "b"):
            await engine.send(TransferAccount, account, OpenAccount(account))
        await engine.send(TransferAccount, "a", Deposit(5))
        ack = await engine.send(TransferAccount, "a", Transfer("t", "a", "b", 1))
    async with Engine.open(tmp_path, aggregates=[Booking], process_managers=[Elsewhere]) as engine:
        await _until(engine, lambda: engine.statistics().process_managers[0].fault)
        stats = engine.statistics().process_managers[0]
        assert (stats.state, stats.halted_instances) == ("halted", 1)
        assert "not an aggregate this engine hosts" in (stats.fault or "")
    # Its position was saved before the event it halted at: a restart that hosts the
    # account runs the transfer.
    async with Engine.open(
        tmp_path, aggregates=[Booking, TransferAccount], process_managers=[Elsewhere]
    ) as engine:
        await engine.wait_settled(timeout=10)
        credited = [e for e in engine.log.read_stream("b") if e.type == "TransferCredited"]
        assert len(credited) == 1
        assert credited[0].causation_id == f"position:{ack.position}"


async def test_transfers_on_postgresql(postgres: Postgres) -> None:
    from actorlog import Engine
    from actorlog.testing import FakeClock
    from benchmarks.bank import (
        Balances,
        Deposit,
        OpenAccount,
        Transfer,
        TransferAccount,
        TransferProcess,
    )

    schema = postgres.schema()
    for _ in range(2):  # the second open finds everything done
        async with Engine.open(
            log=postgres.log(schema),
            aggregates=[TransferAccount],
            projectors=[Balances],
            process_managers=[TransferProcess],
            clock=FakeClock(),
        ) as engine:
            if not engine.log.read_stream("a"):
                for account in ("a", "b"):
                    await engine.send(TransferAccount, account, OpenAccount(account))
                await engine.send(TransferAccount, "a", Deposit(10))
                await engine.send(TransferAccount, "a", Transfer("t-1", "a", "b", 4))
            await engine.wait_settled(timeout=30)
            await engine.wait_projected()
            assert await engine.query(Balances.balance, "a") == 6
            assert await engine.query(Balances.balance, "b") == 4


async def test_a_scheduled_command_is_checked_when_scheduled(tmp_path: Path) -> None:
    """A scheduled Send the engine cannot dispatch (its aggregate is not hosted) fails the
    turn that schedules it, as a Send would: not 60 s later."""
    from typing import Any

    from actorlog import Engine, ProcessManager, Schedule, Send, starts
    from actorlog.testing import FakeClock
    from benchmarks.bank import TransferAccount, VoidTransfer

    from .process_manager_scenarios import Book, Booked, Booking, _until

    class Misdirected(ProcessManager):
        @starts("booking_id")
        def booked(self, e: Booked) -> list[Any]:
            return [Schedule(Send(TransferAccount, "a", VoidTransfer(e.booking_id)), after=60)]

    async with Engine.open(
        tmp_path, aggregates=[Booking], process_managers=[Misdirected], clock=FakeClock()
    ) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await _until(engine, lambda: engine.statistics().process_managers[0].fault)
        stats = engine.statistics().process_managers[0]
        assert (stats.halted_instances, stats.pending_deadlines) == (1, 0)
        assert "not an aggregate this engine hosts" in (stats.fault or "")
        assert engine.log.read_stream("$pm:Misdirected:b-1") == []
