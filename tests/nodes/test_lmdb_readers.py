"""LMDB reader processes beside the process that writes the log (issue 15, part 5): a
writer process and reader processes (engines with projectors and no aggregates, the log
opened read-only), queries with ``after=`` from the writer's acknowledgements, kill -9 of a
reader (nothing happens to the writer) and of the writer (readers keep serving what was
committed; a new writer takes over). ``ACTORLOG_NODES_SCALE`` multiplies the counts.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import msgspec

from actorlog.storage import LmdbEventLog
from benchmarks.bank import Deposited
from tests.nodes.node import Bumped

from .cluster import Node

SCALE = int(os.environ.get("ACTORLOG_NODES_SCALE", "1"))


def wait_for(condition: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def deposits_in(path: Path) -> tuple[Counter[str], dict[str, list[int]]]:
    """Every stream's deposits, and every pair stream's halves, as the log holds them
    (read-only, from this process)."""
    log = LmdbEventLog(path, readonly=True)
    try:
        found: Counter[str] = Counter()
        halves: dict[str, list[int]] = {}
        position = 1
        while batch := log.read_all(position, 4096):
            for event in batch:
                if event.type == "Deposited":
                    amount = msgspec.msgpack.decode(event.payload, type=Deposited).amount
                    found[event.stream_id] += amount
                elif event.type == "Bumped":
                    half = msgspec.msgpack.decode(event.payload, type=Bumped).half
                    halves.setdefault(event.stream_id, []).append(half)
            position = batch[-1].position + 1
        return found, halves
    finally:
        log.close()


def test_writer_and_reader_processes(tmp_path: Path) -> None:
    where = str(tmp_path)
    writer = Node("lmdb", where, "-", "writer")
    # One reader on trio, one on asyncio: the follower is anyio's on both.
    readers = [Node("lmdb", where, "-", "reader", backend) for backend in ("trio", "asyncio")]
    nodes = [writer, *readers]
    try:
        # Cross-process read-your-writes: each acknowledgement, then a read elsewhere.
        expected: Counter[str] = Counter()
        for i in range(20 * SCALE):
            stream = f"acct-{i % 4}"
            ack = writer.ask("send", stream=stream, amount=i + 1)
            expected[stream] += i + 1
            answer = readers[i % 2].ask("query", stream=stream, after=ack["position"], timeout=10)
            assert answer == {"balance": expected[stream]}
        for reader in readers:
            assert reader.ask("send", stream="x", amount=1)["error"] == "UnknownCommand"

        # Under load: the readers follow; kill -9 of one does nothing to the writer.
        writer.start_load(streams=20, concurrency=8)
        wait_for(lambda: len(writer.acks) > 200 * SCALE)
        stream, position = writer.acks[-1]
        pairs = readers[0].ask("pairs", after=position, timeout=10)["pairs"]
        assert pairs[stream][-2:] == [1, 2]
        readers[0].kill()
        acked = len(writer.acks)
        wait_for(lambda: len(writer.acks) > acked + 200 * SCALE)
        # A reader started under load catches up and follows too.
        late = Node("lmdb", where, "-", "reader")
        nodes.append(late)
        stream, position = writer.acks[-1]
        pairs = late.ask("pairs", after=position, timeout=10)["pairs"]
        assert pairs[stream][-2:] == [1, 2]

        # kill -9 of the writer: the readers keep serving everything it committed.
        writer.kill()
        acked_bumps = Counter(stream for stream, _ in writer.acks)
        deposits, halves = deposits_in(tmp_path)
        assert deposits == expected
        for stream, count in acked_bumps.items():
            # Every acknowledged bump is in the log; the ones in flight at the kill are
            # there whole (both halves) or not at all.
            assert halves[stream] == [1, 2] * (len(halves[stream]) // 2)
            assert len(halves[stream]) >= 2 * count
        for reader in (readers[1], late):
            head = reader.ask("stats")["stats"]["head"]
            assert reader.ask("pairs", after=head, timeout=10) == {"pairs": halves}
            assert reader.ask("balances", after=head, timeout=10) == {"balances": expected}

        # A new writer takes over the directory; the readers follow it.
        successor = Node("lmdb", where, "-", "writer")
        nodes.append(successor)
        ack = successor.ask("send", stream="acct-0", amount=1000)
        answer = late.ask("query", stream="acct-0", after=ack["position"], timeout=10)
        assert answer == {"balance": expected["acct-0"] + 1000}
    finally:
        for node in nodes:
            node.close()
