"""examples/fastapi_bank on a real uvicorn server, driven over HTTP by httpx."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from . import scenarios
from .servers import TELLER, running, start

MODULE = "examples.fastapi_bank"
# Its log at info level says whether each stop was graceful (see servers.running).
INFO = ("--log-level", "info")


def test_the_bank_over_http_across_a_restart(tmp_path: Path) -> None:
    """Commands, queries and every refusal over HTTP; then a clean stop (SIGTERM: the
    lifespan closes the engine) and a new process on the same directory, where a retry of
    an idempotency key still gets the original answer; and a second process on that
    directory fails to start, saying why (one process per LMDB directory)."""
    with running(MODULE, tmp_path, *INFO) as server, httpx.Client(base_url=server.url) as client:
        scenarios.commands_and_read_your_writes(client)
        scenarios.refusals(client)
        key, answer = scenarios.idempotent_retries(client)
    with running(MODULE, tmp_path, *INFO) as server, httpx.Client(base_url=server.url) as client:
        retry = scenarios.deposit(client, "carol", 30, **{"Idempotency-Key": key})
        assert retry.status_code == 200 and retry.json() == answer
        balance = client.get("/accounts/carol", headers=TELLER).json()["balance"]
        assert balance == 60  # the two deposits of the first run, the retry not again
        try:
            second = start(MODULE, tmp_path)
        except AssertionError as e:
            assert "StorageLocked" in str(e)
        else:
            second.stop()
            raise AssertionError("a second process opened a directory already in use")


async def test_a_full_mailbox_is_503_with_retry_after(tmp_path: Path) -> None:
    """With one command per account in flight, a burst at one account is shed with 503 and
    Retry-After; every 200 was appended, every 503 was not."""
    with running(MODULE, tmp_path, *INFO, "--mailbox-size", "1") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            statuses: list[int] = []
            shed: list[httpx.Response] = []

            async def one() -> None:
                answer = await client.post(
                    "/accounts/dave/commands",
                    json={"type": "Deposit", "amount": 1},
                    headers=TELLER,
                )
                statuses.append(answer.status_code)
                if answer.status_code == 503:
                    shed.append(answer)

            for _ in range(10):  # bursts until one overlaps a commit (the first usually does)
                async with trio.open_nursery() as nursery:
                    for _ in range(32):
                        nursery.start_soon(one)
                if shed:
                    break
            assert set(statuses) <= {200, 503}, statuses
            assert shed, "no burst of 32 concurrent requests filled a mailbox of 1"
            assert all(r.headers["Retry-After"] == "1" for r in shed)
            assert shed[0].json()["error"] == "Overloaded"
            head = (await client.get("/health")).json()["head"]
            read = await client.get("/accounts/dave", params={"after": head}, headers=TELLER)
            assert read.json()["balance"] == statuses.count(200)
