"""The child of the crash-torture harness: bank load on a real LMDB log until SIGKILLed.

Run by ``tests/storage/torture.py``; it never exits on its own before ``--seconds`` (a guard
against an orphan outliving its parent). Every line it prints is one ``os.write`` of less
than ``PIPE_BUF`` bytes, so a kill never tears a line that reached the pipe:

    o                                     the engine is open (projectors start catching up)
    c                                     every projector caught up with the reopened log
    a <stream> <version> <position> <cmd>  a command was acknowledged (durable, says the
                                          engine); <cmd> is O:<owner>, D:<n>, W:<n> or
                                          S:<n>,<n>,... (one Deposited per amount)
    e <message>                           an error no client should ever see

A line is printed only after ``send`` returned, so the parent's list of acknowledgements
is a subset of what the engine promised to keep.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

import msgspec
import trio
import trio.lowlevel

from actorlog import Committed, Engine, Overloaded, Rejected, handles
from actorlog.storage import LmdbEventLog
from benchmarks.bank import (
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    SnapshottingAccount,
    Totals,
    Withdraw,
)

__all__ = ["DepositSplit", "TortureAccount", "main"]


class DepositSplit(msgspec.Struct, frozen=True):
    """Deposit several amounts at once: one Deposited per amount, all or nothing."""

    amounts: tuple[int, ...]


class TortureAccount(SnapshottingAccount):
    """The bank account, snapshotted every few events so kills land among snapshot writes,
    with a multi-event command so a kill can land inside a multi-event append."""

    snapshot_every = 4

    @handles
    def deposit_split(self, c: DepositSplit) -> list[Deposited]:
        if not c.amounts or any(a <= 0 for a in c.amounts):
            raise Rejected("amounts must be positive")
        return [Deposited(a) for a in c.amounts]


def _out(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _describe(command: object) -> str:
    if isinstance(command, OpenAccount):
        return f"O:{command.owner}"
    if isinstance(command, Deposit):
        return f"D:{command.amount}"
    if isinstance(command, Withdraw):
        return f"W:{command.amount}"
    if isinstance(command, DepositSplit):
        return "S:" + ",".join(map(str, command.amounts))
    raise TypeError(command)


def _command(rng: random.Random, client: int) -> object:
    roll = rng.random()
    if roll < 0.08:
        return OpenAccount(f"owner{client}")
    if roll < 0.55:
        return Deposit(rng.randint(1, 100))
    if roll < 0.90:
        return Withdraw(rng.randint(1, 120))
    return DepositSplit(tuple(rng.randint(1, 50) for _ in range(rng.randint(2, 5))))


async def _client(engine: Engine, rng: random.Random, client: int, accounts: int) -> None:
    nowait = client % 4 == 3  # a quarter of the clients use send_nowait
    while True:
        # One hot account takes a fifth of the traffic, so its mailbox fills and commands
        # pipeline through the group commit; the rest spread over every account.
        n = 0 if rng.random() < 0.2 else rng.randrange(accounts)
        stream = f"acct-{n}"
        command = _command(rng, client)
        try:
            if nowait:
                try:
                    pending = engine.send_nowait(TortureAccount, stream, command)
                except Overloaded:
                    await trio.lowlevel.checkpoint()
                    continue
                ack: Committed = await pending
            else:
                ack = await engine.send(TortureAccount, stream, command)
        except Rejected:
            continue
        except Exception as e:
            _out(f"e {type(e).__name__}: {e!r}".replace("\n", " ")[:3000])
            continue
        _out(f"a {ack.stream_id} {ack.version} {ack.position} {_describe(command)}")
        if rng.random() < 0.02:
            # Read-your-writes while the log is being written: must never hang or fail.
            await engine.query(Balances.balance, stream, after=ack.position)


class _LyingEnv:
    """An LMDB environment whose every ``lie_every``-th write transaction is silently
    aborted instead of committed: a broken storage layer that the parent's audit must catch
    (``--lie``, used only by the harness's self-test)."""

    def __init__(self, env: Any, lie_every: int) -> None:
        self._env = env
        self._lie_every = lie_every
        self._writes = 0

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self._env.begin(*args, **kwargs)
        if not kwargs.get("write"):
            return txn
        self._writes += 1
        return _LyingTxn(txn) if self._writes % self._lie_every == 0 else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


class _LyingTxn:
    def __init__(self, txn: Any) -> None:
        self._txn = txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)

    def __enter__(self) -> Any:
        return self._txn

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()


async def _run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    log = LmdbEventLog(args.path, sync=True, map_size=args.map_size)
    if args.lie:
        log._env = _LyingEnv(log._env, args.lie)  # type: ignore[assignment]
    with trio.move_on_after(args.seconds):
        async with Engine.open(
            log=log,
            aggregates=[TortureAccount],
            projectors=[Balances, Totals],
            mailbox_size=args.mailbox_size,
        ) as engine:
            _out("o")
            async with trio.open_nursery() as nursery:
                for client in range(args.clients):
                    nursery.start_soon(
                        _client, engine, random.Random(rng.random()), client, args.accounts
                    )
                await engine.wait_projected()
                _out("c")


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the load until killed (or ``--seconds`` pass)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--map-size", type=int, default=64 << 20)
    parser.add_argument("--mailbox-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--lie", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    trio.run(_run, args)
    sys.exit(0)


if __name__ == "__main__":
    main()
