"""A child process that appends groups and dies before the heads are written back, and
what its log must then hold (shared by the heads write-back and integrity tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import os, sys
    import msgspec
    import actorlog.engine._log_lmdb as lmdb_log
    from actorlog.storage import Append, LmdbEventLog

    path, every, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lmdb_log.HEADS_FLUSH_EVERY = every
    log = LmdbEventLog(path)
    versions = {}
    for group in range(groups):
        appends = []
        for stream in ("a", "b", "c"):
            if (group + ord(stream)) % 2:  # streams interleave unevenly
                continue
            version = versions.get(stream, log.stream_version(stream))
            payload = ("Tick", msgspec.msgpack.encode(f"{stream}-{version + 1}"))
            appends.append(Append(stream, version, (payload,)))
            versions[stream] = version + 1
        outcomes, _ = log.append_batch(appends)
        assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    os._exit(0)  # a crash: no close, so heads not yet written back stay unwritten
    """
)


def crash_after(path: Path, *, every: int, groups: int) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(path), str(every), str(groups)], check=True)


def expected_versions(groups: int) -> dict[str, int]:
    """Each stream's version after the child's ``groups`` groups."""
    return {stream: len(p) for stream, p in stream_positions(groups).items()}


def stream_positions(groups: int) -> dict[str, list[int]]:
    """The log positions of each stream's events, in the child's order."""
    positions: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    position = 0
    for group in range(groups):
        for stream in positions:
            if not (group + ord(stream)) % 2:
                position += 1
                positions[stream].append(position)
    return positions
