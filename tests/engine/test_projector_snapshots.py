"""Projectors with ``snapshot_every`` save their cache in the log and start from it.

Every check compares a saving projector with a twin that replays the whole log (the same
appliers, no snapshots): whatever path the saving one took to its cache, the two must agree.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from actorlog import (
    DefinitionError,
    Engine,
    Projector,
    ProjectorFaulted,
    ProjectorStatistics,
    Rejected,
    applies,
)
from actorlog.storage import Append, LmdbEventLog
from benchmarks.bank import (
    Account,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    Withdraw,
    Withdrawn,
)


class SavedBalances(Balances):
    """Balances, saving its cache every 7 positions.

    Its queries are its own: a query is answered by the hosted projector whose class
    defines it, so ``SavedBalances.all_balances`` (inherited) would be answered by the
    ``Balances`` twin hosted beside it, and every comparison would hold by construction.
    """

    snapshot_every = 7
    by_account: dict[str, int]

    def saved_balances(self) -> dict[str, int]:
        """Every balance, from this projector's own cache."""
        return self.by_account

    def saved_balance(self, account: str) -> int:
        """One balance, from this projector's own cache."""
        return self.by_account.get(account, 0)


class SavedBalancesV2(SavedBalances):
    """The same cache under another format: a saved cache of format 1 must be ignored."""

    name = "SavedBalances"
    snapshot_format = 2


class BrokenSave(Balances):
    """Saves nothing: its snapshot_state raises."""

    snapshot_every = 3
    by_account: dict[str, int]

    def broken_balances(self) -> dict[str, int]:
        """Every balance, from this projector's own cache."""
        return self.by_account

    def snapshot_state(self) -> bytes:
        raise RuntimeError("cannot encode")


async def _commands(engine: Engine, seed: int, count: int, accounts: int = 5) -> None:
    rng = random.Random(seed)
    for n in range(accounts):
        with contextlib.suppress(Rejected):  # opened in an earlier session
            await engine.send(Account, f"acct-{n}", OpenAccount(f"owner-{n}"))
    for _ in range(count):
        command = (
            Deposit(rng.randint(1, 50)) if rng.random() < 0.6 else Withdraw(rng.randint(1, 50))
        )
        with contextlib.suppress(Rejected):
            await engine.send(Account, f"acct-{rng.randrange(accounts)}", command)


def _stats(engine: Engine, name: str) -> ProjectorStatistics:
    return next(p for p in engine.statistics().projectors if p.name == name)


async def _assert_twins_agree(engine: Engine) -> None:
    await engine.wait_projected()
    assert await engine.query(SavedBalances.saved_balances) == await engine.query(
        Balances.all_balances
    )


def _open(
    path: Path, *projectors: type[Projector]
) -> contextlib.AbstractAsyncContextManager[Engine]:
    return Engine.open(path, aggregates=[Account], projectors=[Balances, *projectors])


async def test_a_restart_starts_from_the_saved_cache(tmp_path: Path) -> None:
    async with _open(tmp_path, SavedBalances) as engine:
        await _commands(engine, seed=1, count=40)
        await _assert_twins_agree(engine)
        # Saved every 7 positions while running, not only at close.
        saved = engine.log.load_projector_cache("SavedBalances")
        assert saved is not None and saved.position >= engine.log.head_position() - 7
        head = engine.log.head_position()
    async with _open(tmp_path, SavedBalances) as engine:
        await engine.wait_projected()
        stats = _stats(engine, "SavedBalances")
        assert stats.restored_from == head  # saved at close, loaded at open
        assert stats.applied == 0  # nothing replayed
        assert _stats(engine, "Balances").applied == head  # the twin replayed everything
        await _assert_twins_agree(engine)
        await _commands(engine, seed=2, count=30)
        await _assert_twins_agree(engine)


