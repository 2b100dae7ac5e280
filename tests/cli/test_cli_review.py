"""``actorlog import`` refuses an export that is not whole (review of issue 17, part 1): a
file cut at a record boundary, or edited so that a stream's versions do not run on, must
not import quietly or put events at other positions."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actorlog import EngineError
from actorlog._cli._transfer import APPEND_EVENTS, ExportedEvent, import_log
from actorlog.storage import Append, LmdbEventLog, MemoryEventLog

from .test_cli import all_events, bank_log, run

__all__ = ["bank_log"]  # the fixture, used by name


def _cut_jsonl(dump: Path, events: int) -> None:
    lines = dump.read_bytes().splitlines(keepends=True)
    dump.write_bytes(b"".join(lines[: 1 + events]))


def _cut_msgpack(dump: Path, events: int) -> None:
    data, at = dump.read_bytes(), 0
    for _ in range(1 + events):
        at += 4 + int.from_bytes(data[at : at + 4], "little")
    dump.write_bytes(data[:at])


@pytest.mark.parametrize("suffix", ["jsonl", "msgpack"])
def test_an_export_cut_at_a_record_boundary_is_refused(
    bank_log: Path, tmp_path: Path, suffix: str
) -> None:
    dump = tmp_path / f"bank.{suffix}"
    run("export", str(bank_log), str(dump))
    (_cut_jsonl if suffix == "jsonl" else _cut_msgpack)(dump, 5)
    result = run("import", str(dump), str(tmp_path / "copy"), code=2)
    assert "12" in result.stderr and "5" in result.stderr, result.stderr


def test_an_export_whose_versions_do_not_run_on_is_refused_before_appending(
    bank_log: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "bank.jsonl"
    run("export", str(bank_log), str(dump))
    records = [json.loads(line) for line in dump.read_bytes().splitlines()]
    records[7]["version"] += 5  # an event of a stream, moved up by hand
    dump.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    result = run("import", str(dump), str(tmp_path / "copy"), code=2)
    assert "version" in result.stderr, result.stderr
    # Refused before its group was appended: no event lands at another position.
    copy = tmp_path / "copy"
    assert not (copy / "actorlog.data").exists() or all_events(copy) == []


class CountingLog(MemoryEventLog):
    """A memory log that remembers how many events each append of its batches held."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []

    def append_batch(self, appends: Sequence[Append], **options: Any) -> Any:
        self.appends.extend(len(a.events) for a in appends)
        return super().append_batch(appends, **options)


def test_an_import_streams_a_long_stream_written_without_command_ids() -> None:
    """A stream of many commands without metadata is not one append of all its events
    (held in memory at once, one transaction): it is cut, as the export streams."""
    events = 3 * APPEND_EVENTS
    exported = (
        ExportedEvent(n, "hot", n, "Deposited", 0.0, msgspec.msgpack.encode({"amount": n}))
        for n in range(1, events + 1)
    )
    log = CountingLog()
    assert import_log(log, exported, head=events) == events
    assert sum(log.appends) == events
    assert max(log.appends) <= APPEND_EVENTS, max(log.appends)
    assert [e.version for e in log.read_stream("hot")] == list(range(1, events + 1))


@pytest.mark.parametrize(
    "args",
    [
        ["events", "{log}", "--from", str(2**64)],
        ["events", "{log}", "--limit", str(2**64)],
        ["stream", "{log}", "acct-1", "--from-version", str(2**64)],
        ["stream", "{log}", "acct-1", "--limit", str(2**64)],
        ["tail", "{log}", "--from", str(2**64), "--count", "1"],
        ["tail", "{log}", "--poll", "-1", "--count", "1"],
        ["tail", "{log}", "--poll", "nan", "--count", "1"],
        ["export", "{log}", "{tmp}/no-such-directory/out.jsonl"],
        ["import", "{tmp}/no-such-file.jsonl", "{tmp}/new"],
    ],
    ids=[
        "events_from_huge",
        "events_limit_huge",
        "stream_from_version_huge",
        "stream_limit_huge",
        "tail_from_huge",
        "tail_poll_negative",
        "tail_poll_nan",
        "export_into_a_missing_directory",
        "import_a_missing_file",
    ],
)
def test_bad_arguments_are_a_clear_error_not_a_traceback(
    bank_log: Path, tmp_path: Path, args: list[str]
) -> None:
    """Exit status 2 with an ``Error:`` line, as for any usage error: never an uncaught
    exception (``run`` does not catch them)."""
    filled = [a.format(log=bank_log, tmp=tmp_path) for a in args]
    result = run(*filled, code=2)
    assert "Error" in result.stderr, result.stderr


def test_lmdb_read_all_beyond_64_bits_is_empty_or_a_typed_error(tmp_path: Path) -> None:
    log = LmdbEventLog(tmp_path / "log")
    try:
        with contextlib.suppress(EngineError):  # a typed refusal is as good as []
            assert log.read_all(2**64, 1) == []
    finally:
        log.close()
