"""The ``actorlog`` commands (click), their output (rich for people, JSON with ``--json``).

Every command but ``import`` reads: LMDB is opened read-only beside its writer (no lock of
the writer's is taken), PostgreSQL as one more client. Exit status: 0 done, 1 ``verify``
found damage, 2 a usage error or a log that cannot be opened or read.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..engine import EngineError
from ..engine._log import EventLog
from ..engine._log_check import LogWalk
from ..engine._log_lmdb import LmdbEventLog
from ..engine._records import StoredEvent
from ._logs import cache_names, event_document, layout, open_log, payload_value, storage_facts
from ._transfer import Format, export_log, import_log, read_export

__all__ = ["cli"]

_json = msgspec.json.Encoder().encode
MAX_REPORTED = 50  # damage lines printed by verify (all are counted)

log_argument = click.argument("log", metavar="LOG")
schema_option = click.option(
    "--schema", default="actorlog", show_default=True, help="PostgreSQL schema of the log."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (lines).")
# Positions, versions and counts as the logs hold them (signed 64-bit in PostgreSQL; an
# LMDB key packs 64 bits): a larger one is a usage error here, not a traceback there.
COUNT = click.IntRange(min=1, max=2**63 - 1)


def _poll_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or not 0 < value <= 3600:
        raise click.BadParameter(f"{value} is not a number of seconds in (0, 3600]")
    return value


class Output:
    """Where a command writes: rich consoles for people, plain JSON lines for programs."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        sys.stdout.buffer.write(_json(value) + b"\n")
        sys.stdout.buffer.flush()

    def event(self, event: StoredEvent) -> None:
        if self.as_json:
            self.json(event_document(event))
            return
        doc = event_document(event)
        when = datetime.fromtimestamp(event.timestamp, UTC).isoformat(timespec="milliseconds")
        kind = doc["type"] + (f" v{doc['type_version']}" if doc["type_version"] != 1 else "")
        data = doc.get("data", doc.get("data_error"))
        extra = "".join(
            f" {key}={doc[key]}"
            for key in ("command_id", "principal", "correlation_id", "causation_id", "headers")
            if key in doc
        )
        self.out.print(
            f"[bold]{event.position:>8}[/]  [cyan]{escape(event.stream_id)}[/]@{event.version}"
            f"  [green]{escape(kind)}[/]  [dim]{when}{escape(extra)}[/]  "
            f"{escape(_json(data).decode())}"
        )


class Unusable(click.ClickException):
    """The log (or a file) cannot be used: exit status 2, as for a usage error."""

    exit_code = 2


@contextlib.contextmanager
def _opened(target: str, schema: str, *, write: bool = False) -> Iterator[EventLog]:
    """The log, closed afterwards; a log that cannot be opened ends the command (exit 2)."""
    try:
        log = open_log(target, schema=schema, write=write)
    except EngineError as e:
        raise Unusable(str(e)) from None
    try:
        yield log
    except EngineError as e:
        raise Unusable(str(e)) from None
    finally:
        log.close()