async def test_events_after_the_saved_cache_are_replayed(tmp_path: Path) -> None:
    async with _open(tmp_path, SavedBalances) as engine:
        await _commands(engine, seed=3, count=20)
        await engine.wait_projected()  # so that close saves the cache at the head
        saved_at = engine.log.head_position()
    # Events the projector never saw (written while no engine ran).
    log = LmdbEventLog(tmp_path)
    try:
        version = log.stream_version("acct-0")
        payload = msgspec.msgpack.encode(Deposited(1000))
        log.append_batch([Append("acct-0", version, (("Deposited", payload),) * 3)])
    finally:
        log.close()
    async with _open(tmp_path, SavedBalances) as engine:
        await engine.wait_projected()
        stats = _stats(engine, "SavedBalances")
        assert (stats.restored_from, stats.applied) == (saved_at, 3)
        await _assert_twins_agree(engine)
        assert await engine.query(SavedBalances.saved_balance, "acct-0") >= 3000


async def test_a_cache_of_another_format_is_ignored(tmp_path: Path) -> None:
    async with _open(tmp_path, SavedBalances) as engine:
        await _commands(engine, seed=4, count=20)
    async with _open(tmp_path, SavedBalancesV2) as engine:
        await engine.wait_projected()
        assert _stats(engine, "SavedBalances").restored_from == 0
        assert await engine.query(SavedBalancesV2.saved_balances) == await engine.query(
            Balances.all_balances
        )
    # It saved its own format at close; the old class now ignores that one.
    async with _open(tmp_path, SavedBalances) as engine:
        await engine.wait_projected()
        assert _stats(engine, "SavedBalances").restored_from == 0
        await _assert_twins_agree(engine)


async def test_an_unreadable_saved_cache_means_a_full_replay(tmp_path: Path) -> None:
    async with _open(tmp_path, SavedBalances) as engine:
        await _commands(engine, seed=5, count=20)
    log = LmdbEventLog(tmp_path)
    try:
        saved = log.load_projector_cache("SavedBalances")
        assert saved is not None
        # Same format, bytes that do not decode as the cache.
        broken = msgspec.structs.replace(saved, state=b"\x01")
        log.append_batch([], projector_caches=[("SavedBalances", broken)])
    finally:
        log.close()
    async with _open(tmp_path, SavedBalances) as engine:
        await engine.wait_projected()
        assert _stats(engine, "SavedBalances").restored_from == 0
        await _assert_twins_agree(engine)


async def test_a_failing_snapshot_state_is_counted_and_harmless(tmp_path: Path) -> None:
    async with _open(tmp_path, BrokenSave) as engine:
        await _commands(engine, seed=6, count=20)
        await engine.wait_projected()
        assert _stats(engine, "BrokenSave").snapshot_failures >= 1
        assert await engine.query(BrokenSave.broken_balances) == await engine.query(
            Balances.all_balances
        )
        assert engine.log.load_projector_cache("BrokenSave") is None


class HaltsOnWithdrawal(Projector):
    """Counts deposits; halts at the first withdrawal."""

    snapshot_every = 1
    seen: int

    def __init__(self) -> None:
        self.seen = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        self.seen += 1

    @applies
    def withdrawn(self, e: Withdrawn) -> None:
        raise ValueError("no withdrawals here")


async def test_a_halted_projector_saves_nothing_past_its_fault(tmp_path: Path) -> None:
    async with Engine.open(
        tmp_path, aggregates=[Account], projectors=[HaltsOnWithdrawal]
    ) as engine:
        await engine.send(Account, "a", OpenAccount("o"))  # position 1
        await engine.send(Account, "a", Deposit(10))  # 2
        await engine.send(Account, "a", Withdraw(5))  # 3: the projector halts here
        await engine.send(Account, "a", Deposit(1))  # 4
        with pytest.raises(ProjectorFaulted):
            await engine.wait_projected()
    log = LmdbEventLog(tmp_path)
    try:
        saved = log.load_projector_cache("HaltsOnWithdrawal")
    finally:
        log.close()
    # Saved while healthy (every position), never at or past the failing one, not at close.
    assert saved is not None and saved.position == 2
    assert HaltsOnWithdrawal.from_snapshot(saved.state).seen == 1


