"""The engine's instrumentation hook: what ``Engine.open(telemetry=)`` attaches, and the
observers it may set on the engine's parts.

An engine without telemetry runs exactly the code it ran before: the command path is not
touched at all (an instrumentation wraps the engine instance's own ``send``, never the
class's), and the writer and each projector test one attribute for None once per batch
(a batch holds ~60 commands in W1). Nothing here imports an instrumentation library:
``actorlog.otel`` (the OpenTelemetry one) is imported only by whoever uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._errors import DefinitionError, describe

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["BatchObserver", "CommitObserver", "Telemetry", "check_telemetry"]

CommitObserver = Callable[[int, int, int, int, Sequence[Any]], None]
"""Told of each group commit, in the writer task, right after the log's transaction ended
and before any appender is told: ``(started_ns, duration_ns, appends, events stored,
outcomes)``; ``started_ns`` is wall-clock (``time.time_ns()``), an outcome is an
``AppendResult`` or the append's ``EngineError``. It must not raise."""

BatchObserver = Callable[[Any, int, float, bool], None]
"""Told of each batch a projector applied, in its task: ``(its ProjectorHost, the batch's
first position, perf_counter() when the batch began, read from the log)``; the host's
``name``, ``checkpoint`` (below the first position if it halted on its first event) and
``fault`` say the rest. It must not raise."""


class Telemetry(Protocol):
    """An instrumentation ``Engine.open(..., telemetry=...)`` attaches to the engine it opens.

    ``attach`` is called once the engine's parts exist, before its tasks start (so the
    projectors' catch-up at open is observed too), and ``detach`` once the engine has
    closed, even if opening failed after ``attach``. ``actorlog.otel.OpenTelemetry`` is
    one; ``attach`` may wrap the instance's ``send``/``send_nowait`` and set the
    observers above (``engine._writer.observer``, each projector host's ``observer``).
    """

    def attach(self, engine: Engine) -> None:
        """Start observing ``engine``."""

    def detach(self, engine: Engine) -> None:
        """Stop observing ``engine`` (it is closed); undo what ``attach`` did."""


def check_telemetry(telemetry: object) -> Telemetry | None:
    """``Engine.open``'s ``telemetry=``, checked: None, or an object with callable
    ``attach`` and ``detach``.

    Raises:
        DefinitionError: anything else.
    """
    if telemetry is None:
        return None
    if not all(callable(getattr(telemetry, name, None)) for name in ("attach", "detach")):
        raise DefinitionError(
            "telemetry= needs an instrumentation with attach(engine) and detach(engine), "
            f"e.g. actorlog.otel.OpenTelemetry(), not {describe(telemetry)}"
        )
    return cast(Telemetry, telemetry)
