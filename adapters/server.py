"""The reference server: anyio (asyncio, uvloop or trio) around the Sans-IO core.

:class:`Server` is what user code holds, the equivalent of the seed's global
``wsManager``: it owns the :class:`~agentcast.protocol.Hub`, the authenticator and the
metrics, publishes (PROTOCOL.md section 8) and serves::

    server = Server(Settings(heartbeat_interval=30.0), port=3000)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)          # listening once this returns
            server.broadcast_agent_status("planner", "working", "indexing", progress=40)
            server.send_notification("success", "Build finished", user_id="user_abc123")

    anyio.run(main)                             # or backend="trio"

The publishing methods are synchronous and never wait for a socket: they append the same
prepared bytes to every recipient's pending output, wake the writers and return the
:class:`~agentcast.protocol.Published` result. Call them from the event loop's thread
(from another thread, go through ``anyio.from_thread.run_sync``).

:meth:`Server.serve` listens (TLS when an ``ssl_context`` is given) until
:meth:`Server.shutdown`, then sends close ``1001`` to every client, waits for the closing
handshakes up to ``drain_timeout`` and returns; :meth:`Server.run` does the same and turns
SIGINT/SIGTERM into :meth:`Server.shutdown` (and SIGHUP into a reload of the JWT key file,
when one is configured: see :mod:`agentcast.adapters.jwt_keyfile`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
from anyio.abc import (
    ByteStream,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.tls import TLSStream

from agentcast.protocol import (
    AgentStatus,
    Authenticator,
    ChatMessage,
    DevAuthenticator,
    Hub,
    Notification,
    Published,
    Settings,
)
from agentcast.protocol.messages import AgentState, NotificationLevel

from ._connection import IO_ERRORS, Connection, ConnectionBase, clock, format_peer
from ._protocol import Flusher, ProtocolConnection
from .metrics import Metrics

if TYPE_CHECKING:  # imported for real only with JWT configured (it needs PyJWT)
    from .jwt_keyfile import JwtKeyFile

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "DEFAULT_HOST", "DEFAULT_PORT", "Server"]

log = logging.getLogger("agentcast.server")

DEFAULT_HOST = "127.0.0.1"  # seed: ws://localhost:3000/ws; loopback until asked otherwise
DEFAULT_PORT = 3000  # seed
DEFAULT_DRAIN_TIMEOUT = 10.0  # issue 3: wait this long for closing handshakes at shutdown
#: After accept() fails for lack of file descriptors or memory, wait before trying again
#: (spinning would only burn the CPU the open connections need).
_ACCEPT_BACKOFF = 0.1
#: listen() backlog (the kernel caps it at net.core.somaxconn): a connect storm must not
#: find the queue full (a dropped SYN costs the client a second or more).
_BACKLOG = 65535
#: After the drain timeout, how long to wait for the dropped connections to be gone.
_ABORT_WAIT = 1.0


class _MeteredHub(Hub):
    """A hub that times every publish (the fan-out histogram) and tells the server."""

    def __init__(self, settings: Settings, on_publish: Callable[[float, bool], None]) -> None:
        super().__init__(settings)
        self._on_publish = on_publish

    def publish(
        self, item: AgentStatus | ChatMessage | Notification, *, now: float, wall: float
    ) -> Published:
        drops = self.stats.slow_client_drops
        start = time.perf_counter()
        try:
            return super().publish(item, now=now, wall=wall)
        finally:
            self._on_publish(time.perf_counter() - start, self.stats.slow_client_drops != drops)


class _SerialSend(ByteStream):
    """Serializes sends on the socket under a TLS stream: anyio's TLSStream may write
    from ``receive()`` (TLS control records) while our writer task is sending."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._lock = anyio.Lock()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        async with self._lock:
            await self._stream.send(item)

    async def send_eof(self) -> None:
        async with self._lock:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


