"""Process managers on a PostgreSQL log several engines write (``shared=True``): one engine
at a time runs them (the holder of their lease), another takes over when it dies, and two
that both run them (forced) still do every transfer exactly once. The bank's transfers
(``TransferProcess``): each debit credited once, by the process's first step, in exactly
two steps of its instance, money conserved (``transfers.check_transfers``, read from the
log). Real server, real processes (skipped without ``ACTORLOG_TEST_POSTGRES``);
``ACTORLOG_NODES_SCALE`` multiplies the counts.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anyio
import pytest

from actorlog import ConcurrencyError, DefinitionError, Engine, StorageError
from actorlog.engine import _pg_lease
from actorlog.storage import MemoryEventLog
from benchmarks.bank import Deposit, OpenAccount, Transfer, TransferAccount, TransferProcess
from tests.support import Postgres

from .cluster import NodeProcess
from .transfers import check_transfers, transfers_in_flight

SCALE = int(os.environ.get("ACTORLOG_NODES_SCALE", "1"))
ACCOUNTS = [f"acct-{i}" for i in range(12)]
OPENED_WITH = 1_000


class PmNode(NodeProcess):
    """One ``pm_node`` process: ``ask`` a request, or run a ``load`` of transfers."""

    def __init__(
        self, url: str, schema: str, *, mode: str = "lease", backend: str = "trio"
    ) -> None:
        super().__init__("tests.nodes.pm_node", url, schema, backend, mode)

    def _ack(self, ack: list[Any]) -> Any:
        return ack[0]  # the transfer's id

    def leads(self) -> bool:
        stats = self.ask("stats")["stats"]
        return bool(stats[0]["leader"])

    def start_transfers(self, concurrency: int) -> None:
        """Start transfers between ``ACCOUNTS``; their ids collect in ``acks``."""
        self.start_load(ACCOUNTS, concurrency)


@contextmanager
def pm_nodes(
    postgres: Postgres, schema: str, count: int, mode: str = "lease"
) -> Iterator[list[PmNode]]:
    postgres.log(schema, shared=True)  # the tables exist before the nodes race to create them
    with ExitStack() as stack:
        nodes = []
        for n in range(count):  # the second on asyncio: the lease's tasks run on both
            node = PmNode(postgres.url, schema, mode=mode, backend=("trio", "asyncio")[n % 2])
            stack.callback(node.close)
            nodes.append(node)
        for node in nodes:  # started together, ready one by one
            node.answer()
        yield nodes


def wait_for(condition: Callable[[], object], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def until(condition: Callable[[], object], pause: float = 0.01) -> None:
    """Wait (yielding) until ``condition()`` is true: bounded by the caller's timeout."""
    while not condition():  # noqa: ASYNC110 (a condition on statistics: no event to wait on)
        await anyio.sleep(pause)


async def settled_in_log(postgres: Postgres, schema: str) -> None:
    log = postgres.log(schema, shared=True)
    while await anyio.to_thread.run_sync(transfers_in_flight, log):  # noqa: ASYNC110
        await anyio.sleep(0.05)


def leaders(nodes: list[PmNode]) -> list[PmNode]:
    return [node for node in nodes if node.leads()]


def wait_settled_in_log(postgres: Postgres, schema: str) -> None:
    log = postgres.log(schema, shared=True)
    wait_for(lambda: transfers_in_flight(log) == 0)


def test_three_nodes_one_leader_every_transfer_exactly_once(postgres: Postgres) -> None:
    schema = postgres.schema()
    with pm_nodes(postgres, schema, 3) as nodes:
        nodes[0].ask("open", accounts=ACCOUNTS, amount=OPENED_WITH)
        wait_for(lambda: len(leaders(nodes)) == 1, 10)
        ids = [f"t-{i}" for i in range(45 * SCALE)]
        # Transfers sent to random nodes: a transfer debited on any node is carried on by
        # the one that leads.
        by_node: dict[int, list[str]] = {}
        for transfer_id in ids:
            by_node.setdefault(random.randrange(3), []).append(transfer_id)
        for index, chunk in by_node.items():
            nodes[index].request("transfers", ids=chunk, accounts=ACCOUNTS, concurrency=4)
        for index in by_node:
            assert sorted(nodes[index].answer()["acked"]) == sorted(by_node[index])
        wait_settled_in_log(postgres, schema)
        assert len(leaders(nodes)) == 1  # still one: nobody lost the lease
        stats = [node.ask("stats")["stats"][0] for node in nodes]
    log = postgres.log(schema, shared=True)
    assert check_transfers(log, OPENED_WITH, ACCOUNTS) == len(ids)
    assert sorted(s["state"] for s in stats).count("standby") == 2
    assert sum(s["started"] for s in stats) == len(ids)  # the leader started them all


