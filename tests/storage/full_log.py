"""Filling a log to its cap or its disk: the writers, what their acknowledgements promise,
and a tiny tmpfs (shared by the storage-full and storage-integrity tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
import trio

from actorlog import Committed, Engine, EngineError, StorageError
from actorlog.storage import EventLog, LogView
from benchmarks.bank import AccountOpened, Deposit, Deposited, OpenAccount

from .torture_child import DepositSplit, TortureAccount

Acked = list[tuple[Committed, object]]


def expected_events(acked: Acked) -> set[tuple[int, str, int, bytes]]:
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


def amount_of(command: object) -> int:
    if isinstance(command, DepositSplit):
        return sum(command.amounts)
    assert isinstance(command, Deposit)
    return command.amount


def logged_events(log: EventLog | LogView) -> set[tuple[int, str, int, bytes]]:
    events = log.read_all(1, 1 << 30)
    assert [e.position for e in events] == list(range(1, log.head_position() + 1))
    return {(e.position, e.stream_id, e.version, bytes(e.payload)) for e in events}


def lmdb_view(engine: Engine) -> LogView:
    log = engine.log
    assert log.map_size is not None  # an LMDB log
    return log


def deposits(i: int, n: int) -> tuple[str, object]:
    """Single and multi-event commands on five hot accounts."""
    return f"acct-{i % 5}", DepositSplit((1, 2, 3, 4)) if n % 3 == 0 else Deposit(n)


def big_opens(i: int, n: int) -> tuple[str, object]:
    """4 KB events on fresh accounts: a megabyte fills in a few hundred commands."""
    return f"big-{i}-{n}", OpenAccount("o" * 4000)


async def fill(
    engine: Engine,
    acked: Acked,
    make: Callable[[int, int], tuple[str, object]] = deposits,
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


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
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


def remount(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", path], check=True, capture_output=True, timeout=10
    )
