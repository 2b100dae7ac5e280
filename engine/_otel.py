"""OpenTelemetry for an engine: a span per command, per group commit and per projector
batch, and the engine's metrics. Optional: ``pip install 'actorlog[otel]'``.

Only this module imports ``opentelemetry``, and only ``actorlog.otel`` imports this module:
an engine opened without ``telemetry=`` imports and pays nothing (``engine/_telemetry.py``).

::

    caller's span (an HTTP request, say)
      └─ actorlog.command Deposit      send(): decide → durable; its traceparent (if
           │  link                      sampled) is recorded in the events' headers
           ▼
         actorlog.commit                one group commit (~60 commands in W1), a root span
         actorlog.project Balances      one batch a projector applied, a root span

How it attaches (``attach``): the engine instance's ``send`` and ``send_nowait`` are
wrapped (its class is untouched, so other engines pay nothing), and the writer and each
projector host get an observer, called once per batch. Gauges (live aggregates, projector
lag, writer queue) are read from the engine's counters when the SDK collects, not kept up
to date on the command path; they read only what is safe to read from the SDK's own
collecting thread.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from ._actor import Pending
from ._decide import kind_name
from ._errors import DefinitionError, EngineError, Rejected, Unauthorized
from ._records import Committed

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["OpenTelemetry"]

_SCOPE = "actorlog"
# Seconds; finer than the SDK's default buckets (made for milliseconds of HTTP): a durable
# commit takes ~1-3 ms here, a sync=False one well under a millisecond.
_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
# Recent group commits, for the command spans' links: a command's caller resumes right after
# its commit, so the one it rode is nearly always the newest; a few hundred cover a backlog.
_RECENT_COMMITS = 256
_logger = logging.getLogger("actorlog.otel")


class OpenTelemetry:
    """Spans and metrics of an engine through OpenTelemetry: pass it as
    ``Engine.open(..., telemetry=OpenTelemetry())``.

    Spans (INTERNAL): ``actorlog.command <Command>`` for each ``send`` (from the call to
    durable; for ``send_nowait``, from the call until its ``Pending`` is awaited), a child
    of the caller's current span and linked to the group commit it rode; ``actorlog.commit``
    for each group commit; ``actorlog.project <Projector>`` for each batch a projector
    applied. With ``record_traceparent`` (the default) a command's events carry its span's
    W3C ``traceparent`` in their headers (when the span is sampled and the caller passed no
    ``traceparent`` of its own), so a consumer of the event can continue the trace. The
    command span is not made the current span while ``send`` runs: spans a handler starts
    are children of the caller's span.

    Metrics: ``actorlog.commands`` (a counter, so commands a second is its rate; by
    ``actorlog.aggregate`` and ``actorlog.outcome``: ``committed``, ``rejected``,
    ``unauthorized``, ``failed``), ``actorlog.commit.duration`` (s),
    ``actorlog.commit.appends`` (commands a group commit), ``actorlog.projector.batch``
    (events a batch, by ``actorlog.projector``), and gauges read when collected:
    ``actorlog.aggregates.live``, ``actorlog.projector.lag`` (events behind the head, by
    projector), ``actorlog.writer.pending``.

    Args:
        tracer_provider: where spans go (default: the global one; without an SDK
            configured, spans are no-ops).
        meter_provider: where metrics go (default: the global one).
        record_traceparent: write each command span's ``traceparent`` into its events'
            headers (it moves the command off the engine's fastest metadata path).
        traces: False for metrics only: no span at all (nor with a
            ``NoOpTracerProvider``), commands still counted.

    Telemetry never fails the engine: an exception from the SDK (a span processor or an
    exporter that raises) is counted in :attr:`errors`, the first one logged (logger
    ``actorlog.otel``), and the command, commit or batch goes on as without it.

    One engine at a time: attaching to a second engine while one is attached raises
    ``DefinitionError``; after that engine closes it may be used again.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        record_traceparent: bool = True,
        traces: bool = True,
    ) -> None:
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        # No command spans with traces=False, or with a tracer known to be a no-op (a
        # NoOpTracerProvider passed): commands are then only counted.
        self._spans = traces and not isinstance(self._tracer, trace.NoOpTracer)
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._record_traceparent = record_traceparent
        # Commands are counted in plain ints and reported when the SDK collects: an SDK
        # counter's add() per command cost more than the span (attribute hashing, a lock).
        meter.create_observable_counter(
            "actorlog.commands",
            callbacks=[self._observe_commands],
            unit="{command}",
            description="Commands sent, by aggregate and outcome.",
        )
        self._commit_duration = meter.create_histogram(
            "actorlog.commit.duration",
            unit="s",
            description="One group commit's transaction (fsync included when durable).",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._commit_appends = meter.create_histogram(
            "actorlog.commit.appends",
            unit="{command}",
            description="Commands (appends) in one group commit.",
            explicit_bucket_boundaries_advisory=_COUNTS,
        )
        self._projector_batch = meter.create_histogram(
            "actorlog.projector.batch",
            unit="{event}",
            description="Events a projector applied in one batch.",
            explicit_bucket_boundaries_advisory=_COUNTS,
        )
        meter.create_observable_gauge(
            "actorlog.aggregates.live",
            callbacks=[self._observe_live],
            unit="{aggregate}",
            description="Aggregates in memory.",
        )
        meter.create_observable_gauge(
            "actorlog.projector.lag",
            callbacks=[self._observe_lag],
            unit="{event}",
            description="Events committed that the projector has not applied yet.",
        )
        meter.create_observable_gauge(
            "actorlog.writer.pending",
            callbacks=[self._observe_pending],
            unit="{command}",
            description="Appends queued for the next group commit.",
        )
        self._engine: Engine | None = None
        self._recent: deque[tuple[int, int, SpanContext]] = deque(maxlen=_RECENT_COMMITS)
        # Commands by (aggregate name, outcome), since this instrumentation was made.
        self._counts: dict[tuple[str, str], int] = {}
        self._names: dict[Any, str] = {}
        self._errors = 0

    @property
    def errors(self) -> int:
        """How many times the OpenTelemetry SDK raised while observing (the engine went on
        without that span or measurement)."""
        return self._errors

    def _failed(self, error: Exception) -> None:
        # Never raises: it runs inside the writer's commit and the command path.
        if not self._errors:
            _logger.error("OpenTelemetry raised; telemetry is incomplete", exc_info=error)
        self._errors += 1

    # -- attaching (the engine/_telemetry.py protocol) -------------------------------------

    def attach(self, engine: Engine) -> None:
        """Start observing ``engine`` (``Engine.open`` calls it).

        Raises:
            DefinitionError: already attached to another engine that is still open.
        """
        if self._engine is not None:
            raise DefinitionError(
                "this OpenTelemetry is attached to an engine that is still open; "
                "make one per engine"
            )
        self._engine = engine
        self._recent.clear()
        # The instance's own attributes shadow the class's methods; detach deletes them.
        send, send_nowait = engine.send, engine.send_nowait
        engine.send = self._traced_send(send)  # type: ignore[method-assign]
        engine.send_nowait = self._traced_send_nowait(send_nowait)  # type: ignore[method-assign]
        engine._writer.observer = self._on_commit
        for host in engine._projectors.values():
            host.observer = self._on_batch

    def detach(self, engine: Engine) -> None:
        """Stop observing ``engine`` (closed): its methods and parts are as before."""
        if self._engine is not engine:
            return
        for name in ("send", "send_nowait"):
            vars(engine).pop(name, None)
        engine._writer.observer = None
        for host in engine._projectors.values():
            host.observer = None
        self._engine = None

    # -- commands --------------------------------------------------------------------------

    def _traced_send(self, send: Any) -> Any:
        async def traced_send(
            aggregate: Any, stream_id: str, command: Any, **options: Any
        ) -> Committed:
            # The span is not made current inside: nothing the engine runs there starts a
            # span, and attaching a context and detaching it cost ~5 us a command.
            span = self._start_command(aggregate, stream_id, command, options)
            try:
                committed: Committed = await send(aggregate, stream_id, command, **options)
            except BaseException as e:
                self._end_command(span, aggregate, None, e)
                raise
            self._end_command(span, aggregate, committed, None)  # committed: never raises
            return committed

        traced_send.__doc__ = send.__doc__
        return traced_send

    def _traced_send_nowait(self, send_nowait: Any) -> Any:
        def traced_send_nowait(
            aggregate: Any, stream_id: str, command: Any, **options: Any
        ) -> Pending:
            span = self._start_command(aggregate, stream_id, command, options)
            try:
                pending: Pending = send_nowait(aggregate, stream_id, command, **options)
            except BaseException as e:
                self._end_command(span, aggregate, None, e)
                raise
            return _TracedPending(pending, self, span, aggregate)

        traced_send_nowait.__doc__ = send_nowait.__doc__
        return traced_send_nowait

    def _start_command(
        self, aggregate: Any, stream_id: str, command: Any, options: dict[str, Any]
    ) -> trace.Span | None:
        """The command's span, a child of the caller's current one; the ``traceparent``
        added to ``options["headers"]`` if recorded. None when spans are off (or the SDK
        raised: the command goes on without a span)."""
        if not self._spans:
            return None
        try:  # free unless it raises (3.11's zero-cost try)
            attributes = {
                "actorlog.aggregate": self._name(aggregate),
                "actorlog.stream_id": str(stream_id),
            }
            command_id = options.get("command_id")
            if type(command_id) is str:
                attributes["actorlog.command_id"] = command_id
            span = self._tracer.start_span(
                f"actorlog.command {type(command).__name__}",
                kind=SpanKind.INTERNAL,
                attributes=attributes,
            )
            if self._record_traceparent:
                span_context = span.get_span_context()
                # Sampled spans only: an unsampled span is never exported, so its id would lead
                # nowhere, and 55 bytes an event plus headers' slower metadata path would be
                # paid for nothing (a 1%-sampled service would pay it on every command).
                if span_context.trace_flags.sampled:
                    options["headers"] = _with_traceparent(options.get("headers"), span_context)
            return span
        except Exception as e:
            self._failed(e)
            return None

    def _end_command(
        self,
        span: trace.Span | None,
        aggregate: Any,
        committed: Committed | None,
        error: BaseException | None,
    ) -> None:
        """End the command's span and count its outcome; never raises (the command's
        outcome is the caller's answer, whatever the SDK does)."""
        if isinstance(error, Exception | None):  # else cancelled: no outcome to count
            if committed is not None:
                outcome = "committed"
            elif isinstance(error, Rejected):
                outcome = "rejected"
            elif isinstance(error, Unauthorized):
                outcome = "unauthorized"
            else:
                outcome = "failed"
            key = (self._name(aggregate), outcome)
            self._counts[key] = self._counts.get(key, 0) + 1
        try:  # free unless it raises
            recording = span is not None and span.is_recording()
            if committed is not None and recording:
                assert span is not None
                span.set_attributes(
                    {
                        "actorlog.version": committed.version,
                        "actorlog.position": committed.position,
                        "actorlog.events": committed.events,
                    }
                )
                commit = self._commit_of(committed.position)
                if commit is not None:
                    span.add_link(commit)
            if error is not None and recording:
                assert span is not None
                span.set_attribute("error.type", type(error).__qualname__)
                if isinstance(error, Rejected):
                    # An answer, not a fault: no error status, and no exception event, whose
                    # traceback formatting cost ~0.5 ms (half of W1's withdrawals are refused).
                    span.set_attribute("actorlog.rejection", str(error))
                else:
                    if isinstance(error, Exception):
                        span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, str(error)))
            if span is not None:
                span.end()
        except Exception as e:
            self._failed(e)

    def _name(self, aggregate: Any) -> str:
        """The aggregate's name in the log (cached: asked on every command)."""
        try:
            return self._names[aggregate]
        except (KeyError, TypeError):
            name = getattr(aggregate, "aggregate_name", None)
            if not (isinstance(name, str) and name):
                name = kind_name(aggregate)
            with contextlib.suppress(TypeError):  # unhashable: not an aggregate anyway
                self._names[aggregate] = name
            return name

    def _commit_of(self, position: int) -> SpanContext | None:
        """The span context of the recent group commit that wrote ``position``."""
        if position <= 0:
            return None  # a command that emitted no event
        for first, last, span_context in reversed(self._recent):
            if first <= position <= last:
                return span_context
            if last < position:
                return None
        return None

    # -- the writer and the projectors (observers, called once per batch) ------------------

    def _on_commit(
        self, started: int, duration: int, appends: int, events: int, outcomes: Sequence[Any]
    ) -> None:
        """The writer's observer: called after a group commit is durable and before its
        appenders are told, so it must never raise."""
        try:
            self._observe_commit(started, duration, appends, events, outcomes)
        except Exception as e:
            self._failed(e)

    def _observe_commit(
        self, started: int, duration: int, appends: int, events: int, outcomes: Sequence[Any]
    ) -> None:
        failed = sum(1 for o in outcomes if isinstance(o, EngineError))
        attributes: dict[str, Any] = {
            "actorlog.appends": appends,
            "actorlog.events": events,
            "actorlog.failed": failed,
        }
        positions = [o for o in outcomes if not isinstance(o, EngineError) and o is not None]
        first = min((o.first_position for o in positions), default=0)
        last = max((o.last_position for o in positions), default=0)
        if events:
            attributes["actorlog.first_position"] = first
            attributes["actorlog.last_position"] = last
        # A root span: the writer's task serves every caller, it has no context of its own
        # (the command spans link to it). context.Context() is the empty context.
        span = self._tracer.start_span(
            "actorlog.commit",
            context=context.Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=started,
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} of {appends} appends failed"))
        span.end(end_time=started + duration)
        if events:
            self._recent.append((first, last, span.get_span_context()))
        self._commit_duration.record(duration / 1e9)
        self._commit_appends.record(appends)

    def _on_batch(self, host: Any, first: int, began: float, read: bool) -> None:
        """A projector host's observer (after a batch is applied): never raises."""
        try:
            self._observe_batch(host, first, began, read)
        except Exception as e:
            self._failed(e)

    def _observe_batch(self, host: Any, first: int, began: float, read: bool) -> None:
        elapsed = time.perf_counter() - began
        end = time.time_ns()
        name: str = host.name
        checkpoint: int = host.checkpoint
        applied = max(checkpoint - first + 1, 0)
        span = self._tracer.start_span(
            f"actorlog.project {name}",
            context=context.Context(),
            kind=SpanKind.INTERNAL,
            attributes={
                "actorlog.projector": name,
                "actorlog.first_position": first,
                "actorlog.checkpoint": checkpoint,
                "actorlog.events": applied,
                "actorlog.source": "log" if read else "window",
            },
            start_time=end - int(elapsed * 1e9),
        )
        if host.fault is not None:
            span.set_status(Status(StatusCode.ERROR, str(host.fault)))
        span.end(end_time=end)
        self._projector_batch.record(applied, {"actorlog.projector": name})

    # -- gauges (read when the SDK collects) -----------------------------------------------

    def _observe_commands(self, options: CallbackOptions) -> Iterable[Observation]:
        for (aggregate, outcome), count in list(self._counts.items()):
            yield Observation(count, {"actorlog.aggregate": aggregate, "actorlog.outcome": outcome})

    # The SDK calls these from its collecting thread (a periodic reader's), while the event
    # loop runs: they read only ints and len()s, which the GIL makes atomic, never
    # engine.statistics(), whose sums iterate dicts the loop mutates.

    def _observe_live(self, options: CallbackOptions) -> Iterable[Observation]:
        engine = self._engine
        if engine is not None:
            yield Observation(len(engine._aggregates._live))

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        engine = self._engine
        if engine is not None:
            head = engine._broadcast.head
            for host in list(engine._projectors.values()):  # fixed once open
                yield Observation(head - host.checkpoint, {"actorlog.projector": host.name})

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        engine = self._engine
        if engine is not None:
            yield Observation(engine._writer.statistics().pending)


