"""Property: after any run of commands, rejections, restarts and rebuilds, the live views
equal the views rebuilt from the log, and both equal a model kept by the test."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorlog import Engine, Rejected
from actorlog.engine import _projectors
from benchmarks.bank import Account, Balances, Deposit, OpenAccount, Totals, Withdraw
from tests.engine.projector_scenarios import Ledger

accounts = st.sampled_from(["a", "b", "c"])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("open"), accounts, st.just(0)),
        st.tuples(st.just("deposit"), accounts, st.integers(-2, 40)),
        st.tuples(st.just("withdraw"), accounts, st.integers(-2, 60)),
        st.tuples(st.sampled_from(["restart", "rebuild"]), st.just(""), st.just(0)),
    ),
    max_size=30,
)


class Model:
    """The bank as the test understands it: what must be accepted and what it leaves."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.opened: set[str] = set()
        self.deposits = 0
        self.withdrawals = 0
        self.events = 0

    def accepts(self, op: str, account: str, amount: int) -> bool:
        if op == "open":
            return account not in self.opened
        if amount <= 0:
            return False
        return op == "deposit" or amount <= self.balances.get(account, 0)

    def apply(self, op: str, account: str, amount: int) -> None:
        self.events += 1
        if op == "open":
            self.opened.add(account)
            self.balances.setdefault(account, 0)
        elif op == "deposit":
            self.balances[account] = self.balances.get(account, 0) + amount
            self.deposits += amount
        else:
            self.balances[account] = self.balances.get(account, 0) - amount
            self.withdrawals += amount


def command(op: str, amount: int) -> Any:
    if op == "open":
        return OpenAccount("owner")
    return Deposit(amount) if op == "deposit" else Withdraw(amount)


async def views(engine: Engine) -> tuple[dict[str, int], dict[str, int], int, int, list[int]]:
    await engine.wait_projected()
    return (
        await engine.query(Balances.all_balances),
        await engine.query(Ledger.all_balances),
        await engine.query(Totals.total_deposits),
        await engine.query(Totals.net),
        await engine.query(Ledger.applied_positions),
    )


async def run(path: Path, ops: list[tuple[str, str, int]]) -> None:
    model = Model()
    projectors = [Balances, Totals, Ledger]

    def expected() -> tuple[dict[str, int], dict[str, int], int, int, list[int]]:
        net = model.deposits - model.withdrawals
        positions = list(range(1, model.events + 1))
        return model.balances, model.balances, model.deposits, net, positions

    ops = [*ops, ("end", "", 0)]
    while ops:
        async with Engine.open(
            path, aggregates=[Account], projectors=projectors, sync=False
        ) as engine:
            # Right after a (re)start the projectors catch up from the log.
            assert await views(engine) == expected()
            while ops:
                op, account, amount = ops.pop(0)
                if op == "restart":
                    break
                if op == "end":
                    live = await views(engine)
                    for projector in projectors:
                        engine.rebuild(projector)
                    assert await views(engine) == live == expected()
                elif op == "rebuild":
                    engine.rebuild(Balances)
                elif model.accepts(op, account, amount):
                    ack = await engine.send(Account, account, command(op, amount))
                    model.apply(op, account, amount)
                    assert ack.position == model.events
                    balance = await engine.query(Balances.balance, account, after=ack.position)
                    assert balance == model.balances[account]
                else:
                    head = engine.statistics().head
                    try:
                        await engine.send(Account, account, command(op, amount))
                    except Rejected:
                        pass
                    else:  # pragma: no cover - the assertion below reports it
                        raise AssertionError(f"{op} {amount} on {account} was accepted")
                    assert engine.statistics().head == head


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=steps)
def test_live_views_equal_rebuilt_views_and_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops: list[Any]
) -> None:
    # Tiny batches, so that these short logs still take several catch-up and window turns.
    monkeypatch.setattr(_projectors, "FIRST_BATCH", 2)
    monkeypatch.setattr(_projectors, "MAX_BATCH", 4)
    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        trio.run(run, Path(directory), ops)
