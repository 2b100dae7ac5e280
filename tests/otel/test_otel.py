"""actorlog.otel: the spans and metrics of a real engine (LMDB), read back through the
OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from actorlog import (
    Aggregate,
    DefinitionError,
    Engine,
    HandlerError,
    Projector,
    ProjectorFaulted,
    Recorded,
    applies,
    handles,
)
from actorlog.otel import OpenTelemetry
from benchmarks.bank import Account, Balances, Deposit, Deposited, InsufficientFunds, Withdraw

ROOT = Path(__file__).resolve().parents[2]


class Telemetry:
    """An OpenTelemetry instrumentation whose spans and metrics stay in memory."""

    def __init__(self, **options: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.otel = OpenTelemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if (s.name or "").startswith(prefix)]

    def metrics(self) -> dict[str, list[Any]]:
        """Each metric's data points, by name."""
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def _commands(points: list[Any]) -> dict[str, int]:
    return {p.attributes["actorlog.outcome"]: p.value for p in points}


async def test_spans_and_metrics_of_commands_commits_and_projector_batches(
    tmp_path: Path, telemetry: Telemetry
) -> None:
    caller = telemetry.tracer_provider.get_tracer("test")
    async with Engine.open(
        tmp_path, aggregates=[Account], projectors=[Balances], telemetry=telemetry.otel
    ) as engine:
        with caller.start_as_current_span("request") as request:
            first = await engine.send(Account, "a-1", Deposit(5), command_id="c-1")
            second = await engine.send(Account, "a-2", Deposit(7))
            with pytest.raises(InsufficientFunds):
                await engine.send(Account, "a-1", Withdraw(100))
            # The caller's own traceparent wins over the command span's.
            own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            third = await engine.send(
                Account, "a-1", Deposit(1), headers={"traceparent": own, "x": "y"}
            )
        await engine.wait_projected(third.position)
        stored = engine.log.read_all()
        metrics = telemetry.metrics()  # gauges are read while the engine is open

    commands = telemetry.named("actorlog.command")
    assert [s.name for s in commands] == [
        "actorlog.command Deposit",
        "actorlog.command Deposit",
        "actorlog.command Withdraw",
        "actorlog.command Deposit",
    ]
    request_context = request.get_span_context()
    for span in commands:  # children of the caller's span
        assert span.parent is not None and span.parent.span_id == request_context.span_id
        assert span.context is not None
        assert span.context.trace_id == request_context.trace_id
    assert commands[0].attributes is not None
    assert commands[0].attributes["actorlog.stream_id"] == "a-1"
    assert commands[0].attributes["actorlog.command_id"] == "c-1"
    assert commands[0].attributes["actorlog.position"] == first.position
    assert commands[1].attributes is not None
    assert commands[1].attributes["actorlog.position"] == second.position
    rejected = commands[2]
    assert rejected.attributes is not None
    assert rejected.attributes["error.type"] == "InsufficientFunds"
    assert rejected.status.status_code is not StatusCode.ERROR  # an answer, not a fault

    # The traceparent of each command's own span is recorded with its events.
    assert [e.position for e in stored] == [first.position, second.position, third.position]
    for event, span in zip(stored[:2], commands[:2], strict=True):
        assert span.context is not None
        c = span.context
        expected = f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}"
        assert event.headers == (("traceparent", expected),)
    assert stored[2].headers == (("traceparent", own), ("x", "y"))

    # Each command span links to the group commit that made it durable.
    commits = telemetry.named("actorlog.commit")
    assert len(commits) >= 3  # one command at a time: one commit each (plus any saves)
    by_id = {c.context.span_id: c for c in commits if c.context is not None}
    for span, committed in zip(commands[:2], (first, second), strict=True):
        (link,) = span.links
        commit = by_id[link.context.span_id]
        assert commit.parent is None  # a root span: the writer serves every caller
        assert commit.attributes is not None
        first_position = commit.attributes["actorlog.first_position"]
        last_position = commit.attributes["actorlog.last_position"]
        assert isinstance(first_position, int) and isinstance(last_position, int)
        assert first_position <= committed.position <= last_position
        assert commit.start_time is not None and commit.end_time is not None
        assert commit.start_time <= commit.end_time
    batches = telemetry.named("actorlog.project Balances")
    applied = [b.attributes["actorlog.events"] for b in batches if b.attributes is not None]
    assert all(isinstance(n, int) for n in applied)
    assert (
        sum(n for n in applied if isinstance(n, int)) == third.position
    )  # every event, once (it started from an empty log)

    assert _commands(metrics["actorlog.commands"]) == {"committed": 3, "rejected": 1}
    (duration,) = [p for p in metrics["actorlog.commit.duration"]]
    assert duration.count == len([c for c in commits])
    assert sum(p.sum for p in metrics["actorlog.commit.appends"]) == 4 - 1  # rejected: none
    (live,) = metrics["actorlog.aggregates.live"]
    assert live.value == 2
    (lag,) = metrics["actorlog.projector.lag"]
    assert lag.attributes == {"actorlog.projector": "Balances"} and lag.value == 0
    (batch,) = metrics["actorlog.projector.batch"]
    assert batch.sum == third.position


