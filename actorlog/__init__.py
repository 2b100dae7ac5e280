"""actorlog: an embedded CQRS and event-sourcing engine built as actors.

Everything an application needs is here::

    from actorlog import Aggregate, Engine, Projector, Recorded, Rejected, applies, handles

Define aggregates (``@handles`` commands, ``@applies`` events) and projectors (``@applies``
events into a read cache, plain methods as queries), open an :class:`Engine` on a log
directory, ``send`` commands and ``query`` projectors. What each error means is drawn in
:class:`EngineError`'s module (``actorlog.EngineError.__doc__`` and the README).

Further namespaces: ``actorlog.testing`` (given/when/then kits for aggregates and
projectors), ``actorlog.storage`` (the event-log protocol, the LMDB and in-memory logs,
their records and the contract any new backend runs), ``actorlog.lowlevel`` (the writer,
the event registry and the protocols the engine hosts, for those who build on its parts).
"""

from .actors import (
    Aggregate,
    Cancel,
    Finish,
    ProcessManager,
    Projector,
    Schedule,
    Send,
    SendFailed,
    SqliteView,
    applies,
    handles,
    reacts,
    starts,
)
from .engine import (
    CodecError,
    Committed,
    ConcurrencyError,
    DecodeError,
    DefinitionError,
    EncodeError,
    Engine,
    EngineClosed,
    EngineError,
    EngineStatistics,
    HandlerError,
    InvalidArgument,
    Overloaded,
    Parked,
    PayloadTooLarge,
    Pending,
    ProjectorFaulted,
    ProjectorStatistics,
    Recorded,
    Rejected,
    StorageError,
    StorageFull,
    StorageLocked,
    UnknownCommand,
    UnknownEventType,
    UnknownQuery,
    UpcastError,
    upcaster,
)
from .engine._command_ids import CommandIdRetention
from .engine._errors import QueryTimeout, Unauthorized, UnknownPosition
from .engine._policy import Policy
from .engine._process_steps import ProcessManagerStatistics
from .engine._public import publish

__all__ = [
    "Aggregate",
    "Cancel",
    "CodecError",
    "CommandIdRetention",
    "Committed",
    "ConcurrencyError",
    "DecodeError",
    "DefinitionError",
    "EncodeError",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineStatistics",
    "Finish",
    "HandlerError",
    "InvalidArgument",
    "Overloaded",
    "Parked",
    "PayloadTooLarge",
    "Pending",
    "Policy",
    "ProcessManager",
    "ProcessManagerStatistics",
    "Projector",
    "ProjectorFaulted",
    "ProjectorStatistics",
    "QueryTimeout",
    "Recorded",
    "Rejected",
    "Schedule",
    "Send",
    "SendFailed",
    "SqliteView",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "Unauthorized",
    "UnknownCommand",
    "UnknownEventType",
    "UnknownPosition",
    "UnknownQuery",
    "UpcastError",
    "applies",
    "handles",
    "reacts",
    "starts",
    "upcaster",
]

publish(__name__, globals(), __all__)
