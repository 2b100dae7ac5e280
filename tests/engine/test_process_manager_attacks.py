"""A process manager whose reactions return garbage: each malformed effect halts only the
instance that returned it (a typed ``InvalidArgument`` in its fault), nothing of the turn
is written or sent, and the other instances go on (review of issue 16)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from actorlog import (
    Cancel,
    Engine,
    Finish,
    InvalidArgument,
    ProcessManager,
    Schedule,
    Send,
    reacts,
    starts,
)
from actorlog.testing import FakeClock, given_process
from benchmarks.bank import (
    Balances,
    Deposit,
    OpenAccount,
    Transfer,
    TransferAccount,
    TransferProcess,
)

from .process_manager_scenarios import (
    Book,
    Booked,
    Booking,
    ExpireBooking,
    ExpiryDue,
    Paid,
    Pay,
)


def _garbage() -> dict[str, Callable[[str], Any]]:
    return {
        "send_stream_id_with_nul": lambda b: [Send(Booking, b + "\x00x", Pay(b))],
        "send_stream_id_not_str": lambda b: [Send(Booking, 42, Pay(b))],  # type: ignore[arg-type]
        "send_empty_stream_id": lambda b: [Send(Booking, "", Pay(b))],
        "send_to_a_name_not_a_class": lambda b: [Send("Booking", b, Pay(b))],  # type: ignore[arg-type]
        "send_to_an_unhashable": lambda b: [Send([Booking], b, Pay(b))],  # type: ignore[arg-type]
        "send_a_command_not_handled": lambda b: [Send(Booking, b, Booked(b))],
        "send_a_command_that_does_not_encode": lambda b: [Send(Booking, b, Pay(object()))],  # type: ignore[arg-type]
        "schedule_at_nan": lambda b: [Schedule(ExpiryDue(b), at=math.nan)],
        "schedule_at_inf": lambda b: [Schedule(ExpiryDue(b), at=math.inf)],
        "schedule_after_minus_inf": lambda b: [Schedule(ExpiryDue(b), after=-math.inf)],
        "schedule_after_negative": lambda b: [Schedule(ExpiryDue(b), after=-1)],
        "schedule_at_a_bool": lambda b: [Schedule(ExpiryDue(b), at=True)],
        "schedule_at_a_huge_int": lambda b: [Schedule(ExpiryDue(b), at=10**400)],
        "schedule_after_a_huge_int": lambda b: [Schedule(ExpiryDue(b), after=10**400)],
        "schedule_at_a_str": lambda b: [Schedule(ExpiryDue(b), at="10")],  # type: ignore[arg-type]
        "schedule_both": lambda b: [Schedule(ExpiryDue(b), at=1.0, after=1.0)],
        "schedule_neither": lambda b: [Schedule(ExpiryDue(b))],
        "schedule_empty_key": lambda b: [Schedule(ExpiryDue(b), after=1, key="")],
        "schedule_key_with_nul": lambda b: [Schedule(ExpiryDue(b), after=1, key="k\x00")],
        "schedule_a_message_not_reacted_to": lambda b: [Schedule(Pay(b), after=1)],
        "schedule_a_bad_send": lambda b: [Schedule(Send(Booking, b + "\x00", Pay(b)), after=1)],
        "cancel_none": lambda b: [Cancel(None)],  # type: ignore[arg-type]
        "a_str": lambda b: "Finish",
        "a_dict": lambda b: {"send": 1},
        "a_none_in_the_list": lambda b: [None],
        "an_effect_class_not_an_effect": lambda b: [Finish],
        "a_generator": lambda b: (e for e in [Finish()]),
    }


GARBAGE = _garbage()


class Garbage(ProcessManager):
    """Returns ``effects(booking_id)`` for bookings named "bad…", a good turn otherwise."""

    effects: ClassVar[Callable[[str], Any]] = staticmethod(lambda b: None)

    @starts("booking_id")
    def booked(self, e: Booked) -> Any:
        if e.booking_id.startswith("bad"):
            return Garbage.effects(e.booking_id)
        return [Send(Booking, e.booking_id, ExpireBooking()), Finish()]


async def _until(condition: Callable[[], object]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (statistics: no event to wait on)
            await anyio.sleep(0.001)


@pytest.mark.parametrize("effects", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_effects_halt_only_their_instance(
    effects: Callable[[str], Any], tmp_path: Path
) -> None:
    Garbage.effects = staticmethod(effects)
    clock = FakeClock()
    async with Engine.open(
        tmp_path, aggregates=[Booking], process_managers=[Garbage], clock=clock
    ) as engine:
        await engine.send(Booking, "bad-1", Book("bad-1"))
        await engine.send(Booking, "ok-1", Book("ok-1"))
        await _until(lambda: engine.statistics().process_managers[0].fault)
        await _until(lambda: len(engine.log.read_stream("ok-1")) == 2)
        stats = engine.statistics().process_managers[0]
        assert (stats.state, stats.halted_instances) == ("halted", 1)
        assert "InvalidArgument" in (stats.fault or ""), stats.fault
        # Nothing of the failed turn was written, nothing sent anywhere.
        assert engine.log.read_stream("$pm:Garbage:bad-1") == []
        assert [e.type for e in engine.log.read_stream("bad-1")] == ["Booked"]
        clock.advance(10**6)
        await anyio.sleep(0.05)
        assert engine.statistics().process_managers[0].deadlines_fired == 0


@pytest.mark.parametrize("effects", GARBAGE.values(), ids=GARBAGE.keys())
def test_the_test_kit_refuses_what_the_engine_refuses(effects: Callable[[str], Any]) -> None:
    """given_process runs "the engine's own turn": an effect the engine halts on is an
    InvalidArgument in the kit too, not a passing ``then``."""
    Garbage.effects = staticmethod(effects)
    given_process(Garbage).when(Booked("bad-1")).then_raises(InvalidArgument)


@pytest.mark.parametrize("transfer_id", ["t\x00nul", "t" * 400], ids=["nul", "too_long"])
async def test_an_event_routed_to_an_impossible_process_id_halts_only_that_process(
    tmp_path: Path, transfer_id: str
) -> None:
    """A transfer id the aggregate took but no instance stream can be named after (a NUL,
    too long): the other transfers go on."""
    async with Engine.open(
        tmp_path,
        aggregates=[TransferAccount],
        projectors=[Balances],
        process_managers=[TransferProcess],
        clock=FakeClock(),
    ) as engine:
        for account in ("a", "b"):
            await engine.send(TransferAccount, account, OpenAccount(account))
            await engine.send(TransferAccount, account, Deposit(100))
        await engine.send(TransferAccount, "a", Transfer(transfer_id, "a", "b", 10))
        await engine.send(TransferAccount, "a", Transfer("t-ok", "a", "b", 5))
        await _until(lambda: engine.statistics().process_managers[0].fault)
        await _until(lambda: any(e.type == "TransferCredited" for e in engine.log.read_stream("b")))
        stats = engine.statistics().process_managers[0]
        assert stats.halted_instances == 1, stats
        assert "InvalidArgument" in (stats.fault or ""), stats.fault


def test_a_fake_clock_refuses_an_int_beyond_a_float_with_a_typed_error() -> None:
    with pytest.raises(InvalidArgument):
        FakeClock().advance(10**400)


class Reminder(ProcessManager):
    """Schedules, as its deadline's message, an event type it also reacts to when routed
    (``Paid``): the documented "a Struct this process manager reacts to"."""

    @starts("booking_id")
    def booked(self, e: Booked) -> list[Any]:
        return [Schedule(Paid(e.booking_id), after=60)]

    @reacts("booking_id")
    def paid(self, e: Paid) -> list[Any]:
        return [Send(Booking, e.booking_id, ExpireBooking()), Finish()]


async def test_a_deadline_whose_message_is_a_routed_event_type_fires(tmp_path: Path) -> None:
    clock = FakeClock()
    for run in range(2):  # and after a restart (the fired step is read back on a reload)
        async with Engine.open(
            tmp_path, aggregates=[Booking], process_managers=[Reminder], clock=clock
        ) as engine:
            if not engine.log.read_stream("b-1"):
                await engine.send(Booking, "b-1", Book("b-1"))
                await engine.wait_settled(timeout=10)
                clock.advance(61)
                await _until(lambda: len(engine.log.read_stream("b-1")) == 2)
            await engine.wait_settled(timeout=10)
            stats = engine.statistics().process_managers[0]
            assert (stats.fault, stats.pending_deadlines, stats.halted_instances) == (None, 0, 0)
            if run == 0:
                assert (stats.deadlines_fired, stats.finished) == (1, 1)
            else:  # the finished instance, reloaded for another event, is ignored
                await engine.send(Booking, "b-1", Book("b-1"))
                await engine.wait_settled(timeout=10)
                assert engine.statistics().process_managers[0].fault is None
            assert [e.type for e in engine.log.read_stream("b-1")][:2] == ["Booked", "Expired"]
