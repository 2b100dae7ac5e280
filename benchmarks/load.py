"""The W2 load generator, shared by the engine and the floor so their latencies compare.

``clients`` tasks each own a fixed schedule (one command every ``clients / rate`` seconds,
staggered), so the offered load is ``rate`` whatever the system does. Latency runs from a
command's *scheduled* start: a stall counts against every command it delays, so a client
that falls behind cannot hide it (no coordinated omission). A task per command would be
more open-loop, but on this 2-core machine with one event loop its spawning cost competes
with the system under test and saturates both near the rates we want to observe.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

__all__ = ["paced_load"]

W = TypeVar("W")


async def paced_load(
    send: Callable[[W], Awaitable[Any]],
    work: Sequence[W],
    *,
    rate: float,
    clients: int = 64,
    freeze_gc: bool = True,
) -> dict[str, Any]:
    """Offer ``work`` at ``rate`` items/s from ``clients`` paced clients; latency figures.

    With ``freeze_gc`` the objects alive at the start (the pre-generated work above all) are
    moved out of the cyclic collector's reach for the run: otherwise every full collection
    rescans them, a 25-30 ms pause that belongs to the harness, not to what it measures.
    """
    samples: list[float] = []
    interval = clients / rate

    async def client(first: int, start: float) -> None:
        for k, i in enumerate(range(first, len(work), clients)):
            scheduled = start + k * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            await send(work[i])
            samples.append(time.perf_counter() - scheduled)

    if freeze_gc:
        gc.collect()
        gc.freeze()
    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for first in range(clients):
                tg.start_soon(client, first, started + first * interval / clients)
        seconds = time.perf_counter() - started
    finally:
        if freeze_gc:
            gc.unfreeze()
    samples.sort()

    def quantile_ms(q: float) -> float:
        return 1e3 * samples[min(len(samples) - 1, round(q * (len(samples) - 1)))]

    return {
        "commands": len(work),
        "offered_per_second": rate,
        "achieved_per_second": len(work) / seconds,
        "p50_ms": quantile_ms(0.50),
        "p99_ms": quantile_ms(0.99),
        "max_ms": samples[-1] * 1e3,
    }
