"""What every web host of the bank must answer, over real HTTP (run against each example)."""

from __future__ import annotations

import uuid

import httpx

from .servers import ALICE, TELLER


def deposit(client: httpx.Client, account: str, amount: int, **headers: str) -> httpx.Response:
    return client.post(
        f"/accounts/{account}/commands",
        json={"type": "Deposit", "amount": amount},
        headers={**TELLER, **headers},
    )


def commands_and_read_your_writes(client: httpx.Client) -> None:
    """A command answers once durable with its position; a query with ``after=`` it sees it."""
    first = deposit(client, "alice", 700)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["account"] == "alice" and body["version"] == 1 and body["position"] >= 1
    second = client.post(
        "/accounts/alice/commands", json={"type": "Withdraw", "amount": 200}, headers=ALICE
    )
    assert second.status_code == 200, second.text
    assert second.json()["position"] == body["position"] + 1
    read = client.get("/accounts/alice", params={"after": second.json()["position"]}, headers=ALICE)
    assert read.status_code == 200, read.text
    assert read.json() == {"account": "alice", "balance": 500}


def refusals(client: httpx.Client) -> None:
    """Each refusal its status, with the engine's reason, and nothing appended."""
    head = client.get("/health").json()["head"]
    # A domain rule said no: 409.
    over = client.post(
        "/accounts/alice/commands", json={"type": "Withdraw", "amount": 10**9}, headers=ALICE
    )
    assert over.status_code == 409, over.text
    assert over.json()["error"] == "InsufficientFunds"
    # Input that is not a command of Account: 422, saying what is wrong.
    for body, reason in [
        (b'{"type": "Deposit", "amount": "ten"}', "amount"),
        (b'{"type": "Deposit", "amount": 1, "extra": 1}', "extra"),
        (b'{"type": "Transfer", "amount": 1}', "Transfer"),
        (b'{"type": "Deposit", "amount": ', ""),
        (b"[]", ""),
    ]:
        answer = client.post("/accounts/alice/commands", content=body, headers=TELLER)
        assert answer.status_code == 422, (body, answer.text)
        assert reason in answer.json()["detail"], answer.text
    # An amount no event can store (msgpack ints end at 2**64 - 1): refused as input,
    # 422, not a 500 from the engine failing to encode the handler's event.
    for amount in (2**64, 10**30, -(2**64)):
        for kind in ("Deposit", "Withdraw"):
            answer = client.post(
                "/accounts/alice/commands", json={"type": kind, "amount": amount}, headers=TELLER
            )
            assert answer.status_code == 422, (kind, amount, answer.text)
            assert "amount" in answer.json()["detail"], answer.text
    too_big = client.post(
        "/accounts/alice/commands",
        content=b'{"type": "Deposit", "amount": 1, "x": "' + b"y" * 70_000 + b'"}',
        headers=TELLER,
    )
    assert too_big.status_code == 413, too_big.text
    # Who: no token or an unknown one is 401; a known principal the policy refuses, 403.
    for headers in ({}, {"Authorization": "Bearer nobody"}, {"Authorization": "Basic x"}):
        answer = client.post(
            "/accounts/alice/commands", json={"type": "Deposit", "amount": 1}, headers=headers
        )
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/accounts/alice").status_code == 401
    refused = client.post(
        "/accounts/alice/commands", json={"type": "Deposit", "amount": 1}, headers=ALICE
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "Unauthorized"
    assert client.get("/accounts/bob", headers=ALICE).status_code == 403
    # A position no acknowledgement gave: 422 at once, not a wait.
    beyond = client.get("/accounts/alice", params={"after": head + 1000}, headers=ALICE)
    assert beyond.status_code == 422 and beyond.json()["error"] == "UnknownPosition"
    assert client.get("/accounts/alice", params={"after": -1}, headers=ALICE).status_code == 422
    assert client.get("/health").json()["head"] == head  # nothing of it was appended


def idempotent_retries(client: httpx.Client) -> tuple[str, dict[str, object]]:
    """A retry with the same ``Idempotency-Key`` is answered with the original result, and
    the money moves once. Returns the key and its answer."""
    key = str(uuid.uuid4())
    first = deposit(client, "carol", 30, **{"Idempotency-Key": key})
    again = deposit(client, "carol", 30, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json()
    other = deposit(client, "carol", 30, **{"Idempotency-Key": str(uuid.uuid4())})
    assert other.json()["version"] == first.json()["version"] + 1
    read = client.get("/accounts/carol", params={"after": other.json()["position"]}, headers=TELLER)
    assert read.json()["balance"] == 60
    return key, first.json()
