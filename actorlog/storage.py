"""For storage backend authors: the event-log protocol, the backends (LMDB, PostgreSQL,
in memory), their records, and the contract every backend runs.

A new backend implements :class:`EventLog` and passes ``check_event_log(make_log)`` (the
suite the LMDB and in-memory logs pass); ``Engine.open(log=...)`` then runs on it.
``engine.log`` is a :class:`LogView`: the log's reads, never its writes.
"""

from typing import TYPE_CHECKING, Any

from .engine import (
    ANY,
    NO_STREAM,
    Append,
    AppendResult,
    EventLog,
    LmdbEventLog,
    MemoryEventLog,
    ProjectorCache,
    Snapshot,
    StoredEvent,
)
from .engine._errors import DuplicateCommand
from .engine._log_view import LogView
from .engine._public import publish
from .engine.testing import assert_log_consistent, check_event_log

if TYPE_CHECKING:
    from .engine._log_postgres import PostgresEventLog

__all__ = [
    "ANY",
    "Append",
    "AppendResult",
    "DuplicateCommand",
    "EventLog",
    "LmdbEventLog",
    "LogView",
    "MemoryEventLog",
    "NO_STREAM",
    "PostgresEventLog",
    "ProjectorCache",
    "Snapshot",
    "StoredEvent",
    "assert_log_consistent",
    "check_event_log",
]

publish(__name__, globals(), [name for name in __all__ if name != "PostgresEventLog"])


def __getattr__(name: str) -> Any:
    """``PostgresEventLog``, loaded on first use: a host on LMDB never imports its module
    or psycopg (~70 ms of a ~300 ms ``import actorlog`` here)."""
    if name == "PostgresEventLog":
        from .engine._log_postgres import PostgresEventLog

        publish(__name__, {name: PostgresEventLog}, [name])
        globals()[name] = PostgresEventLog
        return PostgresEventLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, ``PostgresEventLog`` among them before it loads: ``dir()``,
    ``help()`` and ``inspect.getmembers`` list a module from ``dir()``, and left out the
    lazily loaded class (review 7)."""
    return sorted(set(globals()) | set(__all__))