class Attached(Protocol):
    """A connection served by another adapter (:attr:`Server.attached`)."""

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet written."""
        ...


class Server:
    """The agentcast server: hub, authenticator, metrics, listener. See the module doc."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        authenticator: Authenticator | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        ssl_context: ssl.SSLContext | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        socket_send_buffer: int | None = None,
        jwt_key_file: JwtKeyFile | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.hub: Hub = _MeteredHub(self.settings, self._published)
        if jwt_key_file is not None:
            if authenticator is not None and authenticator is not jwt_key_file.authenticator:
                raise ValueError("jwt_key_file brings its own authenticator: pass one of them")
            authenticator = jwt_key_file.authenticator
        #: Verifies tokens; the embedded default is the development authenticator.
        self.authenticator: Authenticator = (
            authenticator if authenticator is not None else DevAuthenticator()
        )
        #: The JWT key file, re-read when it changes (polled while serving) and on SIGHUP
        #: (under :meth:`run`).
        self.jwt_key_file = jwt_key_file
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.drain_timeout = drain_timeout
        #: SO_SNDBUF for accepted sockets (``None``: the kernel's autotuning, which on Linux
        #: may buffer up to ``net.ipv4.tcp_wmem``'s maximum, 4 MiB, per slow client before
        #: the ``max_send_buffer`` policy sees any backlog).
        self.socket_send_buffer = socket_send_buffer
        self._connections: dict[ConnectionBase, None] = {}
        #: Connections another adapter serves with this server (the ASGI adapter's
        #: WebSockets and HTTP requests), counted in the backlog and connection gauges.
        self.attached: dict[Attached, None] = {}
        self.metrics = Metrics(
            self.hub,
            tcp=lambda: len(self._connections) + len(self.attached),
            backlog=self.backlog,
        )
        #: ``(host, port)`` of every listening socket, once :meth:`serve` has started.
        self.addresses: list[tuple[str, int]] = []
        self._stopping: anyio.Event | None = None
        self._drained: anyio.Event | None = None
        self._hub_wakeup: anyio.Event | None = None
        self._hub_deadline = math.inf  # what the hub timer waits for

    # -- the in-process API (PROTOCOL.md 8) ---------------------------------------------

    def broadcast_agent_status(
        self,
        agent_name: str,
        state: AgentState,
        current_task: str | None = None,
        progress: float | None = None,
    ) -> Published:
        """Send ``agent_status`` to every authenticated connection. Invalid arguments raise
        ``ValueError``."""
        return self.hub.broadcast_agent_status(
            agent_name, state, current_task, progress, now=clock(), wall=time.time()
        )

    def broadcast_chat_message(
        self,
        conversation_id: str,
        message_id: str,
        content: str,
        sender: str,
        timestamp: str | None = None,
    ) -> Published:
        """Send ``chat_message`` to every authenticated connection (``timestamp``, ISO 8601,
        defaults to now)."""
        return self.hub.broadcast_chat_message(
            conversation_id, message_id, content, sender, timestamp, now=clock(), wall=time.time()
        )

    def send_notification(
        self, level: NotificationLevel, message: str, user_id: str | None = None
    ) -> Published:
        """Send ``notification`` to every authenticated connection, or only to every
        connection of *user_id*."""
        return self.hub.send_notification(level, message, user_id, now=clock(), wall=time.time())

    def publish(self, item: AgentStatus | ChatMessage | Notification) -> Published:
        """Publish an already validated payload."""
        return self.hub.publish(item, now=clock(), wall=time.time())

    def clients_count(self) -> int:
        """Open WebSocket connections, authenticated or not."""
        return self.hub.clients_count()

    def authenticated_clients_count(self) -> int:
        return self.hub.authenticated_clients_count()

    def backlog(self) -> int:
        """Bytes queued for clients and not yet written, over all connections."""
        return sum(c.conn.transport.backlog for c in self._connections) + sum(
            a.backlog for a in self.attached
        )

    @property
    def urls(self) -> list[str]:
        """The WebSocket URL of every listening socket (after :meth:`serve` started)."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        out = []
        for host, port in self.addresses:
            shown = f"[{host}]" if ":" in host else host
            out.append(f"{scheme}://{shown}:{port}{self.settings.path}")
        return out

    # -- running ------------------------------------------------------------------------

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`serve`, with SIGINT/SIGTERM starting the graceful shutdown (a second
        signal stops waiting for the clients) and SIGHUP re-reading the JWT key file."""
        async with anyio.create_task_group() as tg:
            if handle_signals:
                await tg.start(self._watch_signals)
            await self.serve(task_status=task_status)
            tg.cancel_scope.cancel()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until :meth:`shutdown`, then drain (see the module doc).

        With ``task_group.start(server.serve)``, the start returns once the server listens;
        :attr:`addresses` and :attr:`urls` then hold the bound addresses (``port=0``
        picks a free port)."""
        if self._stopping is not None:
            raise RuntimeError("this server is already serving")
        self._stopping = anyio.Event()
        self._drained = None
        self._hub_wakeup = anyio.Event()
        self._warn_about_defaults()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._hub_timer)
                if self.jwt_key_file is not None:
                    tasks.start_soon(self.jwt_key_file.watch)
                try:
                    asyncio.get_running_loop()
                except RuntimeError:  # trio: two tasks per connection on anyio streams
                    await self._serve_streams(task_status)
                else:  # asyncio, uvloop: protocol callbacks, no task per connection
                    await self._serve_protocols(task_status)
                tasks.cancel_scope.cancel()
        finally:
            self._stopping = self._drained = self._hub_wakeup = None

    def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001, drain, return from
        :meth:`serve`. Idempotent; call it from the event loop's thread."""
        if self._stopping is not None:
            self._stopping.set()

    # -- internals ----------------------------------------------------------------------

    async def _serve_protocols(self, task_status: TaskStatus[None]) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        flusher = Flusher(loop)
        tls = self.ssl_context
        listener = await loop.create_server(
            lambda: ProtocolConnection(self, flusher, loop),
            host=self.host,
            port=self.port,
            ssl=tls,
            ssl_handshake_timeout=self.settings.handshake_timeout if tls is not None else None,
            backlog=_BACKLOG,
            reuse_address=True,
        )
        try:
            self._record_addresses(sock.getsockname() for sock in listener.sockets)
            task_status.started()
            await self._stopping.wait()
            listener.close()
            await self._drain()
            # What is left after the drain timeout is dropped.
            self._drained = anyio.Event()
            for connection in list(self._connections):
                connection._abort()
            if self._connections:
                with anyio.move_on_after(_ABORT_WAIT):
                    await self._drained.wait()
        finally:
            listener.close()

    async def _serve_streams(self, task_status: TaskStatus[None]) -> None:
        assert self._stopping is not None
        multi = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, backlog=_BACKLOG
        )
        try:
            # create_tcp_listener() makes socket listeners (one per address family).
            listeners = [cast(SocketListener, listener) for listener in multi.listeners]
            self._record_addresses(
                listener.extra(SocketAttribute.local_address) for listener in listeners
            )
            async with anyio.create_task_group() as connections:
                async with anyio.create_task_group() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    task_status.started()
                    await self._stopping.wait()
                    accepting.cancel_scope.cancel()
                await multi.aclose()
                await self._drain()
                connections.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await multi.aclose()

    def _warn_about_defaults(self) -> None:
        if isinstance(self.authenticator, DevAuthenticator):
            log.warning(
                "DEVELOPMENT authentication: any token of 1-128 characters [A-Za-z0-9_.-] "
                "is accepted as user_<token>. Configure a real authenticator for production."
            )
        if self.settings.api_key is None:
            log.warning(
                "no API key configured: the publish API (/api/...) answers loopback clients only"
            )
        if self.settings.allowed_origins is None:
            log.warning(
                "no allowed origins configured: a page from ANY Origin may open a WebSocket "
                "(development); list your sites' origins in production"
            )

    async def _accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM...
                log.warning("accept() failed, retrying: %s", exc)
                await anyio.sleep(_ACCEPT_BACKOFF)
                continue
            tg.start_soon(self._handle, stream)

    async def _handle(self, raw: SocketStream) -> None:
        host, peer = format_peer(raw.extra(SocketAttribute.remote_address, None))
        connection: Connection | None = None
        try:
            if self.socket_send_buffer:
                sock = raw.extra(SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socket_send_buffer)
            stream: ByteStream = raw
            if self.ssl_context is not None:
                tls = await self._tls_handshake(raw, peer)
                if tls is None:
                    return
                stream = tls
            connection = Connection(self, stream, host=host, peer=peer)
            self._connections[connection] = None
            await connection.run()  # closes the stream
        except Exception:
            log.exception("unexpected error serving %s", peer)
        finally:
            if connection is None:
                with anyio.CancelScope(shield=True):
                    await raw.aclose()
            else:
                self._forget(connection)

    def _record_addresses(self, addresses: Iterable[object]) -> None:
        """Keep the bound ``(host, port)`` of each listening socket in :attr:`addresses`."""
        self.addresses = [
            (str(address[0]), int(address[1]))  # (host, port[, flowinfo, scope_id])
            for address in addresses
            if isinstance(address, tuple)
        ]

    def _forget(self, connection: ConnectionBase) -> None:
        """*connection* is over (its socket is closed)."""
        del self._connections[connection]
        if self._drained is not None and not self._connections:
            self._drained.set()

    async def _tls_handshake(self, raw: SocketStream, peer: str) -> TLSStream | None:
        assert self.ssl_context is not None
        try:
            with anyio.fail_after(self.settings.handshake_timeout):
                return await TLSStream.wrap(
                    _SerialSend(raw),
                    server_side=True,
                    ssl_context=self.ssl_context,
                    standard_compatible=False,
                )
        except (TimeoutError, ssl.SSLError, *IO_ERRORS) as exc:
            log.debug("TLS handshake with %s failed: %r", peer, exc)
            return None

    async def _drain(self) -> None:
        if not self._connections:
            return
        log.info("shutting down: closing %d connections", len(self._connections))
        self._drained = drained = anyio.Event()
        for connection in list(self._connections):
            connection.close(1001, "server shutting down")
        with anyio.move_on_after(self.drain_timeout) as scope:
            await drained.wait()
        if scope.cancelled_caught:
            log.warning(
                "drain timeout: dropping %d connections still closing", len(self._connections)
            )

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        watched = [signal.SIGINT, signal.SIGTERM]
        hangup = getattr(signal, "SIGHUP", None)  # not on Windows
        if self.jwt_key_file is not None and hangup is not None:
            watched.append(hangup)  # re-read the JWT keys
        with anyio.open_signal_receiver(*watched) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == hangup and self.jwt_key_file is not None:
                    log.info("%s: re-reading the JWT keys", name)
                    await self.jwt_key_file.reload()
                    continue
                if self._stopping is not None and not self._stopping.is_set():
                    log.info("%s: shutting down (send it again to stop at once)", name)
                    self.shutdown()
                elif self._drained is not None:
                    log.warning("%s again: not waiting for the clients any longer", name)
                    self._drained.set()

    def _published(self, seconds: float, dropped: bool) -> None:
        self.metrics.fanout.observe(seconds)
        if dropped:  # dropping a slow client may start a user's presence grace period
            self._poke_hub_timer()

    def _poke_hub_timer(self) -> None:
        """A user may have entered its presence grace period: wake the hub timer if it
        now has to act earlier than it is waiting for (once per closed connection, so
        the common case, nothing earlier, costs no task switch)."""
        wakeup = self._hub_wakeup
        if wakeup is not None and not wakeup.is_set():
            deadline = self.hub.next_deadline()
            if deadline is not None and deadline < self._hub_deadline:
                wakeup.set()

    async def _hub_timer(self) -> None:
        """Turn users offline when their presence grace period ends."""
        hub = self.hub
        while True:
            self._hub_wakeup = wakeup = anyio.Event()
            deadline = hub.next_deadline()
            self._hub_deadline = math.inf if deadline is None else deadline
            with anyio.CancelScope(deadline=self._hub_deadline) as scope:
                await wakeup.wait()
            now = clock()
            if deadline is not None and now < deadline and scope.cancelled_caught:
                now = deadline  # the loop woke a hair early: never before the deadline
            try:
                hub.handle_timer(now, time.time())
            except Exception:  # pragma: no cover - the hub does not raise
                log.exception("error in the hub timer")
