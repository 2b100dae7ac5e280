"""Regression tests for the review findings: each failed before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from actorlog import (
    Aggregate,
    Engine,
    HandlerError,
    Overloaded,
    Projector,
    Recorded,
    StorageFull,
    applies,
    handles,
)
from actorlog.storage import LmdbEventLog, MemoryEventLog
from benchmarks.bank import (
    Account,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    Withdraw,
)


class Add(msgspec.Struct, frozen=True):
    item: str


class Added(msgspec.Struct, frozen=True):
    items: list[str]  # a mutable part inside a frozen event


class Cart(Aggregate):
    def __init__(self) -> None:
        self.items: list[str] = []

    @handles
    def add(self, c: Add) -> list[Added]:
        self.items.append(c.item)  # mutates what the previous event handed out
        return [Added(self.items)]

    @applies
    def added(self, e: Added) -> None:
        self.items = e.items


class Seen(Projector):
    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    @applies
    def added(self, e: Added, meta: Recorded) -> None:
        self.seen.append(e.items)

    def all(self) -> list[list[str]]:
        return self.seen


async def test_an_event_with_a_mutable_part_does_not_alias_a_live_projector() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Cart], projectors=[Seen]) as engine:
        await engine.send(Cart, "c", Add("x"))
        ack = await engine.send(Cart, "c", Add("y"))
        live = await engine.query(Seen.all, after=ack.position)
        engine.rebuild(Seen)
        await engine.wait_projected(ack.position)
        assert live == await engine.query(Seen.all) == [["x"], ["x", "y"]]


async def test_many_new_streams_by_send_nowait_stay_under_the_live_cap() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], max_live_aggregates=50
    ) as engine:
        accepted, refused = [], 0
        for n in range(500):
            try:
                accepted.append(engine.send_nowait(Account, f"n-{n}", OpenAccount("x")))
            except Overloaded:
                refused += 1
        assert (len(accepted), refused) == (50, 450)
        assert engine.statistics().aggregates.live == 50
        for pending in accepted:
            await pending


async def test_outside_cancellation_still_commits_what_was_decided(tmp_path: Path) -> None:
    with trio.CancelScope() as scope:
        async with Engine.open(tmp_path, aggregates=[Account], sync=False) as engine:
            pendings = [engine.send_nowait(Account, f"a{n}", OpenAccount("x")) for n in range(10)]
            scope.cancel()
            await trio.sleep_forever()
    results = [await p for p in pendings]  # every caller is answered, none with an error
    assert [r.position for r in results] == list(range(1, 11))
    log = LmdbEventLog(tmp_path)
    try:
        assert log.head_position() == 10
    finally:
        log.close()


async def test_a_group_wide_storage_error_is_a_distinct_object_per_caller() -> None:
    from actorlog.storage import MemoryEventLog

    log = MemoryEventLog(max_events=1)
    async with Engine.open(log=log, aggregates=[Account]) as engine:
        pendings = [engine.send_nowait(Account, f"a{n}", Deposit(1)) for n in range(5)]
        errors = []
        for pending in pendings:
            with pytest.raises(StorageFull) as caught:
                await pending
            errors.append(caught.value)
        assert len({id(e) for e in errors}) == 5


def test_snapshot_state_refuses_unannotated_public_attributes() -> None:
    class Counter(Aggregate):
        snapshot_every = 2
        total: int

        def __init__(self) -> None:
            self.total = 0
            self.count = 0  # not annotated: a snapshot would lose it

    with pytest.raises(HandlerError, match="count"):
        Counter().snapshot_state()


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
