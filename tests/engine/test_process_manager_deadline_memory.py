"""A deadline re-armed on every event (a session's idle timeout) holds memory for the one
deadline it is, not one heap entry per re-arm until the old ones come due: the deadline
task's heap must not grow without bound (review of issue 16; structured concurrency: no
unbounded queues)."""

from __future__ import annotations

import gc
import inspect
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import msgspec

from actorlog import Aggregate, Engine, ProcessManager, Schedule, applies, handles, reacts, starts
from actorlog.testing import FakeClock


class Touch(msgspec.Struct, frozen=True):
    session: str


class Touched(msgspec.Struct, frozen=True):
    session: str


class Idle(msgspec.Struct, frozen=True):
    pass


class Session(Aggregate):
    touches: int

    def __init__(self) -> None:
        self.touches = 0

    @handles
    def touch(self, c: Touch) -> list[Touched]:
        return [Touched(c.session)]

    @applies
    def touched(self, e: Touched) -> None:
        self.touches += 1


class IdleTimeout(ProcessManager):
    """Re-arms an hour's idle deadline on every touch (the key replaces the last one)."""

    @starts("session")
    def touched(self, e: Touched) -> list[Any]:
        return [Schedule(Idle(), after=3600)]

    @reacts
    def idle(self, i: Idle) -> list[Any]:
        return []


def _held() -> int:
    """Bytes held that were allocated where the engine keeps its deadlines
    (``ProcessManagers.arm``): the rest of the engine (its window of recent events,
    bounded by bytes) is noise here."""
    from actorlog.engine._process_managers import ProcessManagers

    lines, first = inspect.getsourcelines(ProcessManagers.arm)
    path = inspect.getsourcefile(ProcessManagers)
    assert path is not None
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, path)])
    return sum(
        s.size
        for s in snapshot.statistics("lineno")
        if first <= s.traceback[0].lineno < first + len(lines)
    )


async def _touch(engine: Engine, times: int) -> int:
    """Touch the session ``times`` times; the bytes the host allocated and still holds."""
    before = _held()
    for _ in range(times):
        await engine.send(Session, "s", Touch("s"))
    await engine.wait_settled(timeout=30)
    return _held() - before


async def test_a_deadline_rearmed_on_every_event_does_not_grow_memory(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Engine.open(
        tmp_path,
        aggregates=[Session],
        process_managers=[IdleTimeout],
        clock=clock,
        sync=False,  # no fsync a touch: this is about memory
    ) as engine:
        tracemalloc.start()
        try:
            await _touch(engine, 500)  # warm up: caches, the instance
            grown = await _touch(engine, 3000)
        finally:
            tracemalloc.stop()
        assert engine.statistics().process_managers[0].pending_deadlines == 1
        # A heap entry per re-arm is ~120 bytes (a tuple of six, a float): 3,000 of them
        # ~360 kB. Compacted, the heap holds at most ~1,000 stale entries (~125 kB).
        assert grown < 200_000, grown
        # The deadline that is set still fires, once, when due.
        clock.advance(3600)
        with anyio.fail_after(10):
            while engine.statistics().process_managers[0].deadlines_fired == 0:  # noqa: ASYNC110
                await anyio.sleep(0.001)
        await engine.wait_settled(timeout=10)
        stats = engine.statistics().process_managers[0]
        assert (stats.deadlines_fired, stats.pending_deadlines) == (1, 0)
