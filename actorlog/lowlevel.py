"""The engine's parts, for those who build on them rather than on :class:`actorlog.Engine`:
the group-commit writer, the event registry and codecs, and the protocols an aggregate or
projector class meets (``actorlog.Aggregate`` and ``actorlog.Projector`` provide them), and
the instrumentation protocol ``Engine.open(telemetry=)`` takes (``Telemetry``).
"""

from .engine import (
    AggregatesStatistics,
    AggregateType,
    EventRegistry,
    ProjectorType,
    WindowStatistics,
    Writer,
    WriterStatistics,
    decode_command,
    event_name,
)
from .engine._public import publish
from .engine._telemetry import Telemetry

__all__ = [
    "AggregateType",
    "AggregatesStatistics",
    "EventRegistry",
    "ProjectorType",
    "Telemetry",
    "WindowStatistics",
    "Writer",
    "WriterStatistics",
    "decode_command",
    "event_name",
]

publish(__name__, globals(), __all__)
