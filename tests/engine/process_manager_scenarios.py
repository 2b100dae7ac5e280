"""Process managers through the public API, backend-neutral: run on trio by
``test_process_managers.py`` and on asyncio by ``test_process_managers_asyncio.py``.

Each scenario takes a fresh directory. Deadlines run on a ``FakeClock``: no scenario sleeps
for one.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actorlog import (
    Aggregate,
    Cancel,
    Engine,
    Finish,
    ProcessManager,
    ProjectorFaulted,
    Rejected,
    Schedule,
    Send,
    SendFailed,
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

Scenario = Callable[[Path], Coroutine[Any, Any, None]]
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

    while not condition():  # noqa: ASYNC110 (a condition on statistics: no event to wait on)
        await anyio.sleep(0.001)


# -- failures, passivation, routing --------------------------------------------------------


class Fragile(ProcessManager):
    """Raises on a booking whose id starts with "bad" (while ``broken`` is set)."""

    broken = True
    count: int

    def __init__(self) -> None:
        self.count = 0

    @starts("booking_id")
    def booked(self, e: Booked) -> list[Any]:
        if Fragile.broken and e.booking_id.startswith("bad"):
            raise ValueError(f"cannot handle {e.booking_id}")
        return [Send(Booking, e.booking_id, ExpireBooking()), Finish()]


class ParkingFragile(Fragile):
    name = "ParkingFragile"
    on_error = "park"


@scenario
async def raising_reaction_halts_the_instance_and_resumes(path: Path) -> None:
    Fragile.broken = True
    try:
        async with Engine.open(path, aggregates=[Booking], process_managers=[Fragile]) as engine:
            await engine.send(Booking, "ok-1", Book("ok-1"))
            await engine.wait_settled(timeout=10)
            await engine.send(Booking, "bad-1", Book("bad-1"))
            await engine.send(Booking, "ok-2", Book("ok-2"))
            await _until(engine, lambda: engine.statistics().process_managers[0].fault)
            stats = engine.statistics().process_managers[0]
            assert (stats.state, stats.halted_instances) == ("halted", 1)
            assert "cannot handle bad-1" in (stats.fault or "")
            with pytest.raises(ProjectorFaulted, match="bad-1"):
                await engine.wait_settled(timeout=5)  # it would never settle
            # Only that instance halted: the others go on.
            await _until(engine, lambda: len(engine.log.read_stream("ok-2")) == 2)
            assert await booking_state(engine, "bad-1") == ["Booked"]
            await engine.send(Booking, "bad-1", Book("bad-1"))  # waits for the resume
            Fragile.broken = False
            engine.resume(Fragile)
            await engine.wait_settled(timeout=10)
            assert await booking_state(engine, "bad-1") == ["Booked", "Booked", "Expired"]
            stats = engine.statistics().process_managers[0]
            assert (stats.state, stats.halted_instances, stats.fault) == ("live", 0, None)
    finally:
        Fragile.broken = True


@scenario
async def halted_process_manager_resumes_after_restart(path: Path) -> None:
    Fragile.broken = True
    try:
        async with Engine.open(path, aggregates=[Booking], process_managers=[Fragile]) as engine:
            await engine.send(Booking, "bad-1", Book("bad-1"))
            await _until(engine, lambda: engine.statistics().process_managers[0].fault)
        Fragile.broken = False
        async with Engine.open(path, aggregates=[Booking], process_managers=[Fragile]) as engine:
            await engine.wait_settled(timeout=10)
            assert await booking_state(engine, "bad-1") == ["Booked", "Expired"]
    finally:
        Fragile.broken = True


@scenario
async def raising_reaction_parks_and_goes_on(path: Path) -> None:
    async with Engine.open(path, aggregates=[Booking], process_managers=[ParkingFragile]) as engine:
        await engine.send(Booking, "bad-1", Book("bad-1"))
        await engine.send(Booking, "ok-1", Book("ok-1"))
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "ok-1") == ["Booked", "Expired"]
        assert await booking_state(engine, "bad-1") == ["Booked"]
        (parked,) = engine.parked(ParkingFragile)
        assert parked.stream_id == "bad-1" and "cannot handle" in parked.error
        assert engine.statistics().process_managers[0].parked == 1


class Counting(ProcessManager):
    """Counts deposits per process until told to stop; small ``max_live``."""

    max_live = 2
    seen: int

    def __init__(self) -> None:
        self.seen = 0

    @starts(key=lambda e, meta: None if ":" in e.booking_id else e.booking_id)
    def booked(self, e: Booked) -> list[Any]:
        return []

    @applies
    def booked_(self, e: Booked) -> None:
        self.seen += 1

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        # ``seen`` counts the messages before this one, replayed after passivation or not.
        return [Send(Booking, e.booking_id, Book(f"{e.booking_id}:seen-{self.seen}")), Finish()]

    @applies
    def paid_(self, e: Paid) -> None:
        self.seen += 1


@scenario
async def passivated_instances_come_back_from_their_streams(path: Path) -> None:
    async with Engine.open(path, aggregates=[Booking], process_managers=[Counting]) as engine:
        ids = [f"b-{i}" for i in range(6)]
        for booking in ids:
            await engine.send(Booking, booking, Book(booking))
        await engine.wait_settled(timeout=10)
        assert engine.statistics().process_managers[0].live_instances <= 2
        for booking in ids:
            await engine.send(Booking, booking, Pay(booking))
        await engine.wait_settled(timeout=10)
        for booking in ids:
            # The instance saw its one Booked (replayed after passivation) before Paid.
            last = engine.log.read_stream(booking)[-1]
            assert msgspec.json.decode(
                msgspec.json.encode(msgspec.msgpack.decode(last.payload))
            ) == {"booking_id": f"{booking}:seen-1"}
        stats = engine.statistics().process_managers[0]
        assert (stats.started, stats.finished, stats.live_instances) == (6, 6, 0)


@scenario
async def events_for_no_running_process_are_ignored(path: Path) -> None:
    async with Engine.open(path, aggregates=[Booking], process_managers=[Expiry]) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.send(Booking, "b-1", Pay("b-1"))  # finishes the process
        await engine.send(Booking, "b-3", Book("b-3"))
        await engine.send(Booking, "b-3", Pay("b-3"))
        await engine.wait_settled(timeout=10)
        stats = engine.statistics().process_managers[0]
        assert (stats.started, stats.finished, stats.ignored) == (2, 2, 0)


class Continuing(ProcessManager):
    """Continues on Paid only; started by Booked with a "go" id."""

    @starts(key=lambda e, meta: e.booking_id if e.booking_id.startswith("go") else None)
    def booked(self, e: Booked) -> list[Any]:
        return []

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return [Finish()]


@scenario
async def continue_without_a_start_and_after_finish_is_ignored(path: Path) -> None:
    async with Engine.open(path, aggregates=[Booking], process_managers=[Continuing]) as engine:
        await engine.send(Booking, "x-1", Book("x-1"))  # not routed (key None)
        await engine.send(Booking, "x-1", Pay("x-1"))  # continues nothing: ignored
        await engine.send(Booking, "g", Book("go-1"))
        await engine.send(Booking, "g", Pay("go-1"))  # finishes go-1
        await engine.send(Booking, "h", Book("go-1"))  # a finished id is not started again
        await engine.wait_settled(timeout=10)
        stats = engine.statistics().process_managers[0]
        assert (stats.started, stats.finished, stats.ignored) == (1, 1, 2)


class Moody(ProcessManager):
    """``Expiry`` whose deadline's reaction raises while ``broken``."""

    broken = True

    @starts("booking_id")
    def booked(self, e: Booked) -> list[Any]:
        return [Schedule(ExpiryDue(e.booking_id), after=10)]

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return [Cancel("ExpiryDue"), Finish()]

    @reacts
    def due(self, d: ExpiryDue) -> list[Any]:
        if Moody.broken:
            raise ValueError("moody")
        return [Send(Booking, d.booking_id, ExpireBooking()), Finish()]


