"""The ``actorlog`` command against real logs: a closed LMDB log, a damaged one, one that
another process is writing to, and PostgreSQL for export/import.

Commands on closed logs run in this process (click's runner); the live log's writer is a
child process (LMDB allows one open of an environment per process), and there the command
runs as the console script would, a process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import psycopg
import pytest
import trio
from click.testing import CliRunner, Result

from actorlog import Engine
from actorlog._cli._commands import cli
from actorlog.storage import LmdbEventLog, StoredEvent
from benchmarks.bank import Account, Balances, Deposit, OpenAccount, Withdraw
from tests.support import Postgres

ROOT = Path(__file__).parent.parent.parent


class SavedBalances(Balances):
    name = "Balances"
    snapshot_every = 5
    by_account: dict[str, int]


async def write_bank(path: Path) -> None:
    async with Engine.open(path, aggregates=[Account], projectors=[SavedBalances]) as e:
        await e.send(Account, "acct-1", OpenAccount("ada"))
        await e.send(Account, "acct-1", Deposit(100), command_id="c-1", principal="ada")
        await e.send(Account, "acct-2", OpenAccount("bob"), headers=(("tenant", "t1"),))
        await e.send(Account, "acct-1", Withdraw(30))
        for amount in range(1, 9):
            await e.send(Account, f"acct-{amount % 2 + 1}", Deposit(amount))
        await e.wait_projected()  # the cache saved at close then holds the whole log


@pytest.fixture
def bank_log(tmp_path: Path) -> Path:
    """A closed LMDB bank log of 12 events in 2 streams, with a saved projector cache."""
    path = tmp_path / "bank"
    trio.run(write_bank, path)
    return path


def runner() -> CliRunner:
    """A runner that keeps stderr apart: click < 8.2 needs ``mix_stderr=False`` for that
    (8.2 always keeps it apart, and dropped the option)."""
    separate: dict[str, Any] = {"mix_stderr": False}
    try:
        return CliRunner(**separate)
    except TypeError:
        return CliRunner()


def run(*args: str, code: int = 0) -> Result:
    result = runner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


def json_lines(result: Result) -> list[Any]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def all_events(path: Path) -> list[StoredEvent]:
    log = LmdbEventLog(path)
    try:
        return log.read_all(1, 1_000_000)
    finally:
        log.close()


def test_info(bank_log: Path) -> None:
    (facts,) = json_lines(run("info", str(bank_log), "--json"))
    assert facts["head"] == 12
    assert facts["streams"] == 2
    assert facts["backend"] == "lmdb"
    assert facts["layout"].startswith("actorlog-")
    assert 0 < facts["map_used"] < 1
    (cache,) = facts["projector_caches"]
    assert (cache["name"], cache["position"], cache["format"]) == ("Balances", 12, 1)
    assert cache["bytes"] > 0
    text = run("info", str(bank_log)).stdout
    assert "Balances at 12" in text and "head" in text


def test_events_and_stream_decode_envelope_metadata_and_payload(bank_log: Path) -> None:
    events = json_lines(run("events", str(bank_log), "--from", "2", "--limit", "3", "--json"))
    assert [e["position"] for e in events] == [2, 3, 4]
    assert events[0] | {"timestamp": 0} == {
        "position": 2,
        "stream_id": "acct-1",
        "version": 2,
        "type": "Deposited",
        "type_version": 1,
        "timestamp": 0,
        "command_id": "c-1",
        "principal": "ada",
        "data": {"amount": 100},
    }
    assert events[1]["headers"] == [["tenant", "t1"]]
    assert events[1]["aggregate"] == "Account"
    stream = json_lines(run("stream", str(bank_log), "acct-2", "--json"))
    assert [e["version"] for e in stream] == list(range(1, 6))
    assert {e["stream_id"] for e in stream} == {"acct-2"}
    text = run("stream", str(bank_log), "acct-1", "--limit", "2").stdout
    assert "AccountOpened" in text and '{"owner":"ada"}' in text and "command_id=c-1" in text
    assert run("events", str(bank_log), "--from", "13").stdout == ""


def test_tail_from_a_position(bank_log: Path) -> None:
    events = json_lines(run("tail", str(bank_log), "--from", "10", "--count", "3", "--json"))
    assert [e["position"] for e in events] == [10, 11, 12]


def test_verify_a_sound_log(bank_log: Path) -> None:
    assert "ok: 12 events in 2 streams" in run("verify", str(bank_log)).stdout
    (summary,) = json_lines(run("verify", str(bank_log), "--json"))
    assert summary == {"ok": True, "head": 12, "events": 12, "streams": 2, "damage": []}


def flip_last_byte(path: Path, position: int) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(b"events", create=False)) as txn:
            key = position.to_bytes(8, "big")
            value = txn.get(key)
            assert value is not None
            assert txn.put(key, value[:-1] + bytes([value[-1] ^ 1]))
    finally:
        env.close()


def test_verify_reports_every_damaged_entry_and_fails(bank_log: Path) -> None:
    flip_last_byte(bank_log, 5)
    flip_last_byte(bank_log, 9)
    (summary,) = json_lines(run("verify", str(bank_log), "--json", code=1))
    assert summary["ok"] is False
    assert [d["position"] for d in summary["damage"] if d["position"] is not None] == [5, 9]
    result = run("verify", str(bank_log), code=1)
    assert "damaged position 5" in result.stderr
    assert "damaged position 9" in result.stderr
    assert "damaged" in result.stdout


def test_a_directory_without_a_log_is_refused(tmp_path: Path) -> None:
    result = run("info", str(tmp_path / "nothing"), code=2)
    assert "not a log directory" in result.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("suffix", ["jsonl", "msgpack"])
def test_export_then_import_gives_the_same_log(bank_log: Path, tmp_path: Path, suffix: str) -> None:
    dump = tmp_path / f"bank.{suffix}"
    run("export", str(bank_log), str(dump))
    run("import", str(dump), str(tmp_path / "copy"))
    assert_same_events(all_events(bank_log), all_events(tmp_path / "copy"))
    run("verify", str(tmp_path / "copy"))
    # Into a log that is not empty: refused, nothing appended.
    result = run("import", str(dump), str(tmp_path / "copy"), code=2)
    assert "not empty" in result.stderr
    assert len(all_events(tmp_path / "copy")) == 12


def assert_same_events(a: list[StoredEvent], b: list[StoredEvent]) -> None:
    """Equal in everything but the timestamps (an import stamps its own)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.position, x.stream_id, x.version, x.type, bytes(x.payload)) == (
            y.position,
            y.stream_id,
            y.version,
            y.type,
            bytes(y.payload),
        )
        assert (x.command_id, x.principal, x.headers, x.aggregate) == (
            y.command_id,
            y.principal,
            y.headers,
            y.aggregate,
        )
        assert (x.correlation_id, x.causation_id) == (y.correlation_id, y.causation_id)


