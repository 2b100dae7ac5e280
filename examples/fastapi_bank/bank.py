"""The bank's domain: accounts that take deposits and withdrawals, a balances view, and who
may do what. Nothing here knows about HTTP."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from actorlog import Aggregate, Policy, Projector, Recorded, Rejected, applies, handles

# Untrusted input is bounded where it is decoded: an amount beyond what an event can store
# (msgpack ints end at 2**64 - 1) would otherwise pass decoding and fail in the engine when
# the handler's event is encoded (a 500 for the client's mistake). Signed 64-bit, as a
# database column or another service would hold it.
Amount = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Deposit(msgspec.Struct, frozen=True):
    """Put ``amount`` (cents, above 0) into the account."""

    amount: Amount


class Withdraw(msgspec.Struct, frozen=True):
    """Take ``amount`` (cents, above 0) out of the account; refused beyond its balance."""

    amount: Amount


class Deposited(msgspec.Struct, frozen=True):
    amount: int


class Withdrawn(msgspec.Struct, frozen=True):
    amount: int


class InsufficientFunds(Rejected):
    """The account holds less than the withdrawal (HTTP 409: a domain rule said no)."""


class InvalidAmount(Rejected):
    """An amount of 0 or less."""


class Account(Aggregate):
    """One bank account; its stream id is the account's id."""

    def __init__(self) -> None:
        self.balance = 0

    @handles
    def deposit(self, c: Deposit) -> list[Deposited]:
        if c.amount <= 0:
            raise InvalidAmount("amount must be positive")
        return [Deposited(c.amount)]

    @handles
    def withdraw(self, c: Withdraw) -> list[Withdrawn]:
        if c.amount <= 0:
            raise InvalidAmount("amount must be positive")
        if c.amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} < {c.amount}")
        return [Withdrawn(c.amount)]

    @applies
    def deposited(self, e: Deposited) -> None:
        self.balance += e.amount

    @applies
    def withdrawn(self, e: Withdrawn) -> None:
        self.balance -= e.amount


class Balances(Projector):
    """The balance of every account, kept from the events."""

    def __init__(self) -> None:
        self.by_account: dict[str, int] = {}

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) + e.amount

    @applies
    def withdrawn(self, e: Withdrawn, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) - e.amount

    def balance(self, account: str) -> int:
        """The account's balance in cents (0 for an account never written)."""
        return self.by_account.get(account, 0)


# Bearer tokens and the principal each one stands for. A real service asks its identity
# provider (verifies a JWT, looks a session up) once per request and passes what it learnt.
DEMO_TOKENS = {
    "teller-token": "teller",
    "alice-token": "alice",
    "bob-token": "bob",
}


class BankPolicy(Policy):
    """Tellers do anything; a customer withdraws from, and reads, their own account only."""

    def may_send(self, principal: Any, aggregate: Any, stream_id: str, command: Any) -> bool:
        if principal == "teller":
            return True
        return type(command) is Withdraw and stream_id == principal

    def may_query(self, principal: Any, query: Any, args: Any, kwargs: Any) -> bool:
        return principal == "teller" or (len(args) == 1 and args[0] == principal)
