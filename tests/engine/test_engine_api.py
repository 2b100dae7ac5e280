"""The Engine's write-side API on trio: the shared scenarios, plus trio-only tests
(mock clock for idle passivation, a hypothesis property for snapshots)."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actorlog import DefinitionError, Engine, Rejected
from actorlog.storage import MemoryEventLog, Snapshot

from .api_scenarios import (
    SCENARIOS,
    Add,
    Ledger,
    Noop,
    Scenario,
    SnapLedger,
    Spend,
    peek,
)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_scenario_on_trio(scenario: Scenario, tmp_path: Path) -> None:
    await scenario(tmp_path)


@pytest.mark.parametrize(
    "options",
    [{"mailbox_size": 0}, {"max_live_aggregates": 0}, {"idle_timeout": 0}],
    ids=["mailbox_size", "max_live_aggregates", "idle_timeout"],
)
async def test_invalid_options_fail_at_open(options: dict[str, int]) -> None:
    with pytest.raises(DefinitionError):
        async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger], **options):  # type: ignore[arg-type]
            pytest.fail("the engine opened")


async def test_idle_aggregates_are_passivated_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger], idle_timeout=10) as engine:
        await engine.send(Ledger, "idle", Add(1))
        await engine.send(Ledger, "used", Add(2))
        for _ in range(4):  # "used" is used more often than the timeout
            await trio.sleep(6)
            await engine.send(Ledger, "used", Noop())
        assert not engine.is_live("idle")
        assert engine.is_live("used")
        assert engine.statistics().aggregates.passivations == 1
        assert await peek(engine, "idle") == (1, [1])  # comes back transparently
        assert engine.is_live("idle")
        await trio.sleep(25)
        assert not engine.is_live("idle") and not engine.is_live("used")


async def test_snapshots_resume_from_the_loaded_snapshot_version() -> None:
    # Passivated and activated again from snapshot 3 with events 4 and 5: the next
    # snapshot is due at version 6, three events after the loaded one.
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[SnapLedger], max_live_aggregates=1
    ) as engine:
        for n in range(1, 6):
            await engine.send(SnapLedger, "a", Add(n))
        await engine.send(SnapLedger, "other", Add(1))  # passivates "a"
        assert not engine.is_live("a")
        await engine.send(SnapLedger, "a", Add(6))
        await engine.send(SnapLedger, "a", Noop())
        snapshot = engine.log.load_snapshot("a")
        assert snapshot is not None and snapshot.version == 6


async def test_failing_snapshot_state_does_not_fail_commands() -> None:
    class Unsnappable(SnapLedger):
        def snapshot_state(self) -> bytes:
            raise RuntimeError("cannot encode")

    async with Engine.open(log=MemoryEventLog(), aggregates=[Unsnappable]) as engine:
        for n in range(1, 8):
            await engine.send(Unsnappable, "a", Add(n))
        assert engine.log.load_snapshot("a") is None
        assert await peek(engine, "a", Unsnappable) == (28, list(range(1, 8)))


async def test_unreadable_snapshot_falls_back_to_full_replay() -> None:
    log = MemoryEventLog()
    async with Engine.open(log=log, aggregates=[SnapLedger], max_live_aggregates=1) as engine:
        for n in range(1, 5):
            await engine.send(SnapLedger, "a", Add(n))
        await engine.send(SnapLedger, "a", Noop())
        snapshot = log.load_snapshot("a")
        assert snapshot is not None
        junk = Snapshot(snapshot.version, snapshot.format, b"\xc1junk")
        log.append_batch([], snapshots=[("a", junk)])
        await engine.send(SnapLedger, "b", Noop())  # passivates "a"
        assert await peek(engine, "a", SnapLedger) == (10, [1, 2, 3, 4])


class _Model:
    """What the ledger should hold after a list of commands."""

    def __init__(self) -> None:
        self.balance = 0
        self.history: list[int] = []

    def run(self, command: Add | Spend) -> None:
        if isinstance(command, Add):
            self.balance += command.n
            self.history.append(command.n)
        elif command.n <= self.balance:
            self.balance -= command.n


commands = st.lists(
    st.one_of(
        st.builds(Add, st.integers(0, 50)),
        st.builds(Spend, st.integers(1, 60)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(commands=commands, every=st.integers(1, 7), restarts=st.lists(st.integers(0, 40)))
def test_snapshot_plus_tail_equals_full_replay(
    commands: list[Add | Spend], every: int, restarts: list[int]
) -> None:
    """Restarted at arbitrary points, a snapshotting aggregate rehydrates to the state a
    full replay of its events gives, and to the state the commands should produce."""
    snapping = cast(
        type[Ledger],
        type("Snapping", (Ledger,), {"snapshot_every": every, "aggregate_name": "Ledger"}),
    )
    model = _Model()
    for command in commands:
        model.run(command)
    expected = (model.balance, model.history)

    async def run(path: Path) -> None:
        cuts = sorted({0, len(commands), *(r for r in restarts if r < len(commands))})
        for start, stop in itertools.pairwise(cuts):
            async with Engine.open(path, aggregates=[snapping], sync=False) as engine:
                for command in commands[start:stop]:
                    with contextlib.suppress(Rejected):
                        await engine.send(snapping, "a", command)
        async with Engine.open(path, aggregates=[snapping], sync=False) as engine:
            assert await peek(engine, "a", snapping) == expected
            snapshot = engine.log.load_snapshot("a")
            version = engine.log.stream_version("a")
            assert (snapshot is not None) == (version >= every)
            assert snapshot is None or version - snapshot.version < every
        async with Engine.open(path, aggregates=[Ledger], sync=False) as engine:
            assert await peek(engine, "a") == expected

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, Path(tmp))