class Boom(msgspec.Struct, frozen=True):
    pass


class Fragile(Aggregate):
    @handles
    def boom(self, c: Boom) -> list[Boom]:
        raise RuntimeError("the handler broke")

    @applies
    def boomed(self, e: Boom) -> None:
        pass


class Halting(Projector):
    """A projector whose applier raises: it halts at the first deposit."""

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        raise ValueError("the applier broke")

    def nothing(self) -> None:
        return None


def test_send_nowait_and_failures_on_asyncio(tmp_path: Path, telemetry: Telemetry) -> None:
    """``send_nowait``'s span ends when its Pending is awaited; a failed command is an error
    span and counted as failed, and so is a projector's batch that halted it; on asyncio as
    on trio."""

    async def main() -> None:
        async with Engine.open(
            tmp_path, aggregates=[Account, Fragile], projectors=[Halting], telemetry=telemetry.otel
        ) as engine:
            pending = engine.send_nowait(Account, "a-1", Deposit(3))
            assert telemetry.named("actorlog.command") == []  # not durable yet
            committed = await pending
            with pytest.raises(HandlerError):
                await engine.send(Fragile, "f-1", Boom())
            (span, failed) = telemetry.named("actorlog.command")
            assert span.attributes is not None
            assert span.attributes["actorlog.position"] == committed.position
            assert failed.status.status_code is StatusCode.ERROR
            assert failed.attributes is not None
            assert failed.attributes["error.type"] == "HandlerError"
            outcomes = _commands(telemetry.metrics()["actorlog.commands"])
            assert outcomes == {"committed": 1, "failed": 1}
            with pytest.raises(ProjectorFaulted):
                await engine.wait_projected(committed.position)
            (halted,) = telemetry.named("actorlog.project Halting")
            assert halted.status.status_code is StatusCode.ERROR
            assert halted.attributes is not None and halted.attributes["actorlog.events"] == 0

    asyncio.run(main())


async def test_detached_when_closed_and_one_engine_at_a_time(tmp_path: Path) -> None:
    telemetry = Telemetry()
    async with Engine.open(
        tmp_path / "one", aggregates=[Account], telemetry=telemetry.otel
    ) as engine:
        assert "send" in vars(engine)  # the instance's send is the traced one
        with pytest.raises(DefinitionError, match="still open"):
            async with Engine.open(
                tmp_path / "two", aggregates=[Account], telemetry=telemetry.otel
            ):
                pass
        await engine.send(Account, "a-1", Deposit(1))
    assert "send" not in vars(engine) and "send_nowait" not in vars(engine)
    spans = len(telemetry.spans.get_finished_spans())
    # Reusable once its engine closed; the closed engine is no longer observed.
    async with Engine.open(
        tmp_path / "two", aggregates=[Account], telemetry=telemetry.otel
    ) as other:
        await other.send(Account, "a-1", Deposit(1))
    assert len(telemetry.named("actorlog.command")) == 2
    assert len(telemetry.spans.get_finished_spans()) > spans
    with pytest.raises(DefinitionError, match="telemetry"):
        async with Engine.open(tmp_path / "three", aggregates=[Account], telemetry=object()):  # type: ignore[arg-type]
            pass


