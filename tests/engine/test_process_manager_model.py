"""Property: transfers run by the process manager against a reference model, through
restarts, shutdowns in mid-flight (the outbox interrupted) and deadlines firing early or
late: money is conserved, every transfer ends credited or refunded exactly once, and it
ends as the model says whenever the model can tell."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorlog import Engine, Rejected
from actorlog.testing import FakeClock
from benchmarks.bank import (
    TRANSFER_TIMEOUT,
    Balances,
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    TransferAccount,
    TransferProcess,
)

ACCOUNTS = ["a", "b", "c"]
START = 100
accounts = st.sampled_from(ACCOUNTS)
seconds = st.sampled_from([1.0, TRANSFER_TIMEOUT - 1, TRANSFER_TIMEOUT + 1, 600.0])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("transfer"), accounts, accounts, st.integers(-1, 80), st.just(0.0)),
        st.tuples(st.just("close"), accounts, st.just(""), st.just(0), st.just(0.0)),
        st.tuples(st.just("advance"), st.just(""), st.just(""), st.just(0), seconds),
        st.tuples(st.just("restart"), st.just(""), st.just(""), st.just(0), st.just(0.0)),
        # A transfer, then the engine shut down at once (its outbox interrupted), and time
        # passing before the next start: a deadline may be due then.
        st.tuples(st.just("interrupt"), accounts, accounts, st.integers(1, 80), seconds),
    ),
    max_size=12,
)


def _open(path: Path, clock: FakeClock) -> Any:
    return Engine.open(
        path,
        aggregates=[TransferAccount],
        projectors=[Balances],
        process_managers=[TransferProcess],
        clock=clock,
    )


class Model:
    """What the bank must hold: balances given each transfer's outcome, and the outcomes
    each transfer may have (one if the model can tell, both if a race decides)."""

    def __init__(self) -> None:
        self.balances = dict.fromkeys(ACCOUNTS, START)
        self.closed: set[str] = set()
        self.transfers: dict[str, tuple[str, str, int, set[str]]] = {}

    def accepts(self, source: str, target: str, amount: int) -> bool:
        return 0 < amount <= self.balances[source] and source != target

    def request(self, tid: str, source: str, target: str, amount: int, racy: bool) -> None:
        self.balances[source] -= amount
        if target in self.closed:
            outcomes = {"refunded"}
        else:
            outcomes = {"credited", "refunded"} if racy else {"credited"}
        self.transfers[tid] = (source, target, amount, outcomes)

    def settle(self, outcomes: dict[str, str]) -> None:
        """Apply the outcomes the log shows (checked against the allowed ones)."""
        for tid, (source, target, amount, allowed) in self.transfers.items():
            outcome = outcomes.get(tid)
            assert outcome in allowed, (tid, outcome, allowed)
            if outcome == "credited":
                self.balances[target] += amount
            else:
                self.balances[source] += amount
        self.transfers = {}


def outcomes_in(engine: Engine) -> dict[str, str]:
    """Each transfer's outcome in the log, checking none happened twice."""
    seen: dict[str, str] = {}
    for account in ACCOUNTS:
        for event in engine.log.read_stream(account):
            if event.type in ("TransferCredited", "TransferRefunded"):
                import msgspec

                tid = msgspec.msgpack.decode(event.payload)["transfer_id"]
                assert tid not in seen, f"transfer {tid} applied twice"
                seen[tid] = "credited" if event.type == "TransferCredited" else "refunded"
    return seen


async def run(path: Path, ops: list[tuple[str, str, str, int, float]]) -> None:
    clock = FakeClock()
    model = Model()
    settled: dict[str, str] = {}
    count = 0
    async with _open(path, clock) as engine:
        for account in ACCOUNTS:
            await engine.send(TransferAccount, account, OpenAccount(account))
            await engine.send(TransferAccount, account, Deposit(START))
    for op, first, second, amount, wait in [*ops, ("restart", "", "", 0, 0.0)]:
        async with _open(path, clock) as engine:
            await engine.wait_settled(timeout=20)
            outcomes = outcomes_in(engine)
            model.settle({t: o for t, o in outcomes.items() if t not in settled})
            settled = outcomes
            assert await _balances(engine) == model.balances
            assert sum(model.balances.values()) == START * len(ACCOUNTS)
            if op in ("transfer", "interrupt"):
                count += 1
                tid = f"t-{count}"
                try:
                    await engine.send(TransferAccount, first, Transfer(tid, first, second, amount))
                except Rejected:
                    assert not model.accepts(first, second, amount)
                else:
                    assert model.accepts(first, second, amount)
                    racy = op == "interrupt" and wait > TRANSFER_TIMEOUT
                    model.request(tid, first, second, amount, racy)
                if op == "transfer":
                    await engine.wait_settled(timeout=20)
            elif op == "close":
                await engine.send(TransferAccount, first, CloseAccount())
                model.closed.add(first)
            elif op == "advance":
                clock.advance(wait)
                await engine.wait_settled(timeout=20)
        if op == "interrupt":
            clock.advance(wait)  # while no engine runs


async def _balances(engine: Engine) -> dict[str, int]:
    await engine.wait_projected()
    return {a: await engine.query(Balances.balance, a) for a in ACCOUNTS}


@pytest.mark.timeout(240)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=steps)
def test_transfers_match_the_model(ops: list[tuple[str, str, str, int, float]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(run, Path(directory), ops)
