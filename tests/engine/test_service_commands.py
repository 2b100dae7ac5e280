"""Service commands (idempotency, authorization, metadata): every scenario of
``service_scenarios.py`` on trio (pytest-trio) and on asyncio, plus a retry across a
``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import trio

from actorlog import Committed, Engine

from .service_scenarios import SCENARIOS, Add, Counter, Scenario


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_scenario_on_trio(scenario: Scenario, tmp_path: Path) -> None:
    await scenario(tmp_path)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario_on_asyncio(scenario: Scenario, tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))


_CHILD = """
import sys, trio, msgspec
from actorlog import Engine
from tests.engine.service_scenarios import Add, Counter

async def main(path):
    async with Engine.open(path, aggregates=[Counter]) as engine:
        done = await engine.send(Counter, "a", Add(7), command_id="pay-1")
        sys.stdout.buffer.write(msgspec.json.encode(done) + b"\\n")
        sys.stdout.flush()
        await trio.sleep_forever()  # killed here, never closed

trio.run(main, sys.argv[1])
"""


def test_a_retry_after_kill_9_returns_the_acknowledged_result(tmp_path: Path) -> None:
    path = tmp_path / "log"
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert child.stdout is not None
        acknowledged = msgspec.json.decode(child.stdout.readline(), type=Committed)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert acknowledged == Committed("a", 1, 1, 1)

    async def retry() -> None:
        async with Engine.open(path, aggregates=[Counter]) as engine:
            assert await engine.send(Counter, "a", Add(7), command_id="pay-1") == acknowledged
            assert [e.version for e in engine.log.read_stream("a")] == [1]

    trio.run(retry)


_FLOOD_CHILD = """
import sys, trio, msgspec
from actorlog import Engine
from tests.engine.service_scenarios import Add, Counter

async def main(path):
    async with Engine.open(path, aggregates=[Counter]) as engine:
        async def client(c):
            for n in range(50):
                done = await engine.send(Counter, f"s{c}", Add(1), command_id=f"{c}-{n}")
                line = msgspec.json.encode([f"{c}-{n}", done])
                sys.stdout.buffer.write(line + b"\\n")
                sys.stdout.flush()
        async with trio.open_nursery() as nursery:
            for c in range(8):
                nursery.start_soon(client, c)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


def test_retries_after_kill_9_mid_flood_answer_every_ack_and_append_each_id_once(
    tmp_path: Path,
) -> None:
    # Eight clients send ids concurrently (groups of many ids); the process dies with
    # commands in flight. After reopening, every id is sent again: an acknowledged one
    # gets its acknowledgement back, none is appended twice, and the totals match.
    path = tmp_path / "log"
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _FLOOD_CHILD, str(path)],
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    acked: dict[str, Committed] = {}
    try:
        assert child.stdout is not None
        while len(acked) < 150:
            line = child.stdout.readline()
            assert line, "the child ended early"
            command_id, done = msgspec.json.decode(line, type=tuple[str, Committed])
            acked[command_id] = done
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    async def retry() -> None:
        async with Engine.open(path, aggregates=[Counter]) as engine:
            for c in range(8):
                for n in range(50):
                    again = await engine.send(Counter, f"s{c}", Add(1), command_id=f"{c}-{n}")
                    if f"{c}-{n}" in acked:
                        assert again == acked[f"{c}-{n}"]
            for c in range(8):
                ids = [str(e.command_id) for e in engine.log.read_stream(f"s{c}")]
                assert sorted(ids) == sorted({f"{c}-{n}" for n in range(50)})  # once each

    trio.run(retry)
