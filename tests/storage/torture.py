"""Crash torture: SIGKILL a loaded engine at random moments, reopen, audit the log.

    python -m tests.storage.torture --rounds 1000 --seed 7

Each round starts ``tests/storage/torture_child.py`` (bank load: many clients, many accounts, LMDB
with ``sync=True``, snapshots every few events, both bank projectors) and kills it with
SIGKILL at a moment drawn from the seed:

- ``early``:   0-350 ms after the spawn: during start-up, opening the log, or the first
               commits;
- ``catchup``: just after the engine opened a log grown by earlier rounds, while the
               projectors catch up and the clients already write;
- ``load``:    after 1-8000 acknowledgements, so among group commits and snapshot writes
               (with a small initial map, sometimes during map growth too).

The parent then opens a new Engine on the same directory, in process, and audits it:
every acknowledged command's events are present and whole (right stream, version,
position, type and payload), positions and per-stream versions are consecutive, the
rebuilt views equal a recomputation from the log, no balance is ever negative, the sum of
balances equals deposits minus withdrawals, every snapshot matches the events it claims
to summarise, and a few aggregates, reloaded from snapshot and tail, hold exactly the
balance the log says (withdrawing one more is refused, withdrawing all of it is not; those
acknowledgements join the audit of the next round). A directory is reused by later
rounds (a log that grows across crashes, every earlier acknowledgement audited again) or
replaced by a fresh one.

Rounds run in lanes (two by default: one per core), each with its own directories. The
seed fixes every choice (kill mode and delay, reuse, map size, the child's load); the
kill lands wherever the OS scheduler has got to, so a failing seed replays the same plan,
not the same interleaving. The last line printed is a JSON summary; the exit status is
non-zero if anything acknowledged was lost or partial, or any other check failed.

The harness checks itself: ``torture(..., lie=N)`` gives the children an LMDB environment
that silently drops every N-th commit, and ``tests/storage/test_torture.py`` requires losses then.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec
import trio

from actorlog import Engine, EngineError, Rejected
from actorlog.storage import StoredEvent
from benchmarks.bank import (
    AccountOpened,
    Balances,
    Deposited,
    InsufficientFunds,
    Totals,
    Withdraw,
    Withdrawn,
)

from .torture_child import TortureAccount

__all__ = ["Ack", "Audit", "Summary", "audit_log", "main", "torture"]

ROOT = Path(__file__).resolve().parent.parent.parent
MODES = ("early", "catchup", "load")
MAX_REUSED_EVENTS = 40_000  # a reused log is replaced past this, to keep audits quick


@dataclass(frozen=True)
class Ack:
    """One acknowledged command: the events it must have left, newest last."""

    stream_id: str
    version: int  # the stream's version after the command
    position: int  # the position of its last event
    events: tuple[tuple[str, object], ...]  # (type name, expected payload) in order


@dataclass
class Audit:
    """What one audit found."""

    head: int = 0
    snapshots: int = 0
    lost: int = 0
    partial: int = 0
    problems: list[str] = field(default_factory=list)
    failed: list[Ack] = field(default_factory=list)  # the lost and partial ones


class Summary(msgspec.Struct):
    """The harness's result, printed as its last line."""

    rounds: int
    acknowledged: int
    lost: int
    partial: int
    seconds: float
    seed: int
    problems: int
    kills: dict[str, int]
    killed_during_catchup: int
    largest_log: int
    snapshots_checked: int

    @property
    def ok(self) -> bool:
        return not (self.lost or self.partial or self.problems)


def parse_ack(line: str) -> Ack:
    """Parse an ``a <stream> <version> <position> <cmd>`` line of the child."""
    _, stream_id, version, position, cmd = line.split(" ")
    kind, _, arg = cmd.partition(":")
    events: tuple[tuple[str, object], ...]
    if kind == "O":
        events = (("AccountOpened", AccountOpened(arg)),)
    elif kind == "D":
        events = (("Deposited", Deposited(int(arg))),)
    elif kind == "W":
        events = (("Withdrawn", Withdrawn(int(arg))),)
    elif kind == "S":
        events = tuple(("Deposited", Deposited(int(a))) for a in arg.split(","))
    else:
        raise ValueError(f"unknown acknowledgement {line!r}")
    return Ack(stream_id, int(version), int(position), events)


_PAYLOAD_TYPES: dict[str, type[msgspec.Struct]] = {
    "AccountOpened": AccountOpened,
    "Deposited": Deposited,
    "Withdrawn": Withdrawn,
}


