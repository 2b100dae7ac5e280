"""Review 13's node process: an LMDB writer or read-only reader engine, driven by JSON lines.

    python -m tests.nodes.review13_child PATH writer|reader MAP_SIZE BACKEND [SNAPSHOT_EVERY]

Events are ``Blobbed`` (a sequence number and a pad, to grow the map fast); the ``Seen``
projector keeps every position it applied, so a reader can say whether it saw each event
exactly once and in order.

Requests: ``write`` n, pad, concurrency (writer: n one-event commands; answers the last
acknowledged position and the log's map size); ``seen`` after, timeout (``count``,
``first``, ``last``, ``exact``: positions == 1..last); ``map`` (the log's map size);
``hold`` (reader: begin a read transaction on a thread and never end it; answers once it
is open).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import anyio
import msgspec

from actorlog import Aggregate, Engine, EngineError, Projector, Recorded, applies, handles
from actorlog.storage import LmdbEventLog
from benchmarks._child import heard, say


class Blob(msgspec.Struct, frozen=True):
    seq: int
    pad: int


class Blobbed(msgspec.Struct, frozen=True):
    seq: int
    pad: bytes


class Blobs(Aggregate):
    def __init__(self) -> None:
        self.count = 0

    @handles
    def blob(self, c: Blob) -> list[Blobbed]:
        return [Blobbed(c.seq, b"x" * c.pad)]

    @applies
    def blobbed(self, e: Blobbed) -> None:
        self.count += 1


SNAPSHOT_EVERY = int(sys.argv[5]) if len(sys.argv) > 5 else 0


class Seen(Projector):
    snapshot_every = SNAPSHOT_EVERY or None
    positions: list[int]

    def __init__(self) -> None:
        self.positions = []

    @applies
    def blobbed(self, e: Blobbed, meta: Recorded) -> None:
        self.positions.append(meta.position)

    def summary(self) -> dict[str, Any]:
        p = self.positions
        return {
            "count": len(p),
            "first": p[0] if p else 0,
            "last": p[-1] if p else 0,
            "exact": p == list(range(1, len(p) + 1)),
        }


async def main(path: str, role: str, map_size: int) -> None:
    reader = role == "reader"
    log = LmdbEventLog(path, readonly=reader, sync=False, map_size=map_size)
    aggregates = [] if reader else [Blobs]
    seq = 0
    loading: list[anyio.CancelScope] = []
    loaded = [0]
    async with (
        Engine.open(log=log, aggregates=aggregates, projectors=[Seen]) as engine,
        anyio.create_task_group() as background,
    ):
        say({"ready": engine.statistics().head, "map": log.map_size})
        while True:
            request = await heard()
            if request is None:
                for scope in loading:
                    scope.cancel()
                return
            op = request["op"]
            try:
                if op == "write":
                    last = 0
                    todo = iter(range(request["n"]))

                    async def worker(todo: Any = todo, pad: int = request["pad"]) -> None:
                        nonlocal last, seq
                        for _ in todo:
                            seq += 1
                            ack = await engine.send(Blobs, f"b-{seq % 7}", Blob(seq, pad))
                            last = max(last, ack.position)

                    async with anyio.create_task_group() as tg:
                        for _ in range(request["concurrency"]):
                            tg.start_soon(worker)
                    say({"position": last, "map": log.map_size})
                elif op == "seen":
                    summary = await engine.query(
                        Seen.summary, after=request.get("after"), timeout=request.get("timeout")
                    )
                    say(summary)
                elif op == "load":
                    pad = request["pad"]

                    async def loader(pad: int = pad) -> None:
                        nonlocal seq
                        scope = anyio.CancelScope()
                        loading.append(scope)
                        with scope:
                            while True:
                                seq += 1
                                ack = await engine.send(Blobs, f"b-{seq % 7}", Blob(seq, pad))
                                loaded[0] = max(loaded[0], ack.position)

                    for _ in range(request["concurrency"]):
                        background.start_soon(loader)
                    say({"loading": True})
                elif op == "stop":
                    for scope in loading:
                        scope.cancel()
                    await anyio.sleep(0.05)
                    say({"position": loaded[0], "map": log.map_size})
                elif op == "map":
                    say({"map": log.map_size, "head": log.head_position()})
                elif op == "hold":
                    opened = threading.Event()

                    def hold(opened: threading.Event = opened) -> None:
                        txn = log._env.begin()  # a raw read transaction, never ended
                        txn.cursor().first()
                        opened.set()
                        threading.Event().wait()

                    threading.Thread(target=hold, daemon=True).start()
                    opened.wait(5)
                    say({"held": opened.is_set()})
                else:
                    say({"error": "bad op"})
            except EngineError as e:
                say({"error": type(e).__name__, "message": str(e)})


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), backend=sys.argv[4])
