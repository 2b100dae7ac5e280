"""Flooding: 64 clients on one account. Mailboxes stay bounded, every command gets exactly
one outcome (applied, Overloaded, or an error), the cold accounts keep going, and closing
the engine mid-flood ends promptly without losing anything acknowledged."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import trio
import trio.lowlevel

from actorlog import Committed, Engine, EngineClosed, Overloaded, Rejected
from actorlog.storage import MemoryEventLog
from benchmarks.bank import Account, Balances, Deposit, Totals, Withdraw

MAILBOX = 8
HOT = "acct-hot"
COLD = [f"acct-{i}" for i in range(8)]


@dataclass
class Outcomes:
    """Every command a client issued, and what became of it."""

    issued: int = 0
    acks: list[Committed] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # error type name -> count
    wanted: int | None = None  # set ``reached`` once this many commands were applied
    reached: trio.Event = field(default_factory=trio.Event)

    def total(self) -> int:
        return len(self.acks) + sum(self.refused.values())


async def _hammer(engine: Engine, stream_id: str, n: int, nowait: bool, out: Outcomes) -> None:
    """Issue ``n`` deposits (or until the engine closes), recording each one's outcome."""
    for i in range(n):
        out.issued += 1
        try:
            if nowait:
                ack = await engine.send_nowait(Account, stream_id, Deposit(1 + i % 3))
            else:
                ack = await engine.send(Account, stream_id, Deposit(1 + i % 3))
        except Overloaded:
            out.refused["Overloaded"] += 1
            await trio.lowlevel.checkpoint()
            continue
        except EngineClosed:
            out.refused["EngineClosed"] += 1
            return
        out.acks.append(ack)
        if out.wanted is not None and len(out.acks) >= out.wanted:
            out.reached.set()


def _check_log_holds_exactly(engine: Engine, acks: list[Committed]) -> None:
    """Each acknowledged deposit is in the log where its ack says; nothing else is."""
    events = engine.log.read_all(1, 1 << 30)
    assert sorted(ack.position for ack in acks) == [e.position for e in events]
    by_position = {e.position: e for e in events}
    for ack in acks:
        event = by_position[ack.position]
        assert (event.stream_id, event.version) == (ack.stream_id, ack.version)


async def test_one_hot_account_never_holds_more_than_its_mailbox() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], mailbox_size=MAILBOX
    ) as engine:
        peak_in_flight = peak_waiting = 0
        out = Outcomes()
        async with trio.open_nursery() as nursery:
            for client in range(64):
                nursery.start_soon(_hammer, engine, HOT, 30, client % 2 == 1, out)
            # Sample at every scheduling step until the flood is over.
            while out.total() < 64 * 30:
                stats = engine.statistics().aggregates
                peak_in_flight = max(peak_in_flight, stats.in_flight)
                peak_waiting = max(peak_waiting, stats.waiting)
                await trio.lowlevel.checkpoint()
        assert peak_in_flight == MAILBOX  # filled, never beyond
        assert 0 < peak_waiting <= 32  # only the blocking senders ever wait
        assert out.issued == 64 * 30 == out.total()
        assert set(out.refused) == {"Overloaded"}
        assert engine.log.stream_version(HOT) == len(out.acks)
        _check_log_holds_exactly(engine, out.acks)


