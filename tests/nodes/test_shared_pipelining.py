"""An aggregate pipelines its decisions; on a log others append to, one decided on top of
a failed one must not commit because the others' events happen to fill the version it
expects (issue 15, part 1: no command commits on state that never existed).

The other process is a second writer of the same schema appending straight to the log,
synchronously, right before the engine decides (so the engine's follower cannot have seen
it). Real server (skipped without ``ACTORLOG_TEST_POSTGRES``).
"""

from __future__ import annotations

import contextlib

from actorlog import ConcurrencyError, Engine
from actorlog.storage import ANY, Append
from benchmarks.bank import Account, Deposit, Deposited, InsufficientFunds, Withdraw, Withdrawn
from tests.support import Postgres

from .rival import EVENTS, append, balances


async def test_sends_pipelined_on_a_stale_aggregate_never_overdraw(postgres: Postgres) -> None:
    import trio

    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        for _ in range(5):
            await b.send(Account, "acct", Deposit(10))
            # Another process empties the account and puts 1 back: two versions on.
            append(rival, "acct", Withdrawn(balances(rival, "acct")[-1]), Deposited(1))

            async def send(command: Deposit | Withdraw) -> None:
                # Refused, or contended past the retries: nothing appended.
                with contextlib.suppress(InsufficientFunds, ConcurrencyError):
                    await b.send(Account, "acct", command)

            # Decided together on the stale cache: the deposits expect the two versions
            # the rival took (both conflict); the withdrawal expects the log's version,
            # decided on a balance of 20 that never existed.
            async with trio.open_nursery() as nursery:
                for command in (Deposit(5), Deposit(5), Withdraw(20)):
                    nursery.start_soon(send, command)
    after = balances(rival, "acct")
    assert min(after) >= 0, after


async def test_a_rejection_pipelined_on_a_stale_aggregate_is_decided_again(
    postgres: Postgres,
) -> None:
    # A rejection is checked by an append with no events in the next group commit
    # (_probe): one decided on top of a failed append must not stand because the others'
    # events happen to fill the version it expects.
    import trio

    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    refused: list[InsufficientFunds] = []
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        for _ in range(5):
            await b.send(Account, "acct", Deposit(10))
            # Another process deposits 100: one version on (unseen by b's follower yet).
            append(rival, "acct", Deposited(100))

            async def send(command: Withdraw) -> None:
                try:
                    await b.send(Account, "acct", command)
                except InsufficientFunds as e:
                    refused.append(e)

            # Decided together on the stale cache: the first withdrawal expects the
            # version the rival took (it conflicts); the second, decided on the balance
            # of 0 the first would leave, is refused on state that never existed: the
            # account holds over 100 all along.
            async with trio.open_nursery() as nursery:
                for command in (Withdraw(10), Withdraw(5)):
                    nursery.start_soon(send, command)
    assert refused == []
    assert balances(rival, "acct")[-1] == 5 * (10 + 100 - 15)


def test_the_log_fails_an_append_decided_on_a_failed_one(postgres: Postgres) -> None:
    log = postgres.log(postgres.schema(), shared=True)
    try:
        append(log, "acct", Deposited(10), Withdrawn(10), Deposited(1))  # versions 1-3
        deposit = (EVENTS.encode(Deposited(5)),)
        outcomes, stored = log.append_batch(
            [
                Append("acct", 1, deposit),  # stale: the log is at 3
                Append("acct", 2, deposit),  # decided on the one before
                Append("acct", 3, deposit),  # the log's version, on state that never was
                Append("acct", ANY, deposit),  # expects nothing: commits
            ]
        )
        assert [type(o) for o in outcomes[:3]] == [ConcurrencyError] * 3
        assert not isinstance(outcomes[3], Exception) and outcomes[3].first_version == 4
        assert [e.version for e in stored] == [4]
        # A failed append that carried no events moved nothing the next one expects.
        outcomes, _ = log.append_batch([Append("acct", 1, ()), Append("acct", 4, deposit)])
        assert isinstance(outcomes[0], ConcurrencyError)
        assert not isinstance(outcomes[1], Exception) and outcomes[1].first_version == 5
    finally:
        log.close()


def test_an_append_expecting_no_more_than_a_failed_one_is_judged_alone(
    postgres: Postgres,
) -> None:
    # Another caller's append, not decided on top of the failed one: its expected version
    # is at most the failed one's, so it commits if it matches (the log's contract).
    log = postgres.log(postgres.schema(), shared=True)
    try:
        append(log, "acct", Deposited(10))  # version 1
        deposit = (EVENTS.encode(Deposited(5)),)
        outcomes, _ = log.append_batch([Append("acct", 2, deposit), Append("acct", 1, deposit)])
        assert isinstance(outcomes[0], ConcurrencyError)
        assert not isinstance(outcomes[1], Exception) and outcomes[1].first_version == 2
    finally:
        log.close()
