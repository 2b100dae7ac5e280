"""The bank domain shared by the benchmarks, the demo and the tests.

Account aggregates (ids ``acct-<n>``) take OpenAccount, Deposit and Withdraw; a second
open, a withdrawal beyond the balance and a non-positive amount are rejected. Two views:
the balance per account, and the total of all deposits; and the balances again as
documents in a SQLite file (``BalanceDocuments``), kept across restarts.

Transfers (W7): a :class:`TransferAccount` takes ``Transfer`` (debit the source at once,
or refuse), and the :class:`TransferProcess` process manager credits the target, refunds
the source when the credit is refused, and after ``TRANSFER_TIMEOUT`` seconds without a
credit voids it at the target (exactly one of credit and void wins there) and refunds.
"""

from __future__ import annotations

import msgspec

from actorlog import (
    Aggregate,
    Cancel,
    Finish,
    ProcessManager,
    Projector,
    Recorded,
    Rejected,
    Schedule,
    Send,
    SendFailed,
    SqliteView,
    applies,
    handles,
    reacts,
    starts,
)

__all__ = [
    "Account",
    "AccountOpened",
    "BalanceDocuments",
    "Balances",
    "CloseAccount",
    "CreditTransfer",
    "Deposit",
    "Deposited",
    "InsufficientFunds",
    "OpenAccount",
    "SnapshottingAccount",
    "Totals",
    "Transfer",
    "TransferAccount",
    "TransferCredited",
    "TransferDebited",
    "TransferProcess",
    "TransferRefunded",
    "TransferTimedOut",
    "TransferVoided",
    "VoidTransfer",
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


Effects = list[Send | Schedule | Cancel | Finish]
"""What a transfer's reactions return."""

TRANSFER_TIMEOUT = 30.0
"""Seconds a transfer waits for its credit before it is voided and refunded."""


class Transfer(msgspec.Struct, frozen=True):
    """Move ``amount`` (> 0, at most the balance) from this account (``source``) to
    ``target``; ``transfer_id`` names the transfer (its process)."""

    transfer_id: str
    source: str
    target: str
    amount: int


class CreditTransfer(msgspec.Struct, frozen=True):
    """Credit a transfer's ``amount`` to this account (sent by the process)."""

    transfer_id: str
    amount: int


class VoidTransfer(msgspec.Struct, frozen=True):
    """Refuse the transfer's credit from now on; rejected if it was credited already."""

    transfer_id: str


class RefundTransfer(msgspec.Struct, frozen=True):
    """Give a transfer's ``amount`` back to its source."""

    transfer_id: str
    amount: int


class CloseAccount(msgspec.Struct, frozen=True):
    """Close the account: credits are refused from now on."""


class TransferDebited(msgspec.Struct, frozen=True):
    """``amount`` left this account (``source``) for ``target``."""

    transfer_id: str
    source: str
    target: str
    amount: int


class TransferCredited(msgspec.Struct, frozen=True):
    """A transfer's ``amount`` arrived in this account."""

    transfer_id: str
    amount: int


class TransferVoided(msgspec.Struct, frozen=True):
    """This account will never be credited by the transfer."""

    transfer_id: str


class TransferRefunded(msgspec.Struct, frozen=True):
    """A transfer's ``amount`` came back to this account."""

    transfer_id: str
    amount: int


class AccountClosed(msgspec.Struct, frozen=True):
    """The account was closed."""


class TransferAccount(Account):
    """An account that also takes part in transfers.

    It remembers the transfers it was credited and voided (frozensets: a refused command
    is then undone in place), so that exactly one of a late credit and a void wins.
    """

    closed: bool
    credited: frozenset[str]
    voided: frozenset[str]

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.credited = frozenset()
        self.voided = frozenset()

    @handles
    def transfer(self, c: Transfer) -> list[TransferDebited]:
        if c.amount <= 0:
            raise Rejected("amount must be positive")
        if c.target == c.source:
            raise Rejected("a transfer needs two accounts")
        if c.amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} < {c.amount}")
        return [TransferDebited(c.transfer_id, c.source, c.target, c.amount)]

    @handles
    def credit(self, c: CreditTransfer) -> list[TransferCredited]:
        if c.transfer_id in self.credited:
            return []  # already done (the process retried after a crash)
        if not self.opened or self.closed:
            raise Rejected("the account is not open")
        if c.transfer_id in self.voided:
            raise Rejected("the transfer was voided")
        return [TransferCredited(c.transfer_id, c.amount)]

    @handles
    def void(self, c: VoidTransfer) -> list[TransferVoided]:
        if c.transfer_id in self.credited:
            raise Rejected("the transfer was credited")
        if c.transfer_id in self.voided:
            return []
        return [TransferVoided(c.transfer_id)]

    @handles
    def refund(self, c: RefundTransfer) -> list[TransferRefunded]:
        return [TransferRefunded(c.transfer_id, c.amount)]

    @handles
    def close(self, c: CloseAccount) -> list[AccountClosed]:
        return [] if self.closed else [AccountClosed()]

    @applies
    def debited(self, e: TransferDebited) -> None:
        self.balance -= e.amount

    @applies
    def credited_(self, e: TransferCredited) -> None:
        self.balance += e.amount
        self.credited = self.credited | {e.transfer_id}

    @applies
    def voided_(self, e: TransferVoided) -> None:
        self.voided = self.voided | {e.transfer_id}

    @applies
    def refunded(self, e: TransferRefunded) -> None:
        self.balance += e.amount

    @applies
    def closed_(self, e: AccountClosed) -> None:
        self.closed = True


