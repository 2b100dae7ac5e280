"""W7's peer: the same transfer as ``eventsourcing`` process applications on SQLite.

Two applications in a ``System`` with a cycle, run by the library's
``SingleThreadedRunner``: ``Accounts`` debits the source (one transaction) and is followed by
``Transfers``, whose policy starts a ``Transfer`` aggregate (recorded atomically with its
tracking record: the library's exactly-once processing); ``Accounts`` follows
``Transfers`` and credits the target (again with tracking); ``Transfers`` then completes
the transfer. Four transactions a transfer, like our debit, step, credit and step. SQLite
in WAL mode with ``synchronous=FULL`` (the library's default), one file per application.
The single-threaded runner processes the chain inside the call that debits, so a
transfer's latency is that call, and transfers run one at a time (the library offers no
group commit to run them concurrently on SQLite).

It does not import the engine: it measures the library, not us.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System

__all__ = ["run_peer_w7"]


class PeerAccount(Aggregate):
    """An account that sends and receives transfers."""

    @staticmethod
    def create_id(name: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/accounts/{name}")

    @event("Opened")
    def __init__(self, name: str, balance: int) -> None:
        self.name = name
        self.balance = balance

    def debit(self, transfer_id: str, target: str, amount: int) -> None:
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self._debited(transfer_id, target, amount)

    @event("TransferDebited")
    def _debited(self, transfer_id: str, target: str, amount: int) -> None:
        self.balance -= amount

    @event("TransferCredited")
    def credit(self, transfer_id: str, amount: int) -> None:
        self.balance += amount


class PeerTransfer(Aggregate):
    """The transfer's process state."""

    @staticmethod
    def create_id(transfer_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/transfers/{transfer_id}")

    @event("Started")
    def __init__(self, transfer_id: str, source: str, target: str, amount: int) -> None:
        self.transfer_id = transfer_id
        self.source, self.target, self.amount = source, target, amount
        self.done = False

    @event("Completed")
    def complete(self) -> None:
        self.done = True


# The event classes the library's @event decorator makes (invisible to type checkers).
_STARTED: Any = getattr(PeerTransfer, "Started")  # noqa: B009
_DEBITED: Any = getattr(PeerAccount, "TransferDebited")  # noqa: B009
_CREDITED: Any = getattr(PeerAccount, "TransferCredited")  # noqa: B009


class Accounts(ProcessApplication[UUID]):
    """Debits on request; credits when a transfer starts."""

    def open(self, name: str, balance: int) -> None:
        self.save(PeerAccount(name, balance))

    def transfer(self, transfer_id: str, source: str, target: str, amount: int) -> None:
        account: PeerAccount = self.repository.get(PeerAccount.create_id(source))
        account.debit(transfer_id, target, amount)
        self.save(account)

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        if isinstance(domain_event, _STARTED):
            account: PeerAccount = self.repository.get(PeerAccount.create_id(domain_event.target))
            account.credit(domain_event.transfer_id, domain_event.amount)
            processing_event.collect_events(account)


class Transfers(ProcessApplication[UUID]):
    """Starts a transfer on a debit; completes it on the credit."""

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        if isinstance(domain_event, _DEBITED):
            transfer = PeerTransfer(
                domain_event.transfer_id, "", domain_event.target, domain_event.amount
            )
            processing_event.collect_events(transfer)
        elif isinstance(domain_event, _CREDITED):
            transfer_id = PeerTransfer.create_id(domain_event.transfer_id)
            started: PeerTransfer = self.repository.get(transfer_id)
            started.complete()
            processing_event.collect_events(started)


def run_peer_w7(directory: str, *, accounts: int, transfers: int) -> dict[str, Any]:
    """Transfers/s end to end and the latency percentiles (ms), one transfer at a time."""
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "ACCOUNTS_SQLITE_DBNAME": os.path.join(directory, "accounts.sqlite"),
        "TRANSFERS_SQLITE_DBNAME": os.path.join(directory, "transfers.sqlite"),
        "AGGREGATE_CACHE_MAXSIZE": str(accounts + 10),
    }
    system = System(pipes=[[Accounts, Transfers, Accounts]])
    runner: SingleThreadedRunner[UUID] = SingleThreadedRunner(system, env=env)
    runner.start()
    try:
        bank = runner.get(Accounts)
        for i in range(accounts):
            bank.open(f"acct-{i}", 10**9)
        latencies = []
        began = time.perf_counter()
        for n in range(transfers):
            source, target = n % accounts, (n * 7 + 1) % accounts
            if source == target:
                target = (target + 1) % accounts
            start = time.perf_counter()
            bank.transfer(f"t-{n}", f"acct-{source}", f"acct-{target}", 1)
            latencies.append(time.perf_counter() - start)
        seconds = time.perf_counter() - began
        credited = sum(
            runner.get(Accounts).repository.get(PeerAccount.create_id(f"acct-{i}")).balance
            for i in range(accounts)
        )
        assert credited == accounts * 10**9, "the peer lost or made money"
    finally:
        runner.stop()
    latencies.sort()
    return {
        "per_second": transfers / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }
