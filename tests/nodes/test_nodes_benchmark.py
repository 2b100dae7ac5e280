"""``benchmarks.nodes`` W5 runs end to end (issue 15, part 7): one writer and 1 then 3
reader processes on LMDB and on PostgreSQL (reader nodes on a shared schema), one JSON
line each, with the cores the readers kept busy. A smoke test of the harness, not a
measurement: it asserts the lines and their fields, never a figure's size."""

from __future__ import annotations

import json
import os

import psycopg
import pytest

from benchmarks.nodes import main
from tests.support import Postgres


def _schemas(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}


def test_w5_quick_prints_lmdb_and_postgres_reader_lines(
    postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _schemas(postgres.url)
    assert main(["--quick", "--rounds", "1", "--only", "W5", "--dsn", postgres.url]) == 0
    rows = {
        row["workload"]: row
        for row in (json.loads(line) for line in capsys.readouterr().out.splitlines() if line)
    }
    assert set(rows) == {"W5-lmdb-readers", "W5-postgres-readers"}
    for row in rows.values():
        assert row["three_over_one_per_second"] > 0
        assert row["three_over_one_per_cpu_second"] > 0
        assert len(row["each_round"]) == 1
        assert row["reader_busy_cores_one"] > 0
        assert row["reader_busy_cores_three"] > 0
        assert len(row["each_round_reader_busy_cores"]) == 1
        assert row["cpu_count"] == os.cpu_count()
    # The server's share is measured on PostgreSQL only (it may round to 0: reader nodes
    # answer queries from their own projectors).
    assert rows["W5-postgres-readers"]["server_busy_cores_three"] >= 0
    assert "server_busy_cores_three" not in rows["W5-lmdb-readers"]
    # The benchmark's schema is dropped afterwards.
    assert not {s for s in _schemas(postgres.url) - before if s.startswith("bench_")}


def test_w1_write_nodes_quick_prints_a_line_per_configuration(
    postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    # Write nodes (aggregates only): 1, 2 and 4 processes by both routings, the unshared
    # control, and 2 and 4 processes each on a schema of its own, each a real process on
    # a fresh schema, dropped afterwards.
    before = _schemas(postgres.url)
    assert main(["--quick", "--rounds", "1", "--only", "W1-plain", "--dsn", postgres.url]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert {r["workload"] for r in rows} == {"W1-postgres-write-nodes"}
    assert sorted((r["processes"], r["routing"], "control" in r) for r in rows) == [
        (1, "-", False),
        (1, "-", True),
        (2, "affinity", False),
        (2, "affinity", True),
        (2, "random", False),
        (4, "affinity", False),
        (4, "affinity", True),
        (4, "random", False),
    ]
    base = next(r for r in rows if r["processes"] == 1 and "control" not in r)
    assert base["per_second_ratio"] == base["per_cpu_second_ratio"] == 1.0
    for row in rows:
        assert row["per_second_ratio"] > 0
        assert row["per_cpu_second_ratio"] > 0
        assert row["client_retries_per_command"] >= 0
        assert row["follower_rests"] >= 0
        if row["processes"] > 1:
            assert row["load"] == "64 clients a process"
            # Each shared configuration beside as many processes on logs of their own.
            assert ("per_cpu_second_vs_separate" in row) is ("control" not in row)
        # The ratios again, taken within each round: with one round, exactly the ratios.
        paired = row["paired"]
        assert paired["per_second_ratio"] == row["per_second_ratio"]
        assert paired["per_cpu_second_ratio_range"] == [row["per_cpu_second_ratio"]] * 2
        if "per_cpu_second_vs_separate" in row:
            assert paired["per_cpu_second_vs_separate"] == row["per_cpu_second_vs_separate"]
    assert not {s for s in _schemas(postgres.url) - before if s.startswith("bench_")}
