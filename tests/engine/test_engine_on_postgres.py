"""The engine end to end on the PostgreSQL log, on trio and on asyncio: commands, queries
that read their own writes, a retried command id, a rejection, and a restart on the same
schema (skipped without ``ACTORLOG_TEST_POSTGRES``)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

from actorlog import Committed, DefinitionError, Engine, StorageError
from actorlog.storage import PostgresEventLog, assert_log_consistent
from benchmarks.bank import Account, Balances, Deposit, InsufficientFunds, OpenAccount, Withdraw
from tests.support import Postgres

_CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "postgres"
"""Starts, restarts and stops a throwaway cluster (as CI does)."""


async def bank_on_postgres(postgres: Postgres) -> None:
    schema = postgres.schema()
    accounts = [f"acct-{i}" for i in range(20)]
    async with Engine.open(
        log=postgres.log(schema), aggregates=[Account], projectors=[Balances]
    ) as engine:
        for account in accounts:
            await engine.send(Account, account, OpenAccount("ann"))
        for round_ in range(5):
            for i, account in enumerate(accounts):
                done = await engine.send(Account, account, Deposit(i + round_ + 1))
        assert await engine.query(Balances.balance, "acct-3", after=done.position) == 5 * 4 + 10
        # A retried command id is answered from the log, not run again.
        first = await engine.send(Account, "acct-0", Deposit(7), command_id="retry-1")
        again = await engine.send(Account, "acct-0", Deposit(7), command_id="retry-1")
        assert again == first == Committed("acct-0", 7, first.position, 1)
        try:
            await engine.send(Account, "acct-1", Withdraw(10_000))
        except InsufficientFunds:
            pass
        else:
            raise AssertionError("an overdraft was not rejected")
        balances = await engine.query(Balances.all_balances, after=again.position)
        head = engine.log.head_position()
    assert head == 20 + 100 + 1
    # A restart on the same schema: the aggregates and the view come back from the log.
    async with Engine.open(
        log=postgres.log(schema), aggregates=[Account], projectors=[Balances]
    ) as engine:
        assert await engine.query(Balances.all_balances) == balances
        after = await engine.send(Account, "acct-0", Deposit(1))
        assert after == Committed("acct-0", 8, head + 1, 1)
        again = await engine.send(Account, "acct-0", Deposit(7), command_id="retry-1")
        assert again == first
        assert await engine.query(Balances.balance, "acct-0", after=after.position) == (
            balances["acct-0"] + 1
        )


async def test_the_engine_runs_on_postgres_under_trio(postgres: Postgres) -> None:
    with trio.fail_after(30):
        await bank_on_postgres(postgres)


def test_the_engine_runs_on_postgres_under_asyncio(postgres: Postgres) -> None:
    asyncio.run(asyncio.wait_for(bank_on_postgres(postgres), 30))


async def test_commands_survive_the_connections_being_killed_under_load(
    postgres: Postgres,
) -> None:
    # Clients deposit while the server drops every connection of the log, twice. The
    # commands in flight then fail with StorageError (or commit, if COMMIT got through
    # first); the engine carries on on new connections; every acknowledged command is in
    # the log and the view agrees with the log.
    schema = postgres.schema()
    acknowledged: dict[str, list[int]] = {}
    failed = 0

    def kill_connections() -> None:
        postgres.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    with trio.fail_after(30):
        async with Engine.open(
            log=postgres.log(schema), aggregates=[Account], projectors=[Balances]
        ) as engine:

            async def client(account: str) -> None:
                nonlocal failed
                await engine.send(Account, account, OpenAccount("ann"))
                for n in range(40):
                    if account == "acct-0" and n in (10, 25):
                        # The other clients' commands are queued or in flight: the next
                        # group commit finds its connection dead.
                        kill_connections()
                    try:
                        done = await engine.send(Account, account, Deposit(1))
                    except StorageError:
                        failed += 1
                    else:
                        acknowledged.setdefault(account, []).append(done.position)

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(client, f"acct-{i}")
            head = engine.log.head_position()
            balances = await engine.query(Balances.all_balances, after=head)
    log = postgres.log(schema)
    assert_log_consistent(log)
    events = {e.position: e for e in log.read_all(1, 100_000)}
    for account, positions in acknowledged.items():
        assert all(events[p].stream_id == account for p in positions)
    in_log = {a: sum(e.stream_id == a for e in events.values()) - 1 for a in balances}
    assert balances == in_log  # deposits of 1: the balance counts them
    assert sum(len(p) for p in acknowledged.values()) + failed == 8 * 40
    assert failed >= 2  # each kill failed a group commit
    assert all(in_log[a] >= len(p) for a, p in acknowledged.items())


async def test_a_url_opens_the_engine_on_postgres(postgres: Postgres) -> None:
    # Engine.open("postgresql://...") uses the default schema, "actorlog": dropped around
    # the test, since every test shares the server.
    postgres.execute("DROP SCHEMA IF EXISTS actorlog CASCADE")
    try:
        async with Engine.open(postgres.url, aggregates=[Account], sync=False) as engine:
            opened = await engine.send(Account, "a", OpenAccount("ann"))
        async with Engine.open(postgres.url, aggregates=[Account]) as engine:
            assert engine.log.head_position() == opened.position == 1
            assert (await engine.send(Account, "a", Deposit(5))).version == 2
        with pytest.raises(DefinitionError):
            async with Engine.open(postgres.url, aggregates=[Account], map_size=1 << 20):
                pass
        with pytest.raises(StorageError):  # nothing listens there
            async with Engine.open("postgresql://postgres@127.0.0.1:1/none", aggregates=[Account]):
                pass
    finally:
        postgres.execute("DROP SCHEMA IF EXISTS actorlog CASCADE")


async def test_the_engine_rides_out_a_server_restart(postgres: Postgres) -> None:
    # A server of its own (the shared one must stay up), restarted with pg_ctl while
    # clients deposit: commands during the outage fail with StorageError, the engine
    # reconnects by itself, every acknowledged command is in the log, the view agrees.
    del postgres  # only its requirement: a server and the tools are available
    script = _CLUSTER_SCRIPT
    where = tempfile.mkdtemp(prefix="actorlog-restart-")
    started = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [str(script), "start", where], capture_output=True, text=True, check=True
        )
    )
    url = started.stdout.strip()
    acknowledged: list[tuple[str, int]] = []
    failed = 0
    restarted = trio.Event()
    try:
        with trio.fail_after(60):
            async with Engine.open(
                log=PostgresEventLog(url, connect_timeout=5),
                aggregates=[Account],
                projectors=[Balances],
            ) as engine:

                async def client(account: str) -> None:
                    nonlocal failed
                    await engine.send(Account, account, OpenAccount("ann"))
                    sent_after = 0
                    while sent_after < 10:  # until 10 commands went through after it
                        try:
                            done = await engine.send(Account, account, Deposit(1))
                        except StorageError:
                            failed += 1
                            await trio.sleep(0.05)  # the server is away: try again soon
                        else:
                            acknowledged.append((account, done.position))
                            sent_after += restarted.is_set()

                async def restart() -> None:
                    await trio.sleep(0.3)  # the clients are busy
                    await trio.to_thread.run_sync(
                        lambda: subprocess.run([str(script), "restart", where], check=True)
                    )
                    restarted.set()

                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(client, f"acct-{i}")
                    nursery.start_soon(restart)
                head = engine.log.head_position()
                balances = await engine.query(Balances.all_balances, after=head)
        log = PostgresEventLog(url)
        try:
            assert_log_consistent(log)
            events = {e.position: e for e in log.read_all(1, 100_000)}
        finally:
            log.close()
        assert all(events[p].stream_id == a for a, p in acknowledged)
        deposits = {a: sum(e.stream_id == a for e in events.values()) - 1 for a in balances}
        assert balances == deposits
        assert failed >= 1  # the restart was felt
    finally:
        await trio.to_thread.run_sync(
            lambda: subprocess.run([str(script), "stop", where], capture_output=True, check=False)
        )
        shutil.rmtree(where, ignore_errors=True)