def test_nothing_is_imported_without_telemetry(tmp_path: Path) -> None:
    """An engine opened without ``telemetry=`` never imports opentelemetry."""
    script = textwrap.dedent(
        f"""
        import sys, trio
        import actorlog, actorlog.storage, actorlog.lowlevel, actorlog.testing
        from benchmarks.bank import Account, Balances, Deposit

        async def main():
            async with actorlog.Engine.open(
                {str(tmp_path)!r}, aggregates=[Account], projectors=[Balances]
            ) as engine:
                await engine.send(Account, "a-1", Deposit(1))

        trio.run(main)
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        assert "actorlog.engine._otel" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)


async def test_metrics_are_collected_from_another_thread_while_commands_run(
    tmp_path: Path, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's periodic reader collects in its own thread: the gauges must read nothing
    the event loop is mutating (engine.statistics() iterates the live aggregates)."""
    collected = 0
    async with Engine.open(
        tmp_path, aggregates=[Account], projectors=[Balances], telemetry=telemetry.otel
    ) as engine:
        done = False

        def collect() -> None:
            nonlocal collected
            while not done:
                telemetry.reader.get_metrics_data()
                collected += 1

        async def client(n: int) -> None:
            for i in range(30):
                await engine.send(Account, f"a-{n}-{i % 7}", Deposit(1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, collect))
            async with trio.open_nursery() as clients:
                for n in range(16):
                    clients.start_soon(client, n)
            done = True
    assert collected > 0
    failures = [r for r in caplog.records if "Callback failed" in r.getMessage()]
    assert not failures, failures[0].exc_info


async def test_an_unsampled_command_records_no_traceparent(tmp_path: Path) -> None:
    """A span the sampler drops is never exported: its id is not written into the events,
    and the command is still counted."""
    reader = InMemoryMetricReader()
    otel = OpenTelemetry(
        tracer_provider=TracerProvider(sampler=ALWAYS_OFF),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    async with Engine.open(tmp_path, aggregates=[Account], telemetry=otel) as engine:
        committed = await engine.send(Account, "a-1", Deposit(1))
        (event,) = engine.log.read_all()
        assert event.position == committed.position and event.headers is None
        data = reader.get_metrics_data()
    assert data is not None
    (count,) = [
        p
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == "actorlog.commands"
        for p in m.data.data_points
    ]
    assert isinstance(count, NumberDataPoint)
    assert count.value == 1


async def test_metrics_only(tmp_path: Path) -> None:
    """``traces=False``: no span at all, no traceparent, and the commands still counted."""
    telemetry = Telemetry(traces=False)
    async with Engine.open(tmp_path, aggregates=[Account], telemetry=telemetry.otel) as engine:
        await engine.send(Account, "a-1", Deposit(1))
        with pytest.raises(InsufficientFunds):
            await engine.send(Account, "a-1", Withdraw(5))
        await engine.send_nowait(Account, "a-1", Deposit(2))
        (event, _) = engine.log.read_all()
        metrics = telemetry.metrics()
    assert telemetry.named("actorlog.command") == []
    assert event.headers is None
    assert _commands(metrics["actorlog.commands"]) == {"committed": 2, "rejected": 1}
    assert sum(p.count for p in metrics["actorlog.commit.duration"]) >= 2
