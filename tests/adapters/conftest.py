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
* **One suite, every way of starting the server.** A test or module marked
  ``@pytest.mark.servers("reference", "uvicorn", "hypercorn")`` runs once per way
  (:data:`STARTERS`): the reference server on asyncio, uvloop and trio, the ASGI adapter
  (:mod:`agentcast.adapters.asgi`) under real uvicorn (asyncio) and real hypercorn (trio),
  each started in the test's loop on a free port. ``start_server`` returns the
  :class:`~agentcast.adapters.Server` or, under ASGI, an :class:`AsgiServed` that reads
  the same (the app's :class:`~agentcast.adapters.Service` and its address), so the test
  body is the same; ``server_kind`` names the way.
  Unmarked tests (TLS, CLI, signals) run on the reference server only.

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
from anyio.abc import Process, TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcast.adapters import Server, Service
from agentcast.adapters.asgi import AgentcastASGI, create_app, uvicorn_options
from agentcast.protocol import Settings

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # generous: a loaded CI machine; tests finish long before


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: The ways of starting the server, and the event loops each runs on (the reference server
#: runs on uvloop by default when it is installed, and on plain asyncio otherwise).
STARTERS = {
    "reference": ("asyncio", "uvloop", "trio"),
    "uvicorn": ("asyncio",),
    "hypercorn": ("trio",),
}
#: The anyio_backend value of each event loop.
LOOPS: dict[str, object] = {
    "asyncio": "asyncio",
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": "trio",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "servers(*kinds): run the test against each way of starting the server "
        f"({', '.join(STARTERS)}), on each event loop that way runs on",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("servers")
    if marker is None:
        return
    combos = [(backend, kind) for kind in marker.args for backend in STARTERS[kind]]
    # As a parametrize mark, so that it replaces the anyio_backend fixture's own params.
    metafunc.definition.add_marker(
        pytest.mark.parametrize(
            ("anyio_backend", "server_kind"),
            [(LOOPS[backend], kind) for backend, kind in combos],
            ids=[f"{kind}-{backend}" for backend, kind in combos],
        )
    )


@pytest.fixture
def server_kind() -> str:
    """How the server under test is started (see :data:`STARTERS`)."""
    return "reference"


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


class _Running:
    """Servers started in the test's loop (one task group), stopped after the test."""

    def __init__(self, tg: TaskGroup, server_kind: str) -> None:
        self.tg = tg
        self.kind = server_kind
        self.stops: list[Callable[[], Awaitable[None]]] = []

    async def start(self, settings: Settings | None = None, **options: Any) -> Server:
        if self.kind == "reference":
            options.setdefault("host", "127.0.0.1")
            server = Server(settings, port=0, **options)
            await self.tg.start(server.serve)
            return server
        send_buffer = options.pop("socket_send_buffer", None)
        app = create_app(Service(settings, **options))
        address = await self.serve_app(app, app.service.settings, socket_send_buffer=send_buffer)
        return AsgiServed(app, address)  # type: ignore[return-value]

    async def serve_app(
        self,
        app: Any,
        settings: Settings,
        *,
        socket_send_buffer: int | None = None,
        **overrides: Any,
    ) -> tuple[str, int]:
        """*app* under the ASGI server under test, configured from *settings* as the
        adapter documents (uvicorn: plus *overrides*); its ``(host, port)``."""
        assert self.kind in ("uvicorn", "hypercorn"), "an ASGI server is needed"
        sock = _listening_socket(socket_send_buffer)
        address = sock.getsockname()[:2]
        if self.kind == "uvicorn":
            self.stops.append(await _start_uvicorn(self.tg, app, sock, settings, overrides))
        else:
            self.stops.append(await _start_hypercorn(self.tg, app, sock, settings))
        return address


@pytest.fixture
async def _running(anyio_backend: str, server_kind: str) -> AsyncIterator[_Running]:
    async with anyio.create_task_group() as tg:
        running = _Running(tg, server_kind)
        try:
            yield running
        finally:
            with anyio.fail_after(TIMEOUT), anyio.CancelScope(shield=True):
                for stop in running.stops:
                    await stop()
            tg.cancel_scope.cancel()


@pytest.fixture
def start_server(_running: _Running) -> StartServer:
    """``await start_server(settings, **Server options)``: a listening server on a free
    loopback port, stopped after the test. Under an ASGI server the options it takes are
    ``authenticator`` and ``socket_send_buffer`` (set on the listening socket, whose
    accepted sockets inherit it)."""
    return _running.start


@pytest.fixture
def serve_asgi(_running: _Running) -> Callable[..., Awaitable[tuple[str, int]]]:
    """``await serve_asgi(app, settings, **uvicorn options)``: any ASGI application under
    the ASGI server under test (``server_kind``); returns its ``(host, port)``."""
    return _running.serve_app


class AsgiServed:
    """A service served by an ASGI server under test, read as tests read a reference
    :class:`Server`: the service's API (publishing, ``hub``, ``metrics``...) and the
    address the ASGI server listens on."""

    ssl_context = None

    def __init__(self, app: AgentcastASGI, address: tuple[str, int]) -> None:
        self.app = app
        self.service = app.service
        self.addresses = [address]

    @property
    def urls(self) -> list[str]:
        host, port = self.addresses[0]
        return [f"ws://{host}:{port}{self.service.settings.path}"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)


@pytest.fixture
def shut_down() -> Callable[[Server], Awaitable[None]]:
    """``await shut_down(server)``: close every WebSocket with 1001, as at a shutdown: the
    reference server's :meth:`~agentcast.adapters.Server.shutdown` (it then stops), or
    the ASGI application's :meth:`~agentcast.adapters.asgi.AgentcastASGI.shutdown`."""

    async def go(server: Server | AsgiServed) -> None:
        if isinstance(server, AsgiServed):
            await server.app.shutdown()
        else:
            server.shutdown()

    return go


def _listening_socket(send_buffer: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def _start_uvicorn(
    tg: TaskGroup, app: Any, sock: socket.socket, settings: Settings, overrides: dict[str, Any]
) -> Callable[[], Awaitable[None]]:
    """Real uvicorn in this (asyncio) loop, configured as the adapter documents."""
    import uvicorn

    options = {**uvicorn_options(settings), **overrides}
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=2,
        **options,
    )
    server = uvicorn.Server(config)
    done = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            done.set()

    tg.start_soon(serve)
    await eventually(lambda: server.started or done.is_set())
    assert server.started, "uvicorn did not start"

    async def stop() -> None:
        server.should_exit = True
        await done.wait()

    return stop


async def _start_hypercorn(
    tg: TaskGroup, app: Any, sock: socket.socket, settings: Settings
) -> Callable[[], Awaitable[None]]:
    """Real hypercorn in this (trio) loop: its keepalive pings every heartbeat interval
    (it has no Pong timeout) and refuses messages over max_message_size."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
    config.websocket_ping_interval = settings.heartbeat_interval
    config.websocket_max_message_size = settings.max_message_size
    config.graceful_timeout = 0.5  # its keepalive task outlives a closed WebSocket
    stopping = anyio.Event()
    done = anyio.Event()

    async def run(*, task_status: Any) -> None:
        try:
            await serve(app, config, shutdown_trigger=stopping.wait, task_status=task_status)
        finally:
            done.set()

    await tg.start(run)

    async def stop() -> None:
        stopping.set()
        await done.wait()

    return stop


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