def test_kill_the_leader_under_load_another_takes_over(postgres: Postgres) -> None:
    schema = postgres.schema()
    with pm_nodes(postgres, schema, 3) as nodes:
        nodes[0].ask("open", accounts=ACCOUNTS, amount=OPENED_WITH)
        wait_for(lambda: len(leaders(nodes)) == 1, 10)
        leader = leaders(nodes)[0]
        others = [node for node in nodes if node is not leader]
        for node in nodes:
            node.start_transfers(3)
        wait_for(lambda: sum(len(node.acks) for node in nodes) > 30 * SCALE)
        leader.kill()
        # It left transfers debited and not carried through (dozens, under this load).
        assert transfers_in_flight(postgres.log(schema, shared=True)) > 0
        # The server released its lease with its session: one survivor takes over within
        # a lease interval, and goes on with what the killed leader left.
        counts = [len(node.acks) for node in others]
        wait_for(
            lambda: all(len(n.acks) > c + 20 * SCALE for n, c in zip(others, counts, strict=True))
        )
        for node in others:
            assert node.stop_load() == len(node.acks)
        wait_settled_in_log(postgres, schema)
        survivors = leaders(others)
        assert len(survivors) == 1
    log = postgres.log(schema, shared=True)
    transfers = check_transfers(log, OPENED_WITH, ACCOUNTS)
    # Every acknowledged transfer is in it (and the killed node's in-flight ones, whole).
    assert transfers >= sum(len(node.acks) for node in nodes)


def test_two_nodes_that_both_lead_still_do_each_effect_once(postgres: Postgres) -> None:
    # Each node process gets a lease of its own (a test-only switch in pm_node: the
    # lease's key is patched), so both run the process manager at once, truly in
    # parallel: what a leader that lost its lease and does not know yet does, for up to
    # a lease interval. Half the credits are refused (both nodes may be told: told once).
    schema = postgres.schema()
    with pm_nodes(postgres, schema, 2, mode="always") as nodes:
        nodes[0].ask("open", accounts=ACCOUNTS, amount=OPENED_WITH)
        wait_for(lambda: len(leaders(nodes)) == 2, 10)
        ids = [f"t-{i}" for i in range(60 * SCALE)]
        for index, node in enumerate(nodes):
            mine = ids[index::2]
            node.request(
                "transfers", ids=mine, accounts=ACCOUNTS, concurrency=4, refused=mine[1::2]
            )
        for index, node in enumerate(nodes):
            assert sorted(node.answer()["acked"]) == sorted(ids[index::2])
        wait_settled_in_log(postgres, schema)
        stats = [node.ask("stats")["stats"][0] for node in nodes]
    assert check_transfers(postgres.log(schema, shared=True), OPENED_WITH, ACCOUNTS) == len(ids)
    # A step that lost a race to the other node's restarted its node's term: neither
    # halted (a halt would leave a lone leader stuck).
    assert [(s["leader"], s["fault"]) for s in stats] == [(True, None)] * 2