@scenario
async def an_instance_halted_on_a_deadline_misses_nothing(path: Path) -> None:
    """Halted by its deadline's reaction, the instance skips the events that follow; a
    restart (and a resume) routes them to it again."""
    clock = FakeClock()
    for resume in (True, False):
        Moody.broken = True
        where = path / ("resume" if resume else "restart")
        try:
            async with Engine.open(
                where, aggregates=[Booking], process_managers=[Moody], clock=clock
            ) as engine:
                await engine.send(Booking, "b-1", Book("b-1"))
                await engine.wait_settled(timeout=10)
                clock.advance(10)
                await _until(engine, lambda: engine.statistics().process_managers[0].fault)
                paid = await engine.send(Booking, "b-1", Pay("b-1"))  # skipped while halted
                assert engine.statistics().process_managers[0].halted_instances == 1
                Moody.broken = False
                if resume:
                    engine.resume(Moody)
                    await engine.wait_settled(timeout=10)
            if not resume:
                async with Engine.open(
                    where, aggregates=[Booking], process_managers=[Moody], clock=clock
                ) as engine:
                    await engine.wait_settled(timeout=10)
            async with Engine.open(
                where, aggregates=[Booking], process_managers=[Moody], clock=clock
            ) as engine:
                clock.advance(100)  # the deadline, put off while halted, finds it finished
                await engine.wait_settled(timeout=10)
                assert await booking_state(engine, "b-1") == ["Booked", "Paid"]
                stats = engine.statistics().process_managers[0]
                assert (stats.halted_instances, stats.pending_deadlines) == (0, 0)
                # Two steps: started, then finished by the payment it had missed.
                steps = engine.log.read_stream("$pm:Moody:b-1")
                assert [s.causation_id for s in steps][-1] == f"position:{paid.position}"
                assert len(steps) == 2
        finally:
            Moody.broken = True


