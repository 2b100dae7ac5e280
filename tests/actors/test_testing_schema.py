"""The test kits give events stored at older versions, read by the engine's own rules."""

from __future__ import annotations

from typing import Any

import pytest

from actorlog import InvalidArgument, UnknownEventType, UpcastError
from actorlog.testing import OldEvent, given, given_events, old_event

from ..engine.test_schema_evolution import (
    Account,
    Balances,
    Deposit,
    Deposited,
    InsufficientFunds,
    ParkingBalances,
    Strict,
    Withdraw,
)


def test_given_upcasts_old_events_and_skips_retired_ones() -> None:
    scenario = given(
        Account,
        [
            old_event("Deposited", 1, {"amount": 2}),
            old_event("MoneyIn", 1, {"amount": 1}),
            old_event("FeeCharged", 1, {"amount": 9}),
            old_event("Deposited", 2, {"cents": 5}),
            Deposited(7),
        ],
    )
    assert scenario.state.balance == 312
    scenario.when(Deposit(1)).then([Deposited(1)])
    scenario.when(Withdraw(10**9)).then_rejected(InsufficientFunds, match="balance 312")


def test_given_refuses_what_a_load_refuses() -> None:
    with pytest.raises(UnknownEventType, match="FeeCharged"):
        _ = given(Strict, [old_event("FeeCharged", 1, {"amount": 9})]).state
    with pytest.raises(UpcastError, match="negative deposit"):
        _ = given(Account, [old_event("Deposited", 1, {"amount": -1})]).state
    with pytest.raises(UpcastError, match="not a valid current event"):
        _ = given(Account, [old_event("MoneyIn", 1, {"amount": 1.5})]).state


def test_given_events_fold_old_events_through_the_upcasters() -> None:
    events: list[tuple[str, Any]] = [
        ("a", old_event("Deposited", 1, {"amount": 1})),
        ("a", old_event("MoneyIn", 2, {"cents": 2})),
        ("b", Deposited(3)),
    ]
    scenario = given_events(Balances, events)
    scenario.then_query(Balances.total, "a", equals=102).then_query(Balances.total, "b", equals=3)
    types = scenario.query(Balances.stored_types)
    assert types == ["Deposited", "MoneyIn@2", "Deposited@2"]


def test_given_events_park_or_halt_at_an_old_event_that_cannot_be_upcast() -> None:
    bad = old_event("Deposited", 1, {"amount": -1})
    events = [("a", Deposited(1)), ("a", bad), ("a", Deposited(2))]
    given_events(ParkingBalances, events).then_parked([("a", bad)]).then_query(
        ParkingBalances.total, "a", equals=3
    )
    given_events(Balances, events).then_halted(UpcastError, at=("a", bad), match="negative")


def test_old_event_checks_its_arguments() -> None:
    event = old_event("Deposited", 2, {"cents": 1})
    assert isinstance(event, OldEvent)
    assert event.stored_name == "Deposited@2"
    assert old_event("Deposited", 1, {}).stored_name == "Deposited"
    for name, version, data in (
        ("", 1, {}),
        ("Deposited@2", 1, {}),
        ("Deposited", 0, {}),
        ("Deposited", True, {}),
        ("Deposited", 1, object()),
    ):
        with pytest.raises(InvalidArgument):
            old_event(name, version, data)
