"""What OpenTelemetry costs W1: the engine without telemetry, with ``actorlog.otel`` on the
API alone (no SDK configured: spans are no-ops), and with the SDK exporting to no-op
exporters, in one run, as ratios.

``python -m benchmarks.otel [--rounds 3] [--commands 20000] [--no-sync]`` runs W1 (the bank,
1,000 accounts, 64 clients, both views live; durable unless ``--no-sync``) once per variant
per round, the variants interleaved, and prints one JSON line: each variant's median
commands a second and its ratio to the engine without telemetry. The SDK variants are what a
service pays that keeps every metric and traces every command (or 1% of them, with the
SDK's ``TraceIdRatioBased`` sampler): a ``BatchSpanProcessor`` (its own thread, as in
production) into an exporter that drops the spans, and a periodic metric reader (every
second) into one that drops the metrics. ``--instructions`` counts instead, with callgrind,
the instructions a W1 command (``sync=False``) costs in each variant: steadier than time on
a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from actorlog import Engine
from actorlog.otel import OpenTelemetry

from .bank import Account, Balances, Totals
from .workloads import _commands, _open_accounts, send_all

__all__ = ["main"]

# W1 under callgrind (--instructions): argv = tree, variant, commands.
_W1 = """
import sys, pathlib, tempfile, functools, trio
sys.path.insert(0, sys.argv[1])
from benchmarks import otel
with tempfile.TemporaryDirectory() as tmp:
    trio.run(functools.partial(otel.w1, pathlib.Path(tmp), sys.argv[2], accounts=1000,
             commands=int(sys.argv[3]), clients=64, sync=False))
"""

VARIANTS = ("off", "api only", "sdk all traced", "sdk 1% sampled")
# Run on request only (--variants): where the SDK's cost goes.
MORE_VARIANTS = ("sdk no traceparent", "sdk metrics only")


class _DropSpans(SpanExporter):
    """An exporter that drops every span: the SDK's cost, not an exporter's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _DropMetrics(MetricExporter):
    """A metric exporter that drops everything."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


async def w1(
    root: Path, variant: str, *, accounts: int, commands: int, clients: int, sync: bool
) -> float:
    """W1 with ``variant``'s telemetry: commands a second."""
    providers: list[Any] = []
    telemetry: OpenTelemetry | None = None
    if variant == "api only":
        telemetry = OpenTelemetry()  # the global providers: no SDK here, so no-ops
    elif variant == "sdk metrics only":
        reader = PeriodicExportingMetricReader(_DropMetrics(), export_interval_millis=1_000)
        meter_provider = MeterProvider(metric_readers=[reader])
        providers = [meter_provider]
        telemetry = OpenTelemetry(
            tracer_provider=trace.NoOpTracerProvider(), meter_provider=meter_provider
        )
    elif variant.startswith("sdk"):
        sampler = TraceIdRatioBased(0.01) if "sampled" in variant else None
        tracer_provider = TracerProvider(sampler=sampler)
        tracer_provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
        reader = PeriodicExportingMetricReader(_DropMetrics(), export_interval_millis=1_000)
        meter_provider = MeterProvider(metric_readers=[reader])
        providers = [tracer_provider, meter_provider]
        telemetry = OpenTelemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            record_traceparent="no traceparent" not in variant,
        )
    work = _commands(accounts, commands, seed=1)
    try:
        async with Engine.open(
            root,
            aggregates=[Account],
            projectors=[Balances, Totals],
            sync=sync,
            telemetry=telemetry,
        ) as engine:
            await _open_accounts(engine, accounts)
            seconds = await send_all(engine, work, clients)
    finally:
        for provider in providers:
            provider.shutdown()
    return commands / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.otel", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--no-sync", action="store_true", help="sync=False (no fsync)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS + MORE_VARIANTS)} ('off' always runs)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions a W1 command (sync=False) with callgrind instead",
    )
    args = parser.parse_args(argv)
    variants = ["off", *(v for v in args.variants.split(",") if v and v != "off")]
    unknown = set(variants) - set(VARIANTS + MORE_VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    if args.instructions:
        return _count_instructions(variants)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            with tempfile.TemporaryDirectory() as tmp:
                run = functools.partial(
                    w1,
                    Path(tmp),
                    variant,
                    accounts=args.accounts,
                    commands=args.commands,
                    clients=args.clients,
                    sync=not args.no_sync,
                )
                rate = trio.run(run)
            rates[variant].append(rate)
    off = statistics.median(rates["off"])
    print(
        json.dumps(
            {
                "workload": "W1 " + ("sync=False" if args.no_sync else "durable"),
                "rounds": args.rounds,
                "commands": args.commands,
                "python": platform.python_version(),
                "per_second": {v: round(statistics.median(r)) for v, r in rates.items()},
                "ratio_to_off": {v: round(statistics.median(r) / off, 3) for v, r in rates.items()},
                "rounds_per_second": {v: [round(x) for x in r] for v, r in rates.items()},
            }
        )
    )
    return 0


def _count_instructions(variants: list[str]) -> int:
    """Instructions a W1 command for each variant (the difference of a 2,000- and a
    12,000-command run over 10,000), the SDK's export threads included."""
    from .instructions import _instructions

    tree = str(Path(__file__).resolve().parent.parent)
    counts: dict[str, float] = {}
    for variant in variants:
        small = _instructions(_W1, tree, variant, "2000")
        large = _instructions(_W1, tree, variant, "12000")
        counts[variant] = (large - small) / 10_000
    print(
        json.dumps(
            {
                "workload": "W1 sync=False",
                "unit": "instructions a command",
                "instructions": {v: round(c) for v, c in counts.items()},
                "ratio_off_over_variant": {
                    v: round(counts["off"] / c, 3) for v, c in counts.items()
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
