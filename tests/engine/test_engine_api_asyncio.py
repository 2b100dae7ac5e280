"""The same public-API scenarios on asyncio, plus asyncio's own cancellation semantics.

Sync tests, so pytest-trio leaves them alone: each runs its own ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from actorlog import Committed, Engine
from actorlog.storage import MemoryEventLog

from .api_scenarios import SCENARIOS, Add, Ledger, Scenario, peek


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario_on_asyncio(scenario: Scenario, tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))


def test_task_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    # asyncio (unlike trio and anyio's cancel scopes) can cancel a task whose wait has
    # already completed: task.cancel() between the wake-up and the task's next step. The
    # mailbox slot handed to it must go to the next waiter, or that one waits forever.
    async def main() -> None:
        async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger], mailbox_size=1) as engine:
            first = engine.send_nowait(Ledger, "a", Add(1))
            handed = asyncio.create_task(engine.send(Ledger, "a", Add(2)))
            after = asyncio.create_task(engine.send(Ledger, "a", Add(3)))
            await asyncio.sleep(0)  # both wait for room now
            # `first` commits; its reply wakes us first, then the slot goes to `handed`.
            assert await first == Committed("a", 1, 1, 1)
            handed.cancel()  # after its wake-up, before it runs
            with pytest.raises(asyncio.CancelledError):
                await handed
            assert await asyncio.wait_for(after, 10) == Committed("a", 2, 2, 1)
            assert await peek(engine, "a") == (4, [1, 3])
            assert engine.statistics().aggregates.waiting == 0

    asyncio.run(main())


def test_pending_survives_wait_for_timeout() -> None:
    async def main() -> None:
        async with Engine.open(log=MemoryEventLog(), aggregates=[Ledger]) as engine:
            pending = engine.send_nowait(Ledger, "a", Add(1))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pending.wait(), 0)
            assert await pending == Committed("a", 1, 1, 1)

    asyncio.run(main())