async def audit_log(path: Path, acks: list[Ack], *, probe: random.Random | None = None) -> Audit:
    """Reopen the log at ``path`` in this process and check every invariant against it.

    With ``probe``, also check that a few aggregates, reloaded from snapshot and tail, hold
    the balance the log says (the reopened log must take writes too); their
    acknowledgements join ``acks``.
    """
    audit = Audit()
    try:
        async with Engine.open(
            path, aggregates=[TortureAccount], projectors=[Balances, Totals]
        ) as engine:
            await _audit(engine, acks, probe, audit)
    except EngineError as e:  # opening failed (errors inside _audit are caught there)
        audit.problems.append(f"cannot open the log: {e!r}")
        audit.lost += len(acks)
        audit.failed.extend(acks)
    return audit


async def _audit(
    engine: Engine, acks: list[Ack], probe: random.Random | None, audit: Audit
) -> None:
    problems = audit.problems
    log = engine.log
    head = audit.head = log.head_position()
    events: list[StoredEvent] = []
    try:
        while True:
            batch = log.read_all(events[-1].position + 1 if events else 1, 8192)
            if not batch:
                break
            events.extend(batch)
    except EngineError as error:
        problems.append(f"cannot read the log: {error!r}")
        audit.lost += len(acks)
        audit.failed.extend(acks)
        return
    positions = [e.position for e in events]
    if positions != list(range(1, head + 1)):
        problems.append(f"positions are not 1..{head}: {_first_gap(positions)}")

    # Fold every stream, checking versions and the domain's rules on the way.
    versions: dict[str, int] = {}
    balances: dict[str, int] = {}
    deposits = withdrawals = 0
    decoded: list[object] = []  # by position - 1
    by_stream: dict[str, list[object]] = {}  # by version - 1
    for e in events:
        if e.version != versions.get(e.stream_id, 0) + 1:
            problems.append(
                f"{e.stream_id} jumps from version {versions.get(e.stream_id, 0)} to "
                f"{e.version} at position {e.position}"
            )
        versions[e.stream_id] = e.version
        payload_type = _PAYLOAD_TYPES.get(e.type)
        if payload_type is None:
            problems.append(f"unknown event type {e.type!r} at {e.position}")
            decoded.append(None)
            by_stream.setdefault(e.stream_id, []).append(None)
            continue
        try:
            event = msgspec.msgpack.decode(e.payload, type=payload_type)
        except msgspec.DecodeError as error:
            problems.append(f"undecodable {e.type} at {e.position}: {error}")
            event = None
        decoded.append(event)
        by_stream.setdefault(e.stream_id, []).append(event)
        if isinstance(event, AccountOpened):
            balances.setdefault(e.stream_id, 0)
        elif isinstance(event, Deposited):
            balances[e.stream_id] = balances.get(e.stream_id, 0) + event.amount
            deposits += event.amount
        elif isinstance(event, Withdrawn):
            balances[e.stream_id] = balances.get(e.stream_id, 0) - event.amount
            withdrawals += event.amount
            if balances[e.stream_id] < 0:
                problems.append(f"{e.stream_id} overdrawn at position {e.position}")

    by_position = {e.position: (e, event) for e, event in zip(events, decoded, strict=True)}
    for ack in acks:
        whole = _matching_events(ack, by_position)
        if whole == 0:
            audit.lost += 1
            audit.failed.append(ack)
            problems.append(f"lost: {ack}")
        elif whole < len(ack.events):
            audit.partial += 1
            audit.failed.append(ack)
            problems.append(f"partial ({whole} of {len(ack.events)}): {ack}")

    # The views, rebuilt by the reopened engine's projectors, against the fold.
    try:
        await _check_views(engine, balances, deposits, withdrawals, problems)
    except EngineError as error:
        problems.append(f"the views could not be rebuilt: {error!r}")

    # Every snapshot summarises a committed prefix of its stream, exactly.
    for stream_id, version in versions.items():
        try:
            snapshot = log.load_snapshot(stream_id)
        except EngineError as error:
            problems.append(f"{stream_id}: unreadable snapshot: {error!r}")
            continue
        if snapshot is None:
            continue
        audit.snapshots += 1
        if snapshot.version > version:
            problems.append(f"{stream_id}: snapshot at {snapshot.version} > {version}")
            continue
        expected = TortureAccount()
        for item in by_stream[stream_id][: snapshot.version]:
            if item is not None:
                TortureAccount.event_appliers[type(item)](expected, item)
        restored = TortureAccount.from_snapshot(snapshot.state)
        if (restored.opened, restored.balance) != (expected.opened, expected.balance):
            problems.append(f"{stream_id}: snapshot at {snapshot.version} is not the fold")

    if probe is not None:
        for stream_id in probe.sample(sorted(versions), min(3, len(versions))):
            try:
                await _probe_aggregate(engine, stream_id, balances.get(stream_id, 0), acks, audit)
            except EngineError as error:
                problems.append(f"{stream_id} refused a probe: {error!r}")