# -- scheduled commands: a deadline that sends a command when due --------------------------


class ScheduledExpiry(ProcessManager):
    """Expire a booking 60 s after it was made by a scheduled command; a payment finishes
    the process (which cancels the command); a refusal comes back as ``SendFailed``."""

    failures: list[str]

    def __init__(self) -> None:
        self.failures = []

    @starts("booking_id")
    def booked(self, e: Booked) -> list[Any]:
        return [Schedule(Send(Booking, e.booking_id, ExpireBooking()), after=60)]

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return [Finish()]

    @reacts
    def failed(self, f: SendFailed) -> list[Any]:
        return [Finish()]

    @applies
    def failed_(self, f: SendFailed) -> None:
        self.failures.append(f.error)


class CancellingExpiry(ScheduledExpiry):
    """Cancels the scheduled command by its key on a payment, and runs on."""

    name = "CancellingExpiry"

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return [Cancel("ExpireBooking")]


class StubbornExpiry(ScheduledExpiry):
    """Lets the scheduled command go even after a payment: the booking refuses it."""

    name = "StubbornExpiry"

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return []


def _expiry(path: Path, kind: type[ProcessManager], clock: FakeClock) -> Any:
    return Engine.open(path, aggregates=[Booking], process_managers=[kind], clock=clock)