async def test_flooded_account_leaves_the_cold_accounts_served(tmp_path: Path) -> None:
    async with Engine.open(
        tmp_path, aggregates=[Account], projectors=[Balances, Totals], mailbox_size=MAILBOX
    ) as engine:
        hot = Outcomes()
        cold = Outcomes()
        peak_in_flight = 0
        # How many group commits each cold command waited for: it joins the very next
        # batch whatever the hot account's queue, so it never waits for more than the
        # batch in progress and its own.
        cold_batches: list[int] = []

        async def cold_client(stream_id: str) -> None:
            for _ in range(20):
                before = engine.statistics().writer.commits
                cold.issued += 1
                cold.acks.append(await engine.send(Account, stream_id, Deposit(5)))
                cold_batches.append(engine.statistics().writer.commits - before)

        async with trio.open_nursery() as flood:
            for client in range(64):
                flood.start_soon(_hammer, engine, HOT, 40, client % 2 == 1, hot)
            async with trio.open_nursery() as served:
                for stream_id in COLD:
                    served.start_soon(cold_client, stream_id)
                while len(cold.acks) < 20 * len(COLD):
                    # One command at a time per cold client: they add at most one each.
                    stats = engine.statistics().aggregates
                    peak_in_flight = max(peak_in_flight, stats.in_flight)
                    await trio.lowlevel.checkpoint()
        assert cold.issued == len(cold.acks) == 20 * len(COLD)
        assert max(cold_batches) <= 2
        assert peak_in_flight <= MAILBOX + len(COLD)
        assert hot.issued == 64 * 40 == hot.total()
        _check_log_holds_exactly(engine, hot.acks + cold.acks)
        await engine.wait_projected()
        assert await engine.query(Balances.balance, COLD[0]) == 100
        balances = await engine.query(Balances.all_balances)
        assert await engine.query(Totals.net) == sum(balances.values())


async def test_closing_under_flood_finishes_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    out = Outcomes(wanted=2000)
    queries = Counter[str]()

    async def reader(engine: Engine) -> None:
        # Read-your-writes queries waiting when the engine closes must be released too.
        # Each waits for the head as it is (a later position would be refused at once:
        # nothing wrote it yet), which the projector has usually not applied mid-flood.
        while True:
            try:
                await engine.query(Balances.balance, HOT, after=engine.log.head_position())
                queries["answered"] += 1
            except EngineClosed:
                queries["EngineClosed"] += 1
                return
            # A query already applied returns without a checkpoint: yield, or a reader
            # that keeps up would hold the loop.
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        close = trio.Event()
        closed = trio.Event()

        async def run_engine(task_status: trio.TaskStatus[Engine]) -> None:
            async with Engine.open(
                tmp_path, aggregates=[Account], projectors=[Balances], mailbox_size=MAILBOX
            ) as engine:
                task_status.started(engine)
                await close.wait()
            closed.set()

        engine: Engine = await nursery.start(run_engine)
        for client in range(64):
            nursery.start_soon(_hammer, engine, HOT, 10**9, client % 2 == 1, out)
        for stream_id in COLD:
            nursery.start_soon(_hammer, engine, stream_id, 10**9, False, out)
        for _ in range(4):
            nursery.start_soon(reader, engine)
        await out.reached.wait()
        assert engine.statistics().aggregates.waiting > 0  # truly mid-flood
        # Balances starts over, so readers are most likely waiting (for written positions)
        # when the close comes; a query after it starts is refused with EngineClosed too.
        engine.rebuild(Balances)
        close.set()
        with anyio.fail_after(5):  # a bound for "it finishes", not a speed claim
            await closed.wait()
    # 72 clients, each stopped by EngineClosed; every command has exactly one outcome.
    assert out.refused["EngineClosed"] == 64 + len(COLD)
    assert out.issued == out.total()
    assert queries["EngineClosed"] == 4
    assert queries["answered"] > 0
    async with Engine.open(tmp_path, aggregates=[Account], projectors=[Balances]) as engine:
        _check_log_holds_exactly(engine, out.acks)
        await engine.wait_projected()
        hot = [a for a in out.acks if a.stream_id == HOT]
        assert engine.log.stream_version(HOT) == len(hot)
        # The reopened aggregate holds what the log says: withdrawing it all works.
        balance = await engine.query(Balances.balance, HOT)
        await engine.send(Account, HOT, Withdraw(balance))
        try:
            await engine.send(Account, HOT, Withdraw(1))
        except Rejected:
            pass
        else:
            raise AssertionError("the hot account had more than its logged balance")
