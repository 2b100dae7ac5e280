"""Review 13: LMDB reader processes beside a writer (issue 15, part 5), attacked through map
growth, kills, late/early readers, after= beyond or racing the head, and the promise that a
reader writes nothing to the log's data file. Real processes, real LMDB
(``review13_child.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from actorlog.storage import LmdbEventLog
from benchmarks._child import Child

KIB = 1 << 10


class Proc(Child):
    def __init__(
        self, path: Path, role: str, map_size: int, backend: str = "trio", snap: int = 0
    ) -> None:
        argv = [str(path), role, str(map_size), backend, str(snap)]
        super().__init__("tests.nodes.review13_child", *argv)
        try:
            self.ready = self.hear()
        except BaseException:
            self.close()
            raise

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        self.tell({"op": op, **args})
        return self.hear()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def positions_in(path: Path) -> list[int]:
    log = LmdbEventLog(path, readonly=True)
    try:
        out: list[int] = []
        position = 1
        while batch := log.read_all(position, 4096):
            out += [e.position for e in batch]
            position = batch[-1].position + 1
        return out
    finally:
        log.close()


def test_readers_follow_while_the_writer_grows_a_tiny_map(tmp_path: Path) -> None:
    """A 64 KiB map doubled many times while 3 readers (opened on the small map) follow:
    each sees every event once, in order, and answers after= the writer's acks."""
    procs: list[Proc] = []
    try:
        writer = Proc(tmp_path, "writer", 64 * KIB)
        procs.append(writer)
        first = writer.ask("write", n=5, pad=10, concurrency=1)
        readers = [
            Proc(tmp_path, "reader", 64 * KIB, backend) for backend in ("trio", "asyncio", "trio")
        ]
        procs += readers
        assert all(r.ask("seen", after=first["position"], timeout=5)["exact"] for r in readers)
        sizes = [first["map"]]
        for round_ in range(8):
            ack = writer.ask("write", n=150, pad=2000, concurrency=8)
            sizes.append(ack["map"])
            for reader in readers:
                seen = reader.ask("seen", after=ack["position"], timeout=5)
                assert "error" not in seen, (round_, seen)
                assert seen["exact"] and seen["last"] >= ack["position"], (round_, seen)
        assert sizes[-1] >= 16 * sizes[0], sizes  # it doubled at least four times
        head = writer.ask("map")["head"]
        for reader in readers:
            seen = reader.ask("seen", after=head, timeout=5)
            assert seen == {"count": head, "first": 1, "last": head, "exact": True}
            assert reader.ask("map")["map"] >= 16 * 64 * KIB
    finally:
        for p in procs:
            p.close()


def test_a_reader_opened_small_beside_a_grown_map_and_a_restarted_bigger_writer(
    tmp_path: Path,
) -> None:
    """Reader opened with a 64 KiB map after the writer grew it; the writer is killed mid
    load (possibly mid-growth) and a new writer opens with a far larger map_size: the
    reader keeps following both."""
    procs: list[Proc] = []
    try:
        writer = Proc(tmp_path, "writer", 64 * KIB)
        procs.append(writer)
        ack = writer.ask("write", n=300, pad=2000, concurrency=8)
        assert ack["map"] > 64 * KIB
        reader = Proc(tmp_path, "reader", 64 * KIB)
        procs.append(reader)
        assert reader.ask("seen", after=ack["position"], timeout=5)["exact"]
        # kill -9 while a big write (several growths) is under way
        writer.tell({"op": "write", "n": 2000, "pad": 3000, "concurrency": 16})
        time.sleep(0.15)
        writer.kill()
        head_after_kill = reader.ask("map")["head"]
        seen = reader.ask("seen", after=head_after_kill, timeout=5)
        assert seen["exact"] and seen["last"] == head_after_kill, seen
        successor = Proc(tmp_path, "writer", 256 << 20)
        procs.append(successor)
        assert successor.ready["ready"] == head_after_kill
        ack = successor.ask("write", n=400, pad=4000, concurrency=8)
        seen = reader.ask("seen", after=ack["position"], timeout=5)
        assert seen["exact"] and seen["last"] == ack["position"], seen
        assert positions_in(tmp_path) == list(range(1, ack["position"] + 1))
    finally:
        for p in procs:
            p.close()


