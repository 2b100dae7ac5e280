"""What the HTTP layer costs: the FastAPI bank example under load beside W1, in one run.

``python -m benchmarks.http_load [--rounds 3] [--seconds 10] [--connections 64]`` starts
``examples.fastapi_bank`` (uvicorn, one worker, a fresh LMDB directory, durable) as a real
server on a free port and loads it with ``wrk`` (``apt-get install wrk``): each request is a
``Deposit`` to one of 1,000 accounts, with a bearer token, through ``decode_command``, the
policy and ``send_nowait``, answered once durable. Between its rounds, W1 runs in this
process (the same bank commands as JSON would carry, 64 clients, durable, the example's
one view). It prints one JSON line: requests a second, W1's commands a second, and their
ratio, the share of the engine's throughput that is left once every command is an HTTP
request. ``wrk`` runs on the same two cores as the server, so the ratio is a floor.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import trio

from actorlog import Engine
from examples.fastapi_bank.bank import Account, Balances, Deposit

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local path = "/accounts/acct-" .. (counter % 1000) .. "/commands"
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer teller-token",
    ["Content-Type"] = "application/json",
  }, '{"type": "Deposit", "amount": 1}')
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_round(seconds: int, connections: int) -> dict[str, Any]:
    """One server, one wrk run against it: requests a second and how many were not 200."""
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "examples.fastapi_bank",
                "--data",
                str(Path(tmp) / "data"),
                "--port",
                str(port),
            ],
            cwd=ROOT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the example server did not start") from None
                    time.sleep(0.05)
            script = Path(tmp) / "deposit.lua"
            script.write_text(_SCRIPT)
            out = subprocess.run(
                ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"no rate in wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"per_second": float(rate[1]), "not_200": int(bad[1]) if bad else 0}


async def w1(root: Path, *, commands: int, clients: int) -> float:
    """W1 as the example would run it without HTTP: the same engine (one view, durable),
    the same deposits to 1,000 accounts, ``clients`` concurrent senders."""
    async with Engine.open(root, aggregates=[Account], projectors=[Balances]) as engine:

        async def client(first: int) -> None:
            for i in range(first, commands, clients):
                await engine.send(Account, f"acct-{i % 1000}", Deposit(1))

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for first in range(clients):
                tg.start_soon(client, first)
        return commands / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_load", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--commands", type=int, default=20_000, help="W1 commands a round")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("benchmarks.http_load needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    http: list[dict[str, Any]] = []
    engine: list[float] = []
    for _ in range(args.rounds):  # interleaved: both see the same neighbours' load
        http.append(http_round(args.seconds, args.connections))
        with tempfile.TemporaryDirectory() as tmp:
            run = functools.partial(w1, Path(tmp), commands=args.commands, clients=args.connections)
            engine.append(trio.run(run))
    requests = statistics.median(h["per_second"] for h in http)
    commands = statistics.median(engine)
    print(
        json.dumps(
            {
                "workload": "HTTP deposits (FastAPI on uvicorn, wrk) beside W1 (in process)",
                "python": platform.python_version(),
                "rounds": args.rounds,
                "connections": args.connections,
                "http_requests_per_second": round(requests),
                "w1_commands_per_second": round(commands),
                "ratio_http_to_w1": round(requests / commands, 3),
                "not_200": sum(h["not_200"] for h in http),
                "rounds_http": [round(h["per_second"]) for h in http],
                "rounds_w1": [round(x) for x in engine],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