async def test_two_engines_that_both_lead_still_do_each_effect_once(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A test-only switch: each engine's lease gets a key of its own, so both run the
    # process manager at once (what a leader that lost its lease and does not know yet
    # does, for up to a lease interval). The protocol, not the lease, must keep every
    # effect single: a step expects its instance's version, a command id its first result.
    keys = iter(range(1_000))
    original = _pg_lease.lease_key
    monkeypatch.setattr(
        _pg_lease, "lease_key", lambda schema, name: original(schema, f"{name} {next(keys)}")
    )
    schema = postgres.schema()
    options: dict[str, Any] = {
        "aggregates": [TransferAccount],
        "process_managers": [TransferProcess],
    }
    async with (
        Engine.open(log=postgres.log(schema, shared=True), **options) as a,
        Engine.open(log=postgres.log(schema, shared=True), **options) as b,
    ):
        with anyio.fail_after(20):
            await until(lambda: all(e.statistics().process_managers[0].leader for e in (a, b)))
            for account in ACCOUNTS:
                await a.send(TransferAccount, account, OpenAccount(account))
                await a.send(TransferAccount, account, Deposit(OPENED_WITH))
            count = 80 * SCALE

            async def send(engine: Engine, n: int) -> None:
                source, target = random.sample(ACCOUNTS, 2)
                if n % 4 >= 2:  # to an account never opened: the credit is refused, and
                    target = "nowhere"  # both engines may be told of it (told once)
                await engine.send(TransferAccount, source, Transfer(f"t-{n}", source, target, 1))

            async with anyio.create_task_group() as tg:
                for n in range(count):
                    tg.start_soon(send, (a, b)[n % 2], n)
            await settled_in_log(postgres, schema)
        assert check_transfers(postgres.log(schema, shared=True), OPENED_WITH, ACCOUNTS) == count
        for engine in (a, b):
            stats = engine.statistics().process_managers[0]
            # Neither stood down, and a step that lost a race restarted the term, never
            # halted it.
            assert (stats.leader, stats.fault) == (True, None)


async def test_a_lost_lease_ends_the_term_and_the_lease_is_taken_again(postgres: Postgres) -> None:
    await a_lost_lease_ends_the_term(postgres)


def test_a_lost_lease_ends_the_term_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(a_lost_lease_ends_the_term(postgres))


async def a_lost_lease_ends_the_term(postgres: Postgres) -> None:
    schema = postgres.schema()
    options: dict[str, Any] = {
        "aggregates": [TransferAccount],
        "process_managers": [TransferProcess],
    }
    async with (
        Engine.open(log=postgres.log(schema, shared=True), **options) as a,
        Engine.open(log=postgres.log(schema, shared=True), **options) as b,
    ):

        def leading() -> list[Engine]:
            return [e for e in (a, b) if e.statistics().process_managers[0].leader]

        with anyio.fail_after(20):
            await until(lambda: len(leading()) == 1)
            first = leading()[0]
            for account in ACCOUNTS:
                await a.send(TransferAccount, account, OpenAccount(account))
                await a.send(TransferAccount, account, Deposit(OPENED_WITH))
            await b.send(TransferAccount, "acct-0", Transfer("t-1", "acct-0", "acct-1", 1))
            await first.wait_settled()
            # The leader's lease connection is cut (as by a network fault): it stands down
            # within a lease interval, and the lease is held again (by either engine).
            (killed,) = postgres.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
                "AND l.classid = hashtext(%s)::oid AND l.objid = hashtext(%s)::oid",
                _pg_lease.lease_key(schema, "process managers Transfer"),
            )
            assert killed == (True,)
            # Until the leader noticed (and stood down, or started a new term on a new
            # lease), then until one engine leads.
            await until(
                lambda: first.statistics().process_managers[0].terms >= 2 or first not in leading()
            )
            await until(lambda: len(leading()) == 1)
            assert sum(e.statistics().process_managers[0].terms for e in (a, b)) >= 2
            await a.send(TransferAccount, "acct-2", Transfer("t-2", "acct-2", "acct-3", 1))
            await leading()[0].wait_settled()
        log = postgres.log(schema, shared=True)
        assert check_transfers(log, OPENED_WITH, ACCOUNTS) == 2


class _OthersAppend(MemoryEventLog):
    """A log that says others append to it, and offers no lease."""

    others_append = True

    def wait_for_head(self, known: int, timeout: float) -> int:
        return self.head_position()


async def test_process_managers_are_refused_on_a_shared_log_without_a_lease() -> None:
    # On a log several engines write, one runs the process managers: the holder of a
    # lease the log offers (PostgreSQL's). A log that others write and offers none is
    # refused at open rather than run on every node.
    with pytest.raises(DefinitionError, match="offers none"):
        async with Engine.open(
            log=_OthersAppend(), aggregates=[TransferAccount], process_managers=[TransferProcess]
        ):
            pass  # pragma: no cover


