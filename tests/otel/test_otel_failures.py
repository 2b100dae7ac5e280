"""An OpenTelemetry SDK that raises (a span processor whose exporter is broken) must not
touch the engine: a committed command is answered as committed, the writer and the
projectors go on (review of issue 17, part 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from actorlog import Engine
from actorlog.otel import OpenTelemetry
from benchmarks.bank import Account, Balances, Deposit, OpenAccount


class Broken(SpanProcessor):
    """Raises on every span started or ended whose name starts with ``prefix``."""

    def __init__(self, prefix: str, when: str) -> None:
        self.prefix, self.when = prefix, when

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.when == "start" and (span.name or "").startswith(self.prefix):
            raise RuntimeError("the exporter is down")

    def on_end(self, span: ReadableSpan) -> None:
        if self.when == "end" and (span.name or "").startswith(self.prefix):
            raise RuntimeError("the exporter is down")


@pytest.mark.parametrize("when", ["start", "end"])
@pytest.mark.parametrize("prefix", ["actorlog.command", "actorlog.commit", "actorlog.project"])
async def test_a_raising_span_processor_never_fails_a_command(
    tmp_path: Path, prefix: str, when: str
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(Broken(prefix, when))
    otel = OpenTelemetry(tracer_provider=provider)
    results: list[Any] = []
    with anyio.fail_after(20):
        async with Engine.open(
            tmp_path, aggregates=[Account], projectors=[Balances], telemetry=otel
        ) as engine:
            await engine.send(Account, "a", OpenAccount("o"))
            for amount in (1, 2, 3):
                results.append(await engine.send(Account, "a", Deposit(amount)))
            results.append(await engine.send_nowait(Account, "a", Deposit(4)))
            await engine.wait_projected()
            assert await engine.query(Balances.balance, "a") == 10
    assert [r.version for r in results] == [2, 3, 4, 5]
    assert otel.errors > 0  # the SDK did raise, and was told to nobody but the log
    provider.shutdown()
