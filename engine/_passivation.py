"""Passivation: which aggregate actors stay in memory, and senders waiting for a live slot.

At most ``max_live`` actors are live. Activating one more first passivates the least
recently used idle actors (a bounded look, ``EVICTION_SCAN``); ``sweep_idle`` passivates
those not used since the previous sweep. A busy actor (commands in flight or senders
waiting) is never passivated, nor the one being activated, so the cap is hard: when the
actors looked at are all busy, activation raises :class:`AtCapacity` and ``send`` waits
for a slot instead (``send_nowait`` raises it: it is an ``Overloaded``).

Live slots are handed out like mailbox room: a sender waits in ``waiting`` and an actor
going idle wakes one. The wake-up stands for a freed slot, so every sender that leaves
without using it passes it on (:meth:`LiveActors.pass_on`): one cancelled after the
wake-up, one whose stream another woken sender already activated, one refused on an idle
actor, and idle sweeps. A randomized model test (``tests/engine/test_aggregates_model.py``)
found each of these paths by a sender stranded behind an idle actor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import anyio

from ._actor import Actor, Waiters
from ._errors import EngineError, Overloaded
from ._reply import Reply

__all__ = ["EVICTION_SCAN", "AtCapacity", "LiveActors"]

EVICTION_SCAN: Final = 16
"""How many actors an activation looks at to get back under the cap: bounded, so that with
many busy actors each activation costs O(1), not O(live)."""


class AtCapacity(Overloaded):
    """Every live actor is busy and the cap is reached: ``send`` waits, ``send_nowait``
    raises it (an :class:`Overloaded`)."""


class LiveActors:
    """The live actors of one engine, least recently used first, and the senders waiting
    for a live slot.

    Args:
        max_live: the cap on live actors (``max_live_aggregates``).
    """

    def __init__(self, max_live: int) -> None:
        self.max_live = max_live
        self.live: OrderedDict[str, Actor] = OrderedDict()
        self.waiting: Waiters = OrderedDict()  # senders waiting for a live slot, FIFO
        # Slots reserved by activations loading in a worker thread (a log whose reads
        # block): not live yet, but counted against the cap.
        self.loading = 0
        self.peak = 0
        self.activations = 0
        self.passivations = 0

    def make_room(self) -> None:
        """Passivate idle actors until one more fits.

        Raises:
            AtCapacity: every live actor looked at is busy.
        """
        if len(self.live) + self.loading >= self.max_live:
            # A bounded look at the least recently used: O(1) per activation, and busy
            # actors move to the back so the next look starts with likelier candidates.
            self.evict_lru(scan=EVICTION_SCAN, room_for=1 + self.loading)
            if len(self.live) + self.loading >= self.max_live:
                raise AtCapacity(
                    f"{self.max_live} aggregates are live and busy (max_live_aggregates)"
                )

    def add(self, actor: Actor) -> None:
        """Make a newly activated actor live (after :meth:`make_room`, and once its
        reserved slot, if it loaded in a thread, was released)."""
        self.live[actor.stream_id] = actor
        self.activations += 1
        self.peak = max(self.peak, len(self.live))

    def evict_lru(self, scan: int, room_for: int = 0) -> None:
        """Passivate least recently used idle actors until ``room_for`` more fit.

        Looks at ``scan`` actors at most; busy ones go to the back.
        """
        live = self.live
        for _ in range(min(scan, len(live))):
            if len(live) + room_for <= self.max_live:
                return
            stream_id, actor = next(iter(live.items()))
            if actor.busy():
                live.move_to_end(stream_id)  # it stays, and costs no wake-up
                continue
            del live[stream_id]
            self.passivations += 1

    def sweep_idle(self) -> int:
        """Passivate actors not used since the previous sweep; returns how many."""
        live = self.live
        gone = [sid for sid, actor in live.items() if not actor.touched and not actor.busy()]
        for sid in gone:
            del live[sid]
        for actor in live.values():
            actor.touched = False
        self.passivations += len(gone)
        for _ in gone:  # each freed slot may let a sender waiting for one in
            self.pass_on()
        return len(gone)

    async def run_idle_sweeper(self, idle_timeout: float) -> None:
        """Passivate actors idle for between ``idle_timeout`` and twice that, forever."""
        while True:
            await anyio.sleep(idle_timeout)
            self.sweep_idle()

    def pass_on(self) -> None:
        """Wake the next sender waiting for a live slot. Unconditionally: an idle actor
        still counts as live until the woken sender's activation passivates it, and a
        sender that finds no room simply waits again."""
        if self.waiting:
            self.waiting.popitem(last=False)[0].set_result(None)

    async def wait(self, reply: Reply) -> None:
        """Wait (with ``reply``) until a live slot may be free. A wake-up is a slot handed
        to this sender: cancelled after it, the slot goes to the next waiter."""
        self.waiting[reply] = None
        try:
            await reply.wait()
        except BaseException:
            if reply in self.waiting:
                del self.waiting[reply]
            else:
                self.pass_on()
            raise

    def close(self, error: Callable[[], EngineError]) -> None:
        """Fail every sender waiting for a live slot, and every one waiting on an actor."""
        while self.waiting:
            self.waiting.popitem(last=False)[0].set_error(error())
        for actor in self.live.values():
            actor.close(error)
