"""The engine's parts, for those who build on them rather than on :class:`actorlog.Engine`:
the group-commit writer, the event registry and codecs, and the protocols an aggregate or
projector class meets (``actorlog.Aggregate`` and ``actorlog.Projector`` provide them), and
the instrumentation protocol ``Engine.open(telemetry=)`` takes (``Telemetry``), and a
projector whose view lives in a store of its own (``actorlog.SqliteView`` is one).
"""

from .engine import (
    AggregatesStatistics,
    AggregateType,
    EventRegistry,
    FollowerStatistics,
    ProjectorType,
    WindowStatistics,
    Writer,
    WriterStatistics,
    decode_command,
    event_name,
)
from .engine._public import publish
from .engine._telemetry import Telemetry
from .engine._view_store import ViewStore

__all__ = [
    "AggregateType",
    "AggregatesStatistics",
    "EventRegistry",
    "FollowerStatistics",
    "ProjectorType",
    "Telemetry",
    "ViewStore",
    "WindowStatistics",
    "Writer",
    "WriterStatistics",
    "decode_command",
    "event_name",
]

publish(__name__, globals(), __all__)
