"""A full log: the map grows by itself, then a typed StorageFull at the cap, nothing
half-written, queries still answered, writes resumed once the cap is raised. A real full
disk (a tiny tmpfs) gets a typed StorageError too, never a raw ``lmdb`` error."""

from __future__ import annotations

from pathlib import Path

import anyio
import lmdb
import pytest
import trio

from actorlog import Engine, StorageError, StorageFull
from benchmarks.bank import Balances, Deposit, OpenAccount, Totals

from .full_log import (
    Acked,
    amount_of,
    big_opens,
    expected_events,
    fill,
    lmdb_view,
    logged_events,
    remount,
    tmpfs,
)
from .torture_child import DepositSplit, TortureAccount


async def test_a_tiny_initial_map_grows_and_every_write_lands(tmp_path: Path) -> None:
    acked: Acked = []
    async with Engine.open(
        tmp_path, aggregates=[TortureAccount], projectors=[Balances], map_size=64 << 10
    ) as engine:
        log = lmdb_view(engine)

        async def client(i: int) -> None:
            for n in range(150):
                command = OpenAccount("o" * 300) if n == 0 else DepositSplit((n, 1))
                acked.append((await engine.send(TortureAccount, f"acct-{i}", command), command))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(client, i)
        assert (log.map_size or 0) > 64 << 10  # lmdb_view: not None
        assert logged_events(log) == expected_events(acked)
        await engine.wait_projected()
        assert await engine.query(Balances.balance, "acct-3") == sum(n + 1 for n in range(1, 150))


async def test_past_the_cap_commands_fail_with_storage_full_and_leave_nothing(
    tmp_path: Path,
) -> None:
    acked: Acked = []
    async with Engine.open(
        tmp_path,
        aggregates=[TortureAccount],
        projectors=[Balances, Totals],
        sync=False,  # the cap is the point here, not fsync
        map_size=64 << 10,
        max_map_size=256 << 10,
    ) as engine:
        log = lmdb_view(engine)
        failures = await fill(engine, acked)
        assert len(failures) == 16
        assert all(type(e) is StorageFull for e in failures)
        assert all(isinstance(e.__cause__, lmdb.MapFullError) for e in failures)
        assert log.map_size == 256 << 10
        # Nothing half-written: the log holds exactly what was acknowledged.
        assert logged_events(log) == expected_events(acked)

        # Still full: a command fails fast, and queries keep answering.
        with anyio.fail_after(1), pytest.raises(StorageFull):
            await engine.send(TortureAccount, "acct-9", OpenAccount("x" * (128 << 10)))
        balances = await engine.query(Balances.all_balances, after=log.head_position())
        assert sum(balances.values()) == await engine.query(Totals.net)
        assert sum(balances.values()) == sum(amount_of(c) for _, c in acked)

        # Raise the cap: every stream takes writes again (its actor was reloaded).
        engine.set_max_map_size(4 << 20)
        for i in range(5):
            command = DepositSplit((7, 7))
            acked.append((await engine.send(TortureAccount, f"acct-{i}", command), command))
        assert logged_events(log) == expected_events(acked)
        assert engine.statistics().aggregates.reloads >= 1
    # Reopened, the log still holds exactly the acknowledged events.
    async with Engine.open(tmp_path, aggregates=[TortureAccount]) as engine:
        assert logged_events(engine.log) == expected_events(acked)


async def test_one_command_larger_than_the_cap_fails_and_its_stream_carries_on(
    tmp_path: Path,
) -> None:
    async with Engine.open(
        tmp_path, aggregates=[TortureAccount], map_size=64 << 10, max_map_size=256 << 10
    ) as engine:
        first = await engine.send(TortureAccount, "acct-1", Deposit(1))
        with anyio.fail_after(1), pytest.raises(StorageFull):
            await engine.send(TortureAccount, "acct-1", OpenAccount("x" * (512 << 10)))
        assert engine.log.head_position() == 1
        after = await engine.send(TortureAccount, "acct-1", OpenAccount("ann"))
        assert (after.version, after.position) == (first.version + 1, 2)


async def test_a_full_disk_gives_a_typed_storage_error_and_loses_nothing(
    tmp_path: Path,
) -> None:
    acked: Acked = []
    with tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "log"
        async with Engine.open(path, aggregates=[TortureAccount], projectors=[Balances]) as engine:
            failures = await fill(engine, acked, big_opens)
            assert len(failures) == 16
            for e in failures:
                assert isinstance(e, StorageError)
                assert isinstance(e.__cause__, lmdb.Error)
                # ENOSPC, or EIO when LMDB's page write came up short.
            assert logged_events(engine.log) == expected_events(acked)
            assert await engine.query(Balances.all_balances) == {
                ack.stream_id: 0 for ack, _ in acked
            }

            # Room on the disk again: writes resume without reopening.
            remount(disk, "8m")
            command = DepositSplit((1, 1))
            acked.append(
                (await engine.send(TortureAccount, acked[0][0].stream_id, command), command)
            )
        async with Engine.open(path, aggregates=[TortureAccount]) as engine:
            assert logged_events(engine.log) == expected_events(acked)
