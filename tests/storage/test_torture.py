"""Crash torture in CI: 100 SIGKILLed rounds lose nothing acknowledged; the audit can tell."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import msgspec
import pytest

from actorlog import Engine
from actorlog.lowlevel import event_name
from actorlog.storage import Append, LmdbEventLog, Snapshot
from benchmarks.bank import AccountOpened, Deposit, Deposited, OpenAccount, Withdrawn

from .torture import Ack, audit_log, torture
from .torture_child import DepositSplit, TortureAccount

SEED = int(os.environ.get("TORTURE_SEED", "20240607"))


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_crash_torture_100_rounds_loses_nothing_acknowledged() -> None:
    summary, problems = await torture(rounds=100, seed=SEED)
    print(
        json.dumps(
            {
                "rounds": summary.rounds,
                "acknowledged": summary.acknowledged,
                "seconds": summary.seconds,
                "kills": summary.kills,
                "killed_during_catchup": summary.killed_during_catchup,
            }
        )
    )
    assert problems == []
    assert (summary.lost, summary.partial) == (0, 0)
    assert summary.rounds == 100
    assert summary.acknowledged > 1000
    assert set(summary.kills) == {"early", "catchup", "load"}


async def _bank_log(path: Path) -> list[Ack]:
    """A small real log written through the engine, with the acks it returned."""
    acks: list[Ack] = []
    async with Engine.open(path, aggregates=[TortureAccount]) as engine:
        ack = await engine.send(TortureAccount, "acct-1", OpenAccount("ann"))
        acks.append(
            Ack("acct-1", ack.version, ack.position, (("AccountOpened", AccountOpened("ann")),))
        )
        ack = await engine.send(TortureAccount, "acct-1", DepositSplit((5, 7)))
        acks.append(
            Ack(
                "acct-1",
                ack.version,
                ack.position,
                (("Deposited", Deposited(5)), ("Deposited", Deposited(7))),
            )
        )
        ack = await engine.send(TortureAccount, "acct-2", Deposit(3))
        acks.append(Ack("acct-2", ack.version, ack.position, (("Deposited", Deposited(3)),)))
    return acks


async def test_audit_passes_a_sound_log(tmp_path: Path) -> None:
    acks = await _bank_log(tmp_path)
    audit = await audit_log(tmp_path, acks)
    assert (audit.head, audit.lost, audit.partial, audit.problems) == (4, 0, 0, [])


async def test_audit_counts_an_acknowledgement_missing_from_the_log_as_lost(
    tmp_path: Path,
) -> None:
    acks = await _bank_log(tmp_path)
    acks.append(Ack("acct-2", 2, 5, (("Deposited", Deposited(1)),)))  # never written
    acks.append(Ack("acct-2", 1, 4, (("Deposited", Deposited(4)),)))  # wrong payload
    audit = await audit_log(tmp_path, acks)
    assert (audit.lost, audit.partial) == (2, 0)


async def test_audit_counts_a_half_present_multi_event_command_as_partial(
    tmp_path: Path,
) -> None:
    acks = await _bank_log(tmp_path)
    split = acks[1]
    acks[1] = Ack(
        split.stream_id,
        split.version,
        split.position,
        (split.events[0], ("Deposited", Deposited(8))),
    )
    audit = await audit_log(tmp_path, acks)
    assert (audit.lost, audit.partial) == (0, 1)


async def test_audit_reports_an_overdrawn_account_written_behind_the_engines_back(
    tmp_path: Path,
) -> None:
    acks = await _bank_log(tmp_path)
    log = LmdbEventLog(tmp_path)
    try:
        log.append_batch(
            [Append("acct-2", 1, ((event_name(Withdrawn), msgspec.msgpack.encode(Withdrawn(10))),))]
        )
    finally:
        log.close()
    audit = await audit_log(tmp_path, acks)
    assert (audit.lost, audit.partial) == (0, 0)
    assert any("overdrawn" in p for p in audit.problems)


async def test_audit_reports_a_snapshot_that_is_not_the_fold_of_its_events(
    tmp_path: Path,
) -> None:
    acks = await _bank_log(tmp_path)
    log = LmdbEventLog(tmp_path)
    try:
        lie = TortureAccount()
        lie.balance = 1000
        snapshot = Snapshot(1, TortureAccount.snapshot_format, lie.snapshot_state())
        log.append_batch([], snapshots=[("acct-2", snapshot)])
    finally:
        log.close()
    audit = await audit_log(tmp_path, acks, probe=random.Random(0))
    assert any("acct-2: snapshot at 1 is not the fold" in p for p in audit.problems)
    # The engine trusted the snapshot, so the reloaded aggregate holds the lie, too.
    assert any("acct-2 reloaded with more" in p for p in audit.problems)


async def test_the_harness_catches_storage_that_drops_acknowledged_commits() -> None:
    # The same harness against a child whose LMDB silently aborts every 5th commit.
    summary, problems = await torture(rounds=6, seed=SEED, lie=5)
    assert summary.lost > 0
    assert problems
