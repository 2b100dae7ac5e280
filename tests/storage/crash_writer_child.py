"""The child of ``tests/storage/test_crash_log.py``: appends through the Writer until killed.

    python -m tests.storage.crash_writer_child PATH TASKS SEED [SCHEMA]

Opens the LMDB log at PATH (``sync=True``; a log left by an earlier, killed child is
continued), or with SCHEMA the PostgreSQL log in that schema of the server whose URL is
PATH; runs TASKS tasks that each append 1-3 events at a time to their own stream with the
exact expected version, and prints one line per acknowledgement, flushed before the
next append::

    <stream id> <first version> <last version> <first position> <last position>

Each payload is the msgpack array ``[first version, index, count]`` of its append, so the
parent can tell a whole append from a torn one. Prints ``ready`` once the log is open. A
guard ends it after 20 s, so a parent that never kills it cannot leave it running.
"""

from __future__ import annotations

import random
import sys

import msgspec
import trio

from actorlog.lowlevel import Writer
from actorlog.storage import Append, EventLog, LmdbEventLog, PostgresEventLog

GUARD_SECONDS = 20

_encode = msgspec.msgpack.Encoder().encode


async def main(path: str, tasks: int, seed: int, schema: str | None) -> None:
    log: EventLog = LmdbEventLog(path) if schema is None else PostgresEventLog(path, schema=schema)
    writer = Writer(log)
    out = sys.stdout

    async def appender(stream_id: str, rng: random.Random) -> None:
        version = log.stream_version(stream_id)
        while True:
            count = rng.randint(1, 3)
            events = tuple(("Tick", _encode((version + 1, i, count))) for i in range(count))
            result = await writer.append(Append(stream_id, version, events))
            # Durable now (sync=True): only now may the parent hear of it.
            out.write(
                f"{stream_id} {result.first_version} {result.last_version} "
                f"{result.first_position} {result.last_position}\n"
            )
            out.flush()
            version = result.last_version

    with trio.move_on_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            for i in range(tasks):
                nursery.start_soon(appender, f"s{i}", random.Random(seed * 1000 + i))
            print("ready", flush=True)
    log.close()


if __name__ == "__main__":
    schema = sys.argv[4] if len(sys.argv) > 4 else None
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), schema)
