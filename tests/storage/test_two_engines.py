"""Two engines on one log directory: the second is refused with StorageLocked, whether it
is in another process or this one, and a SIGKILLed holder leaves the directory usable.

The design choice (documented on ``StorageLocked``): one engine per log directory, enforced
by an exclusive ``flock`` that the OS drops when its holder dies, however it dies.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from actorlog import Engine, StorageError, StorageLocked
from benchmarks.bank import Account, Deposit

ROOT = Path(__file__).resolve().parent.parent.parent

# Opens the engine, writes, says how far it got on every commit, then waits to be killed.
HOLDER = """
import sys, trio
from benchmarks.bank import Account, Deposit
from actorlog import Engine

async def main(path, n, forever):
    async with Engine.open(path, aggregates=[Account]) as engine:
        for i in range(n if not forever else 10**9):
            ack = await engine.send(Account, f"acct-{i % 7}", Deposit(1))
            if not forever or i == 0:
                print("ack", ack.position, flush=True)
        print("ready", engine.log.head_position(), flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3] == "forever")
"""

# Tries to open the engine and says what happened.
CONTENDER = """
import sys, trio
from benchmarks.bank import Account
from actorlog import Engine, EngineError

async def main(path):
    try:
        async with Engine.open(path, aggregates=[Account]):
            print("opened")
    except EngineError as e:
        print(type(e).__name__, e)

trio.run(main, sys.argv[1])
"""


async def _start_holder(path: Path, n: int, *, forever: bool = False) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-c", HOLDER, str(path), str(n), "forever" if forever else "once"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )


async def _read_until(process: trio.Process, word: str) -> list[str]:
    """Lines from the process's stdout up to and including the first starting with ``word``."""
    assert process.stdout is not None
    buffer = b""
    lines: list[str] = []
    with trio.fail_after(30):  # a bound for a hung child, not a speed claim
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
            if any(line.startswith(word) for line in lines):
                return lines
    raise AssertionError(f"the child ended without printing {word!r}: {lines}")


async def _kill(process: trio.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL


async def test_a_second_engine_in_another_process_is_refused_with_storage_locked(
    tmp_path: Path,
) -> None:
    holder = await _start_holder(tmp_path, 25)
    try:
        await _read_until(holder, "ready")
        with pytest.raises(StorageLocked, match="another process") as refused:
            async with Engine.open(tmp_path, aggregates=[Account]):
                pass
        assert isinstance(refused.value, StorageError)
    finally:
        await _kill(holder)
    # Its holder SIGKILLed, the directory opens, and everything it acknowledged is there.
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        assert engine.log.head_position() == 25


async def test_another_process_is_refused_while_this_one_holds_the_log(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        await engine.send(Account, "acct-1", Deposit(1))
        result = await trio.run_process(
            [sys.executable, "-c", CONTENDER, str(tmp_path)], cwd=ROOT, capture_stdout=True
        )
        assert result.stdout.decode().startswith("StorageLocked ")
        # The refused contender disturbed nothing.
        ack = await engine.send(Account, "acct-1", Deposit(1))
        assert ack.position == 2
    result = await trio.run_process(
        [sys.executable, "-c", CONTENDER, str(tmp_path)], cwd=ROOT, capture_stdout=True
    )
    assert result.stdout.decode() == "opened\n"


async def test_a_second_engine_in_this_process_is_refused_too(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        with pytest.raises(StorageLocked):
            async with Engine.open(tmp_path, aggregates=[Account]):
                pass
        await engine.send(Account, "acct-1", Deposit(1))
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        assert engine.log.head_position() == 1


async def test_sigkilling_the_holder_mid_write_releases_the_lock(tmp_path: Path) -> None:
    holder = await _start_holder(tmp_path, 0, forever=True)
    try:
        await _read_until(holder, "ack")  # it is writing now, as fast as it can
        with pytest.raises(StorageLocked):
            async with Engine.open(tmp_path, aggregates=[Account]):
                pass
    finally:
        await _kill(holder)
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        head = engine.log.head_position()
        assert head >= 1
        assert [e.position for e in engine.log.read_all(1, head)] == list(range(1, head + 1))
        ack = await engine.send(Account, "acct-0", Deposit(1))
        assert ack.position == head + 1
