"""The reference server: listening sockets, TLS, signals and drain around a service.

:class:`Server` serves a :class:`~agentcast.adapters.service.Service` (hub, authenticator,
metrics, publishing API, hub timer: the seed's ``wsManager``) on its own sockets, with
anyio (asyncio, uvloop or trio)::

    server = Server(Settings(heartbeat_interval=30.0), port=3000)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)          # listening once this returns
            server.broadcast_agent_status("planner", "working", "indexing", progress=40)
            server.send_notification("success", "Build finished", user_id="user_abc123")

    anyio.run(main)                             # or backend="trio"

The publishing methods (and ``hub``, ``metrics``, ``settings``...) are the service's,
offered on the server too for convenience: ``server.service`` is the object to hand to
the rest of an application, and the one an ASGI application can serve as well.

:meth:`Server.serve` runs the service's background work and listens (TLS when an
``ssl_context`` is given) until :meth:`Server.shutdown`, then sends close ``1001`` to
every client, waits for the closing handshakes up to ``drain_timeout`` and returns;
:meth:`Server.run` does the same and turns SIGINT/SIGTERM into :meth:`Server.shutdown`
(and SIGHUP into a reload of the JWT key file, when one is configured: see
:mod:`agentcast.adapters.jwt_keyfile`). Each accepted connection is served by a driver:
:mod:`._asyncio_driver` on asyncio and uvloop, :mod:`._socket_driver` on trio (one task per
connection), :mod:`._stream_driver` on trio with TLS (two tasks on the TLS stream).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

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

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

from agentcast.protocol import (
    AgentStatus,
    Authenticator,
    ChatMessage,
    Hub,
    Notification,
    Published,
    Settings,
)
from agentcast.protocol.accepting import Shortage, accept_error_reason, describe
from agentcast.protocol.auth import ChannelAuthorizer
from agentcast.protocol.messages import AgentState, NotificationLevel
from agentcast.protocol.scope import EVERYONE, PendingVerdict, Scope

from ._asyncio_driver import AsyncioDriver, Flusher, transport_maker
from ._driver import IO_ERRORS, PASS_BUDGET, format_peer
from ._serial import SerialSend
from ._socket_driver import SocketDriver, SocketFlusher
from ._stream_driver import StreamDriver
from .metrics import Metrics
from .service import DEFAULT_DRAIN_TIMEOUT, Service, clock

if TYPE_CHECKING:  # imported for real only with JWT configured (it needs PyJWT)
    from .jwt_keyfile import JwtKeyFile

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "DEFAULT_HOST", "DEFAULT_PORT", "Server"]

log = logging.getLogger("agentcast.server")

DEFAULT_HOST = "127.0.0.1"  # seed: ws://localhost:3000/ws; loopback until asked otherwise
DEFAULT_PORT = 3000  # seed
#: Connections accepted per wake-up of a listener before the loop serves others (the
#: next wake-up comes at once while more are waiting).
_ACCEPT_BATCH = 64
#: listen() backlog (the kernel caps it at net.core.somaxconn): a connect storm must not
#: find the queue full (a dropped SYN costs the client a second or more).
_BACKLOG = 65535


class Server:
    """Listening sockets, TLS, signals and drain around a :class:`Service`. See the
    module doc."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        authenticator: Authenticator | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        ssl_context: ssl.SSLContext | None = None,
        drain_timeout: float | None = None,
        socket_send_buffer: int | None = None,
        jwt_key_file: JwtKeyFile | None = None,
        service: Service | None = None,
        authorizer: ChannelAuthorizer | None = None,
        reuse_port: bool = False,
    ) -> None:
        if service is None:
            service = Service(
                settings,
                authenticator=authenticator,
                jwt_key_file=jwt_key_file,
                drain_timeout=DEFAULT_DRAIN_TIMEOUT if drain_timeout is None else drain_timeout,
                authorizer=authorizer,
            )
        elif (
            settings is not None
            or authenticator is not None
            or jwt_key_file is not None
            or authorizer is not None
        ):
            raise ValueError("pass a service, or settings and an authenticator, not both")
        elif drain_timeout is not None:
            service.drain_timeout = drain_timeout
        #: What this server serves: hub, authenticator, metrics, publishing API.
        self.service = service
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        #: SO_SNDBUF for accepted sockets (``None``: the kernel's autotuning, which on Linux
        #: may buffer up to ``net.ipv4.tcp_wmem``'s maximum, 4 MiB, per slow client before
        #: the ``max_send_buffer`` policy sees any backlog).
        self.socket_send_buffer = socket_send_buffer
        #: Bind with SO_REUSEPORT, so that several processes share the port (the kernel
        #: spreads the connections): what ``agentcast serve --workers N`` does.
        self.reuse_port = reuse_port
        #: ``(host, port)`` of every listening socket, once :meth:`serve` has started.
        self.addresses: list[tuple[str, int]] = []
        self._stopping: anyio.Event | None = None

    # -- the service's, offered here too ------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.service.settings

    @property
    def hub(self) -> Hub:
        return self.service.hub

    @property
    def authenticator(self) -> Authenticator:
        return self.service.authenticator

    @property
    def metrics(self) -> Metrics:
        return self.service.metrics

    @property
    def jwt_key_file(self) -> JwtKeyFile | None:
        return self.service.jwt_key_file

    @property
    def drain_timeout(self) -> float:
        return self.service.drain_timeout

    def broadcast_agent_status(
        self,
        agent_name: str,
        state: AgentState,
        current_task: str | None = None,
        progress: float | None = None,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """:meth:`Service.broadcast_agent_status`."""
        return self.service.broadcast_agent_status(
            agent_name, state, current_task, progress, user_ids=user_ids, channel=channel
        )

    def broadcast_chat_message(
        self,
        conversation_id: str,
        message_id: str,
        content: str,
        sender: str,
        timestamp: str | None = None,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """:meth:`Service.broadcast_chat_message`."""
        return self.service.broadcast_chat_message(
            conversation_id,
            message_id,
            content,
            sender,
            timestamp,
            user_ids=user_ids,
            channel=channel,
        )

    def send_notification(
        self,
        level: NotificationLevel,
        message: str,
        user_id: str | None = None,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """:meth:`Service.send_notification`."""
        return self.service.send_notification(
            level, message, user_id, user_ids=user_ids, channel=channel
        )

    def publish(
        self, item: AgentStatus | ChatMessage | Notification, *, scope: Scope = EVERYONE
    ) -> Published:
        """:meth:`Service.publish`."""
        return self.service.publish(item, scope=scope)

    @contextmanager
    def publishing_batch(self) -> Iterator[None]:
        """:meth:`Service.publishing_batch`."""
        with self.service.publishing_batch():
            yield

    def complete_verdict(self, verdict: PendingVerdict, allowed: bool) -> None:
        """:meth:`Service.complete_verdict`."""
        self.service.complete_verdict(verdict, allowed)

    def clients_count(self) -> int:
        """Open WebSocket connections, authenticated or not."""
        return self.service.clients_count()

    def authenticated_clients_count(self) -> int:
        return self.service.authenticated_clients_count()

    def backlog(self) -> int:
        """Bytes queued for clients and not yet written, over all connections."""
        return self.service.backlog()

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
        picks a free port). The service's background work runs meanwhile, unless it
        already runs (an ASGI application serving the same service, say)."""
        if self._stopping is not None:
            raise RuntimeError("this server is already serving")
        self._stopping = anyio.Event()
        service = self.service
        service.warn_about_defaults()
        try:
            async with anyio.create_task_group() as tasks:
                if not service.running:
                    await tasks.start(service.run)
                try:
                    asyncio.get_running_loop()
                except RuntimeError:  # trio: a task per connection (two with TLS)
                    await self._serve_streams(task_status)
                else:  # asyncio, uvloop: protocol callbacks, no task per connection
                    await self._serve_protocols(task_status)
                tasks.cancel_scope.cancel()
        finally:
            self._stopping = None

    def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001, drain, return from
        :meth:`serve`. Idempotent; call it from the event loop's thread."""
        if self._stopping is not None:
            self._stopping.set()

    # -- internals ----------------------------------------------------------------------

    async def _serve_protocols(self, task_status: TaskStatus[None]) -> None:
        loop = asyncio.get_running_loop()
        flusher = Flusher(loop)
        service = self.service
        tls = self.ssl_context
        send_buffer = self.socket_send_buffer
        handshake_timeout = self.settings.handshake_timeout if tls is not None else None

        def driver() -> AsyncioDriver:
            return AsyncioDriver(
                service, flusher, loop, tls=tls is not None, send_buffer=send_buffer
            )

        async def set_up(sock: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(
                    driver, sock, ssl=tls, ssl_handshake_timeout=handshake_timeout
                )
            except (TimeoutError, ssl.SSLError, OSError) as exc:  # TLS, or the client left
                log.debug("could not set up an accepted connection: %r", exc)
                sock.close()

        make_transport = transport_maker(loop) if tls is None else None
        setting_up: set[asyncio.Task[None]] = set()

        def set_up_soon(sock: socket.socket) -> None:
            # A plain asyncio task: an anyio task costs several times more to start.
            task = loop.create_task(set_up(sock))
            setting_up.add(task)
            task.add_done_callback(setting_up.discard)

        def handler(connections: TaskGroup) -> Callable[[socket.socket], object]:
            if tls is not None:  # a TLS handshake to wait for, under the task group
                return lambda sock: connections.start_soon(set_up, sock)
            if make_transport is None:  # uvloop: connect_accepted_socket, a coroutine
                return set_up_soon

            def connect(sock: socket.socket) -> None:
                # The loop's own transport, made here: no task, no coroutine.
                try:
                    make_transport(sock, driver())
                except OSError as exc:  # pragma: no cover - the client left meanwhile
                    log.debug("could not set up an accepted connection: %r", exc)
                    sock.close()

            return connect

        try:
            await self._serve(task_status, handler, abort=True)
        finally:
            for task in setting_up:  # accepted as the server stopped: not served
                task.cancel()

    async def _serve_streams(self, task_status: TaskStatus[None]) -> None:
        if self.ssl_context is not None:

            async def handle(sock: socket.socket) -> None:
                try:
                    stream = await SocketStream.from_socket(sock)
                except OSError:  # the client left
                    sock.close()
                    return
                await self._handle(stream)

            await self._serve(task_status, _in_tasks(handle), abort=False)
            return
        flusher = SocketFlusher()
        service = self.service
        send_buffer = self.socket_send_buffer

        async def serve_socket(sock: socket.socket) -> None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if send_buffer:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
                host, peer = format_peer(sock.getpeername())
            except OSError:  # the client left
                sock.close()
                return
            driver = SocketDriver(service, sock, flusher, host=host, peer=peer)
            service.register(driver)
            try:
                await driver.run()  # closes the socket
            finally:
                service.unregister(driver)

        async with anyio.create_task_group() as writing:
            writing.start_soon(flusher.run)
            await self._serve(task_status, _in_tasks(serve_socket), abort=False)
            writing.cancel_scope.cancel()

    async def _serve(
        self,
        task_status: TaskStatus[None],
        handler: Callable[[TaskGroup], Callable[[socket.socket], object]],
        *,
        abort: bool,
    ) -> None:
        """Listen and accept until :meth:`shutdown`, each accepted socket handed to
        ``handler(connections)`` (which may start a task in *connections* for it); then
        drain. What is left after the drain timeout is dropped: with *abort* by the
        service (asyncio: abort the transports), else by cancelling the connections'
        tasks (trio)."""
        assert self._stopping is not None
        multi = await anyio.create_tcp_listener(
            local_host=self.host,
            local_port=self.port,
            backlog=_BACKLOG,
            reuse_port=self.reuse_port,
        )
        try:
            # create_tcp_listener() makes socket listeners (one per address family).
            listeners = [cast(SocketListener, listener) for listener in multi.listeners]
            self._record_addresses(
                listener.extra(SocketAttribute.local_address) for listener in listeners
            )
            async with anyio.create_task_group() as connections:
                handle = handler(connections)
                async with anyio.create_task_group() as accepting:
                    for listener in listeners:
                        sock = listener.extra(SocketAttribute.raw_socket)
                        accepting.start_soon(self._accept_loop, sock, handle)
                    task_status.started()
                    await self._stopping.wait()
                    accepting.cancel_scope.cancel()
                await multi.aclose()
                await self.service.drain(abort=abort)
                connections.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await multi.aclose()

    async def _accept_loop(
        self, sock: socket.socket, handle: Callable[[socket.socket], object]
    ) -> None:
        """Accept connections on *sock* until cancelled. When accept() fails (out of file
        descriptors or memory), pause and try again, with the back-off and the logging
        :class:`~agentcast.protocol.accepting.AcceptGuard` decides: the waiting clients
        stay in the kernel's queue meanwhile, and the open connections are served.

        On asyncio (and uvloop) the accepting is done by a reader callback of the loop
        on *sock*, with no task switch per wake-up; on trio by this task."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        while True:
            delay: float | None
            if loop is not None:
                try:
                    delay = await self._accept_in_callbacks(loop, sock, handle)
                except NotImplementedError:  # a loop without add_reader (Windows' proactor)
                    loop = None
                    continue
            else:
                await anyio.wait_readable(sock)
                delay = self._accept_waiting(sock, handle, clock)
            if delay is not None:
                # A connection closing frees a descriptor: try again then, or later.
                await self.service.wait_for_release(delay)

    async def _accept_in_callbacks(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handle: Callable[[socket.socket], object],
    ) -> float:
        """Accept from the loop's callback whenever *sock* is readable, until accept()
        fails for want of a resource: then the pause before trying again."""
        shortage: asyncio.Future[float] = loop.create_future()

        def ready() -> None:
            delay = self._accept_waiting(sock, handle, loop.time)
            if delay is not None and not shortage.done():
                loop.remove_reader(sock)
                shortage.set_result(delay)

        loop.add_reader(sock, ready)
        try:
            return await shortage
        finally:
            loop.remove_reader(sock)

    def _accept_waiting(
        self,
        sock: socket.socket,
        handle: Callable[[socket.socket], object],
        now: Callable[[], float],
    ) -> float | None:
        """Accept the connections waiting on *sock* (:data:`_ACCEPT_BATCH` at most, and
        for :data:`~._driver.PASS_BUDGET` at most, as a pass's writes and reads: the next
        wake-up comes at once while more are waiting, after the loop has served the
        others), each handed to *handle*. Returns the pause before trying again when
        accept() failed for want of a resource, else ``None``. *now* reads the loop's
        clock."""
        guard = self.hub.accepting
        until = now() + PASS_BUDGET
        for _ in range(_ACCEPT_BATCH):
            try:
                client, _ = sock.accept()
            except BlockingIOError:
                ended = guard.drained(now())
                if ended is not None:
                    self._log_shortage_end(ended)
                return None
            except OSError as exc:
                reason = accept_error_reason(exc)
                if reason is None:
                    continue  # the client went away before we accepted it
                delay, started = guard.failed(reason, now())
                if started is not None:
                    self._log_shortage_start(started)
                return delay
            at = now()
            guard.accepted(at)
            client.setblocking(False)
            handle(client)
            if at >= until:
                break
        return None

    def _log_shortage_start(self, shortage: Shortage) -> None:
        limit = ""
        if shortage.reason == "emfile" and resource is not None:
            limit = f", limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
        folded = f"; {shortage.folded} more since the last report" if shortage.folded else ""
        log.warning(
            "accept() failed: %s%s; %d connections open; new ones wait in the kernel's "
            "queue and are accepted as descriptors free up (retrying with back-off)%s",
            describe(shortage.reason),
            limit,
            len(self.service.connections),
            folded,
        )

    def _log_shortage_end(self, shortage: Shortage) -> None:
        log.info(
            "accepting connections again after %.1f s (%d failed accept() attempts)",
            clock() - shortage.started,
            shortage.failures,
        )

    async def _handle(self, raw: SocketStream) -> None:
        host, peer = format_peer(raw.extra(SocketAttribute.remote_address, None))
        driver: StreamDriver | None = None
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
            driver = StreamDriver(self.service, stream, host=host, peer=peer)
            self.service.register(driver)
            await driver.run()  # closes the stream
        except Exception:
            log.exception("unexpected error serving %s", peer)
        finally:
            if driver is None:
                with anyio.CancelScope(shield=True):
                    await raw.aclose()
            else:
                self.service.unregister(driver)

    def _record_addresses(self, addresses: Iterable[object]) -> None:
        """Keep the bound ``(host, port)`` of each listening socket in :attr:`addresses`."""
        self.addresses = [
            (str(address[0]), int(address[1]))  # (host, port[, flowinfo, scope_id])
            for address in addresses
            if isinstance(address, tuple)
        ]

    async def _tls_handshake(self, raw: SocketStream, peer: str) -> TLSStream | None:
        assert self.ssl_context is not None
        try:
            with anyio.fail_after(self.settings.handshake_timeout):
                return await TLSStream.wrap(
                    SerialSend(raw),
                    server_side=True,
                    ssl_context=self.ssl_context,
                    standard_compatible=False,
                )
        except (TimeoutError, ssl.SSLError, *IO_ERRORS) as exc:
            log.debug("TLS handshake with %s failed: %r", peer, exc)
            return None

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        watched = [signal.SIGINT, signal.SIGTERM]
        hangup = getattr(signal, "SIGHUP", None)  # not on Windows
        if self.jwt_key_file is not None and hangup is not None:
            watched.append(hangup)  # re-read the JWT keys
        with anyio.open_signal_receiver(*watched) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == hangup:
                    log.info("%s: re-reading the JWT keys", name)
                    await self.service.reload_keys()
                    continue
                if self._stopping is not None and not self._stopping.is_set():
                    log.info("%s: shutting down (send it again to stop at once)", name)
                    self.shutdown()
                elif self.service.draining:
                    log.warning("%s again: not waiting for the clients any longer", name)
                    self.service.stop_draining()


def _in_tasks(
    serve: Callable[[socket.socket], Coroutine[Any, Any, None]],
) -> Callable[[TaskGroup], Callable[[socket.socket], object]]:
    """A handler that serves each accepted socket with *serve* in a task of its own."""

    def handler(connections: TaskGroup) -> Callable[[socket.socket], object]:
        return lambda sock: connections.start_soon(serve, sock)

    return handler