async def _check_views(
    engine: Engine, balances: dict[str, int], deposits: int, withdrawals: int, problems: list[str]
) -> None:
    await engine.wait_projected()
    view = await engine.query(Balances.all_balances)
    if view != balances:
        diff = {
            k: (view.get(k), balances.get(k))
            for k in set(view) | set(balances)
            if view.get(k) != balances.get(k)
        }
        problems.append(f"Balances view differs from the log: {dict(list(diff.items())[:5])}")
    if await engine.query(Totals.total_deposits) != deposits:
        problems.append("Totals.total_deposits differs from the log")
    net = await engine.query(Totals.net)
    if net != deposits - withdrawals or net != sum(balances.values()):
        problems.append(f"net {net} != deposits - withdrawals != sum of balances")


async def _probe_aggregate(
    engine: Engine, stream_id: str, balance: int, acks: list[Ack], audit: Audit
) -> None:
    """Withdraw one more than ``balance`` (refused), then exactly it (accepted)."""
    try:
        await engine.send(TortureAccount, stream_id, Withdraw(balance + 1))
    except InsufficientFunds:
        pass
    else:
        audit.problems.append(f"{stream_id} reloaded with more than its balance {balance}")
        return
    if balance > 0:
        try:
            done = await engine.send(TortureAccount, stream_id, Withdraw(balance))
        except Rejected as e:
            audit.problems.append(f"{stream_id} reloaded with less than {balance}: {e}")
            return
        acks.append(
            Ack(stream_id, done.version, done.position, (("Withdrawn", Withdrawn(balance)),))
        )
        audit.head = done.position


def _matching_events(ack: Ack, by_position: dict[int, tuple[StoredEvent, object]]) -> int:
    """How many of the acknowledged command's events the log holds, whole and in place."""
    n = len(ack.events)
    found = 0
    for i, (name, payload) in enumerate(ack.events):
        position = ack.position - n + 1 + i
        entry = by_position.get(position)
        if entry is None:
            continue
        e, event = entry
        if (
            e.stream_id == ack.stream_id
            and e.version == ack.version - n + 1 + i
            and e.type == name
            and event == payload
        ):
            found += 1
    return found


def _first_gap(positions: list[int]) -> str:
    for i, p in enumerate(positions, 1):
        if p != i:
            return f"position {i} holds {p}"
    return f"only {len(positions)} events"


@dataclass
class _Totals:
    rounds: int = 0
    acknowledged: int = 0
    lost: int = 0
    partial: int = 0
    problems: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    killed_during_catchup: int = 0
    largest_log: int = 0
    snapshots: int = 0