def test_after_beyond_the_head_is_refused_and_after_racing_a_commit_waits(
    tmp_path: Path,
) -> None:
    procs: list[Proc] = []
    try:
        writer = Proc(tmp_path, "writer", 64 * KIB)
        procs.append(writer)
        ack = writer.ask("write", n=3, pad=1, concurrency=1)
        reader = Proc(tmp_path, "reader", 64 * KIB)
        procs.append(reader)
        beyond = reader.ask("seen", after=ack["position"] + 1000, timeout=0.5)
        assert beyond.get("error") == "UnknownPosition", beyond
        # Each ack, at once to the reader (it has not polled yet), growing the map.
        for _ in range(60):
            ack = writer.ask("write", n=4, pad=3000, concurrency=4)
            seen = reader.ask("seen", after=ack["position"], timeout=5)
            assert "error" not in seen, seen
            assert seen["exact"] and seen["last"] >= ack["position"]
    finally:
        for p in procs:
            p.close()


def test_a_reader_writes_nothing_to_the_data_file(tmp_path: Path) -> None:
    """The writer saves a projector cache (snapshot_every); readers load and follow, and
    never touch data.mdb (its bytes, size and mtime unchanged while only readers run)."""
    procs: list[Proc] = []
    try:
        writer = Proc(tmp_path, "writer", 64 * KIB, snap=20)
        procs.append(writer)
        ack = writer.ask("write", n=300, pad=500, concurrency=4)
        writer.close()
        data = tmp_path / "data.mdb"
        before = (data.read_bytes(), os.stat(data).st_mtime_ns)
        readers = [Proc(tmp_path, "reader", 64 * KIB, snap=20) for _ in range(3)]
        procs += readers
        for reader in readers:
            seen = reader.ask("seen", after=ack["position"], timeout=5)
            assert seen["last"] == ack["position"] and seen["exact"], seen
        for reader in readers:
            reader.close()
        assert (data.read_bytes(), os.stat(data).st_mtime_ns) == before
        assert positions_in(tmp_path)[-1] == ack["position"]
    finally:
        for p in procs:
            p.close()


def test_a_reader_killed_holding_a_read_transaction_does_not_pin_the_file(
    tmp_path: Path,
) -> None:
    """kill -9 of a reader inside a read transaction: the writer is not blocked, and once a
    heads write-back has run the stale slot no longer pins pages (the file stops growing
    for rewrites a live-reader-free log would reuse)."""
    procs: list[Proc] = []
    try:
        writer = Proc(tmp_path, "writer", 1 << 20)
        procs.append(writer)
        writer.ask("write", n=10, pad=10, concurrency=1)
        reader = Proc(tmp_path, "reader", 1 << 20)
        procs.append(reader)
        assert reader.ask("hold")["held"]
        reader.kill()
        ack = writer.ask("write", n=17000, pad=1, concurrency=32)  # past one write-back
        assert ack["position"] >= 17010
        # The write-back cleared the dead slot (reader_check): the pages it pinned are
        # free again, so 16,000 more small events add no more than their own few MiB.
        size = os.path.getsize(tmp_path / "data.mdb")
        ack = writer.ask("write", n=16000, pad=1, concurrency=32)
        assert os.path.getsize(tmp_path / "data.mdb") - size < 3 << 20
        late = Proc(tmp_path, "reader", 1 << 20)
        procs.append(late)
        seen = late.ask("seen", after=ack["position"], timeout=5)
        assert seen["exact"] and seen["last"] == ack["position"]
    finally:
        for p in procs:
            p.close()


def test_readers_started_under_load_load_the_writers_fresh_caches(tmp_path: Path) -> None:
    """The writer saves its projector cache every 3 positions while it writes and grows
    the map; readers started meanwhile load a cache that may be newer than the head their
    engine read at open. Each must still see every event once, in order."""
    procs: list[Proc] = []
    try:
        writer = Proc(tmp_path, "writer", 64 * KIB, snap=3)
        procs.append(writer)
        writer.ask("write", n=50, pad=100, concurrency=4)
        assert writer.ask("load", pad=300, concurrency=16)["loading"]
        for i in range(6):
            reader = Proc(tmp_path, "reader", 64 * KIB, "trio" if i % 2 else "asyncio", snap=3)
            procs.append(reader)
            for _ in range(3):
                head = reader.ask("map")["head"]
                seen = reader.ask("seen", after=head, timeout=5)
                assert "error" not in seen, seen
                assert seen["exact"] and seen["last"] >= head, (i, head, seen)
            reader.close()
        stopped = writer.ask("stop")
        last = writer.ask("map")["head"]
        assert stopped["map"] > 64 * KIB and last >= stopped["position"] > 5000, stopped
        reader = Proc(tmp_path, "reader", 64 * KIB, snap=3)
        procs.append(reader)
        seen = reader.ask("seen", after=last, timeout=5)
        assert seen == {"count": last, "first": 1, "last": last, "exact": True}, seen
    finally:
        for p in procs:
            p.close()