def _progress(err: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@click.group()
@click.version_option(package_name="actorlog")
def cli() -> None:
    """Look inside an actorlog log: an LMDB directory or a postgresql:// URL.

    Safe on a live log: it reads as an LMDB reader (never the writer's lock) or as one more
    PostgreSQL client. Only `import` writes.
    """


@cli.command()
@log_argument
@schema_option
@json_option
def info(log: str, schema: str, as_json: bool) -> None:
    """Layout, head position, streams, size and map use, saved projector caches."""
    output = Output(as_json)
    with _opened(log, schema) as opened:
        head = opened.head_position()
        streams: set[str] = set()
        position = 0
        with _progress(output.err) as bar:
            task = bar.add_task("counting streams", total=head, visible=head > 100_000)
            while position < head:
                events = opened.read_all(position + 1, min(4096, head - position))
                if not events:
                    break
                streams.update(e.stream_id for e in events)
                position = events[-1].position
                bar.update(task, completed=position)
        caches: list[dict[str, Any]] = []
        listable = cache_names(opened)
        for name in listable or []:
            cache = opened.load_projector_cache(name)
            if cache is not None:
                caches.append(
                    {
                        "name": name,
                        "position": cache.position,
                        "format": cache.format,
                        "bytes": len(cache.state),
                    }
                )
        facts = {
            "layout": layout(opened),
            "head": head,
            "streams": len(streams),
            **storage_facts(opened),
            "projector_caches": caches,
        }
    if as_json:
        output.json(facts)
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        if key == "projector_caches":
            continue
        if key in ("data_bytes", "map_size", "max_map_size"):
            value = f"{value:,} bytes"
        elif key == "map_used":
            value = f"{value:.1%}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(f"[bold]{key}[/]", escape(f"{value}"))
    if caches:
        table.add_row(
            "[bold]projector caches[/]",
            "\n".join(
                f"{escape(c['name'])} at {c['position']:,} (format {c['format']}, "
                f"{c['bytes']:,} bytes)"
                for c in caches
            ),
        )
    elif listable is None:
        table.add_row("[bold]projector caches[/]", "(this backend cannot list them)")
    else:
        table.add_row("[bold]projector caches[/]", "none")
    output.out.print(table)


@cli.command()
@log_argument
@click.argument("stream_id", metavar="ID")
@click.option("--from-version", default=1, show_default=True, type=COUNT)
@click.option("--limit", type=COUNT, help="At most this many events.")
@schema_option
@json_option
def stream(
    log: str, stream_id: str, from_version: int, limit: int | None, schema: str, as_json: bool
) -> None:
    """The events of one stream, decoded (type, version, metadata, payload)."""
    output = Output(as_json)
    with _opened(log, schema) as opened:
        events = opened.read_stream(stream_id, from_version, limit)
        if not events and not as_json:
            output.err.print(f"stream {escape(stream_id)!r} has no events from {from_version}")
        for event in events:
            output.event(event)


@cli.command()
@log_argument
@click.option("--from", "start", default=1, show_default=True, type=COUNT)
@click.option("--limit", default=100, show_default=True, type=COUNT)
@schema_option
@json_option
def events(log: str, start: int, limit: int, schema: str, as_json: bool) -> None:
    """Events of the whole log from position --from on, decoded."""
    output = Output(as_json)
    with _opened(log, schema) as opened:
        position = start
        left = limit
        while left:
            batch = opened.read_all(position, min(left, 1000))
            for event in batch:
                output.event(event)
            if len(batch) < min(left, 1000):
                break
            left -= len(batch)
            position = batch[-1].position + 1


@cli.command()
@log_argument
@click.option("--from", "start", type=COUNT, help="First position (default: new events).")
@click.option("--count", type=COUNT, help="Stop after this many events.")
@click.option(
    "--poll",
    default=0.1,
    show_default=True,
    callback=_poll_seconds,
    help="Seconds between looks.",
)
@schema_option
@json_option
def tail(
    log: str, start: int | None, count: int | None, poll: float, schema: str, as_json: bool
) -> None:
    """Follow new events live as they are committed (Ctrl-C ends)."""
    output = Output(as_json)
    shown = 0
    with _opened(log, schema) as opened, contextlib.suppress(KeyboardInterrupt):
        position = opened.head_position() + 1 if start is None else start
        while count is None or shown < count:
            batch = opened.read_all(position, 1000)
            for event in batch[: None if count is None else count - shown]:
                output.event(event)
                shown += 1
            if batch:
                position = batch[-1].position + 1
                continue
            if isinstance(opened, LmdbEventLog) and opened.readonly:
                opened.wait_for_head(position - 1, poll)
            else:
                time.sleep(poll)


@cli.command()
@log_argument
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(min=1))
@schema_option
@json_option
def verify(log: str, batch: int, schema: str, as_json: bool) -> None:
    """Walk the whole log: every event reads and decodes, positions are gap-free, stream
    versions run on, and each stream's chain and head agree with the log.

    Exit status 1 if anything is damaged (each problem is reported)."""
    output = Output(as_json)
    with _opened(log, schema) as opened:
        live = getattr(opened, "others_append", False) is True or not isinstance(
            opened, LmdbEventLog
        )
        walk = LogWalk(opened, batch=batch, live=live, decode=payload_value)
        found = []
        with _progress(output.err) as bar:
            task = bar.add_task("verifying", total=walk.head)
            for damage in walk.damage():
                found.append(damage)
                bar.update(task, completed=walk.position)
                if not as_json and len(found) <= MAX_REPORTED:
                    where = f"position {damage.position}" if damage.position else "stream"
                    output.err.print(f"[red]damaged[/] {where}: {escape(damage.problem)}")
            bar.update(task, completed=walk.position)
        summary = {
            "ok": not found,
            "head": walk.head,
            "events": walk.checked,
            "streams": len(walk.versions),
            "damage": [
                {"position": d.position, "stream_id": d.stream_id, "problem": d.problem}
                for d in found
            ],
        }
    if as_json:
        output.json(summary)
    elif found:
        more = f" ({len(found) - MAX_REPORTED} more not shown)" if len(found) > MAX_REPORTED else ""
        output.out.print(
            f"[red bold]damaged[/]: {len(found)} problem(s) in {walk.checked:,} events "
            f"up to position {walk.head:,}{more}"
        )
    else:
        output.out.print(
            f"[green bold]ok[/]: {walk.checked:,} events in {len(walk.versions):,} streams, "
            f"positions 1..{walk.head:,} gap-free, every chain and head agrees"
        )
    if found:
        sys.exit(1)