async def test_every_connection_dropped_under_transfers(postgres: Postgres) -> None:
    # The server ends every session (as a restart of it would): the leader's lease with
    # them, and every writer's connection, mid-transfer. A step or a dispatch that fails
    # is tried again from the log by whichever engine leads next; clients re-send with
    # their command id. Every transfer still completes exactly once.
    schema = postgres.schema()
    options: dict[str, Any] = {
        "aggregates": [TransferAccount],
        "process_managers": [TransferProcess],
    }
    async with (
        Engine.open(log=postgres.log(schema, shared=True), **options) as a,
        Engine.open(log=postgres.log(schema, shared=True), **options) as b,
    ):
        with anyio.fail_after(30):
            for account in ACCOUNTS:
                await a.send(TransferAccount, account, OpenAccount(account))
                await a.send(TransferAccount, account, Deposit(OPENED_WITH))
            count = 40 * SCALE

            async def send(engine: Engine, n: int) -> None:
                source, target = random.sample(ACCOUNTS, 2)
                command = Transfer(f"t-{n}", source, target, 1)
                while True:
                    try:
                        await engine.send(TransferAccount, source, command, command_id=f"t-{n}")
                        return
                    except (StorageError, ConcurrencyError):
                        await anyio.sleep(0.05)  # re-sent: answered from the log if done

            async with anyio.create_task_group() as tg:
                for n in range(count):
                    tg.start_soon(send, (a, b)[n % 2], n)
                    if n == count // 2:
                        await anyio.sleep(0.05)
                        dropped = await anyio.to_thread.run_sync(
                            postgres.execute,
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                            "AND backend_type = 'client backend'",
                        )
                        assert dropped[0][0] >= 3  # at least the lease and two writers
            # The leader noticed its lease gone (and began a new term, or the other did).
            await until(lambda: sum(e.statistics().process_managers[0].terms for e in (a, b)) >= 2)
            await settled_in_log(postgres, schema)
            await until(
                lambda: [e.statistics().process_managers[0].leader for e in (a, b)].count(True) == 1
            )
        assert check_transfers(postgres.log(schema, shared=True), OPENED_WITH, ACCOUNTS) == count


async def test_a_deadline_left_by_a_leader_that_closed_fires_once_on_the_next(
    postgres: Postgres,
) -> None:
    # A redeploy: the leader closes with a scheduled command pending; the other engine
    # takes the lease, arms the deadline from the log, and fires it exactly once.
    from actorlog.testing import FakeClock
    from tests.engine.process_manager_scenarios import Book, Booking, ScheduledExpiry

    schema = postgres.schema()
    clock = FakeClock()
    engines: dict[int, Engine] = {}
    close = [anyio.Event(), anyio.Event()]

    async def host(index: int) -> None:  # each engine in a task of its own: closed apart
        async with Engine.open(
            log=postgres.log(schema, shared=True),
            aggregates=[Booking],
            process_managers=[ScheduledExpiry],
            clock=clock,
        ) as engine:
            engines[index] = engine
            await close[index].wait()
        del engines[index]

    def leads(index: int) -> bool:
        engine = engines.get(index)
        return engine is not None and engine.statistics().process_managers[0].leader

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for index in range(2):
                tg.start_soon(host, index)
            await until(lambda: len(engines) == 2 and [leads(0), leads(1)].count(True) == 1)
            first = 0 if leads(0) else 1
            leader, other = engines[first], engines[1 - first]
            await other.send(Booking, "b-1", Book("b-1"))
            await leader.wait_settled()
            assert leader.statistics().process_managers[0].pending_deadlines == 1
            close[first].set()  # the leader closes, releasing the lease
            await until(lambda: leads(1 - first))
            await other.wait_settled()
            assert other.statistics().process_managers[0].pending_deadlines == 1
            clock.advance(61)
            await until(lambda: len(other.log.read_stream("b-1")) == 2, pause=0.02)
            await other.wait_settled()
            stats = other.statistics().process_managers[0]
            expired = other.log.read_stream("b-1")
            steps = other.log.read_stream("$pm:ScheduledExpiry:b-1")
            close[1 - first].set()
    assert [e.type for e in expired] == ["Booked", "Expired"]
    assert expired[1].command_id == "$pm:ScheduledExpiry:b-1/2.0"
    assert len(steps) == 2  # set by the first leader, fired by the second
    assert (stats.deadlines_fired, stats.pending_deadlines, stats.pending_sends) == (1, 0, 0)