def _open_readers_while_loading(tmp_path: Path, map_size: int, seconds: float) -> list[str]:
    """Open and close read-only logs in this process for ``seconds`` while a writer child
    commits as fast as it can (its file growing); the errors the opens raised."""
    from actorlog import StorageError

    writer = Proc(tmp_path, "writer", 64 * KIB)
    try:
        writer.ask("write", n=10, pad=10, concurrency=1)
        assert writer.ask("load", pad=200, concurrency=16)["loading"]
        errors: list[str] = []
        opens = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                log = LmdbEventLog(tmp_path, readonly=True, map_size=map_size)
            except StorageError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            finally:
                opens += 1
            log.close()
        writer.ask("stop")
        assert opens > 20  # the loop opened often enough to meet the commits
        return errors
    finally:
        writer.close()


def test_a_reader_opening_beside_a_growing_file_is_not_told_it_is_truncated(
    tmp_path: Path,
) -> None:
    """Found by review 13: ``_check_data_file`` took the file's size before it read the meta
    pages, and a commit in between made a healthy, growing log look truncated ("damaged").
    It takes the size again after them."""
    errors = _open_readers_while_loading(tmp_path, 1 << 30, 2.0)  # a map no commit outgrows
    assert errors == [], f"{len(errors)} opens failed, e.g. {errors[:2]}"


def test_a_reader_with_a_small_map_opens_beside_a_writer_under_load(tmp_path: Path) -> None:
    """Found by review 13: a reader mapping less than the writer has since used got
    MDB_MAP_RESIZED from a read transaction of the open (LMDB's own, the databases', or
    the first read, all outside ``_reading``), and the open failed with ``StorageError``
    instead of adopting the new size, as every read at open now does."""
    errors = _open_readers_while_loading(tmp_path, 64 * KIB, 1.0)
    assert errors == [], f"{len(errors)} opens failed, e.g. {errors[:2]}"


def test_the_readmes_reader_opens_beside_a_big_log_under_load(tmp_path: Path) -> None:
    """Found by review 13, as the test above: the README's reader open,
    ``LmdbEventLog(path, readonly=True)`` (default map_size 64 MiB), on a log past 64 MiB
    that its writer keeps appending to: the open maps exactly the pages used then, and a
    commit before its first read transaction failed it (MDB_MAP_RESIZED outside
    ``_reading``), or the size check called the log truncated. A reader process
    (``Engine.open(log=...)``) opened then did not start."""
    from actorlog import StorageError

    writer = Proc(tmp_path, "writer", 64 * KIB)
    try:
        writer.ask("write", n=20_000, pad=3500, concurrency=32)  # ~80 MiB
        assert os.path.getsize(tmp_path / "data.mdb") > 64 << 20
        assert writer.ask("load", pad=500, concurrency=16)["loading"]
        errors: list[str] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                LmdbEventLog(tmp_path, readonly=True).close()
            except StorageError as e:
                errors.append(str(e))
        writer.ask("stop")
        assert errors == [], f"{len(errors)} opens failed, e.g. {errors[:2]}"
    finally:
        writer.close()


@pytest.mark.parametrize("writer_map", [1 << 20, 64 << 20])  # growing the map; within it
def test_a_dead_readers_slot_does_not_make_the_writer_grow_the_file(
    tmp_path: Path, writer_map: int
) -> None:
    """Found by review 13 (README: "A reader killed with kill -9 does nothing to the
    writer"): until the next heads write-back (16,384 events) the dead reader's slot
    pinned every page freed since its snapshot, and the writer grew the map (and the file,
    for good: LMDB never shrinks it) instead of reusing them: ~9x a control's size here.
    The writer now clears dead slots every 1,024 events, and when the map is full before
    it grows it."""
    sizes = {}
    for mode in ("control", "dead"):
        path = tmp_path / mode
        writer = Proc(path, "writer", writer_map)
        reader = None
        try:
            writer.ask("write", n=10, pad=10, concurrency=1)
            if mode == "dead":
                reader = Proc(path, "reader", 1 << 20)
                assert reader.ask("hold")["held"]
                reader.kill()
            writer.ask("write", n=15000, pad=1, concurrency=32)  # short of a write-back
            sizes[mode] = os.path.getsize(path / "data.mdb")
        finally:
            writer.close()
            if reader is not None:
                reader.close()
    assert sizes["dead"] < 2 * sizes["control"], sizes
