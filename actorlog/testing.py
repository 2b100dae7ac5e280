"""Test kits: aggregates and projectors as pure functions, given/when/then.

::

    from actorlog.testing import given, given_events

    given(Account, [AccountOpened("ann")]).when(Deposit(5)).then([Deposited(5)])
    given_events(Balances, [("acct-1", Deposited(5))]).then_query(Balances.balance, "acct-1",
                                                                   equals=5)

The kits run the engine's own code (the decide step, the projector fold, the query copy),
so a scenario that passes here behaves the same in an :class:`actorlog.Engine`.
``given_process(TransferProcess, [...]).when(event).then([Send(...), ...])`` does the same
for process managers, and :class:`FakeClock` moves their deadlines' time by hand
(``Engine.open(clock=...)``). The
contract for storage backends is ``actorlog.storage.check_event_log``.
"""

from .actors._process_testing import GivenProcess, ProcessWhen, given_process
from .actors.testing import Given, GivenEvents, OldEvent, When, given, given_events, old_event
from .engine._public import publish
from .engine._timers import FakeClock

__all__ = [
    "FakeClock",
    "Given",
    "GivenEvents",
    "GivenProcess",
    "OldEvent",
    "ProcessWhen",
    "When",
    "given",
    "given_events",
    "given_process",
    "old_event",
]

publish(__name__, globals(), __all__)