@scenario
async def scheduled_command_is_sent_once_when_due(path: Path) -> None:
    clock = FakeClock()
    async with _expiry(path, ScheduledExpiry, clock) as engine:
        await engine.send(Booking, "b-1", Book("b-1"), correlation_id="req-1")
        await engine.wait_settled(timeout=10)
        stats = engine.statistics().process_managers[0]
        assert (stats.pending_deadlines, stats.pending_sends) == (1, 0)
        clock.advance(59)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked"]
        clock.advance(1)
        await _until(engine, lambda: len(engine.log.read_stream("b-1")) == 2)
        await engine.wait_settled(timeout=10)
        clock.advance(3600)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked", "Expired"]
        expired = engine.log.read_stream("b-1")[-1]
        # The id a Send decided by the firing step (the instance's second) would get; the
        # chain: the booking's correlation id, caused by the deadline.
        assert expired.command_id == "$pm:ScheduledExpiry:b-1/2.0"
        assert expired.correlation_id == "req-1"
        assert expired.causation_id == "$pm:ScheduledExpiry:b-1#deadline:ExpireBooking"
        stats = engine.statistics().process_managers[0]
        assert (stats.deadlines_fired, stats.dispatched, stats.pending_deadlines) == (1, 1, 0)
        assert (stats.pending_sends, stats.finished) == (0, 0)
        steps = engine.log.read_stream("$pm:ScheduledExpiry:b-1")
        assert len(steps) == 2  # started (the schedule), then the firing (its outbox)
        assert steps[1].causation_id == expired.causation_id


@scenario
async def finish_cancels_a_scheduled_command(path: Path) -> None:
    clock = FakeClock()
    async with _expiry(path, ScheduledExpiry, clock) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.send(Booking, "b-1", Pay("b-1"))
        await engine.wait_settled(timeout=10)
        clock.advance(3600)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked", "Paid"]
        stats = engine.statistics().process_managers[0]
        assert (stats.deadlines_fired, stats.pending_deadlines, stats.finished) == (0, 0, 1)


@scenario
async def scheduled_command_is_cancelled_by_its_key(path: Path) -> None:
    clock = FakeClock()
    for _ in range(2):  # after a restart too, nothing is left to fire
        async with _expiry(path, CancellingExpiry, clock) as engine:
            if not engine.log.read_stream("b-1"):
                await engine.send(Booking, "b-1", Book("b-1"))
                await engine.send(Booking, "b-1", Pay("b-1"))
            await engine.wait_settled(timeout=10)
            clock.advance(3600)
            await engine.wait_settled(timeout=10)
            assert await booking_state(engine, "b-1") == ["Booked", "Paid"]
            stats = engine.statistics().process_managers[0]
            assert (stats.deadlines_fired, stats.pending_deadlines) == (0, 0)
            assert stats.finished == 0  # still running: only the command was cancelled


@scenario
async def refused_scheduled_command_comes_back_as_send_failed(path: Path) -> None:
    clock = FakeClock()
    async with _expiry(path, StubbornExpiry, clock) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.send(Booking, "b-1", Pay("b-1"))
        await engine.wait_settled(timeout=10)
        clock.advance(60)
        await _until(engine, lambda: engine.statistics().process_managers[0].finished)
        await engine.wait_settled(timeout=10)
        assert await booking_state(engine, "b-1") == ["Booked", "Paid"]
        stats = engine.statistics().process_managers[0]
        assert (stats.deadlines_fired, stats.failures_delivered) == (1, 1)
        assert (stats.pending_sends, stats.pending_deadlines) == (0, 0)
        steps = engine.log.read_stream("$pm:StubbornExpiry:b-1")
        # Started, paid (nothing), the firing, then the failure (which finished it).
        assert len(steps) == 4
        assert steps[3].causation_id == "$pm:StubbornExpiry:b-1/3.0"


@scenario
async def scheduled_command_due_while_down_is_sent_at_restart_once(path: Path) -> None:
    clock = FakeClock()
    async with _expiry(path, ScheduledExpiry, clock) as engine:
        await engine.send(Booking, "b-1", Book("b-1"))
        await engine.wait_settled(timeout=10)
    clock.advance(3600)  # while no engine runs
    for _ in range(2):
        async with _expiry(path, ScheduledExpiry, clock) as engine:
            await _until(engine, lambda: len(engine.log.read_stream("b-1")) == 2)
            await engine.wait_settled(timeout=10)
            assert await booking_state(engine, "b-1") == ["Booked", "Expired"]
            assert len(engine.log.read_stream("$pm:ScheduledExpiry:b-1")) == 2