def test_snapshot_options_are_checked_when_the_class_is_made() -> None:
    with pytest.raises(DefinitionError, match="snapshot_every"):

        class Zero(Projector):
            snapshot_every = 0

    with pytest.raises(DefinitionError, match="annotates no state"):

        class Unannotated(Balances):
            snapshot_every = 10

    with pytest.raises(DefinitionError, match="snapshot_format"):

        class BadFormat(Projector):
            snapshot_format = "2"  # type: ignore[assignment]

    assert SavedBalances.snapshot_state not in SavedBalances.query_functions
    assert BrokenSave.snapshot_state not in BrokenSave.query_functions


class WrongType(Balances):
    """Its snapshot_state returns a str, not bytes."""

    snapshot_every = 2
    by_account: dict[str, int]

    def snapshot_state(self) -> bytes:
        return "not bytes"  # type: ignore[return-value]


class WrongTypeAccount(Account):
    """An aggregate whose snapshot_state returns a str."""

    snapshot_every = 1

    def snapshot_state(self) -> bytes:
        return "not bytes"  # type: ignore[return-value]


async def test_a_snapshot_state_that_is_not_bytes_fails_no_command(tmp_path: Path) -> None:
    # Handed to the writer, it would fail every command of the group it rides with.
    async with Engine.open(
        tmp_path, aggregates=[WrongTypeAccount], projectors=[WrongType]
    ) as engine:
        await engine.send(WrongTypeAccount, "a", OpenAccount("o"))
        for n in range(1, 6):
            await engine.send(WrongTypeAccount, "a", Deposit(n))
        assert await engine.query(WrongType.balance, "a", after=6) == 15
        stats = engine.statistics()
        assert stats.aggregates.snapshot_failures >= 1
        assert _stats(engine, "WrongType").snapshot_failures >= 1
        assert engine.log.load_snapshot("a") is None
        assert engine.log.load_projector_cache("WrongType") is None


class FlakyTotal(Projector):
    """Sums deposits; parks them while ``failing`` (a transient outside condition)."""

    on_error = "park"
    snapshot_every = 2
    failing: ClassVar[bool] = True
    total: int

    def __init__(self) -> None:
        self.total = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        if FlakyTotal.failing:
            raise RuntimeError("transient")
        self.total += e.amount

    def get_total(self) -> int:
        return self.total


async def test_rebuild_then_close_does_not_bring_back_the_dropped_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine/_projectors.py:rebuild sets ``checkpoint = _saved_at = 0``, so a close
    before the rebuilt projector applies anything saves nothing (``0 <= 0``), and the cache
    saved before the rebuild (or one still queued in the writer) stays in the log. The
    next start restores it: the rebuild is silently undone, here the two parked deposits
    the rebuild was meant to re-apply are lost from the view (and the parked list with
    them). Expected: a rebuild invalidates the saved cache."""
    monkeypatch.setattr(FlakyTotal, "failing", True)
    async with Engine.open(tmp_path, aggregates=[Account], projectors=[FlakyTotal]) as engine:
        await engine.send(Account, "a", OpenAccount("o"))  # position 1
        await engine.send(Account, "a", Deposit(10))  # 2: parked
        await engine.send(Account, "a", Deposit(5))  # 3: parked
        await engine.wait_projected()
        assert len(engine.parked(FlakyTotal)) == 2
        monkeypatch.setattr(FlakyTotal, "failing", False)  # the outside cause is fixed
        engine.rebuild(FlakyTotal)  # ...and the engine stops right away
    async with Engine.open(tmp_path, aggregates=[Account], projectors=[FlakyTotal]) as engine:
        await engine.wait_projected()
        assert await engine.query(FlakyTotal.get_total) == 15
