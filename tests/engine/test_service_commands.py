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
