"""An aggregate pipelines its decisions; on a log others append to, one decided on top of
a failed one must not commit because the others' events happen to fill the version it
expects (issue 15, part 1: no command commits on state that never existed).

The other process is a second writer of the same schema appending straight to the log,
synchronously, right before the engine decides (so the engine's follower cannot have seen
it). Real server (skipped without ``ACTORLOG_TEST_POSTGRES``).
"""

from __future__ import annotations

import contextlib

import msgspec

from actorlog import ConcurrencyError, Engine
from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, Append, PostgresEventLog
from benchmarks.bank import Account, Deposit, Deposited, InsufficientFunds, Withdraw, Withdrawn
from tests.support import Postgres

_EVENTS = EventRegistry([Deposited, Withdrawn])


def append(log: PostgresEventLog, stream_id: str, *events: msgspec.Struct) -> None:
    """Another process's commit: straight to the log, synchronously."""
    encoded = tuple(_EVENTS.encode(e) for e in events)
    outcomes, _ = log.append_batch([Append(stream_id, ANY, encoded)])
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


def balances(log: PostgresEventLog, stream_id: str) -> list[int]:
    """The account's balance after each of its events, in order."""
    balance, after = 0, []
    for event in log.read_stream(stream_id):
        amount = _EVENTS.decode(event.type, event.payload).amount
        balance += amount if event.type == "Deposited" else -amount
        after.append(balance)
    return after


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


def test_the_log_fails_an_append_decided_on_a_failed_one(postgres: Postgres) -> None:
    log = postgres.log(postgres.schema(), shared=True)
    try:
        append(log, "acct", Deposited(10), Withdrawn(10), Deposited(1))  # versions 1-3
        deposit = (_EVENTS.encode(Deposited(5)),)
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
        deposit = (_EVENTS.encode(Deposited(5)),)
        outcomes, _ = log.append_batch([Append("acct", 2, deposit), Append("acct", 1, deposit)])
        assert isinstance(outcomes[0], ConcurrencyError)
        assert not isinstance(outcomes[1], Exception) and outcomes[1].first_version == 2
    finally:
        log.close()
