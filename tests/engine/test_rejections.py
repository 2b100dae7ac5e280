"""A rejection decided on state that is still in flight (events decided, not yet durable)
is not final: if that state fails to commit, the command is decided again on the durable
state, on the actor that decides it and whoever reloaded it first.

The mailbox tests drive ``Aggregates`` with the hand-cranked writer of
``tests/engine/actor_host.py``, so every interleaving is the test's choice, not the
scheduler's.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actorlog import (
    Committed,
    Engine,
    HandlerError,
    StorageError,
    StorageFull,
)
from actorlog.storage import MemoryEventLog
from benchmarks.bank import (
    Account,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    Withdraw,
)

from .actor_host import Sender, host, nowait, start
from .api_scenarios import Add, Explode, Spend


class FailOnce(MemoryEventLog):
    """A memory log whose ``fail_at``-th group commit fails with StorageFull, once."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.groups = 0
        self.fail_at = fail_at

    def append_batch(self, appends: Any, **kwargs: Any) -> Any:
        self.groups += 1
        if self.groups == self.fail_at:
            full = StorageFull("injected")
            return [full for _ in appends], []
        return super().append_batch(appends, **kwargs)


async def test_a_rejection_decided_on_state_that_fails_to_commit_is_decided_again() -> None:
    log = FailOnce(fail_at=3)
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        await engine.send(Account, "a", OpenAccount("ann"))  # group 1
        await engine.send(Account, "a", Deposit(10))  # group 2: durable balance 10
        doomed = engine.send_nowait(Account, "a", Withdraw(10))  # in flight: group 3 fails
        # Decided now, this would be rejected (balance 0 once the in-flight withdrawal
        # lands); it must instead wait for that to land, see it fail, and decide again.
        ack = await engine.send(Account, "a", Withdraw(5))
        with pytest.raises(StorageFull):
            await doomed
        assert ack.version == 3  # opened, deposited, withdrawn 5: nothing else
        with pytest.raises(InsufficientFunds):  # and the balance is now really 5
            await engine.send(Account, "a", Withdraw(6))


async def test_a_rejection_on_in_flight_state_of_a_reactivated_actor_is_decided_again() -> None:
    aggregates, writer, _log = host(max_live=1, mailbox_size=2)
    nowait(aggregates, Add(1), "a")
    with pytest.raises(HandlerError):
        nowait(aggregates, Explode(), "a")  # "a" is stale with a command in flight
    spender = Sender(aggregates, Spend(50), "a")
    async with trio.open_nursery() as nursery:
        await start(nursery, spender)  # waits for "a" to drain
        writer.commit()  # drained: `spender` is woken, "a" is idle until it runs
        nowait(aggregates, Add(1), "b")  # passivates "a"
        writer.commit()
        nowait(aggregates, Add(100), "a")  # a new "a" (balance 101) ...
        doomed = nowait(aggregates, Spend(100), "a")  # ... and 1 once this lands
        await trio.testing.wait_all_tasks_blocked()  # `spender` waits for room
        writer.commit(1)  # Add(100) is durable; `spender` decides on balance 1
        await trio.testing.wait_all_tasks_blocked()
        writer.fail_first(StorageError("injected"))  # Spend(100) never happened
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(StorageError):
        await doomed
    # The durable balance is 101: Spend(50) must be decided again on it, and commit.
    assert spender.result == Committed("a", 3, 4, 1)


async def test_a_rejection_is_decided_again_even_if_another_sender_reloaded_first() -> None:
    aggregates, writer, _log = host(mailbox_size=4)
    nowait(aggregates, Add(10))
    writer.commit()  # durable balance 10
    doomed = nowait(aggregates, Spend(10))  # in flight: the state says 0
    spender = Sender(aggregates, Spend(5))
    async with trio.open_nursery() as nursery:
        await start(nursery, spender)  # rejected on balance 0: waits for `doomed`
        writer.fail_first(StorageError("injected"))  # `doomed` fails; `spender` is woken
        nowait(aggregates, Add(1))  # but another sender runs first and reloads "a"
        await trio.testing.wait_all_tasks_blocked()
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(StorageError):
        await doomed
    # Durable: 10, then Add(1); Spend(5) must be decided again on 11, and commit.
    assert spender.result == Committed("a", 3, 3, 1)