def test_lmdb_to_postgres_and_back(bank_log: Path, tmp_path: Path, postgres: Postgres) -> None:
    schema = postgres.schema()
    run("export", str(bank_log), str(tmp_path / "a.jsonl"))
    run("import", str(tmp_path / "a.jsonl"), postgres.url, "--schema", schema)
    (facts,) = json_lines(run("info", postgres.url, "--schema", schema, "--json"))
    assert (facts["backend"], facts["head"], facts["streams"]) == ("postgresql", 12, 2)
    run("verify", postgres.url, "--schema", schema)
    pg_events = json_lines(run("events", postgres.url, "--schema", schema, "--json"))
    assert [e["data"] for e in pg_events] == [
        e["data"] for e in json_lines(run("events", str(bank_log), "--json"))
    ]
    run("export", postgres.url, str(tmp_path / "b.msgpack"), "--schema", schema)
    run("import", str(tmp_path / "b.msgpack"), str(tmp_path / "back"))
    assert_same_events(all_events(bank_log), all_events(tmp_path / "back"))


class Writer:
    """The writing child and the acknowledgements it printed (read by a thread, so that
    its pipe never fills and stalls it)."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        self.child = child
        self.acks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            self.acks.append(line)

    def kill(self) -> None:
        self.child.send_signal(signal.SIGKILL)
        self.child.wait(timeout=30)
        self._reader.join(timeout=30)


def test_a_schema_without_a_log_is_refused_not_created(postgres: Postgres) -> None:
    schema = postgres.schema()
    result = run("info", postgres.url, "--schema", schema, code=2)
    assert "holds no actorlog log" in result.stderr
    run("verify", postgres.url, "--schema", schema, code=2)
    with psycopg.connect(postgres.url) as conn:
        row = conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()
    assert row == (None,)


@pytest.fixture
def live_log(tmp_path: Path) -> Iterator[tuple[Path, Writer]]:
    """An LMDB log another process is appending to (4 streams, ~1-3 events an append)."""
    path = tmp_path / "live"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_writer_child", str(path), "4", "7"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        for _ in range(200):  # a few hundred events in before the commands look
            child.stdout.readline()
        writer = Writer(child)
        yield path, writer
        writer.kill()
    finally:
        child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


def actorlog(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a process of its own (``python -m actorlog``: the console script's
    entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "actorlog", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_commands_read_a_log_another_process_is_writing(
    live_log: tuple[Path, Writer], tmp_path: Path
) -> None:
    path, writer = live_log
    info = actorlog("info", str(path), "--json")
    assert info.returncode == 0, info.stderr
    head = json.loads(info.stdout)["head"]
    assert head >= 200 and json.loads(info.stdout)["streams"] == 4
    # In this process too (the test never opens the log itself: one open per process).
    first = json_lines(run("events", str(path), "--from", "1", "--limit", "50", "--json"))
    assert [e["position"] for e in first] == list(range(1, 51))
    (stream_id,) = {first[0]["stream_id"]}
    versions = [e["version"] for e in json_lines(run("stream", str(path), stream_id, "--json"))]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 10
    # Events committed after the command started are followed live.
    tail = actorlog("tail", str(path), "--count", "20", "--json")
    assert tail.returncode == 0, tail.stderr
    followed = [json.loads(line)["position"] for line in tail.stdout.splitlines()]
    assert len(followed) == 20 and followed[0] > head
    assert followed == list(range(followed[0], followed[0] + 20))
    verify = actorlog("verify", str(path), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
    exported = actorlog("export", str(path), str(tmp_path / "live.jsonl"))
    assert exported.returncode == 0, exported.stderr
    # The writer was never blocked: it still appends after all of that.
    acked = len(writer.acks)
    assert writer.child.poll() is None
    tail = actorlog("tail", str(path), "--count", "5")
    assert tail.returncode == 0, tail.stderr
    assert len(writer.acks) > acked
    writer.kill()
    # The export is a consistent prefix of the log: the very events at those positions.
    lines = (tmp_path / "live.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert len(records) == header["head"] >= head
    events = all_events(path)
    assert [(r["position"], r["stream_id"], r["version"]) for r in records] == [
        (e.position, e.stream_id, e.version) for e in events[: len(records)]
    ]


def test_bench_runs_the_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")  # the harness's progress bar (the bench extra)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bench.jsonl"
    run("bench", "--quick", "--only", "W5", "--no-peer", "--json", str(out))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["workload"], row["quick"]) == ("W5", True)
    assert row["value"] > 0
