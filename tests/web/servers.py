"""Start an example web host as a real server, in its own process, on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
TELLER = {"Authorization": "Bearer teller-token"}
ALICE = {"Authorization": "Bearer alice-token"}


@dataclass
class Server:
    """A running example: its base URL and its process."""

    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; its exit status (0: a clean shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the server did not stop within 20 s of SIGTERM") from None


def free_port() -> int:
    """A port nothing listens on right now (the OS's pick for a socket bound to 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(module: str, data: Path, *options: str) -> Server:
    """``python -m module --data data --port P``, once it answers ``/health``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--data", str(data), "--port", str(port), *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"{module} exited {process.returncode}: {err.decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Server(url, process)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"{module} did not answer within 30 s")


@contextlib.contextmanager
def running(module: str, data: Path, *options: str) -> Iterator[Server]:
    """A started server, stopped (and checked to stop cleanly) on exit."""
    server = start(module, data, *options)
    try:
        yield server
    finally:
        status = server.stop()
        _, err = server.process.communicate()
    log = err.decode()
    if "Uvicorn" in log:
        # uvicorn re-raises the signal it stopped on once it has shut down gracefully, so
        # its status is -SIGTERM either way: its log says whether the lifespan (which
        # closes the engine) completed.
        assert "Application shutdown complete" in log, log[-2000:]
        assert status in (0, -signal.SIGTERM), f"{module} exited {status}: {log[-2000:]}"
    else:
        assert status == 0, f"{module} exited {status}: {log[-2000:]}"
