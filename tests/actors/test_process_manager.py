"""Defining process managers (checked when the class is created) and the given/when/then
kit that runs the engine's own turn."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actorlog import (
    Cancel,
    DefinitionError,
    Finish,
    InvalidArgument,
    ProcessManager,
    Schedule,
    Send,
    SendFailed,
    reacts,
    starts,
)
from actorlog.testing import FakeClock, given_process
from benchmarks.bank import (
    TRANSFER_TIMEOUT,
    CreditTransfer,
    RefundTransfer,
    TransferAccount,
    TransferCredited,
    TransferDebited,
    TransferProcess,
    TransferRefunded,
    TransferTimedOut,
    TransferVoided,
    VoidTransfer,
)


class Ping(msgspec.Struct, frozen=True):
    pid: str


DEBITED = TransferDebited("t-1", "a", "b", 5)


def test_a_transfer_starts_by_crediting_the_target_with_a_deadline() -> None:
    given_process(TransferProcess).when(DEBITED).then(
        [
            Send(TransferAccount, "b", CreditTransfer("t-1", 5)),
            Schedule(TransferTimedOut("t-1"), after=TRANSFER_TIMEOUT),
        ]
    ).then_deadlines([("TransferTimedOut", TRANSFER_TIMEOUT)])


def test_the_credit_finishes_the_transfer() -> None:
    given_process(TransferProcess, [DEBITED]).when(TransferCredited("t-1", 5)).then(
        [Cancel("TransferTimedOut"), Finish()]
    )


def test_a_refused_credit_is_refunded_once() -> None:
    refused = SendFailed("c", "TransferAccount", "b", "CreditTransfer", "Rejected", "no", True)
    refund = Send(TransferAccount, "a", RefundTransfer("t-1", 5))
    given_process(TransferProcess, [DEBITED]).when(refused).then(
        [Cancel("TransferTimedOut"), refund]
    ).then_state(lambda t: t.refunding)
    # The void that raced it lands later: no second refund.
    given_process(TransferProcess, [DEBITED, refused]).when(TransferVoided("t-1")).then([])


def test_a_timeout_voids_then_refunds() -> None:
    given_process(TransferProcess, [DEBITED]).when(TransferTimedOut("t-1")).then(
        [Send(TransferAccount, "b", VoidTransfer("t-1"))]
    )
    given_process(TransferProcess, [DEBITED, TransferTimedOut("t-1")]).when(
        TransferVoided("t-1")
    ).then([Send(TransferAccount, "a", RefundTransfer("t-1", 5))])
    given_process(TransferProcess, [DEBITED]).when(TransferRefunded("t-1", 5)).then([Finish()])


def test_a_refused_void_waits_for_the_credit() -> None:
    refused = SendFailed("v", "TransferAccount", "b", "VoidTransfer", "Rejected", "credited", True)
    given_process(TransferProcess, [DEBITED]).when(refused).then([])


def test_the_kit_shows_a_scheduled_command() -> None:
    from tests.engine.process_manager_scenarios import (
        Booked,
        Booking,
        ExpireBooking,
        Paid,
        ScheduledExpiry,
    )

    expire = Send(Booking, "b-1", ExpireBooking())
    given_process(ScheduledExpiry).when(Booked("b-1")).then(
        [Schedule(expire, after=60)]
    ).then_deadlines([("ExpireBooking", 60)])  # keyed by the command's class name
    given_process(ScheduledExpiry, [Booked("b-1")]).when(Paid("b-1")).then([Finish()])

    class Named(ProcessManager):
        @starts("pid")
        def ping(self, p: Ping) -> list[Any]:
            return [Schedule(Send(TransferAccount, p.pid, VoidTransfer(p.pid)), at=5, key="v")]

    given_process(Named).when(Ping("p")).then_deadlines([("v", 5)])


def test_the_kit_reports_what_a_reaction_raises() -> None:
    class Broken(ProcessManager):
        @starts("pid")
        def ping(self, p: Ping) -> list[Any]:
            raise ValueError("no")

    given_process(Broken).when(Ping("p")).then_raises(ValueError)
    with pytest.raises(AssertionError):
        given_process(Broken).when(Ping("p")).then([])


def test_malformed_effects_are_refused() -> None:
    class Bad(ProcessManager):
        @starts("pid")
        def ping(self, p: Ping) -> Any:
            return [p.pid]

    class Late(ProcessManager):
        @starts("pid")
        def ping(self, p: Ping) -> Any:
            return [Schedule(Ping(p.pid), after=-1)]

    class Nowhere(ProcessManager):
        @starts("pid")
        def ping(self, p: Ping) -> Any:
            return [Schedule(TransferTimedOut("x"), after=1)]  # nothing here reacts to it

    class BadKey(ProcessManager):
        @starts("pid")
        def ping(self, p: Ping) -> Any:
            return [Schedule(Send(TransferAccount, "b", VoidTransfer("x")), after=1, key="")]

    for kind in (Bad, Late, Nowhere, BadKey):
        given_process(kind).when(Ping("p")).then_raises(InvalidArgument)


def test_definitions_are_checked_when_the_class_is_made() -> None:
    with pytest.raises(DefinitionError, match="no @starts"):

        class NoStart(ProcessManager):
            @reacts("pid")
            def ping(self, p: Ping) -> list[Any]:
                return []

    with pytest.raises(DefinitionError, match="two reactions"):

        class Twice(ProcessManager):
            @starts("pid")
            def one(self, p: Ping) -> list[Any]:
                return []

            @reacts("pid")
            def two(self, p: Ping) -> list[Any]:
                return []

    with pytest.raises(DefinitionError, match="on_error"):

        class Wrong(ProcessManager):
            on_error = "ignore"  # type: ignore[assignment]

    with pytest.raises(DefinitionError, match="':'"):

        class Colon(ProcessManager):
            name = "a:b"


def test_fake_clock_moves_forward_only() -> None:
    clock = FakeClock(100.0)
    clock.advance(5)
    assert clock.now() == 105.0
    with pytest.raises(InvalidArgument):
        clock.advance(-1)
    with pytest.raises(InvalidArgument):
        clock.set(50.0)
