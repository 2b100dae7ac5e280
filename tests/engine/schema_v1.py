"""Version 1 of the account domain of ``test_schema_evolution``: what an older release of
the application wrote. The same class names as there, in their own module, as a real
upgrade has them (events stored under their class names, at version 1)."""

from __future__ import annotations

import msgspec

from actorlog import Aggregate, Projector, Recorded, applies, handles

__all__ = [
    "Account",
    "Balances",
    "ChargeFee",
    "Deposit",
    "Deposited",
    "FeeCharged",
    "Give",
    "MoneyIn",
]


class Deposit(msgspec.Struct, frozen=True):
    """Deposit whole units."""

    amount: int


class ChargeFee(msgspec.Struct, frozen=True):
    """Charge a fee (an event type version 2 drops)."""

    amount: int


class Give(msgspec.Struct, frozen=True):
    """Give money (stored as ``MoneyIn``, a name version 2 renames)."""

    amount: int


class Deposited(msgspec.Struct, frozen=True):
    """Whole units deposited (version 2 stores cents)."""

    amount: int


class FeeCharged(msgspec.Struct, frozen=True):
    """A fee was charged (retired in version 2)."""

    amount: int


class MoneyIn(msgspec.Struct, frozen=True):
    """Money given (renamed ``Deposited`` in version 2)."""

    amount: int


class Account(Aggregate):
    """Balance in whole units; snapshots every 2 events (format 1)."""

    snapshot_every = 2
    balance: int

    def __init__(self) -> None:
        self.balance = 0

    @handles
    def deposit(self, c: Deposit) -> list[Deposited]:
        return [Deposited(c.amount)]

    @handles
    def give(self, c: Give) -> list[MoneyIn]:
        return [MoneyIn(c.amount)]

    @handles
    def fee(self, c: ChargeFee) -> list[FeeCharged]:
        return [FeeCharged(c.amount)]

    @applies
    def deposited(self, e: Deposited) -> None:
        self.balance += e.amount

    @applies
    def money_in(self, e: MoneyIn) -> None:
        self.balance += e.amount

    @applies
    def fee_charged(self, e: FeeCharged) -> None:
        self.balance -= e.amount


class Balances(Projector):
    """Deposits per account, in whole units; saves its cache every 2 positions."""

    name = "balances"
    snapshot_every = 2
    totals: dict[str, int]

    def __init__(self) -> None:
        self.totals = {}

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.totals[meta.stream_id] = self.totals.get(meta.stream_id, 0) + e.amount

    def total(self, stream_id: str) -> int:
        return self.totals.get(stream_id, 0)