class _TracedPending(Pending):
    """A ``send_nowait``'s ``Pending`` that ends the command's span when awaited."""

    __slots__ = ("_aggregate", "_span", "_telemetry")

    def __init__(
        self,
        pending: Pending,
        telemetry: OpenTelemetry,
        span: trace.Span | None,
        aggregate: Any,
    ) -> None:
        super().__init__(pending._reply)
        self._telemetry: OpenTelemetry | None = telemetry
        self._span = span
        self._aggregate = aggregate

    async def wait(self) -> Committed:
        """As ``Pending.wait``; the first outcome awaited ends the command's span."""
        try:
            committed = await super().wait()
        except BaseException as e:
            if not isinstance(e, Exception):
                raise  # cancelled: the command may still commit, a later wait ends the span
            self._end(None, e)
            raise
        self._end(committed, None)
        return committed

    def __await__(self) -> Iterator[Any]:
        return self.wait().__await__()

    def _end(self, committed: Committed | None, error: BaseException | None) -> None:
        telemetry, self._telemetry = self._telemetry, None
        if telemetry is not None:
            telemetry._end_command(self._span, self._aggregate, committed, error)


def _with_traceparent(headers: Any, span_context: SpanContext) -> Any:
    """``headers`` with the span's W3C ``traceparent`` appended, unless it has one already
    (the caller's own wins); malformed headers are passed on as they are, for ``send`` to
    refuse with its usual ``InvalidArgument``."""
    # What TraceContextTextMapPropagator.inject writes, without building a context for it.
    traceparent = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{span_context.trace_flags:02x}"
    )
    if headers is None:
        return (("traceparent", traceparent),)
    try:
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if any(type(p) is tuple and len(p) == 2 and p[0] == "traceparent" for p in pairs):
            return pairs
    except Exception:
        return headers
    return [*pairs, ("traceparent", traceparent)]
