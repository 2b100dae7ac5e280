"""The process-manager scenarios on asyncio (sync tests: each runs its own ``asyncio.run``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .process_manager_scenarios import SCENARIOS, Scenario


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario_on_asyncio(scenario: Scenario, tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
