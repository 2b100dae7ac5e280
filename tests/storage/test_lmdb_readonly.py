"""A read-only LMDB open beside the process that writes the log (``readonly=True``).

The writer runs in a child process (LMDB refuses two opens of one environment in one
process); the test reads while it writes: the head, whole-log reads, stream reads past
heads the writer keeps only in memory, command ids, a map the writer grew, appends refused,
and the writer's own lock still keeping a second writer out.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from actorlog import DefinitionError, StorageError, StorageLocked
from actorlog.storage import ANY, Append, AppendResult, LmdbEventLog

ROOT = Path(__file__).resolve().parent.parent.parent

# Appends ``n`` one-event appends round-robin to streams s0..s2 (every 7th with a command
# id), says "head N", then does the same again on each line read from stdin.
WRITER = """
import sys, msgspec
from actorlog.storage import Append, ANY, LmdbEventLog
log = LmdbEventLog(sys.argv[1], sync=False, map_size=1 << 20)
done = 0
def write(n):
    global done
    for _ in range(n):
        cid = f"c{done}" if done % 7 == 0 else None
        out, _ = log.append_batch(
            [Append(f"s{done % 3}", ANY, (("E", msgspec.msgpack.encode(done)),), command_id=cid)]
        )
        assert not isinstance(out[0], Exception), out
        done += 1
    print("head", log.head_position(), flush=True)
for line in sys.stdin:
    write(int(line))
log.close()
"""


class Writer:
    """The child process that owns the log."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def write(self, n: int) -> int:
        """Have it append ``n`` more events; its head once they are committed."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        word, head = self.proc.stdout.readline().split()
        assert word == "head"
        return int(head)

    def stop(self) -> None:
        """Let it close the log and exit."""
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path)
    try:
        w.write(1)  # the log exists once this returns
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.communicate()


def test_reader_follows_what_the_writer_commits(tmp_path: Path, writer: Writer) -> None:
    log = LmdbEventLog(tmp_path, readonly=True)
    try:
        assert log.readonly and log.others_append
        assert log.head_position() == 1
        assert log.stream_version("s0") == 1
        head = writer.write(299)
        assert head == 300
        # The writer keeps these heads in memory only: the reader rebuilds them itself.
        assert log.head_position() == 300
        assert log.stream_version("s2") == 100
        events = log.read_stream("s1")
        assert [e.version for e in events] == list(range(1, 101))
        assert [msgspec.msgpack.decode(e.payload) for e in events[:3]] == [1, 4, 7]
        everything = log.read_all(1, 1000)
        assert [e.position for e in everything] == list(range(1, 301))
        assert log.wait_for_head(299, 1.0) == 300
        assert log.wait_for_head(300, 0.01) == 300  # nothing new: the timeout
        # Command ids recorded after the reader opened are found (and absent ones are not).
        found = log.find_command("s0", "c294")
        assert isinstance(found, AppendResult) and found.first_position == 295
        assert log.find_command("s0", "c295") is None
    finally:
        log.close()


def test_reader_survives_the_writer_growing_the_map(tmp_path: Path, writer: Writer) -> None:
    log = LmdbEventLog(tmp_path, readonly=True, map_size=1 << 20)
    try:
        size = log.map_size
        head = writer.write(20_000)  # far past a 1 MiB map: the writer grows it
        assert log.head_position() == head
        assert log.map_size > size
        assert len(log.read_all(head - 10, 100)) == 11
        assert log.stream_version("s0") == (head + 2) // 3
    finally:
        log.close()


def test_reader_refuses_appends_and_takes_no_writer_lock(tmp_path: Path, writer: Writer) -> None:
    log = LmdbEventLog(tmp_path, readonly=True)
    try:
        outcomes, stored = log.append_batch([Append("x", ANY, (("E", b"\x01"),))])
        assert isinstance(outcomes[0], StorageError) and stored == []
        # The writer still holds the log alone: a second writer (here) is refused...
        with pytest.raises(StorageLocked):
            LmdbEventLog(tmp_path)
        # ...and keeps writing while the reader is open.
        assert writer.write(10) == 11
        assert log.head_position() == 11
    finally:
        log.close()
    with pytest.raises(StorageError, match="closed"):
        log.head_position()
    writer.stop()
    log = LmdbEventLog(tmp_path, readonly=True)  # no writer needed
    try:
        assert log.head_position() == 11
    finally:
        log.close()


def test_readonly_open_needs_an_existing_log(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no log"):
        LmdbEventLog(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()  # nothing created
    with pytest.raises(DefinitionError):
        LmdbEventLog(tmp_path, readonly=1)  # type: ignore[arg-type]
    writer_log = LmdbEventLog(tmp_path)
    try:
        # LMDB keeps one open of an environment per process: a reader lives elsewhere.
        with pytest.raises(StorageError):
            LmdbEventLog(tmp_path, readonly=True)
    finally:
        writer_log.close()