def _format_of(path: str, given: str | None) -> Format:
    if given is not None:
        return "msgpack" if given == "msgpack" else "jsonl"
    return "msgpack" if path.endswith((".msgpack", ".mpk")) else "jsonl"


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "msgpack"]),
    help="Default: from the file name (.msgpack: msgpack, else JSON lines).",
)


@cli.command(name="export")
@log_argument
@click.argument("out", metavar="OUT")
@format_option
@schema_option
def export_command(log: str, out: str, fmt: str | None, schema: str) -> None:
    """Write every event of LOG to OUT (a file, or - for stdout), streaming."""
    err = Console(stderr=True)
    chosen = _format_of(out, fmt)
    with _opened(log, schema) as opened, _sink(out) as sink, _progress(err) as bar:
        task = bar.add_task("exporting", total=opened.head_position())
        count = export_log(
            opened, sink, chosen, source=log, progress=lambda n: bar.advance(task, n)
        )
    err.print(f"exported {count:,} events to {out} ({chosen})")


@cli.command(name="import")
@click.argument("source", metavar="IN")
@log_argument
@format_option
@schema_option
def import_command(source: str, log: str, fmt: str | None, schema: str) -> None:
    """Append the events of the export IN (a file, or - for stdin) to the new, empty LOG:
    each at its own position and version (timestamps become the import's)."""
    err = Console(stderr=True)
    chosen = _format_of(source, fmt)
    with _source(source) as stream_in:
        try:
            header, records = read_export(stream_in, chosen)
        except EngineError as e:
            raise Unusable(str(e)) from None
        with _opened(log, schema, write=True) as opened, _progress(err) as bar:
            task = bar.add_task("importing", total=header.head)
            count = import_log(
                opened, records, head=header.head, progress=lambda n: bar.advance(task, n)
            )
    err.print(f"imported {count:,} events into {log}")


@contextlib.contextmanager
def _sink(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        sink = Path(path).open("wb")  # noqa: SIM115 (closed below; the open's error is ours)
    except OSError as e:
        raise Unusable(f"cannot write {path}: {e}") from None
    with sink:
        yield sink


@contextlib.contextmanager
def _source(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        source = Path(path).open("rb")  # noqa: SIM115 (closed below; the open's error is ours)
    except OSError as e:
        raise Unusable(f"cannot read {path}: {e}") from None
    with source:
        yield source


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--quick", is_flag=True, help="Scale every count down ~20x (~10 s).")
@click.argument("harness_args", nargs=-1, type=click.UNPROCESSED)
def bench(quick: bool, harness_args: tuple[str, ...]) -> None:
    """Run the benchmark harness (python -m benchmarks) with these options (--only W1,W4,
    --json PATH, ...). Needs a source checkout: run it from the repository root."""
    root = Path.cwd()
    if (root / "benchmarks" / "harness.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the console script's path holds its own folder only
    try:
        from benchmarks.harness import main as harness  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise Unusable(
            "the benchmarks live in actorlog's source checkout; run this from its root"
        ) from None
    sys.exit(harness([*(["--quick"] if quick else []), *harness_args]))
