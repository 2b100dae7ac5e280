"""The engine's side of each bank workload (W1-W6), measured through the public API.

Each function opens its own engine on a fresh LMDB directory under ``root`` and returns a
dict of figures. The harness (``benchmarks/__main__.py``) runs them beside their baselines.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from actorlog import Engine, Policy, Rejected
from actorlog.engine._records import Append
from actorlog.storage import EventLog, LmdbEventLog

from .bank import (
    Account,
    AccountOpened,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    SnapshottingAccount,
    Totals,
    Withdraw,
)
from .load import paced_load

__all__ = [
    "engine_latency",
    "engine_query",
    "engine_read_your_writes",
    "engine_rebuild",
    "engine_rehydrate",
    "engine_write_throughput",
    "percentile",
    "SERVICE_VARIANTS",
    "append_bank_log",
    "write_bank_log",
]


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``samples`` by nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _commands(accounts: int, commands: int, seed: int | None = None) -> list[tuple[str, Any]]:
    """The floor's and the peer's recipe and seed: uniform accounts, half deposits, half
    withdrawals, amounts 1..100 (so a fair share of withdrawals is rejected)."""
    from ._floor import Deposit as FloorDeposit
    from ._floor import Withdraw as FloorWithdraw
    from ._floor import bank_workload

    recipe = (
        bank_workload(accounts, commands)
        if seed is None
        else bank_workload(accounts, commands, seed=seed)
    )
    out: list[tuple[str, Any]] = []
    for n, c in recipe:
        if isinstance(c, FloorDeposit):
            out.append((f"acct-{n}", Deposit(c.amount)))
        elif isinstance(c, FloorWithdraw):
            out.append((f"acct-{n}", Withdraw(c.amount)))
    return out


async def _open_accounts(engine: Engine, accounts: int) -> None:
    async def opener(first: int) -> None:
        for n in range(first, accounts, 64):
            await engine.send(Account, f"acct-{n}", OpenAccount(f"owner-{n}"))

    async with anyio.create_task_group() as tg:
        for first in range(min(64, accounts)):
            tg.start_soon(opener, first)


class _Tellers(Policy):
    """A trivial policy: what W1 costs with one, compared with none."""

    allowed = frozenset({"teller", None})  # None: the accounts opened before the run

    def may_send(self, principal: Any, aggregate: Any, stream_id: str, command: Any) -> bool:
        return principal in self.allowed


SERVICE_VARIANTS: tuple[str, ...] = (
    "plain",
    "command id",
    "policy",
    "all metadata",
    "a wake-up more",
)
"""What each W1 command carries: nothing; a unique ``command_id``; a ``principal`` checked
by a trivial policy; a command id, principal, correlation and causation ids and a W3C
``traceparent`` header. "a wake-up more" yields to the event loop once before each send:
what an ``async`` policy that suspends would cost (why policies are synchronous)."""

_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def send_all(engine: Engine, work: list[tuple[str, Any]], clients: int) -> float:
    """Send ``work`` (account, command) from ``clients`` concurrent clients, each waiting
    for its reply (rejections are answers); return the seconds it took."""

    async def client(first: int) -> None:
        for account, command in work[first::clients]:
            with contextlib.suppress(Rejected):
                await engine.send(Account, account, command)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for first in range(clients):
            tg.start_soon(client, first)
    return time.perf_counter() - started


async def engine_write_throughput(
    root: Path,
    *,
    accounts: int,
    commands: int,
    clients: int,
    sync: bool,
    views: bool = True,
    seed: int | None = None,
    service: str = "plain",
) -> dict[str, Any]:
    """W1: ``commands`` from ``clients`` concurrent clients; each waits for its durable reply.

    With ``views`` the two bank views (Balances, Totals) follow the writes live, as they
    would in an application; without, only the write side runs (what the floor does).
    ``service`` is one of :data:`SERVICE_VARIANTS`.
    """
    work = _commands(accounts, commands, seed)
    # Made before the clock starts, like the commands: a client's ids are its business.
    uses_ids = service in ("command id", "all metadata")
    ids = [f"cmd-{i}" for i in range(len(work))] if uses_ids else []
    projectors = [Balances, Totals] if views else []
    options: dict[str, Any] = {"authorize": _Tellers()} if service == "policy" else {}
    async with Engine.open(
        root, aggregates=[Account], projectors=projectors, sync=sync, **options
    ) as engine:
        await _open_accounts(engine, accounts)
        before = engine.statistics().writer
        rejected = 0

        async def client(first: int) -> None:
            nonlocal rejected
            for i in range(first, len(work), clients):
                account, command = work[i]
                try:
                    if service == "plain":
                        await engine.send(Account, account, command)
                    elif service == "command id":
                        await engine.send(Account, account, command, command_id=ids[i])
                    elif service == "policy":
                        await engine.send(Account, account, command, principal="teller")
                    elif service == "a wake-up more":
                        await anyio.lowlevel.checkpoint()
                        await engine.send(Account, account, command)
                    else:
                        await engine.send(
                            Account,
                            account,
                            command,
                            command_id=ids[i],
                            principal="teller",
                            correlation_id=ids[i],
                            causation_id=ids[i],
                            headers={"traceparent": _TRACEPARENT},
                        )
                except Rejected:
                    rejected += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for first in range(clients):
                tg.start_soon(client, first)
        seconds = time.perf_counter() - started
        after = engine.statistics().writer
    commits = after.commits - before.commits
    return {
        "commands": commands,
        "seconds": seconds,
        "per_second": commands / seconds,
        "rejected": rejected,
        "mean_batch": (after.appends - before.appends) / commits if commits else 0.0,
    }


async def engine_latency(
    root: Path,
    *,
    accounts: int,
    rate: float,
    duration_s: float,
    sync: bool = True,
    clients: int = 64,
) -> dict[str, Any]:
    """W2: ``rate`` commands/s offered by ``clients`` paced clients (``load.paced_load``)."""
    work = _commands(accounts, max(clients, int(rate * duration_s)))
    async with Engine.open(
        root, aggregates=[Account], projectors=[Balances, Totals], sync=sync
    ) as engine:
        await _open_accounts(engine, accounts)

        async def send(item: tuple[str, Any]) -> None:
            with contextlib.suppress(Rejected):
                await engine.send(Account, item[0], item[1])

        return await paced_load(send, work, rate=rate, clients=clients)


def write_bank_log(
    path: Path,
    *,
    events: int,
    accounts: int = 1000,
    seed: int = 3,
    opened: Callable[[str], Any] = AccountOpened,
    deposited: Callable[[int], Any] = Deposited,
) -> None:
    """Write a bank log of ``events`` events straight through the LMDB backend (fast setup).

    ``opened`` and ``deposited`` build its events from an owner and an amount (the bank's
    own types by default; ``benchmarks.upcast`` writes other versions of them)."""
    log = LmdbEventLog(path, sync=False)
    try:
        append_bank_log(
            log, events=events, accounts=accounts, seed=seed, opened=opened, deposited=deposited
        )
    finally:
        log.close()


def append_bank_log(
    log: EventLog,
    *,
    events: int,
    accounts: int = 1000,
    seed: int = 3,
    opened: Callable[[str], Any] = AccountOpened,
    deposited: Callable[[int], Any] = Deposited,
) -> None:
    """Append :func:`write_bank_log`'s events to an empty ``log`` (any backend), in groups
    of 10,000."""
    from actorlog.lowlevel import EventRegistry

    registry = EventRegistry()
    rng = random.Random(seed)
    versions = [0] * accounts
    opening = [opened(f"owner-{n}") for n in range(accounts)]
    written = 0
    while written < events:
        group: list[Append] = []
        for _ in range(min(10_000, events - written)):
            n = rng.randrange(accounts)
            if versions[n] == 0:
                event: Any = opening[n]
            else:
                event = deposited(rng.randint(1, 100))
            registry.register(type(event))
            group.append(Append(f"acct-{n}", versions[n], (registry.encode(event),)))
            versions[n] += 1
            written += 1
        outcomes, _ = log.append_batch(group)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            raise RuntimeError(f"writing the bank log failed: {failed[0]!r}")


async def engine_rebuild(root: Path, *, events: int) -> dict[str, Any]:
    """W4: open an engine on a log of ``events`` events; time Balances catching up."""
    path = root / "log"
    write_bank_log(path, events=events)
    started = time.perf_counter()
    async with Engine.open(path, aggregates=[Account], projectors=[Balances]) as engine:
        await engine.wait_projected()
        seconds = time.perf_counter() - started
        applied = engine.statistics().projectors[0].applied
    return {"events": applied, "seconds": seconds, "per_second": applied / seconds}


async def engine_rehydrate(root: Path, *, events: int) -> dict[str, Any]:
    """W3: activate one account with ``events`` events, cold and from a snapshot.

    The probe command is a withdrawal larger than any balance: it activates the aggregate
    and is rejected, so the timing holds no commit.
    """
    results: dict[str, Any] = {}
    for variant, kind in (("cold", Account), ("snapshot", SnapshottingAccount)):
        path = root / variant
        async with Engine.open(path, aggregates=[kind], sync=False) as engine:
            await engine.send(kind, "acct-big", OpenAccount("big"))
            batch = 64
            for _ in range(0, events - 1, batch):
                pendings = [
                    engine.send_nowait(kind, "acct-big", Deposit(1))
                    for _ in range(min(batch, events - 1 - _))
                ]
                for pending in pendings:
                    await pending
        timings = []
        for _ in range(5):
            async with Engine.open(path, aggregates=[kind]) as engine:
                t0 = time.perf_counter()
                with contextlib.suppress(Rejected):
                    await engine.send(kind, "acct-big", Withdraw(10**12))
                timings.append(time.perf_counter() - t0)
        results[f"{variant}_ms"] = min(timings) * 1e3
        results[f"{variant}_median_ms"] = percentile(timings, 0.5) * 1e3
    return results


async def engine_query(root: Path, *, queries: int) -> dict[str, Any]:
    """W5: point reads of one balance through ``engine.query``."""
    async with Engine.open(root, aggregates=[Account], projectors=[Balances]) as engine:
        ack = await engine.send(Account, "acct-1", OpenAccount("q"))
        await engine.send(Account, "acct-1", Deposit(5))
        await engine.wait_projected(ack.position)
        query = engine.query
        balance = Balances.balance
        started = time.perf_counter()
        for _ in range(queries):
            await query(balance, "acct-1")
        seconds = time.perf_counter() - started
    return {"queries": queries, "seconds": seconds, "per_second": queries / seconds}


async def engine_read_your_writes(
    root: Path, *, commands: int, sync: bool = True
) -> dict[str, Any]:
    """W6: time from a command's reply until an ``after=`` query sees its event."""
    samples: list[float] = []
    async with Engine.open(root, aggregates=[Account], projectors=[Balances], sync=sync) as engine:
        await engine.send(Account, "acct-1", OpenAccount("w6"))
        for _ in range(commands):
            ack = await engine.send(Account, "acct-1", Deposit(1))
            t0 = time.perf_counter()
            await engine.query(Balances.balance, "acct-1", after=ack.position)
            samples.append(time.perf_counter() - t0)
    return {
        "commands": commands,
        "p50_ms": percentile(samples, 0.5) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
    }
