"""actorlog's engine: the event log, group commit, and the actors that run commands and
projections. Import the public API from here; the underscored modules are private."""

from ._aggregates import AggregatesStatistics, AggregateType, Pending
from ._codec import EventRegistry, decode_command, event_name
from ._engine import Engine, EngineStatistics
from ._errors import (
    CodecError,
    ConcurrencyError,
    DecodeError,
    DefinitionError,
    EncodeError,
    EngineClosed,
    EngineError,
    HandlerError,
    InvalidArgument,
    Overloaded,
    PayloadTooLarge,
    ProjectorFaulted,
    Rejected,
    StorageError,
    StorageFull,
    StorageLocked,
    UnknownCommand,
    UnknownEventType,
    UnknownQuery,
    UpcastError,
)
from ._follow import FollowerStatistics
from ._log import EventLog
from ._log_lmdb import LmdbEventLog
from ._log_memory import MemoryEventLog
from ._projectors import Parked, ProjectorStatistics, ProjectorType, WindowStatistics
from ._records import (
    ANY,
    NO_STREAM,
    Append,
    AppendResult,
    Committed,
    ProjectorCache,
    Recorded,
    Snapshot,
    StoredEvent,
)
from ._schema import upcaster
from ._writer import Writer, WriterStatistics

__all__ = [
    "ANY",
    "AggregateType",
    "AggregatesStatistics",
    "Append",
    "AppendResult",
    "CodecError",
    "Committed",
    "ConcurrencyError",
    "DecodeError",
    "DefinitionError",
    "EncodeError",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineStatistics",
    "EventLog",
    "EventRegistry",
    "FollowerStatistics",
    "HandlerError",
    "InvalidArgument",
    "LmdbEventLog",
    "MemoryEventLog",
    "NO_STREAM",
    "Overloaded",
    "Parked",
    "PayloadTooLarge",
    "Pending",
    "ProjectorCache",
    "ProjectorFaulted",
    "ProjectorStatistics",
    "ProjectorType",
    "Recorded",
    "Rejected",
    "Snapshot",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "StoredEvent",
    "UnknownCommand",
    "UnknownEventType",
    "UnknownQuery",
    "UpcastError",
    "WindowStatistics",
    "Writer",
    "WriterStatistics",
    "decode_command",
    "event_name",
    "upcaster",
]
