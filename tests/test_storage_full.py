"""A full log: the map grows by itself, then a typed StorageFull at the cap, nothing
half-written, queries still answered, writes resumed once the cap is raised. A real full
disk (a tiny tmpfs) gets a typed StorageError too, never a raw ``lmdb`` error."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import lmdb
import msgspec
import pytest
import trio

from actorlog import Committed, Engine, EngineError, StorageError, StorageFull
from actorlog.storage import EventLog, LogView
from benchmarks.bank import AccountOpened, Balances, Deposit, Deposited, OpenAccount, Totals

from .torture_child import DepositSplit, TortureAccount

Acked = list[tuple[Committed, object]]


def _expected_events(acked: Acked) -> set[tuple[int, str, int, bytes]]:
    """(position, stream, version, payload) of every event the acknowledgements promise."""
    out: set[tuple[int, str, int, bytes]] = set()
    for ack, command in acked:
        payloads: list[object]
        if isinstance(command, DepositSplit):
            payloads = [Deposited(a) for a in command.amounts]
        elif isinstance(command, Deposit):
            payloads = [Deposited(command.amount)]
        else:
            assert isinstance(command, OpenAccount)
            payloads = [AccountOpened(command.owner)]
        n = len(payloads)
        assert ack.events == n
        for i, payload in enumerate(payloads):
            out.add(
                (
                    ack.position - n + 1 + i,
                    ack.stream_id,
                    ack.version - n + 1 + i,
                    msgspec.msgpack.encode(payload),
                )
            )
    return out


def _amount(command: object) -> int:
    if isinstance(command, DepositSplit):
        return sum(command.amounts)
    assert isinstance(command, Deposit)
    return command.amount


def _logged_events(log: EventLog | LogView) -> set[tuple[int, str, int, bytes]]:
    events = log.read_all(1, 1 << 30)
    assert [e.position for e in events] == list(range(1, log.head_position() + 1))
    return {(e.position, e.stream_id, e.version, bytes(e.payload)) for e in events}


def _lmdb(engine: Engine) -> LogView:
    log = engine.log
    assert log.map_size is not None  # an LMDB log
    return log


def _deposits(i: int, n: int) -> tuple[str, object]:
    """Single and multi-event commands on five hot accounts."""
    return f"acct-{i % 5}", DepositSplit((1, 2, 3, 4)) if n % 3 == 0 else Deposit(n)


def _big_opens(i: int, n: int) -> tuple[str, object]:
    """4 KB events on fresh accounts: a megabyte fills in a few hundred commands."""
    return f"big-{i}-{n}", OpenAccount("o" * 4000)


async def _fill(
    engine: Engine,
    acked: Acked,
    make: Callable[[int, int], tuple[str, object]] = _deposits,
    *,
    clients: int = 16,
) -> list[EngineError]:
    """Clients write until each gets a storage error; every other error fails the test.

    Each failing send must fail within a second.
    """
    failures: list[EngineError] = []

    async def client(i: int) -> None:
        n = 0
        while True:
            n += 1
            stream_id, command = make(i, n)
            try:
                with anyio.fail_after(1):
                    ack = await engine.send(TortureAccount, stream_id, command)
            except StorageError as e:
                failures.append(e)
                return
            acked.append((ack, command))

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
    return failures


async def test_a_tiny_initial_map_grows_and_every_write_lands(tmp_path: Path) -> None:
    acked: Acked = []
    async with Engine.open(
        tmp_path, aggregates=[TortureAccount], projectors=[Balances], map_size=64 << 10
    ) as engine:
        log = _lmdb(engine)

        async def client(i: int) -> None:
            for n in range(150):
                command = OpenAccount("o" * 300) if n == 0 else DepositSplit((n, 1))
                acked.append((await engine.send(TortureAccount, f"acct-{i}", command), command))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(client, i)
        assert (log.map_size or 0) > 64 << 10  # _lmdb: not None
        assert _logged_events(log) == _expected_events(acked)
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
        log = _lmdb(engine)
        failures = await _fill(engine, acked)
        assert len(failures) == 16
        assert all(type(e) is StorageFull for e in failures)
        assert all(isinstance(e.__cause__, lmdb.MapFullError) for e in failures)
        assert log.map_size == 256 << 10
        # Nothing half-written: the log holds exactly what was acknowledged.
        assert _logged_events(log) == _expected_events(acked)

        # Still full: a command fails fast, and queries keep answering.
        with anyio.fail_after(1), pytest.raises(StorageFull):
            await engine.send(TortureAccount, "acct-9", OpenAccount("x" * (128 << 10)))
        balances = await engine.query(Balances.all_balances, after=log.head_position())
        assert sum(balances.values()) == await engine.query(Totals.net)
        assert sum(balances.values()) == sum(_amount(c) for _, c in acked)

        # Raise the cap: every stream takes writes again (its actor was reloaded).
        engine.set_max_map_size(4 << 20)
        for i in range(5):
            command = DepositSplit((7, 7))
            acked.append((await engine.send(TortureAccount, f"acct-{i}", command), command))
        assert _logged_events(log) == _expected_events(acked)
        assert engine.statistics().aggregates.reloads >= 1
    # Reopened, the log still holds exactly the acknowledged events.
    async with Engine.open(tmp_path, aggregates=[TortureAccount]) as engine:
        assert _logged_events(engine.log) == _expected_events(acked)


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


# -- a real full disk ------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path``, or skip: it needs root and a kernel that lets
    this container mount."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", f"actorlog-{uuid.uuid4().hex}", path],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True, timeout=10)


def _remount(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", path], check=True, capture_output=True, timeout=10
    )


async def test_a_full_disk_gives_a_typed_storage_error_and_loses_nothing(
    tmp_path: Path,
) -> None:
    acked: Acked = []
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "log"
        async with Engine.open(path, aggregates=[TortureAccount], projectors=[Balances]) as engine:
            failures = await _fill(engine, acked, _big_opens)
            assert len(failures) == 16
            for e in failures:
                assert isinstance(e, StorageError)
                assert isinstance(e.__cause__, lmdb.Error)
                # ENOSPC, or EIO when LMDB's page write came up short.
            assert _logged_events(engine.log) == _expected_events(acked)
            assert await engine.query(Balances.all_balances) == {
                ack.stream_id: 0 for ack, _ in acked
            }

            # Room on the disk again: writes resume without reopening.
            _remount(disk, "8m")
            command = DepositSplit((1, 1))
            acked.append(
                (await engine.send(TortureAccount, acked[0][0].stream_id, command), command)
            )
        async with Engine.open(path, aggregates=[TortureAccount]) as engine:
            assert _logged_events(engine.log) == _expected_events(acked)
