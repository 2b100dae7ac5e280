"""The floor: the least code that runs the bank write workload durably on LMDB.

The engine's write benchmarks quote their figures as a ratio to this floor, so it must be
honest in both directions: it does the same durable work (one fsync'd LMDB commit per batch,
every acknowledged command on disk, withdraw-beyond-balance and double-open rejected) and
nothing else (no actors, no projectors, no envelopes, no per-stream index, no error tree).
It does not import the engine on purpose: a regression in the engine must not move the floor.

The whole pipeline, with its wake-ups counted (they dominate, see DESIGN.md)::

    client task ──send_nowait──▶ account's memory channel      (no wake-up: the writer never
        │                           │                           blocks on a channel)
        │ marks the account ready, sets the writer's Event       (1 wake-up per batch)
        ▼                           ▼
      waits on its reply Event    writer: drain every ready channel, decide each command
                                  against in-memory balances, put one key per event in ONE
                                  write txn, commit (fsync), then set each reply Event
                                                                 (1 wake-up per command)

Durability: with ``sync=True`` (the default) a command is answered only after the LMDB
transaction holding its event has been committed with ``sync`` and ``metasync`` on, so an
acknowledged command survives ``kill -9`` and power loss. ``sync=False`` skips the fsyncs
(survives a process crash, not an OS crash) and exists to show what the fsync costs.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import lmdb
import msgspec
import trio

__all__ = ["run_floor_paced_latency", "run_floor_w1"]

# Sparse on Linux: reserves address space, not disk. 1M small events need well under 1 GiB.
_MAP_SIZE = 1 << 30
_SEED = 20240601
_POSITION = struct.Struct(">Q")


# -- the bank domain, as plain data -------------------------------------------------------------
# Defined here rather than shared so the floor stays independent of the engine and of any
# benchmark module that might grow engine imports.


class Open(msgspec.Struct, frozen=True):
    """Open an account; rejected if it is already open."""


class Deposit(msgspec.Struct, frozen=True):
    """Add ``amount`` to an open account."""

    amount: int


class Withdraw(msgspec.Struct, frozen=True):
    """Take ``amount`` from an open account; rejected if it exceeds the balance."""

    amount: int


Command = Open | Deposit | Withdraw


class Opened(msgspec.Struct, frozen=True, tag=True):
    """An account was opened (stream version 1)."""

    stream_id: str
    version: int


class Deposited(msgspec.Struct, frozen=True, tag=True):
    """Money went into an account."""

    stream_id: str
    version: int
    amount: int


class Withdrawn(msgspec.Struct, frozen=True, tag=True):
    """Money left an account."""

    stream_id: str
    version: int
    amount: int


Event = Opened | Deposited | Withdrawn


def bank_workload(accounts: int, commands: int, *, seed: int = _SEED) -> list[tuple[int, Command]]:
    """Return ``commands`` (account index, command) pairs, uniform over accounts, seeded.

    Half deposits, half withdrawals, amounts 1..100, so a fair share of withdrawals are
    rejected. ``benchmarks/_peer.py`` uses the same recipe and seed.
    """
    rng = random.Random(seed)
    workload: list[tuple[int, Command]] = []
    for _ in range(commands):
        account = rng.randrange(accounts)
        amount = rng.randint(1, 100)
        command: Command = Deposit(amount) if rng.random() < 0.5 else Withdraw(amount)
        workload.append((account, command))
    return workload


# -- the pipeline -------------------------------------------------------------------------------


class _Request:
    """One command in flight; the writer fills ``accepted`` and then sets ``done``."""

    __slots__ = ("accepted", "account", "command", "done")

    def __init__(self, account: int, command: Command) -> None:
        self.account = account
        self.command = command
        self.accepted = False
        self.done = trio.Event()


class _Floor:
    """Per-account channels feeding one group-committing writer task."""

    def __init__(self, env: lmdb.Environment, *, accounts: int, in_flight: int) -> None:
        self._env = env
        # Each channel holds at most every command that can be in flight, so send_nowait can
        # never hit a full buffer: the bound is real, and the client skips the scheduler
        # round-trip that an awaited ``send`` costs even when there is room.
        channels = [trio.open_memory_channel[_Request](in_flight) for _ in range(accounts)]
        self._senders = [send for send, _ in channels]
        self._receivers = [receive for _, receive in channels]
        self._names = [f"a-{i}" for i in range(accounts)]
        # Accounts with queued commands, in the order they became ready (a dict keeps
        # insertion order; a set would not), so no account can be starved.
        self._ready: dict[int, None] = {}
        self._wake = trio.Event()
        self._balances: list[int | None] = [None] * accounts  # None: not opened yet
        self._versions = [0] * accounts
        self.position = 0
        self.batches = 0
        self.batched_commands = 0

    async def send(self, account: int, command: Command) -> bool:
        """Return whether the command was accepted, once its event is committed.

        Cancelling this abandons the wait, not the command: it may still commit.
        """
        request = _Request(account, command)
        self._senders[account].send_nowait(request)
        self._ready[account] = None
        self._wake.set()
        await request.done.wait()
        return request.accepted

    async def run_writer(self) -> NoReturn:
        """Group-commit whatever is queued, forever; runs until its nursery is cancelled."""
        encode = msgspec.msgpack.Encoder().encode
        pack = _POSITION.pack
        while True:
            await self._wake.wait()
            # Swap the Event and the ready set before draining: a client that queues after
            # this point sets the *new* Event, so no command waits for a wake-up that passed.
            self._wake = trio.Event()
            ready, self._ready = self._ready, {}
            batch: list[_Request] = []
            for account in ready:
                receiver = self._receivers[account]
                while True:
                    try:
                        batch.append(receiver.receive_nowait())
                    except trio.WouldBlock:
                        break
            puts: list[tuple[bytes, bytes]] = []
            for request in batch:
                event = self._decide(request)
                if event is not None:
                    self.position += 1
                    puts.append((pack(self.position), encode(event)))
            if puts:
                # Inline on the event loop, not in a worker thread: on this 2-core machine
                # the thread hop costs more than it frees (DESIGN.md, "Concurrency").
                # State was already advanced by _decide; if this commit raises, the writer
                # dies, the nursery cancels every client, and no command is acknowledged.
                with self._env.begin(write=True) as txn:
                    for key, value in puts:
                        txn.put(key, value, append=True)
            for request in batch:
                request.done.set()
            self.batches += 1
            self.batched_commands += len(batch)

    def _decide(self, request: _Request) -> Event | None:
        """Apply the bank rules in memory; return the event, or None if rejected."""
        account = request.account
        balance = self._balances[account]
        command = request.command
        if isinstance(command, Open):
            if balance is not None:
                return None
            self._balances[account] = 0
            event: Event = Opened(self._names[account], 1)
        elif balance is None:
            return None
        elif isinstance(command, Deposit):
            self._balances[account] = balance + command.amount
            event = Deposited(self._names[account], self._versions[account] + 1, command.amount)
        else:
            if command.amount > balance:
                return None
            self._balances[account] = balance - command.amount
            event = Withdrawn(self._names[account], self._versions[account] + 1, command.amount)
        self._versions[account] += 1
        request.accepted = True
        return event


def _open_env(path: str, *, sync: bool) -> lmdb.Environment:
    """Open an empty LMDB environment at ``path`` (a directory, created if missing)."""
    env = lmdb.open(path, map_size=_MAP_SIZE, sync=sync, metasync=sync, max_dbs=0)
    if env.stat()["entries"]:
        env.close()
        raise ValueError(f"{path!r} already holds a log; the floor needs an empty directory")
    return env


async def _open_accounts(floor: _Floor, *, accounts: int, clients: int) -> None:
    """Open every account through the pipeline, then check that a second open is rejected."""

    async def client(indexes: Sequence[int]) -> None:
        for account in indexes:
            if not await floor.send(account, Open()):
                raise RuntimeError(f"opening account {account} was rejected")

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, range(i, accounts, clients))
    if await floor.send(0, Open()):
        raise RuntimeError("a second Open was accepted")


def _check_log(env: lmdb.Environment, floor: _Floor) -> None:
    """Fail loudly unless the log holds exactly one key per accepted event."""
    entries = env.stat()["entries"]
    if entries != floor.position:
        raise RuntimeError(f"log holds {entries} events, writer accepted {floor.position}")


async def run_floor_w1(
    path: str, *, accounts: int, commands: int, clients: int, sync: bool = True
) -> dict[str, Any]:
    """Run the bank write workload (W1) through the floor; return its figures.

    Opens ``accounts`` accounts first (timed separately as ``open_seconds``), then
    ``clients`` concurrent client tasks issue ``commands`` seeded random Deposit/Withdraw
    commands, each client waiting for one reply before sending its next command. Must run
    under trio. ``path`` must be an empty or missing directory. Cancelling it abandons the run
    and closes the environment; committed events stay committed.
    """
    if accounts < 1 or clients < 1:
        raise ValueError("the floor needs at least one account and one client")
    workload = bank_workload(accounts, commands)
    env = _open_env(path, sync=sync)
    try:
        floor = _Floor(env, accounts=accounts, in_flight=max(clients, 1))
        rejected = 0

        async def client(share: Sequence[tuple[int, Command]]) -> None:
            nonlocal rejected
            for account, command in share:
                if not await floor.send(account, command):
                    rejected += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(floor.run_writer)
            started = time.perf_counter()
            await _open_accounts(floor, accounts=accounts, clients=clients)
            open_seconds = time.perf_counter() - started
            batches_before, commands_before = floor.batches, floor.batched_commands

            started = time.perf_counter()
            async with trio.open_nursery() as load:
                for i in range(clients):
                    load.start_soon(client, workload[i::clients])
            seconds = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        _check_log(env, floor)
    finally:
        env.close()
    batches = floor.batches - batches_before
    return {
        "workload": "w1",
        "system": "floor",
        "sync": sync,
        "accounts": accounts,
        "clients": clients,
        "commands": commands,
        "rejected": rejected,
        "seconds": seconds,
        "per_second": commands / seconds,
        "batches": batches,
        "mean_batch": (floor.batched_commands - commands_before) / max(batches, 1),
        "open_seconds": open_seconds,
    }


async def run_floor_paced_latency(
    path: str,
    *,
    accounts: int,
    rate: float,
    duration_s: float,
    sync: bool = True,
    clients: int = 64,
) -> dict[str, Any]:
    """W2 through the floor with the engine's generator (``load.paced_load``), so the two
    latencies compare. Must run under trio; ``path`` must be empty or missing."""
    from .load import paced_load

    workload = bank_workload(accounts, max(clients, int(rate * duration_s)))
    env = _open_env(path, sync=sync)
    try:
        floor = _Floor(env, accounts=accounts, in_flight=max(clients, 64))

        async def send(item: tuple[int, Command]) -> None:
            await floor.send(item[0], item[1])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(floor.run_writer)
            await _open_accounts(floor, accounts=accounts, clients=min(64, clients))
            result = await paced_load(send, workload, rate=rate, clients=clients)
            nursery.cancel_scope.cancel()
        _check_log(env, floor)
    finally:
        env.close()
    return result
