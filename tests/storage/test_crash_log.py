"""A writer subprocess SIGKILLed under load loses no acknowledged append and leaves no gap."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import msgspec

from actorlog.storage import LmdbEventLog, assert_log_consistent

SEED = 20240611
ROUNDS = 5
TASKS = 48

Ack = tuple[str, int, int, int, int]  # stream id, first/last version, first/last position


def run_and_kill(path: Path, kill_after: int, seed: int) -> list[Ack]:
    """Start the child on ``path``, SIGKILL it after ``kill_after`` acks, return every ack."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.storage.crash_writer_child",
            str(path),
            str(TASKS),
            str(seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent.parent,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        lines = [child.stdout.readline() for _ in range(kill_after)]
        child.send_signal(signal.SIGKILL)
        lines += child.stdout.read().splitlines(keepends=True)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the child ended before it was killed"
    acks = []
    for line in lines:
        if line.endswith("\n"):  # a line cut short by the kill was never fully reported
            stream_id, *numbers = line.split()
            first_version, last_version, first_position, last_position = map(int, numbers)
            acks.append((stream_id, first_version, last_version, first_position, last_position))
    return acks


def test_killed_writer_loses_no_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    acknowledged: list[Ack] = []
    decode = msgspec.msgpack.Decoder(tuple[int, int, int]).decode
    for round_ in range(ROUNDS):
        acks = run_and_kill(tmp_path, rng.randint(1, 1500), SEED + round_)
        assert len(acks) >= 1
        acknowledged += acks
        log = LmdbEventLog(tmp_path)  # the killed child's lock died with it
        try:
            versions = assert_log_consistent(log)  # consecutive positions and versions
            events = {e.position: e for e in log.read_all(1, 10**7)}
            for stream_id, first_v, last_v, first_p, last_p in acknowledged:
                assert versions[stream_id] >= last_v
                got = [events[p] for p in range(first_p, last_p + 1)]
                assert [(e.stream_id, e.version) for e in got] == [
                    (stream_id, v) for v in range(first_v, last_v + 1)
                ]
                count = last_v - first_v + 1
                assert [decode(e.payload) for e in got] == [
                    (first_v, i, count) for i in range(count)
                ]
            # Committed but unreported appends must be whole too.
            for event in events.values():
                first_v, i, count = decode(event.payload)
                assert event.version == first_v + i
                for j in range(count):
                    other = events[event.position - i + j]
                    assert (other.stream_id, other.version) == (event.stream_id, first_v + j)
        finally:
            log.close()
