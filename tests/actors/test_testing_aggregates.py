"""actorlog.testing: given/when/then for aggregates as pure functions."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import (
    Aggregate,
    DefinitionError,
    HandlerError,
    Rejected,
    UnknownCommand,
    applies,
    handles,
)
from actorlog.testing import given
from benchmarks.bank import (
    Account,
    AccountOpened,
    Deposit,
    Deposited,
    InsufficientFunds,
    OpenAccount,
    Withdraw,
    Withdrawn,
)


class Ping(msgspec.Struct, frozen=True):
    n: int


class Ponged(msgspec.Struct, frozen=True):
    n: int


class Pair(msgspec.Struct, frozen=True):
    a: int
    b: int


class Crash(msgspec.Struct, frozen=True):
    pass


class Weird(msgspec.Struct, frozen=True):
    pass


class Noop(msgspec.Struct, frozen=True):
    pass


class Unappliable(msgspec.Struct, frozen=True):
    pass


class Counter(Aggregate):
    def __init__(self) -> None:
        self.seen: list[int] = []

    @handles
    def ping(self, c: Ping) -> list[Ponged]:
        return [Ponged(c.n)]

    @handles
    def pair(self, c: Pair) -> list[Ponged]:
        return [Ponged(c.a), Ponged(c.b)]

    @handles
    def crash(self, c: Crash) -> None:
        self.seen.append(-1)
        raise ValueError("boom")

    @handles
    def weird(self, c: Weird) -> None:
        return "not a list"  # type: ignore[return-value]

    @handles
    def noop(self, c: Noop) -> None:
        return None

    @applies
    def ponged(self, e: Ponged) -> None:
        if e.n < 0:
            raise ArithmeticError("negative")
        self.seen.append(e.n)


def test_then_accepts_the_emitted_events() -> None:
    when = given(Account, [AccountOpened("ann"), Deposited(5)]).when(Withdraw(3))
    assert when.then([Withdrawn(3)]) is when
    assert when.events == [Withdrawn(3)]
    assert when.error is None


def test_then_state_sees_the_events_applied() -> None:
    given(Account, [AccountOpened("ann"), Deposited(5)]).when(Withdraw(3)).then(
        [Withdrawn(3)]
    ).then_state(lambda a: a.balance == 2)


def test_then_state_accepts_a_check_that_asserts_itself() -> None:
    def check(a: Account) -> None:
        assert a.opened

    given(Account).when(OpenAccount("ann")).then_state(check)


def test_then_state_failing_check_raises_assertion_with_the_state() -> None:
    when = given(Account, [Deposited(5)]).when(Deposit(1))
    with pytest.raises(AssertionError, match="balance=6"):
        when.then_state(lambda a: a.balance == 5)


def test_then_with_other_events_raises_assertion() -> None:
    when = given(Account, [Deposited(5)]).when(Withdraw(3))
    with pytest.raises(AssertionError, match=r"emitted \[Withdrawn\(amount=3\)\]"):
        when.then([Withdrawn(4)])


def test_then_on_a_rejected_command_raises_assertion() -> None:
    when = given(Account, [Deposited(1)]).when(Withdraw(3))
    with pytest.raises(AssertionError, match=r"rejected .*InsufficientFunds"):
        when.then([Withdrawn(3)])


def test_then_empty_list_expects_no_events() -> None:
    given(Counter).when(Pair(1, 2)).then([Ponged(1), Ponged(2)])
    with pytest.raises(AssertionError):
        given(Counter).when(Ping(1)).then([])


def test_then_rejected_matches_type_and_message() -> None:
    when = given(Account, [Deposited(5)]).when(Withdraw(9))
    assert when.then_rejected(InsufficientFunds, match="balance 5") is when
    when.then_rejected()  # any Rejected
    when.then_rejected(Rejected, match=r"5 < 9")
    assert isinstance(when.error, InsufficientFunds)
    assert when.events == []


def test_then_rejected_with_wrong_subclass_raises_assertion() -> None:
    when = given(Account).when(Deposit(0))  # plain Rejected, not InsufficientFunds
    with pytest.raises(AssertionError, match="expected InsufficientFunds"):
        when.then_rejected(InsufficientFunds)


def test_then_rejected_with_unmatched_message_raises_assertion() -> None:
    when = given(Account, [Deposited(5)]).when(Withdraw(9))
    with pytest.raises(AssertionError, match="does not match"):
        when.then_rejected(InsufficientFunds, match="overdrawn")


def test_then_rejected_on_an_accepted_command_raises_assertion() -> None:
    when = given(Account, [Deposited(5)]).when(Withdraw(1))
    with pytest.raises(AssertionError, match="was accepted"):
        when.then_rejected(InsufficientFunds)


def test_rejected_command_leaves_the_state_unchanged() -> None:
    given(Account, [Deposited(5)]).when(Withdraw(9)).then_rejected().then_state(
        lambda a: a.balance == 5
    )


def test_when_builds_a_fresh_state_each_time() -> None:
    scenario = given(Account, [Deposited(5)])
    scenario.when(Withdraw(5)).then_state(lambda a: a.balance == 0)
    scenario.when(Withdraw(5)).then([Withdrawn(5)])  # not affected by the first when
    assert scenario.state.balance == 5
    assert scenario.state is not scenario.state


def test_unknown_command_raises_unknown_command() -> None:
    with pytest.raises(UnknownCommand, match="Account has no handler for Ping"):
        given(Account).when(Ping(1))


def test_handler_exception_raises_handler_error_with_cause() -> None:
    with pytest.raises(HandlerError, match="ValueError: boom") as info:
        given(Counter).when(Crash())
    assert isinstance(info.value.__cause__, ValueError)


def test_applier_exception_raises_handler_error_with_cause() -> None:
    with pytest.raises(HandlerError) as info:
        given(Counter).when(Ping(-1))
    assert isinstance(info.value.__cause__, ArithmeticError)
    with pytest.raises(HandlerError):
        given(Counter, [Ponged(-1)]).state  # noqa: B018


def test_handler_returning_a_non_list_raises_handler_error() -> None:
    with pytest.raises(HandlerError, match="returned str"):
        given(Counter).when(Weird())


def test_given_event_without_applier_raises_handler_error() -> None:
    with pytest.raises(HandlerError, match="no @applies for Unappliable"):
        given(Counter, [Unappliable()]).state  # noqa: B018


def test_emitted_event_without_applier_raises_handler_error() -> None:
    class Sneaky(Aggregate):
        @handles
        def ping(self, c: Ping) -> list[Ponged]:
            return [Unappliable()]  # type: ignore[list-item]

        @applies
        def ponged(self, e: Ponged) -> None:
            pass

    with pytest.raises(HandlerError, match="no @applies for Unappliable"):
        given(Sneaky).when(Ping(1))


def test_non_frozen_event_type_raises_definition_error() -> None:
    class Loose(msgspec.Struct):
        n: int

    with pytest.raises(DefinitionError, match="must be frozen"):  # when it is defined

        class Sloppy(Aggregate):
            @handles
            def ping(self, c: Ping) -> list[Loose]:
                return [Loose(c.n)]

            @applies
            def loose(self, e: Loose) -> None:
                pass


def test_event_that_does_not_survive_encoding_raises_assertion() -> None:
    class Lossy(msgspec.Struct, frozen=True):
        value: float

    class Rounder(Aggregate):
        @handles
        def ping(self, c: Ping) -> list[Lossy]:
            return [Lossy(float("nan"))]  # nan != nan: read back "unchanged" is false

        @applies
        def lossy(self, e: Lossy) -> None:
            pass

    with pytest.raises(AssertionError, match="does not survive encoding"):
        given(Rounder).when(Ping(1))


def test_given_events_are_applied_in_order() -> None:
    assert given(Counter, [Ponged(3), Ponged(1), Ponged(2)]).state.seen == [3, 1, 2]
    given(Counter, [Ponged(3)]).when(Pair(4, 5)).then_state(lambda c: c.seen == [3, 4, 5])


def test_command_returning_none_emits_no_events() -> None:
    given(Counter, [Ponged(1)]).when(Noop()).then([]).then_state(lambda c: c.seen == [1])
