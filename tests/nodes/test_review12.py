"""Review 12: a conflict's catch-up waiting for the follower's next read, on a real server:
three engines on one shared schema under random routing, a few hot streams (conflicts
with others' events the follower is bringing as they come), ``send`` and pipelined
``send_nowait``, sends cancelled at random (some while their catch-up waits), a small
``max_live_aggregates`` (eviction). Every live state equals the log's; every acknowledged
command is in the log exactly once, none refused or failed is, and none twice.
``ACTORLOG_REVIEW12_COMMANDS`` sets the commands per client (default 40)."""

from __future__ import annotations

import os

from tests.support import Postgres

from .test_review11 import three_engines_at_random


async def test_catch_ups_waiting_for_the_follower_keep_every_command_once(
    postgres: Postgres,
) -> None:
    # Some sends are cancelled after a few ms: perhaps while their catch-up waits for the
    # follower (FOLLOWER_WAIT is 20 ms).
    stats = await three_engines_at_random(
        postgres,
        per_client=int(os.environ.get("ACTORLOG_REVIEW12_COMMANDS", "40")),
        seed=int(os.environ.get("ACTORLOG_REVIEW12_SEED", "0")),
        nowait=0.4,
        take=0.30,
        deadlines=(None, None, 0.002, 0.01),
    )
    print(
        "review12",
        [
            (s.retries, s.caught_up, s.caught_up_unread, s.caught_up_waits, s.caught_up_wait_misses)
            for s in stats
        ],
    )
