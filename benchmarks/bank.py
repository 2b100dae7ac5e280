"""The bank domain shared by the benchmarks, the demo and the tests.

Account aggregates (ids ``acct-<n>``) take OpenAccount, Deposit and Withdraw; a second
open, a withdrawal beyond the balance and a non-positive amount are rejected. Two views:
the balance per account, and the total of all deposits; and the balances again as
documents in a SQLite file (``BalanceDocuments``), kept across restarts.
"""

from __future__ import annotations

import msgspec

from actorlog import Aggregate, Projector, Recorded, Rejected, SqliteView, applies, handles

__all__ = [
    "Account",
    "AccountOpened",
    "BalanceDocuments",
    "Balances",
    "Deposit",
    "Deposited",
    "InsufficientFunds",
    "OpenAccount",
    "SnapshottingAccount",
    "Totals",
    "Withdraw",
    "Withdrawn",
]


class OpenAccount(msgspec.Struct, frozen=True):
    """Open an account for ``owner``."""

    owner: str


class Deposit(msgspec.Struct, frozen=True):
    """Put ``amount`` (> 0) into the account."""

    amount: int


class Withdraw(msgspec.Struct, frozen=True):
    """Take ``amount`` (> 0, at most the balance) out of the account."""

    amount: int


class AccountOpened(msgspec.Struct, frozen=True):
    """The account was opened for ``owner``."""

    owner: str


class Deposited(msgspec.Struct, frozen=True):
    """``amount`` was put into the account."""

    amount: int


class Withdrawn(msgspec.Struct, frozen=True):
    """``amount`` was taken out of the account."""

    amount: int


class InsufficientFunds(Rejected):
    """A withdrawal asked for more than the balance."""


class Account(Aggregate):
    """A bank account: opened once, never overdrawn."""

    opened: bool
    balance: int

    def __init__(self) -> None:
        self.opened = False
        self.balance = 0

    @handles
    def open(self, c: OpenAccount) -> list[AccountOpened]:
        if self.opened:
            raise Rejected("account already open")
        return [AccountOpened(c.owner)]

    @handles
    def deposit(self, c: Deposit) -> list[Deposited]:
        if c.amount <= 0:
            raise Rejected("amount must be positive")
        return [Deposited(c.amount)]

    @handles
    def withdraw(self, c: Withdraw) -> list[Withdrawn]:
        if c.amount <= 0:
            raise Rejected("amount must be positive")
        if c.amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} < {c.amount}")
        return [Withdrawn(c.amount)]

    @applies
    def opened_(self, e: AccountOpened) -> None:
        self.opened = True

    @applies
    def deposited(self, e: Deposited) -> None:
        self.balance += e.amount

    @applies
    def withdrawn(self, e: Withdrawn) -> None:
        self.balance -= e.amount


class SnapshottingAccount(Account):
    """The same account, snapshotted every 100 events (for the rehydration benchmark)."""

    snapshot_every = 100


class Balances(Projector):
    """The balance of every account."""

    def __init__(self) -> None:
        self.by_account: dict[str, int] = {}

    @applies
    def opened(self, e: AccountOpened, meta: Recorded) -> None:
        self.by_account.setdefault(meta.stream_id, 0)

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) + e.amount

    @applies
    def withdrawn(self, e: Withdrawn, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) - e.amount

    def balance(self, account: str) -> int:
        """The account's balance (0 if unknown)."""
        return self.by_account.get(account, 0)

    def all_balances(self) -> dict[str, int]:
        """Every balance, as a copy the caller owns."""
        return self.by_account


class Totals(Projector):
    """Bank-wide totals: all deposits, all withdrawals."""

    def __init__(self) -> None:
        self.deposits = 0
        self.withdrawals = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        self.deposits += e.amount

    @applies
    def withdrawn(self, e: Withdrawn) -> None:
        self.withdrawals += e.amount

    def total_deposits(self) -> int:
        """The sum of every deposit ever made."""
        return self.deposits

    def net(self) -> int:
        """Deposits minus withdrawals: must equal the sum of all balances."""
        return self.deposits - self.withdrawals


class BalanceDocuments(SqliteView):
    """The balance of every account, as a JSON document per account in a SQLite file
    (host ``BalanceDocuments.at(path)``): ``{"owner": ..., "balance": ...}``."""

    @applies
    def opened(self, e: AccountOpened, meta: Recorded) -> None:
        self.put(meta.stream_id, {"owner": e.owner, "balance": 0})

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        doc = self.get(meta.stream_id) or {"owner": None, "balance": 0}
        doc["balance"] += e.amount
        self.put(meta.stream_id, doc)

    @applies
    def withdrawn(self, e: Withdrawn, meta: Recorded) -> None:
        doc = self.get(meta.stream_id) or {"owner": None, "balance": 0}
        doc["balance"] -= e.amount
        self.put(meta.stream_id, doc)

    def balance(self, account: str) -> int:
        """The account's committed balance (0 if unknown)."""
        doc = self.read(account)
        return 0 if doc is None else int(doc["balance"])

    def all_balances(self) -> dict[str, int]:
        """Every committed balance, by account."""
        return {key: doc["balance"] for key, doc in self.read_all().items()}
