"""The process managers' leadership loop (``engine/_process_leader.py``) with a lease and
terms that are stand-ins: what it does between terms, apart from any server."""

from __future__ import annotations

from typing import Any

import anyio
import trio

from actorlog.engine._process_leader import LeasedProcessManagers


class _Lease:
    """Held from the first try; lost (as a killed session would be) once ``lost`` is set."""

    def __init__(self) -> None:
        self.lost = False
        self.checks = 0

    def try_acquire(self) -> bool:
        return not self.lost

    def holds(self) -> bool:
        self.checks += 1
        return not self.lost

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ConflictingTerm:
    """A term whose first step conflicts at once (another engine moved an instance): it
    ends the term, as ``ProcessManagers`` does through ``on_conflict``."""

    hosts: list[Any] = []

    def __init__(self, lease: _Lease) -> None:
        self._lease = lease
        self.on_conflict: Any = None
        self.broadcast = type("B", (), {"head": 0})()

    async def run(self, head: int) -> None:
        await anyio.lowlevel.checkpoint()
        self._lease.lost = True  # the server ended our session meanwhile
        self.on_conflict()
        await anyio.sleep_forever()

    def end_term(self) -> None:
        pass

    def stop(self) -> None:
        pass


async def test_a_leader_that_lost_its_lease_stops_at_its_next_conflict() -> None:
    lease = _Lease()
    leader = LeasedProcessManagers(lambda: _ConflictingTerm(lease), lease)  # type: ignore[arg-type, return-value]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader.run, 0)
        await trio.sleep(0.2)  # less than LEASE_INTERVAL: only the restart's check can tell
        terms, leading = leader.terms, leader.leading
        nursery.cancel_scope.cancel()
    # The term that conflicted is not followed by another on a lease that is gone.
    assert terms == 1
    assert not leading
    assert lease.checks >= 1
