"""Hand-written floors for the read-side workloads (W3-W6): the least work each job needs.

Each is a few lines of raw lmdb + msgspec + trio, with none of the engine's features; the
engine's figure divided by the floor's says what those features cost.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import trio

from actorlog.storage import StoredEvent

from .bank import Deposited

__all__ = ["floor_query", "floor_read_your_writes", "floor_rebuild", "floor_rehydrate"]

_u64 = struct.Struct(">Q")


def floor_rebuild(path: Path) -> dict[str, Any]:
    """W4 floor: scan the engine's own ``events`` database, decode, fold into a dict."""
    env = lmdb.open(str(path), max_dbs=4, readonly=True, lock=False)
    try:
        events = env.open_db(b"events", create=False)
        envelope = msgspec.msgpack.Decoder(StoredEvent)
        payload = msgspec.msgpack.Decoder(Deposited)
        balances: dict[str, int] = {}
        count = 0
        started = time.perf_counter()
        with env.begin(db=events, buffers=True) as txn:
            for value in txn.cursor().iternext(keys=False, values=True):
                stored = envelope.decode(value[8:-4])  # after the back-link, before the CRC
                if stored.type == "Deposited":
                    sid = stored.stream_id
                    balances[sid] = balances.get(sid, 0) + payload.decode(stored.payload).amount
                count += 1
        seconds = time.perf_counter() - started
    finally:
        env.close()
    return {"events": count, "seconds": seconds, "per_second": count / seconds}


def floor_rehydrate(path: Path, *, events: int) -> dict[str, Any]:
    """W3 floor: one stream of ``events`` events keyed by version; read, decode, fold."""
    env = lmdb.open(str(path), map_size=1 << 30, sync=False)
    encoder = msgspec.msgpack.Encoder()
    with env.begin(write=True) as txn:
        for version in range(1, events + 1):
            txn.put(b"acct-big\x00" + _u64.pack(version), encoder.encode(Deposited(1)))
    decoder = msgspec.msgpack.Decoder(Deposited)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        balance = 0
        with env.begin(buffers=True) as txn:
            cursor = txn.cursor()
            cursor.set_range(b"acct-big\x00")
            for value in cursor.iternext(keys=False, values=True):
                balance += decoder.decode(value).amount
        timings.append(time.perf_counter() - started)
    env.close()
    assert balance == events
    return {"cold_ms": min(timings) * 1e3}


async def floor_query(*, queries: int) -> dict[str, Any]:
    """W5 floor: awaiting an async function that reads a dict."""
    cache = {"acct-1": 5}

    async def balance(account: str) -> int:
        return cache.get(account, 0)

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(queries):
            await balance("acct-1")
        return time.perf_counter() - started

    seconds = await run()
    return {"queries": queries, "seconds": seconds, "per_second": queries / seconds}


async def floor_read_your_writes(*, commands: int) -> dict[str, Any]:
    """W6 floor: hand a committed event to a projector task over a channel; wait for it."""

    async def run() -> list[float]:
        samples: list[float] = []
        send, receive = trio.open_memory_channel[tuple[int, int]](1024)
        applied = {"position": 0}
        waiters: dict[int, trio.Event] = {}
        balances = {"acct-1": 0}

        async def projector() -> None:
            async for position, amount in receive:
                balances["acct-1"] += amount
                applied["position"] = position
                waiter = waiters.pop(position, None)
                if waiter is not None:
                    waiter.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(projector)
            for position in range(1, commands + 1):
                send.send_nowait((position, 1))  # the "commit" broadcast
                started = time.perf_counter()
                if applied["position"] < position:
                    waiters[position] = event = trio.Event()
                    await event.wait()
                samples.append(time.perf_counter() - started)
            nursery.cancel_scope.cancel()
        return samples

    from .workloads import percentile

    samples = await run()
    return {
        "commands": commands,
        "p50_ms": percentile(samples, 0.5) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
    }
