"""Property: projectors that save their cache (``snapshot_every``) always answer like twins
that replay the whole log, and like a model kept by the test, whatever mix of commands,
clean restarts, crashes, rebuilds, ``snapshot_every`` changes and ``snapshot_format`` bumps
came before.

A crash is a forked child process that opens the engine on the same LMDB directory, runs
commands (the last few without waiting for them), and leaves with ``os._exit(0)`` before
the engine closes: no save at close, commits in flight may or may not have landed. Forking
between two ``trio.run`` calls costs milliseconds, where a fresh interpreter would cost half
a second per crash.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import traceback
import warnings
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorlog import Engine, Projector, ProjectorStatistics, Recorded, Rejected, applies
from actorlog.engine import _projectors
from benchmarks.bank import (
    Account,
    AccountOpened,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    Totals,
    Withdraw,
    Withdrawn,
)

PARK_DIVISOR = 5
"""The parking projectors cannot apply a deposit of a multiple of this: they park it."""


class SavedBalancesBase(Balances):
    """Balances with its cache annotated, and queries of its own: a query the class merely
    inherits (``all_balances``) would be answered by the hosted ``Balances`` twin."""

    by_account: dict[str, int]

    def saved_balances(self) -> dict[str, int]:
        return self.by_account

    def saved_balance(self, account: str) -> int:
        return self.by_account.get(account, 0)


class SavedTotalsBase(Totals):
    """Totals with its state annotated (unannotated, it could not be saved)."""

    deposits: int
    withdrawals: int

    def saved_totals(self) -> tuple[int, int]:
        return self.deposits, self.withdrawals


class ParkingBase(Projector):
    """Balances that park every deposit of a multiple of ``PARK_DIVISOR``."""

    on_error = "park"
    by_account: dict[str, int]

    def __init__(self) -> None:
        self.by_account = {}

    @applies
    def opened(self, e: AccountOpened, meta: Recorded) -> None:
        self.by_account.setdefault(meta.stream_id, 0)

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        if e.amount % PARK_DIVISOR == 0:
            raise ValueError(f"cannot apply a deposit of {e.amount}")
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) + e.amount

    @applies
    def withdrawn(self, e: Withdrawn, meta: Recorded) -> None:
        self.by_account[meta.stream_id] = self.by_account.get(meta.stream_id, 0) - e.amount


class ParkingTwin(ParkingBase):
    """Replays the whole log on every start."""

    def twin_view(self) -> dict[str, int]:
        return self.by_account


class SavedParkingBase(ParkingBase):
    def saved_view(self) -> dict[str, int]:
        return self.by_account


SAVING_BASES: tuple[type[Projector], ...] = (SavedBalancesBase, SavedTotalsBase, SavedParkingBase)
SAVING_NAMES = ("SavedBalances", "SavedTotals", "SavedParking")
TWINS: tuple[type[Projector], ...] = (Balances, Totals, ParkingTwin)


@dataclass
class Config:
    """What the saving projectors look like in the next run."""

    every: tuple[int, int, int] = (3, 3, 3)
    formats: list[int] = field(default_factory=lambda: [1, 1, 1])

    def saving(self) -> list[type[Projector]]:
        """The saving projectors of a run: the same names every run, so each finds the
        cache an earlier run saved (if its format matches)."""
        return [
            cast(
                "type[Projector]",
                type(
                    name,
                    (base,),
                    {
                        "name": name,
                        "snapshot_every": every,
                        "snapshot_format": fmt,
                        "__module__": __name__,
                        "__qualname__": name,
                    },
                ),
            )
            for base, name, every, fmt in zip(
                SAVING_BASES, SAVING_NAMES, self.every, self.formats, strict=True
            )
        ]


# -- the program ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    op: str
    account: str
    amount: int
    read: bool = False  # then read the balance back with ``after=`` (waits for that position)


@dataclass(frozen=True)
class Rebuild:
    index: int  # which saving projector


@dataclass(frozen=True)
class Check:
    """Wait for every projector, then compare them all with each other and the model."""


@dataclass(frozen=True)
class Restart:
    wait: bool  # wait for the projections before the clean close
    every: tuple[int, int, int] | None  # the next run's snapshot_every, if it changes
    bump: frozenset[int]  # the saving projectors whose snapshot_format the next run bumps


@dataclass(frozen=True)
class Crash:
    """End this run cleanly, then run a child that crashes before it closes."""

    rebuild: int | None  # a saving projector the child rebuilds first
    commands: tuple[Command, ...]  # sent and acknowledged
    in_flight: tuple[Command, ...]  # sent without waiting, right before the crash
    wait: bool  # the child waits for its projections (and reports them) before the crash


Step = Command | Rebuild | Check | Restart | Crash

accounts = st.sampled_from(["a", "b", "c"])
commands = st.builds(
    Command,
    op=st.sampled_from(["open", "deposit", "withdraw"]),
    account=accounts,
    amount=st.integers(-1, 30),
    read=st.booleans(),
)
rebuilds = st.builds(Rebuild, st.integers(0, 2))
restarts = st.builds(
    Restart,
    wait=st.booleans(),
    every=st.none() | st.tuples(*[st.integers(1, 6)] * 3),
    # Mostly none: a bump makes the next run ignore that saved cache.
    bump=st.sampled_from([frozenset(), frozenset(), frozenset(), *map(frozenset, [{0}, {1}, {2}])]),
)
crashes = st.builds(
    Crash,
    rebuild=st.none() | st.integers(0, 2),
    commands=st.lists(commands, max_size=5).map(tuple),
    in_flight=st.lists(commands, max_size=4).map(tuple),
    wait=st.booleans(),
)
steps = st.lists(
    st.one_of(
        commands,
        commands,
        commands,
        rebuilds,
        rebuilds,
        st.just(Check()),
        restarts,
        restarts,
        crashes,
    ),
    max_size=25,
)


# -- the model -----------------------------------------------------------------------------


class Model:
    """The bank as the test understands it, and what each kind of view must show."""

    def __init__(self) -> None:
        self.opened: set[str] = set()
        self.balances: dict[str, int] = {}
        self.parking: dict[str, int] = {}
        self.parked: list[int] = []
        self.deposits = 0
        self.withdrawals = 0
        self.head = 0

    def accepts(self, c: Command) -> bool:
        if c.op == "open":
            return c.account not in self.opened
        if c.amount <= 0:
            return False
        return c.op == "deposit" or c.amount <= self.balances.get(c.account, 0)

    def event_for(self, c: Command) -> AccountOpened | Deposited | Withdrawn:
        if c.op == "open":
            return AccountOpened("owner")
        return Deposited(c.amount) if c.op == "deposit" else Withdrawn(c.amount)

    def apply(self, account: str, event: AccountOpened | Deposited | Withdrawn) -> None:
        self.head += 1
        if isinstance(event, AccountOpened):
            self.opened.add(account)
            self.balances.setdefault(account, 0)
            self.parking.setdefault(account, 0)
        elif isinstance(event, Deposited):
            self.balances[account] = self.balances.get(account, 0) + event.amount
            self.deposits += event.amount
            if event.amount % PARK_DIVISOR == 0:
                self.parked.append(self.head)
            else:
                self.parking[account] = self.parking.get(account, 0) + event.amount
        else:
            self.balances[account] = self.balances.get(account, 0) - event.amount
            self.withdrawals += event.amount
            self.parking[account] = self.parking.get(account, 0) - event.amount

    def views(self) -> list[Any]:
        totals = [self.deposits, self.withdrawals]
        return [self.balances, totals, self.parking]


def to_command(c: Command) -> Any:
    if c.op == "open":
        return OpenAccount("owner")
    return Deposit(c.amount) if c.op == "deposit" else Withdraw(c.amount)


EVENT_TYPES: dict[str, type[AccountOpened | Deposited | Withdrawn]] = {
    "AccountOpened": AccountOpened,
    "Deposited": Deposited,
    "Withdrawn": Withdrawn,
}


# -- one run -------------------------------------------------------------------------------


def open_engine(
    path: Path, saving: Sequence[type[Projector]]
) -> AbstractAsyncContextManager[Engine]:
    return Engine.open(
        path, aggregates=[Account], projectors=[*TWINS, *saving], sync=False, mailbox_size=8
    )


def stats(engine: Engine) -> dict[str, ProjectorStatistics]:
    return {p.name: p for p in engine.statistics().projectors}


async def saved_views(engine: Engine) -> list[Any]:
    deposits, withdrawals = await engine.query(SavedTotalsBase.saved_totals)
    return [
        await engine.query(SavedBalancesBase.saved_balances),
        [deposits, withdrawals],
        await engine.query(SavedParkingBase.saved_view),
    ]


async def twin_views(engine: Engine) -> list[Any]:
    deposits = await engine.query(Totals.total_deposits)
    net = await engine.query(Totals.net)
    return [
        await engine.query(Balances.all_balances),
        [deposits, deposits - net],
        await engine.query(ParkingTwin.twin_view),
    ]


async def check(engine: Engine, model: Model, saving: Sequence[type[Projector]]) -> None:
    await engine.wait_projected()
    head = engine.log.head_position()
    assert head == model.head
    assert await saved_views(engine) == await twin_views(engine) == model.views()
    by_name = stats(engine)
    for s in by_name.values():
        assert (s.checkpoint, s.lag, s.fault, s.snapshot_failures) == (head, 0, None, 0), s
        assert 0 <= s.restored_from <= head, s
    assert [p.position for p in engine.parked(ParkingTwin)] == model.parked
    # Parked events are not saved with the cache: only those after it are listed.
    restored = by_name["SavedParking"].restored_from
    assert [p.position for p in engine.parked(saving[2])] == [
        p for p in model.parked if p > restored
    ]


async def command(engine: Engine, model: Model, c: Command) -> None:
    if not model.accepts(c):
        with pytest.raises(Rejected):
            await engine.send(Account, c.account, to_command(c))
        assert engine.log.head_position() == model.head
        return
    ack = await engine.send(Account, c.account, to_command(c))
    model.apply(c.account, model.event_for(c))
    assert ack.position == model.head
    if c.read:
        balance = await engine.query(SavedBalancesBase.saved_balance, c.account, after=ack.position)
        assert balance == model.balances[c.account]


def reconcile(engine: Engine, model: Model, in_flight: Sequence[Command]) -> None:
    """Apply to the model what a crashed child committed without waiting: a prefix of the
    in-flight commands the model accepts, each decided on the state the previous left."""
    shadow = copy.deepcopy(model)
    expected: list[tuple[str, AccountOpened | Deposited | Withdrawn]] = []
    for c in in_flight:
        if shadow.accepts(c):
            expected.append((c.account, shadow.event_for(c)))
            shadow.apply(*expected[-1])
    tail = engine.log.read_all(model.head + 1, 100)
    assert len(tail) <= len(expected)
    for stored, (account, event) in zip(tail, expected, strict=False):
        decoded = msgspec.msgpack.decode(stored.payload, type=EVENT_TYPES[stored.type])
        assert (stored.stream_id, decoded) == (account, event)
        model.apply(account, event)


@dataclass
class Run:
    """What carries over from one run of the engine to the next."""

    path: Path
    model: Model = field(default_factory=Model)
    config: Config = field(default_factory=Config)
    closed_at: list[int] | None = None  # the saving projectors' checkpoints at a clean close
    in_flight: tuple[Command, ...] = ()  # a crashed child's, not yet in the model


async def session(run: Run, program: list[Step]) -> Restart | Crash | None:
    """One run of the engine: the steps up to the next restart or crash (returned)."""
    saving = run.config.saving()
    async with open_engine(run.path, saving) as engine:
        reconcile(engine, run.model, run.in_flight)
        run.in_flight = ()
        head = engine.log.head_position()
        assert head == run.model.head
        by_name = stats(engine)
        restored = [by_name[name].restored_from for name in SAVING_NAMES]
        assert all(0 <= r <= head for r in restored), restored
        if run.closed_at is not None:
            assert restored == run.closed_at
        assert all(by_name[twin.name].restored_from == 0 for twin in TWINS)
        for name in SAVING_NAMES:
            saved = engine.log.load_projector_cache(name)
            assert saved is None or 0 <= saved.position <= head, saved
        while program:
            step = program.pop(0)
            if isinstance(step, Command):
                await command(engine, run.model, step)
            elif isinstance(step, Rebuild):
                engine.rebuild(saving[step.index])
            elif isinstance(step, Check):
                await check(engine, run.model, saving)
            else:
                if isinstance(step, Restart):
                    if step.wait:
                        await engine.wait_projected()
                    # No await from here to the close, which saves each cache as it is now.
                    by_name = stats(engine)
                    run.closed_at = [by_name[name].checkpoint for name in SAVING_NAMES]
                    if step.wait:
                        assert run.closed_at == [run.model.head] * 3
                return step
    return None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


async def child(run: Run, step: Crash, out: int) -> None:
    """The crashing child: leaves with ``os._exit(0)`` inside the engine, never closing it."""
    saving = run.config.saving()
    async with open_engine(run.path, saving) as engine:
        if step.rebuild is not None:
            engine.rebuild(saving[step.rebuild])
        positions: list[int | None] = []
        for c in step.commands:
            try:
                ack = await engine.send(Account, c.account, to_command(c))
            except Rejected:
                positions.append(None)
            else:
                positions.append(ack.position)
        report: dict[str, Any] = {"positions": positions}
        if step.wait:
            await engine.wait_projected()
            report["saved"] = await saved_views(engine)
            report["twins"] = await twin_views(engine)
        _write_all(out, json.dumps(report).encode())
        for c in step.in_flight:
            with suppress(Rejected):
                engine.send_nowait(Account, c.account, to_command(c))
        for _ in step.in_flight:  # let some of them commit, not necessarily all
            await trio.lowlevel.checkpoint()
        os._exit(0)


def crash(run: Run, step: Crash) -> None:
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads (pytest-timeout's): the
        # child only opens the log afresh and runs its own trio.run.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            trio.run(child, run, step, write_end)
        except BaseException:
            _write_all(write_end, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert "error" not in report, report["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    model = run.model
    for c, position in zip(step.commands, report["positions"], strict=True):
        if model.accepts(c):
            model.apply(c.account, model.event_for(c))
            assert position == model.head
        else:
            assert position is None
    if step.wait:
        assert report["saved"] == report["twins"] == model.views()
    run.in_flight = step.in_flight


def run_program(path: Path, program: list[Step]) -> None:
    run = Run(path)
    # Every program ends with a clean restart that waits, and a full check.
    program = [*program, Restart(wait=True, every=None, bump=frozenset()), Check()]
    while (end := trio.run(session, run, program)) is not None:
        if isinstance(end, Crash):
            run.closed_at = None  # the child saved whatever it was due to save, or nothing
            crash(run, end)
            continue
        # A clean close saved each cache at its checkpoint (at the head if the run waited):
        # the next run starts from there, unless there was nothing to save (checkpoint 0,
        # e.g. an empty log or a rebuild that had not started) or it has another format.
        assert run.closed_at is not None
        run.closed_at = [0 if i in end.bump else at for i, at in enumerate(run.closed_at)]
        if end.every is not None:
            run.config.every = end.every
        for i in end.bump:
            run.config.formats[i] += 1


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(program=steps)
def test_saved_caches_agree_with_full_replays_and_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, program: list[Step]
) -> None:
    # Tiny batches, so that these short logs still take several catch-up and window turns.
    monkeypatch.setattr(_projectors, "FIRST_BATCH", 2)
    monkeypatch.setattr(_projectors, "MAX_BATCH", 4)
    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        run_program(Path(directory), list(program))
