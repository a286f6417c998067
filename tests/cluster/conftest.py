"""Fixtures for the cluster tests: a real Redis, never a mock.

``redis_server`` starts a private ``redis-server`` (no persistence) on a free loopback
port once per test session, or uses ``REDIS_URL`` when it is set. Without either, the
tests fail under CI (``CI=true``), with a message saying what is missing, and are skipped
elsewhere. Each test gets its own stream name (``stream``), so tests never see each
other's entries or presence.

A test that has to stop Redis (a restart while publishing) starts its own with
:func:`start_redis` on a port it chooses.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 10.0
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes] | None

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server (raw output)."""
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=TIMEOUT,
        ).stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(TIMEOUT)


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(
            f"{reason}: the cluster tests need a Redis (redis-server on PATH, or REDIS_URL); "
            "they must run in CI",
            pytrace=False,
        )
    pytest.skip(reason)


def start_redis(port: int | None = None) -> RedisServer:
    """A private redis-server on *port* (a free one by default), ready when returned."""
    exe = shutil.which("redis-server")
    if exe is None:
        _missing("redis-server is not on PATH")
        raise AssertionError("unreachable")
    port = port if port is not None else free_port()
    process = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return RedisServer(f"redis://127.0.0.1:{port}", port, process)
        except OSError:
            time.sleep(0.02)  # not yet listening: poll the port
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    url = os.environ.get("REDIS_URL")
    if url:
        port = int(url.rsplit(":", 1)[1].split("/")[0]) if url.count(":") >= 2 else 6379
        yield RedisServer(url, port, None)
        return
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream(request: pytest.FixtureRequest) -> str:
    """A stream name (and key prefix) of this test's own."""
    return f"t{os.getpid()}-{next(_names)}-{request.node.name[:40]}".replace(" ", "_")


@pytest.fixture
def own_redis() -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers (on a port of the test's choosing); all stopped after."""
    started: list[RedisServer] = []

    def start(port: int | None = None) -> RedisServer:
        server = start_redis(port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


REPO = Path(__file__).resolve().parents[2]
