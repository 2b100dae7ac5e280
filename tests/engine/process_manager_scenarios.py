"""Process managers through the public API, backend-neutral: run on trio by
``test_process_managers.py`` and on asyncio by ``test_process_managers_asyncio.py``.

Each scenario takes a fresh directory. Deadlines run on a ``FakeClock``: no scenario sleeps
for one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from actorlog import (
    Aggregate,
    Cancel,
    Engine,
    Finish,
    ProcessManager,
    Rejected,
    Schedule,
    Send,
    applies,
    handles,
    reacts,
    starts,
)
from actorlog.testing import FakeClock
from benchmarks.bank import (
    Balances,
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    TransferAccount,
    TransferProcess,
)

Scenario = Callable[[Path], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


# -- a booking that expires unless paid: deadlines that send a command ---------------------


class Book(msgspec.Struct, frozen=True):
    booking_id: str


class Pay(msgspec.Struct, frozen=True):
    booking_id: str


class ExpireBooking(msgspec.Struct, frozen=True):
    pass


class Booked(msgspec.Struct, frozen=True):
    booking_id: str


class Paid(msgspec.Struct, frozen=True):
    booking_id: str


class Expired(msgspec.Struct, frozen=True):
    pass


class Booking(Aggregate):
    state: str

    def __init__(self) -> None:
        self.state = "new"

    @handles
    def book(self, c: Book) -> list[Booked]:
        return [Booked(c.booking_id)]

    @handles
    def pay(self, c: Pay) -> list[Paid]:
        if self.state != "booked":
            raise Rejected(f"booking is {self.state}")
        return [Paid(c.booking_id)]

    @handles
    def expire(self, c: ExpireBooking) -> list[Expired]:
        if self.state != "booked":
            raise Rejected(f"booking is {self.state}")
        return [Expired()]

    @applies
    def booked(self, e: Booked) -> None:
        self.state = "booked"

    @applies
    def paid(self, e: Paid) -> None:
        self.state = "paid"

    @applies
    def expired(self, e: Expired) -> None:
        self.state = "expired"


class ExpiryDue(msgspec.Struct, frozen=True):
    booking_id: str


class Expiry(ProcessManager):
    """Expire a booking 60 s after it was made, unless it was paid."""

    @starts("booking_id")
    def booked(self, e: Booked) -> list[Any]:
        return [Schedule(ExpiryDue(e.booking_id), after=60)]

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return [Cancel("ExpiryDue"), Finish()]

    @reacts
    def due(self, d: ExpiryDue) -> list[Any]:
        return [Send(Booking, d.booking_id, ExpireBooking()), Finish()]


async def booking_state(engine: Engine, booking_id: str) -> list[str]:
    return [e.type for e in engine.log.read_stream(booking_id)]


async def open_bank(engine: Engine, balances: dict[str, int]) -> None:
    for account, amount in balances.items():
        await engine.send(TransferAccount, account, OpenAccount(account))
        if amount:
            await engine.send(TransferAccount, account, Deposit(amount))


def bank(path: Path, clock: FakeClock | None = None) -> Any:
    return Engine.open(
        path,
        aggregates=[TransferAccount],
        projectors=[Balances],
        process_managers=[TransferProcess],
        clock=clock or FakeClock(),
    )


async def balances(engine: Engine, *accounts: str) -> list[int]:
    await engine.wait_projected()
    return [await engine.query(Balances.balance, a) for a in accounts]


# -- scenarios -----------------------------------------------------------------------------


@scenario
async def transfer_credits_target_and_finishes(path: Path) -> None:
    async with bank(path) as engine:
        await open_bank(engine, {"a": 100, "b": 0})
        ack = await engine.send(
            TransferAccount, "a", Transfer("t-1", "a", "b", 30), correlation_id="req-1"
        )
        await engine.wait_settled(timeout=10)
        assert await balances(engine, "a", "b") == [70, 30]
        (stats,) = engine.statistics().process_managers
        assert (stats.started, stats.finished, stats.live_instances) == (1, 1, 0)
        assert (stats.pending_sends, stats.pending_deadlines) == (0, 0)
        credited = [e for e in engine.log.read_stream("b") if e.type == "TransferCredited"]
        (event,) = credited
        # The chain: the request's correlation id, caused by the debit's position.
        assert event.correlation_id == "req-1"
        assert event.causation_id == f"position:{ack.position}"
        assert event.command_id is not None


@scenario
async def refused_credit_is_refunded(path: Path) -> None:
    async with bank(path) as engine:
        await open_bank(engine, {"a": 100, "b": 0})
        await engine.send(TransferAccount, "b", CloseAccount())
        await engine.send(TransferAccount, "a", Transfer("t-1", "a", "b", 30))
        await engine.wait_settled(timeout=10)
        assert await balances(engine, "a", "b") == [100, 0]
        (stats,) = engine.statistics().process_managers
        assert (stats.failures_delivered, stats.finished, stats.pending_deadlines) == (1, 1, 0)
        types = [e.type for e in engine.log.read_stream("a")]
        assert types[-2:] == ["TransferDebited", "TransferRefunded"]


@scenario
async def deadline_fires_once_when_due(path: Path) -> None:
    clock = FakeClock()
    async with Engine.open(
        path, aggregates=[Booking], process_managers=[Expiry], clock=clock
    ) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.wait_settled(timeout=10)
        assert engine.statistics().process_managers[0].pending_deadlines == 1
        clock.advance(59)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked"]
        clock.advance(1)
        await _until(engine, lambda: engine.statistics().process_managers[0].deadlines_fired)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked", "Expired"]
        clock.advance(1000)
        await engine.wait_settled(timeout=10)
        stats = engine.statistics().process_managers[0]
        assert (stats.deadlines_fired, stats.pending_deadlines, stats.finished) == (1, 0, 1)


@scenario
async def cancelled_deadline_never_fires(path: Path) -> None:
    clock = FakeClock()
    async with Engine.open(
        path, aggregates=[Booking], process_managers=[Expiry], clock=clock
    ) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.send(Booking, "b-1", Pay("b-1"))
        await engine.wait_settled(timeout=10)
        clock.advance(3600)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked", "Paid"]
        stats = engine.statistics().process_managers[0]
        assert (stats.deadlines_fired, stats.pending_deadlines, stats.finished) == (0, 0, 1)


@scenario
async def deadline_due_while_down_fires_at_restart_once(path: Path) -> None:
    clock = FakeClock()
    async with Engine.open(
        path, aggregates=[Booking], process_managers=[Expiry], clock=clock
    ) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.wait_settled(timeout=10)
    clock.advance(3600)  # while no engine runs
    for _ in range(2):
        async with Engine.open(
            path, aggregates=[Booking], process_managers=[Expiry], clock=clock
        ) as engine:
            await _until(engine, lambda: len(engine.log.read_stream("b-1")) == 2)
            await engine.wait_settled(timeout=10)
            assert await booking_state(engine, "b-1") == ["Booked", "Expired"]


@scenario
async def events_before_the_process_manager_existed_are_processed(path: Path) -> None:
    async with Engine.open(path, aggregates=[TransferAccount], projectors=[Balances]) as engine:
        await open_bank(engine, {"a": 50, "b": 0})
        await engine.send(TransferAccount, "a", Transfer("t-1", "a", "b", 20))
        assert await balances(engine, "a", "b") == [30, 0]  # nothing hosts the process yet
    for _ in range(2):  # once hosted it runs the transfer, and a second open does nothing
        async with bank(path) as engine:
            await engine.wait_settled(timeout=10)
            assert await balances(engine, "a", "b") == [30, 20]


async def _until(engine: Engine, condition: Callable[[], object]) -> None:
    """Wait (yielding) until ``condition()`` is true: bounded by the test's timeout."""
    import anyio

    while not condition():
        await anyio.sleep(0.001)
