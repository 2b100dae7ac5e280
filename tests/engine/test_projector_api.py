"""The public-API projector scenarios, on trio and again on asyncio."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.engine import projector_scenarios as s


async def test_read_your_writes() -> None:
    await s.scenario_read_your_writes()


def test_read_your_writes_asyncio() -> None:
    asyncio.run(s.scenario_read_your_writes())


async def test_query_without_after_does_not_wait() -> None:
    await s.scenario_query_without_after_does_not_wait()


def test_query_without_after_does_not_wait_asyncio() -> None:
    asyncio.run(s.scenario_query_without_after_does_not_wait())


async def test_after_waits_for_later_positions() -> None:
    await s.scenario_after_waits_for_later_positions()


def test_after_waits_for_later_positions_asyncio() -> None:
    asyncio.run(s.scenario_after_waits_for_later_positions())


async def test_positions_beyond_the_head_are_refused_at_once() -> None:
    await s.scenario_positions_beyond_the_head_are_refused_at_once()


def test_positions_beyond_the_head_are_refused_at_once_asyncio() -> None:
    asyncio.run(s.scenario_positions_beyond_the_head_are_refused_at_once())


async def test_catch_up_while_commands_arrive_lmdb(tmp_path: Path) -> None:
    await s.scenario_catch_up_while_commands_arrive(tmp_path, backlog=20_000)


def test_catch_up_while_commands_arrive_asyncio_lmdb(tmp_path: Path) -> None:
    asyncio.run(s.scenario_catch_up_while_commands_arrive(tmp_path, backlog=20_000))


async def test_catch_up_while_commands_arrive_memory() -> None:
    await s.scenario_catch_up_while_commands_arrive(None, backlog=20_000)


async def test_halt_then_resume() -> None:
    await s.scenario_halt_then_resume()


def test_halt_then_resume_asyncio() -> None:
    asyncio.run(s.scenario_halt_then_resume())


async def test_rebuild_clears_a_halt() -> None:
    await s.scenario_rebuild_clears_a_halt()


def test_rebuild_clears_a_halt_asyncio() -> None:
    asyncio.run(s.scenario_rebuild_clears_a_halt())


async def test_park_and_continue() -> None:
    await s.scenario_park_and_continue()


def test_park_and_continue_asyncio() -> None:
    asyncio.run(s.scenario_park_and_continue())


async def test_query_results_never_alias_the_cache() -> None:
    await s.scenario_query_results_never_alias_the_cache()


def test_query_results_never_alias_the_cache_asyncio() -> None:
    asyncio.run(s.scenario_query_results_never_alias_the_cache())


async def test_rebuild_and_statistics() -> None:
    await s.scenario_rebuild_and_statistics()


def test_rebuild_and_statistics_asyncio() -> None:
    asyncio.run(s.scenario_rebuild_and_statistics())


async def test_only_handled_types_are_decoded() -> None:
    await s.scenario_only_handled_types_are_decoded()


def test_only_handled_types_are_decoded_asyncio() -> None:
    asyncio.run(s.scenario_only_handled_types_are_decoded())
