"""A follower feeding cached aggregates that reads the log hot (others keep committing,
so it never waits for a notification) still reads its LISTEN connection (review 10,
session 8): unread, the notifications fill the socket's buffers until the server's
backend blocks writing to it, and a blocked listener holds back the server's
notification queue, which every NOTIFY of every process shares; once full, every
commit's NOTIFY fails. Real server (skipped without ``ACTORLOG_TEST_POSTGRES``)."""

from __future__ import annotations

import time
from typing import Any

import trio

from actorlog import Engine
from actorlog.storage import PostgresEventLog
from tests.engine.counters import KINDS
from tests.nodes.test_conflict_catch_up import rival_add
from tests.nodes.test_follower_rest import Seen
from tests.support import Postgres


def test_draining_drops_what_the_listener_received_without_waiting(postgres: Postgres) -> None:
    schema = postgres.schema()
    log = postgres.log(schema, shared=True)
    rival = postgres.log(schema, shared=True)
    assert log.wait_for_notice(0.01) is False  # listening from here
    for i in range(50):
        rival_add(rival, "s", f"r{i}", 1)
    time.sleep(0.1)  # delivered to the listener's socket by now
    log.drain_notices()
    # Nothing is left to read: a wait finds no notification, even one that wakes for this
    # process's own (dropped by its sender's pid) and then reads whatever is pending.
    assert log.wait_for_notice(0.05) is False
    rival_add(log, "s", "own", 1)
    assert log.wait_for_notice(0.2) is False
    rival_add(rival, "s", "late", 1)
    assert log.wait_for_notice(5) is True  # and the channel still works


def test_draining_a_log_that_never_listened_does_nothing(postgres: Postgres) -> None:
    log = postgres.log(shared=True)
    log.drain_notices()
    assert log.wait_for_notice(0.01) is False


class CountingLog(PostgresEventLog):
    """The real log, counting the follower's drains."""

    drains = 0

    def drain_notices(self) -> None:
        self.drains += 1
        super().drain_notices()


async def test_a_follower_reading_hot_drains_its_listen_connection(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    log = CountingLog(postgres.url, schema=schema, shared=True)
    try:
        async with Engine.open(log=log, aggregates=KINDS, projectors=[Seen]) as engine:
            count = 0
            with trio.move_on_after(0.6):
                while True:  # others commit every few ms: the follower reads hot
                    await trio.to_thread.run_sync(rival_add, rival, "s", f"r{count}", 1)
                    count += 1
                    await trio.sleep(0.003)
            seen: Any = await engine.query(Seen.seen, after=rival.head_position(), timeout=10)
            assert seen == count
            assert log.drains > 10
    finally:
        log.close()
