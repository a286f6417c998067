"""Fixtures for the adapter tests: a real server on each backend, real `websockets` clients.

How every test in this folder runs
----------------------------------

* **The server under test runs in the test's own event loop**, on the backend given by the
  ``anyio_backend`` fixture, parametrized over ``asyncio`` and ``trio``: each test runs
  once per backend. ``start_server`` starts a :class:`~agentcast.adapters.Server` on a free
  loopback port inside that loop, so the test body calls the server (publish, counters)
  directly, as application code would.
* **The clients are the `websockets` package's asyncio client.** It cannot run on trio, so
  every client lives in one separate thread that runs its own asyncio loop (an anyio
  blocking portal, started once per session). The test body drives them through
  :class:`Clients` and :class:`Peer`: each method runs a coroutine in the client thread
  and awaits its result through ``anyio.to_thread.run_sync``, so the server's loop keeps
  running meanwhile. The client thread is the same for both backends, so the server is
  the only thing that changes between the two runs.
* **Subprocess tests** (CLI, shutdown, ``scripts/serve``) run the server with
  ``--backend`` set to the backend under test.

Nothing waits by sleeping: a condition on the server is awaited with :func:`eventually`
(re-checked until true, failing after a timeout), a client-side event with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.from_thread import BlockingPortal, start_blocking_portal
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcast.adapters import Server
from agentcast.protocol import Settings

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # generous: a loaded CI machine; tests finish long before


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- waiting ------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait until *predicate()* is true (checked every 10 ms); fail after *timeout*."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[None]]:
    return eventually


def tcp_connections(server: Server) -> int:
    """TCP connections the server holds, as its metrics report them."""
    value = server.metrics.registry.get_sample_value("agentcast_tcp_connections")
    assert value is not None
    return int(value)


@pytest.fixture
def held() -> Callable[[Server], int]:
    return tcp_connections


# -- clients in their own asyncio thread -------------------------------------------------


class FrameLog(logging.Handler):
    """Collects the frames a websockets client logs at DEBUG (``< PING ...``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Peer:
    """One `websockets` client connection, living in the client thread."""

    def __init__(self, clients: Clients, ws: ClientConnection, frames: FrameLog) -> None:
        self._clients = clients
        self.ws = ws
        self.frames = frames

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message, decoded."""

        async def go() -> str | bytes:
            return await asyncio.wait_for(self.ws.recv(), timeout)

        return json.loads(await self._clients.call(go))

    async def recv_until(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message of type *kind*, skipping others."""
        while True:
            message = await self.recv(timeout)
            if message["type"] == kind:
                return message

    async def recv_many(self, n: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        async def go() -> list[str | bytes]:
            async with asyncio.timeout(timeout):
                return [await self.ws.recv() for _ in range(n)]

        return [json.loads(m) for m in await self._clients.call(go)]

    async def nothing_pending(self) -> bool:
        """Whether no message has arrived that was not read yet (after a round trip)."""

        async def go() -> bool:
            await self.ws.send(json.dumps({"type": "ping"}))
            message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            return bool(message["type"] == "pong")

        return await self._clients.call(go)

    async def send(self, message: object) -> None:
        data = message if isinstance(message, str | bytes) else json.dumps(message)
        await self._clients.call(self.ws.send, data)

    async def close(self, code: int = 1000) -> None:
        await self._clients.call(self.ws.close, code)

    async def closed_by_server(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Read until the connection closes; the code and reason of the server's close
        frame (fails if it closed without one)."""

        async def go() -> tuple[int, str]:
            async with asyncio.timeout(timeout):
                with suppress(ConnectionClosed):
                    while True:
                        await self.ws.recv()
                await self.ws.wait_closed()
            rcvd = self.ws.protocol.close_rcvd
            assert rcvd is not None, "closed without a close frame from the server"
            return rcvd.code, rcvd.reason

        return await self._clients.call(go)

    async def pause_reading(self) -> None:
        """Stop reading the socket: no frame is processed (and no Ping answered)."""
        await self._clients.call(self.ws.transport.pause_reading)

    async def resume_reading(self) -> None:
        await self._clients.call(self.ws.transport.resume_reading)

    async def reset(self) -> None:
        """Drop the TCP connection with a reset (RST), as a crashed client would."""
        await self._clients.call(_reset, self.ws)


def _reset(ws: ClientConnection) -> None:
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


class Clients:
    """Opens `websockets` clients in the client thread; closes them after the test."""

    def __init__(self, portal: BlockingPortal) -> None:
        self.portal = portal
        self._open: list[ClientConnection] = []

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run *fn* (a coroutine function or a plain function) in the client thread."""
        return await anyio.to_thread.run_sync(self.portal.call, fn, *args)

    async def connect(self, url: str, **kwargs: Any) -> Peer:
        """A connected client. By default it never pings on its own (``ping_interval=None``),
        so the only frames it sends are the test's and its automatic Pong answers."""
        frames = FrameLog()
        logger = logging.getLogger(f"test.client.{id(frames)}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(frames)
        options: dict[str, Any] = {
            "proxy": None,
            "ping_interval": None,
            "open_timeout": TIMEOUT,
            "logger": logger,
        }
        options.update(kwargs)

        async def go() -> ClientConnection:
            return await connect(url, **options)

        ws = await self.call(go)
        self._open.append(ws)
        return Peer(self, ws, frames)

    def close_all(self) -> None:
        async def go() -> None:
            for ws in self._open:
                ws.transport.abort()

        self.portal.call(go)
        self._open.clear()


@pytest.fixture(scope="session")
def client_portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


@pytest.fixture
def clients(client_portal: BlockingPortal) -> Iterator[Clients]:
    c = Clients(client_portal)
    yield c
    c.close_all()


# -- the server in the test's loop -------------------------------------------------------

StartServer = Callable[..., Awaitable[Server]]


def ws_url(server: Server, query: str = "") -> str:
    url = server.urls[0]
    return f"{url}?{query}" if query else url


def http_url(server: Server, path: str) -> str:
    host, port = server.addresses[0]
    scheme = "https" if server.ssl_context is not None else "http"
    return f"{scheme}://{host}:{port}{path}"


@pytest.fixture
async def start_server(anyio_backend: str) -> AsyncIterator[StartServer]:
    """``await start_server(settings, **Server options)``: a listening server on a free
    loopback port, stopped (cancelled) after the test."""
    async with anyio.create_task_group() as tg:

        async def start(settings: Settings | None = None, **options: Any) -> Server:
            options.setdefault("host", "127.0.0.1")
            server = Server(settings, port=0, **options)
            await tg.start(server.serve)
            return server

        yield start
        tg.cancel_scope.cancel()


# -- plain HTTP (urllib in a worker thread) ----------------------------------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(
    url: str, method: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def http(
    url: str, method: str = "GET", body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one HTTP request made with urllib."""
    return await anyio.to_thread.run_sync(_http, url, method, body, headers)


@pytest.fixture
def http_request() -> Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]:
    return http


# -- the server as a subprocess ----------------------------------------------------------

_URL = re.compile(r"agentcast listening on (wss?://\S+)")


class ServerProcess:
    """A server started from the command line; its combined output is kept in ``lines``."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self._listening = anyio.Event()

    async def read_output(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                match = _URL.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                    self._listening.set()
        self._listening.set()

    async def listening(self) -> str:
        with anyio.fail_after(60):  # the first `scripts/serve` may install the package
            await self._listening.wait()
        assert self.url, "the server exited without listening:\n" + "\n".join(self.lines)
        return self.url

    @property
    def http_base(self) -> str:
        return self.url.replace("ws://", "http://", 1).rsplit("/", 1)[0]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
async def spawn_server(
    anyio_backend: str,
) -> AsyncIterator[Callable[..., Awaitable[ServerProcess]]]:
    """``await spawn_server(*flags, command=None)``: ``python -m agentcast.adapters serve
    --port 0 --backend <backend under test> *flags`` (or *command*), listening."""
    started: list[ServerProcess] = []
    async with anyio.create_task_group() as tg:

        async def spawn(*flags: str, command: list[str] | None = None) -> ServerProcess:
            argv = command or [
                sys.executable,
                "-m",
                "agentcast.adapters",
                "serve",
                "--port",
                "0",
                "--backend",
                anyio_backend,
                *flags,
            ]
            process = await anyio.open_process(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_clean_env(), cwd=REPO
            )
            server = ServerProcess(process)
            started.append(server)
            tg.start_soon(server.read_output)
            await server.listening()
            return server

        try:
            yield spawn
        finally:
            for server in started:
                if server.process.returncode is None:
                    server.process.kill()
                with anyio.CancelScope(shield=True):
                    await server.process.wait()
            tg.cancel_scope.cancel()
