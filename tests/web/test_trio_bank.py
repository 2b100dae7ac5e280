"""examples/trio_bank (hypercorn on trio, the engine owned by the program's main task) on a
real server, driven over HTTP by httpx."""

from __future__ import annotations

from pathlib import Path

import httpx

from . import scenarios
from .servers import running

MODULE = "examples.trio_bank"


def test_the_bank_on_trio_over_http(tmp_path: Path) -> None:
    with running(MODULE, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        scenarios.commands_and_read_your_writes(client)
        scenarios.refusals(client)
        scenarios.idempotent_retries(client)