async def _round(
    lane: int, rng: random.Random, path: Path, acks: list[Ack], totals: _Totals, lie: int
) -> int:
    """One spawn-load-kill-audit round on ``path``; returns the log's head afterwards."""
    mode = rng.choice(MODES)
    child_seed = rng.randrange(1 << 30)
    map_size = rng.choice((64 << 10, 1 << 20, 64 << 20))
    accounts = rng.choice((8, 50, 400))
    clients = rng.choice((8, 32, 64))
    mailbox = rng.choice((2, 16, 64))
    early_delay = rng.uniform(0.0, 0.35)
    # Mostly short loads; a quarter long ones, so reused logs grow big enough for the
    # projectors' catch-up on reopen to take a while (and be killed in the middle).
    ack_target = rng.randint(1, 400) if rng.random() < 0.75 else rng.randint(400, 8000)
    catchup_delay = rng.uniform(0.0, 0.02)
    load_delay = rng.uniform(0.0, 0.005)

    argv = [
        sys.executable,
        "-m",
        "tests.storage.torture_child",
        str(path),
        "--seed",
        str(child_seed),
        "--accounts",
        str(accounts),
        "--clients",
        str(clients),
        "--map-size",
        str(map_size),
        "--mailbox-size",
        str(mailbox),
        "--seconds",
        "30",
        "--lie",
        str(lie),
    ]
    opened = trio.Event()
    caught_up = trio.Event()
    enough = trio.Event()
    lines: list[str] = []
    stderr = bytearray()
    new_acks: list[Ack] = []

    process = await trio.lowlevel.open_process(
        argv,
        cwd=ROOT,
        stdout=-1,
        stderr=-1,  # subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None

    async def read_stdout() -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode()
                if line.startswith("a "):
                    new_acks.append(parse_ack(line))
                    if len(new_acks) >= ack_target:
                        enough.set()
                elif line == "o":
                    opened.set()
                elif line == "c":
                    caught_up.set()
                else:
                    lines.append(line)
                    # A child reporting errors may never reach its target (the harness's
                    # self-test stalls its engine so): its lines are problems already, so
                    # the round kills it now instead of waiting out the round's 20 s.
                    enough.set()
        if buffer:
            # One os.write per line, each < PIPE_BUF: a torn line would be a harness bug.
            lines.append(f"torn line: {buffer!r}")

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            stderr.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_stdout)
        nursery.start_soon(read_stderr)
        with trio.move_on_after(20):
            if mode == "early":
                await trio.sleep(early_delay)
            elif mode == "catchup":
                await opened.wait()
                await trio.sleep(catchup_delay)
            else:
                await enough.wait()
                await trio.sleep(load_delay)
        exited_early = process.poll() is not None
        process.kill()
        await process.wait()

    totals.kills[mode] += 1
    if opened.is_set() and not caught_up.is_set():
        totals.killed_during_catchup += 1
    if exited_early:
        totals.problems.append(
            f"lane {lane}: the child exited by itself ({process.returncode}): "
            f"{stderr.decode(errors='replace')[-2000:]}"
        )
    for line in lines:
        totals.problems.append(f"lane {lane}: the child printed {line!r}")
    acks.extend(new_acks)
    totals.acknowledged += len(new_acks)

    before = len(acks)
    audit = await audit_log(path, acks, probe=rng)
    totals.acknowledged += len(acks) - before  # the probes' own, audited next round
    totals.rounds += 1
    totals.lost += audit.lost
    totals.partial += audit.partial
    totals.problems.extend(f"lane {lane} {path.name}: {p}" for p in audit.problems)
    totals.largest_log = max(totals.largest_log, audit.head)
    totals.snapshots += audit.snapshots
    # Each lost or partial acknowledgement counts once, not again in every later round.
    gone = set(map(id, audit.failed))
    acks[:] = [ack for ack in acks if id(ack) not in gone]
    return audit.head


async def _lane(
    lane: int, rounds: int, rng: random.Random, base: Path, totals: _Totals, lie: int
) -> None:
    path: Path | None = None
    acks: list[Ack] = []
    head = 0
    for n in range(rounds):
        # Reuse the log most of the time (it grows across crashes), sometimes start over.
        if path is None or head > MAX_REUSED_EVENTS or rng.random() < 0.3:
            if path is not None:
                shutil.rmtree(path)
            path = base / f"lane{lane}-round{n}"
            acks = []
        head = await _round(lane, rng, path, acks, totals, lie)
    if path is not None:
        shutil.rmtree(path)


async def torture(
    rounds: int, seed: int, *, lanes: int = 2, directory: Path | None = None, lie: int = 0
) -> tuple[Summary, list[str]]:
    """Run ``rounds`` kill-and-audit rounds over ``lanes`` parallel lanes.

    Returns the summary and a description of every problem found (empty if all is well).
    ``lie=N`` makes the children's storage drop every N-th commit while reporting success:
    the harness's self-test, which must then find losses.
    """
    began = time.perf_counter()
    totals = _Totals()
    master = random.Random(seed)
    lane_seeds = [master.randrange(1 << 62) for _ in range(lanes)]
    per_lane = [rounds // lanes + (1 if i < rounds % lanes else 0) for i in range(lanes)]
    with tempfile.TemporaryDirectory(prefix="torture-", dir=directory) as tmp:
        async with trio.open_nursery() as nursery:
            for lane in range(lanes):
                nursery.start_soon(
                    _lane,
                    lane,
                    per_lane[lane],
                    random.Random(lane_seeds[lane]),
                    Path(tmp),
                    totals,
                    lie,
                )
    return Summary(
        rounds=totals.rounds,
        acknowledged=totals.acknowledged,
        lost=totals.lost,
        partial=totals.partial,
        seconds=round(time.perf_counter() - began, 2),
        seed=seed,
        problems=len(totals.problems),
        kills=dict(sorted(totals.kills.items())),
        killed_during_catchup=totals.killed_during_catchup,
        largest_log=totals.largest_log,
        snapshots_checked=totals.snapshots,
    ), totals.problems


def main(argv: list[str] | None = None) -> int:
    """Run the torture from the command line; print problems, then the JSON summary."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lanes", type=int, default=2)
    args = parser.parse_args(argv)
    summary, problems = trio.run(partial(torture, lanes=args.lanes), args.rounds, args.seed)
    for problem in problems[:50]:
        print(problem, file=sys.stderr)
    print(json.dumps(msgspec.to_builtins(summary)), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
