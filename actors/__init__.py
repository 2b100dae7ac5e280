"""actorlog's actors: how users define aggregates (write side) and projectors (read side).

Pure definitions: no I/O, no tasks. The engine hosts them."""

from ._aggregate import Aggregate
from ._dispatch import applies, handles
from ._process_manager import (
    Cancel,
    Finish,
    ProcessManager,
    Schedule,
    Send,
    SendFailed,
    reacts,
    starts,
)
from ._projector import Projector
from ._sqlite_view import SqliteView

__all__ = [
    "Aggregate",
    "Cancel",
    "Finish",
    "ProcessManager",
    "Projector",
    "Schedule",
    "Send",
    "SendFailed",
    "SqliteView",
    "applies",
    "handles",
    "reacts",
    "starts",
]
