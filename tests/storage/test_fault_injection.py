"""No raw error escapes: storage faults injected under a real LMDB log, and entries corrupted
by hand, reach callers as typed engine errors; nothing partial is written; the engine
carries on once the fault clears.

Faults are injected by wrapping the log's LMDB environment (``LmdbEventLog._env``): py-lmdb's
``Transaction`` is a C type whose methods cannot be patched. The wrapper forwards to the real
environment and, when told, aborts the real transaction and raises the chosen ``lmdb``
error, which is exactly what a failing ``mdb_txn_commit`` leaves behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio

from actorlog import DecodeError, Engine, EngineError, ProjectorFaulted, StorageError, StorageFull
from actorlog.engine._checksum import TRAILER, seal
from actorlog.storage import LmdbEventLog
from benchmarks.bank import Balances, Deposit, InsufficientFunds, OpenAccount, Totals, Withdraw
from benchmarks.bank import SnapshottingAccount as Account


class Faults:
    """What the next LMDB calls should do; each fault is one-shot unless ``sticky``."""

    def __init__(self) -> None:
        self.commit: Exception | None = None
        self.put_after: int | None = None  # raise on the put after this many puts
        self.read: Exception | None = None
        self.grow: Exception | None = None
        self.sticky = False
        self.injected = 0

    def take(self, name: str) -> Exception | None:
        error: Exception | None = getattr(self, name)
        if error is not None:
            self.injected += 1
            if not self.sticky:
                setattr(self, name, None)
        return error


class FaultyTxn:
    """A real write transaction whose puts or commit can be made to fail."""

    def __init__(self, txn: Any, faults: Faults) -> None:
        self._txn = txn
        self._faults = faults
        self._puts = 0

    def put(self, *args: Any, **kwargs: Any) -> bool:
        faults = self._faults
        if faults.put_after is not None and self._puts >= faults.put_after:
            if not faults.sticky:
                faults.put_after = None
            faults.injected += 1
            raise lmdb.BadValsizeError("injected: put failed")
        self._puts += 1
        return bool(self._txn.put(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)

    def __enter__(self) -> FaultyTxn:
        return self

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if error is not None:
            self._txn.abort()
            return
        injected = self._faults.take("commit")
        if injected is not None:
            self._txn.abort()  # what LMDB does when mdb_txn_commit fails
            raise injected
        self._txn.commit()


class FaultyEnv:
    """The log's real environment, with faults on begin (reads), commit, put and growth."""

    def __init__(self, env: Any, faults: Faults) -> None:
        self._env = env
        self._faults = faults

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        write = kwargs.get("write", False)
        if not write:
            injected = self._faults.take("read")
            if injected is not None:
                raise injected
        txn = self._env.begin(*args, **kwargs)
        return FaultyTxn(txn, self._faults) if write else txn

    def set_mapsize(self, size: int) -> None:
        injected = self._faults.take("grow")
        if injected is not None:
            raise injected
        self._env.set_mapsize(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _faulty_log(path: Path, **kwargs: Any) -> tuple[LmdbEventLog, Faults]:
    log = LmdbEventLog(path, **kwargs)
    faults = Faults()
    log._env = FaultyEnv(log._env, faults)  # type: ignore[assignment]
    return log, faults


def _open(log: LmdbEventLog) -> Any:
    return Engine.open(log=log, aggregates=[Account], projectors=[Balances, Totals])


async def _balance_is(engine: Engine, stream_id: str, balance: int) -> None:
    """The live aggregate holds exactly ``balance``: one more is refused, all of it is not."""
    with pytest.raises(InsufficientFunds):
        await engine.send(Account, stream_id, Withdraw(balance + 1))
    await engine.send(Account, stream_id, Withdraw(balance))
    await engine.send(Account, stream_id, Deposit(balance))


COMMIT_ERRORS = [
    lmdb.Error("injected"),
    lmdb.DiskError("injected: EIO"),
    lmdb.CorruptedError("injected"),
    lmdb.PanicError("injected"),
    lmdb.TlsFullError("injected"),
    lmdb.BadTxnError("injected"),
]


@pytest.mark.parametrize("fault", COMMIT_ERRORS, ids=lambda e: type(e).__name__)
async def test_a_failed_commit_is_a_storage_error_caused_by_the_lmdb_error(
    tmp_path: Path, fault: lmdb.Error
) -> None:
    log, faults = _faulty_log(tmp_path)
    async with _open(log) as engine:
        await engine.send(Account, "acct-1", Deposit(10))
        head = log.head_position()
        faults.commit = fault
        # Several senders, some on one account (pipelined), all in the failing group.
        errors: list[BaseException] = []

        async def send(stream_id: str, amount: int) -> None:
            try:
                await engine.send(Account, stream_id, Deposit(amount))
            except EngineError as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(send, f"acct-{i % 2}", i + 1)
        assert faults.injected == 1
        assert len(errors) == 6
        for e in errors:
            assert type(e) is StorageError
            assert e.__cause__ is fault
        assert log.head_position() == head
        assert log.read_all(head + 1) == []

        # The fault cleared: the same aggregates take commands, reloaded from the log.
        reloads = engine.statistics().aggregates.reloads
        await _balance_is(engine, "acct-1", 10)
        await engine.send(Account, "acct-0", Deposit(3))
        assert engine.statistics().aggregates.reloads > reloads
        await engine.wait_projected()
        assert await engine.query(Balances.all_balances) == {"acct-1": 10, "acct-0": 3}


async def test_a_put_failing_mid_group_writes_nothing_of_the_group(tmp_path: Path) -> None:
    log, faults = _faulty_log(tmp_path)
    async with _open(log) as engine:
        await engine.send(Account, "acct-1", OpenAccount("ann"))
        faults.put_after = 3  # the group's fourth put fails: three are already in the txn
        errors: list[BaseException] = []

        async def send(i: int) -> None:
            try:
                await engine.send(Account, f"acct-{i}", Deposit(i + 1))
            except StorageError as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(send, i)
        assert len(errors) == 5
        assert all(isinstance(e.__cause__, lmdb.BadValsizeError) for e in errors)
        assert log.head_position() == 1
        assert [e.type for e in log.read_all()] == ["AccountOpened"]
        for i in range(5):
            await engine.send(Account, f"acct-{i}", Deposit(i + 1))
        assert log.head_position() == 6


async def test_a_transient_map_full_grows_the_map_and_the_command_succeeds(
    tmp_path: Path,
) -> None:
    log, faults = _faulty_log(tmp_path, map_size=1 << 20)
    async with _open(log) as engine:
        faults.commit = lmdb.MapFullError("injected")
        ack = await engine.send(Account, "acct-1", Deposit(5))
        assert faults.injected == 1
        assert ack.position == 1
        assert log.map_size == 2 << 20


async def test_map_full_at_the_cap_is_storage_full_caused_by_map_full(tmp_path: Path) -> None:
    log, faults = _faulty_log(tmp_path, map_size=1 << 20, max_map_size=1 << 20)
    async with _open(log) as engine:
        faults.commit = error = lmdb.MapFullError("injected")
        with pytest.raises(StorageFull) as caught:
            await engine.send(Account, "acct-1", Deposit(5))
        assert caught.value.__cause__ is error
        assert log.head_position() == 0
        await engine.send(Account, "acct-1", Deposit(5))


async def test_a_map_that_cannot_grow_is_a_storage_error(tmp_path: Path) -> None:
    log, faults = _faulty_log(tmp_path, map_size=1 << 20)
    async with _open(log) as engine:
        faults.commit = lmdb.MapFullError("injected")
        faults.grow = grow = lmdb.Error("injected: mmap failed")
        with pytest.raises(StorageError) as caught:
            await engine.send(Account, "acct-1", Deposit(5))
        assert caught.value.__cause__ is grow
        assert log.head_position() == 0
        await engine.send(Account, "acct-1", Deposit(5))
        assert log.head_position() == 1


async def test_a_failing_read_while_activating_an_aggregate_is_a_storage_error(
    tmp_path: Path,
) -> None:
    log, faults = _faulty_log(tmp_path)
    async with _open(log) as engine:
        await engine.wait_projected()
        faults.read = error = lmdb.ReadersFullError("injected")
        with pytest.raises(StorageError) as caught:
            await engine.send(Account, "acct-new", Deposit(5))
        assert caught.value.__cause__ is error
        assert log.head_position() == 0
        ack = await engine.send(Account, "acct-new", Deposit(5))
        assert ack.version == 1


async def test_a_failing_read_during_catch_up_faults_the_projector_until_resumed(
    tmp_path: Path,
) -> None:
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        for i in range(20):
            await engine.send(Account, f"acct-{i % 3}", Deposit(1))
    log, faults = _faulty_log(tmp_path)
    faults.read = error = lmdb.Error("injected: read failed")
    faults.sticky = True
    async with _open(log) as engine:
        with pytest.raises(ProjectorFaulted) as caught:
            await engine.wait_projected()
        cause = caught.value.__cause__
        assert isinstance(cause, StorageError) and cause.__cause__ is error
        for query in (Balances.all_balances, Totals.net):
            with pytest.raises(ProjectorFaulted):
                await engine.query(query)
        faults.read = None
        engine.resume(Balances)
        engine.resume(Totals)
        await engine.wait_projected()
        assert await engine.query(Totals.net) == 20


# -- corrupt entries, written by hand ---------------------------------------------------


def _databases(env: Any) -> Iterator[Any]:
    """Every named database of an environment (their names are the main database's keys)."""
    with env.begin() as txn:
        names = [key for key, _ in txn.cursor()]
    for name in names:
        yield env.open_db(name, create=False)


def _rewrite(path: Path, marker: bytes, rewrite: Any) -> int:
    """Replace every value holding ``marker`` with ``rewrite(value)``; how many there were.

    It finds the entries by content, not by key layout, so it holds whatever the layout.
    """
    env = lmdb.open(str(path), max_dbs=16)
    count = 0
    try:
        for db in _databases(env):
            with env.begin(write=True, db=db) as txn:
                for key, value in list(txn.cursor()):
                    if marker in value:
                        txn.put(key, rewrite(value))
                        count += 1
    finally:
        env.close()
    return count


async def _log_with_marked_event(path: Path) -> None:
    async with Engine.open(path, aggregates=[Account]) as engine:
        await engine.send(Account, "acct-good", Deposit(1))
        await engine.send(Account, "acct-bad", OpenAccount("MARKER-owner-MARKER"))
        await engine.send(Account, "acct-bad", Deposit(7))
        await engine.send(Account, "acct-good", Deposit(2))


async def _errors_on_reopen(path: Path) -> tuple[EngineError, ProjectorFaulted]:
    """What sending to the corrupt stream and waiting for the projectors raise."""
    async with _open(LmdbEventLog(path)) as engine:
        with pytest.raises(EngineError) as sent:
            await engine.send(Account, "acct-bad", Deposit(1))
        with pytest.raises(ProjectorFaulted) as projected:
            await engine.wait_projected()
        # The corruption stays contained: other streams still work.
        await engine.send(Account, "acct-good", Deposit(4))
        assert engine.log.stream_version("acct-good") == 3
    return sent.value, projected.value


async def test_a_truncated_log_entry_is_a_storage_error(tmp_path: Path) -> None:
    await _log_with_marked_event(tmp_path)
    assert _rewrite(tmp_path, b"MARKER-owner", lambda v: v[: v.index(b"MARKER-owner") + 3]) == 1
    sent, projected = await _errors_on_reopen(tmp_path)
    assert isinstance(sent, StorageError)
    assert isinstance(projected.__cause__, StorageError)


async def test_a_truncated_log_entry_halts_the_projector_exactly_there(tmp_path: Path) -> None:
    await _log_with_marked_event(tmp_path)
    assert _rewrite(tmp_path, b"MARKER-owner", lambda v: v[: v.index(b"MARKER-owner") + 3]) == 1
    _, projected = await _errors_on_reopen(tmp_path)
    assert projected.position == 2


async def test_a_corrupt_payload_is_a_typed_error_and_halts_the_projector_there(
    tmp_path: Path,
) -> None:
    await _log_with_marked_event(tmp_path)
    # A payload that is valid msgpack of the wrong shape: bytes where a str is due.
    assert _rewrite(tmp_path, b"MARKER-owner", _owner_becomes_int) == 1
    sent, projected = await _errors_on_reopen(tmp_path)
    assert isinstance(sent, DecodeError)
    assert sent.__cause__ is not None
    assert projected.__cause__ is not None
    assert projected.position == 2


def _owner_becomes_int(value: bytes) -> bytes:
    """Swap the 19-char owner (a fixstr: 1 header byte + 19) for a 20-byte msgpack bin."""
    at = value.index(b"MARKER-owner-MARKER")
    # Resealed: the entry checks, as one a buggy writer stored would; its payload does not.
    return seal(value[: at - 1] + b"\xc4\x12" + b"\x00" * 18 + value[at + 19 : -TRAILER])


async def test_invalid_utf8_in_a_stored_envelope_is_a_storage_error(tmp_path: Path) -> None:
    await _log_with_marked_event(tmp_path)
    # The stream id sits in the envelope; make its bytes invalid UTF-8 (same length), and
    # reseal the entry, so that the envelope itself, not its checksum, is what fails.
    events_with_id = _rewrite(
        tmp_path,
        b"acct-bad",
        lambda v: seal(v[:-TRAILER].replace(b"acct-bad", b"\xff" * 8)) if len(v) > 20 else v,
    )
    assert events_with_id >= 2
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        log = engine.log
        assert [e.position for e in log.read_all()] == [1]  # the readable prefix
        with pytest.raises(StorageError, match="position 2") as caught:
            log.read_all(2)
        assert isinstance(caught.value.__cause__, DecodeError)
        with pytest.raises(StorageError):
            await engine.send(Account, "acct-bad", Deposit(1))
        await engine.send(Account, "acct-good", Deposit(1))


async def test_a_corrupt_snapshot_is_ignored_and_the_events_replayed(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        for _ in range(Account.snapshot_every or 0):
            await engine.send(Account, "acct-1", Deposit(1))
    env = lmdb.open(str(tmp_path), max_dbs=16)
    try:
        snapshots = env.open_db(b"snapshots", create=False)
        with env.begin(write=True, db=snapshots) as txn:
            assert txn.get(b"acct-1") is not None
            txn.put(b"acct-1", b"\xc1 not a snapshot")
    finally:
        env.close()
    error: BaseException | None = None
    async with Engine.open(tmp_path, aggregates=[Account]) as engine:
        try:
            await _balance_is(engine, "acct-1", Account.snapshot_every or 0)
        except EngineError as e:
            error = e
    assert error is None, repr(error)
