"""Process managers hosted by the engine, on trio: routing, durable steps, the outbox,
deadlines, failures, passivation (the public-API scenarios run on asyncio too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .process_manager_scenarios import SCENARIOS, Scenario


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_scenario_on_trio(scenario: Scenario, tmp_path: Path) -> None:
    await scenario(tmp_path)