class TransferTimedOut(msgspec.Struct, frozen=True):
    """A transfer's deadline: the credit did not land in time."""

    transfer_id: str


class TransferProcess(ProcessManager):
    """A transfer: the source was debited; credit the target, or refund the source.

    credit refused -> refund; no credit within ``TRANSFER_TIMEOUT`` seconds -> void the
    credit at the target (the void wins, or the credit already did) -> refund. Refunded at
    most once: ``refunding`` is set by the appliers of what decided the refund.
    """

    name = "Transfer"
    transfer_id: str
    source: str
    target: str
    amount: int
    refunding: bool

    def __init__(self) -> None:
        self.transfer_id = self.source = self.target = ""
        self.amount = 0
        self.refunding = False

    @starts("transfer_id")
    def debited(self, e: TransferDebited) -> Effects:
        return [
            Send(TransferAccount, e.target, CreditTransfer(e.transfer_id, e.amount)),
            Schedule(TransferTimedOut(e.transfer_id), after=TRANSFER_TIMEOUT),
        ]

    @applies
    def started(self, e: TransferDebited) -> None:
        self.transfer_id, self.source, self.target = e.transfer_id, e.source, e.target
        self.amount = e.amount

    @reacts("transfer_id")
    def credited(self, e: TransferCredited) -> Effects:
        return [Cancel("TransferTimedOut"), Finish()]

    @reacts
    def timed_out(self, t: TransferTimedOut) -> Effects:
        if self.refunding:
            return []
        return [Send(TransferAccount, self.target, VoidTransfer(self.transfer_id))]

    @reacts("transfer_id")
    def voided(self, e: TransferVoided) -> Effects:
        return [] if self.refunding else [self._refund()]

    @applies
    def voided_(self, e: TransferVoided) -> None:
        self.refunding = True

    @reacts
    def failed(self, f: SendFailed) -> Effects:
        if f.command_type != "CreditTransfer" or self.refunding:
            return []  # a void refused: the credit won, and its event finishes us
        return [Cancel("TransferTimedOut"), self._refund()]

    @applies
    def failed_(self, f: SendFailed) -> None:
        if f.command_type == "CreditTransfer":
            self.refunding = True

    @reacts("transfer_id")
    def refunded(self, e: TransferRefunded) -> Effects:
        return [Finish()]

    def _refund(self) -> Send:
        return Send(TransferAccount, self.source, RefundTransfer(self.transfer_id, self.amount))


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

    @applies
    def debited(self, e: TransferDebited, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) - e.amount

    @applies
    def credited(self, e: TransferCredited, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) + e.amount

    @applies
    def refunded(self, e: TransferRefunded, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) + e.amount

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
