"""One TCP connection of the reference server: what it does with the core's events, and
the anyio stream version that serves it on trio (asyncio has :mod:`._protocol`).

The core (:class:`~agentcast.protocol.ServerConnection`) decides everything; the adapter
moves bytes and time. :class:`ConnectionBase` holds what does not depend on how bytes move:
run the authenticator, answer ``/metrics`` and the HTTP API, log the open and the close,
and turn an unexpected error into ``500`` or ``1011`` for this connection only.

:class:`Connection` serves one anyio byte stream with two tasks:

* the **pump** reads the socket, but only until the core's ``next_deadline()``; it feeds
  ``receive_data`` / ``receive_eof`` / ``handle_timer`` with the loop's clock, then
  dispatches the events;
* the **writer** is the only task that writes: whenever the socket has taken its last
  write, it takes *everything* pending from ``data_to_send()`` and writes it in one call.
  The core counts that write as backlog until the next ``data_to_send()``, which is how it
  knows a client is too slow (1013).

A broadcast from anywhere appends to the outbox, whose ``on_output`` callback wakes the
writer (and re-arms the pump's deadline, in case the core has started closing). Nothing
raised here reaches the server: socket errors end this connection, and an unexpected
error closes it with 1011 after being logged.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, assert_never, cast

import anyio
from anyio.abc import ByteStream

from agentcast.protocol import (
    AuthRequested,
    BytesReceived,
    CloseCode,
    ConnectionClosed,
    HttpAnswer,
    HttpRequest,
    ServerConnection,
    TextReceived,
    TransportState,
    UpgradeRequested,
)
from agentcast.protocol.http import answer

from .logs import log_close, log_open

if TYPE_CHECKING:
    from .server import Server

__all__ = ["IO_ERRORS", "LINGER", "Connection", "ConnectionBase", "clock", "format_peer"]

log = logging.getLogger("agentcast.connection")

#: What a socket may raise when the peer goes away (ssl.SSLError is an OSError).
IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)
_READ_SIZE = 65536
#: After an HTTP answer is written: half-close, then read and discard what the client
#: still sends (e.g. the rest of a refused request body) for this long, so that closing
#: a socket with unread input does not reset the connection before the client has read
#: our answer (Apache's "lingering close").
LINGER = 1.0

_Event = AuthRequested | HttpRequest | ConnectionClosed | TextReceived | BytesReceived
_AnyEvent = _Event | UpgradeRequested


def format_peer(address: object) -> tuple[str | None, str]:
    """``(host, "host:port")`` of a socket address, for the core and for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return host, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return None, str(address) if address else "-"


def clock() -> float:
    """The monotonic ``now`` given to the core: the event loop's clock (so deadlines and
    cancel scopes agree, also under trio's MockClock), or ``time.monotonic()`` when no
    loop runs in this thread."""
    try:
        return anyio.current_time()
    except RuntimeError:
        return time.monotonic()


class ConnectionBase:
    """What every kind of connection does with the core's events, whatever moves its bytes:
    run the authenticator, answer ``/metrics`` and the HTTP API, log the open and the close,
    and turn an unexpected error into ``500`` / ``1011``."""

    __slots__ = (
        "__weakref__",
        "_failed",
        "_opened_at",
        "_server",
        "_session_closed",
        "conn",
        "peer",
    )

    _server: Server
    #: ``host:port`` of the client, for logs.
    peer: str
    conn: ServerConnection

    def _open(self, server: Server, *, host: str | None, peer: str, now: float) -> None:
        self._server = server
        self.peer = peer
        self.conn = ServerConnection(server.hub, now=now, client=host)
        self.conn.on_output = self.wake
        self._opened_at: float | None = None
        self._session_closed = False
        self._failed = False

    def wake(self) -> None:
        """Output is pending or the state changed: get it written."""
        raise NotImplementedError

    def _abort(self) -> None:
        """Drop the connection without further ado (closing it cleanly failed)."""
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        """Start closing from the server side (1001 at shutdown)."""
        now, wall = clock(), time.time()
        try:
            self.conn.close(code, reason, now, wall)
            self._process_events(now, wall)
        except Exception:
            self._fail(now, wall)
        self.wake()

    # -- events --------------------------------------------------------------------------

    def _process_events(self, now: float, wall: float) -> None:
        conn = self.conn
        while events := cast("list[_AnyEvent]", conn.events_received()):
            for event in events:
                self._on_event(event, now, wall)
        session = conn.session
        if session is not None:
            if self._opened_at is None:
                self._opened_at = now
                log_open(session.user_id, self.peer)
            if session.closed and not self._session_closed:
                # The user may now be in the presence grace period: re-arm the hub timer.
                self._session_closed = True
                self._server._poke_hub_timer()

    def _on_event(self, event: _AnyEvent, now: float, wall: float) -> None:
        match event:
            case AuthRequested(token=token):
                result = self._server.authenticator.authenticate(token, wall)
                self.conn.complete_auth(result, now, wall)
            case HttpRequest():
                self._answer_http(event, now, wall)
            case ConnectionClosed(code=code):
                self._log_close(code, now)
            case TextReceived() | BytesReceived() | UpgradeRequested():
                pass  # consumed inside ServerConnection, which never hands them out
            case _:
                assert_never(event)

    def _answer_http(self, request: HttpRequest, now: float, wall: float) -> None:
        server = self._server
        if request.path == "/metrics":
            metrics = server.metrics
            reply = HttpAnswer(200, (("content-type", metrics.content_type),), metrics.render())
        else:
            reply = answer(request, server.hub, now=now, wall=wall)
        status = reply.status
        self.conn.respond(reply)
        # The path only: a query string may hold a token.
        log.debug("http %s %s -> %d peer=%s", request.method, request.path, status, self.peer)

    def _log_close(self, code: int, now: float) -> None:
        session = self.conn.session
        duration = 0.0 if self._opened_at is None else now - self._opened_at
        messages_in = session.messages_in if session is not None else 0
        messages_out = session.messages_out if session is not None else 0
        log_close(
            session.user_id if session is not None else None,
            self.peer,
            code=code,
            duration=duration,
            messages_in=messages_in,
            messages_out=messages_out,
        )
        self._server._poke_hub_timer()

    def _fail(self, now: float, wall: float) -> None:
        """An unexpected error: log it and close this connection (1011), or drop it."""
        log.exception("internal error on the connection from %s", self.peer)
        if not self._failed:
            self._failed = True
            conn = self.conn
            try:
                state = conn.transport.state
                if state is TransportState.UPGRADING:
                    conn.respond(HttpAnswer.plain(500, "Internal Server Error"))
                elif state is TransportState.HTTP:
                    conn.respond(HttpAnswer.json(500, {"error": "internal error"}))
                else:
                    conn.close(CloseCode.INTERNAL_ERROR, "internal error", now, wall)
                self._process_events(now, wall)
                return
            except Exception:
                log.exception("could not close the connection from %s cleanly", self.peer)
        self._abort()


class Connection(ConnectionBase):
    """Drives one :class:`ServerConnection` over one anyio byte stream until it is closed,
    with two tasks (a pump and a writer): the reference server on trio."""

    __slots__ = ("_receive_scope", "_scope", "_stream", "_wakeup")

    def __init__(self, server: Server, stream: ByteStream, *, host: str | None, peer: str) -> None:
        self._stream = stream
        self._wakeup = anyio.Event()
        self._receive_scope: anyio.CancelScope | None = None
        self._scope: anyio.CancelScope | None = None
        self._open(server, host=host, peer=peer, now=clock())

    # -- called from anywhere in the loop ------------------------------------------------

    def wake(self) -> None:
        """Output is pending or the state changed: wake the writer, and bring the pump's
        wait forward if the core now needs waking earlier (it started closing)."""
        if not self._wakeup.is_set():
            self._wakeup.set()
        scope = self._receive_scope
        if scope is not None:
            deadline = self.conn.next_deadline()
            if deadline is not None and deadline < scope.deadline:
                scope.deadline = deadline

    def _abort(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    # -- the tasks -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it is over, then close the socket."""
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._write_loop)
                await self._pump()
                # The writer flushes what is left, lingers, and cancels us; if the client
                # does not read, give up after the close timeout.
                self.wake()
                await anyio.sleep(self._server.settings.close_timeout + LINGER)
                log.debug("gave up flushing to %s", self.peer)
                tg.cancel_scope.cancel()
        except Exception:  # pragma: no cover - both tasks catch their own errors
            log.exception("unexpected error on the connection from %s", self.peer)
        finally:
            if not self.conn.closed:
                # Given up on (drain timeout, a client that never reads): the core must
                # still learn that the socket is gone, to free its place in the hub.
                now, wall = clock(), time.time()
                try:
                    self.conn.send_failed(now, wall)
                    self._process_events(now, wall)
                except Exception:
                    log.exception("error dropping the connection from %s", self.peer)
            with anyio.CancelScope(shield=True):
                try:
                    await self._stream.aclose()
                except Exception:  # the socket is gone: nothing to tell anyone
                    log.debug("error closing the socket of %s", self.peer, exc_info=True)

    async def _pump(self) -> None:
        conn = self.conn
        stream = self._stream
        while not conn.closed:
            deadline = conn.next_deadline()
            data = b""
            eof = False
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._receive_scope = scope
                try:
                    data = await stream.receive(_READ_SIZE)
                except IO_ERRORS:
                    eof = True
            self._receive_scope = None
            now, wall = clock(), time.time()
            try:
                if data:
                    conn.receive_data(data, now, wall)
                elif eof:
                    conn.receive_eof(now, wall)
                elif scope.cancelled_caught:
                    # Never let the core see time before the deadline it asked for
                    # (a loop may wake a hair early).
                    conn.handle_timer(max(scope.deadline, now), wall)
                self._process_events(now, wall)
            except Exception:
                self._fail(now, wall)
            self.wake()

    async def _write_loop(self) -> None:
        conn = self.conn
        stream = self._stream
        try:
            while True:
                data = conn.data_to_send()
                if data:
                    try:
                        await stream.send(data)
                    except IO_ERRORS:
                        now, wall = clock(), time.time()
                        try:
                            conn.send_failed(now, wall)
                            self._process_events(now, wall)
                        except Exception:
                            log.exception("error after a failed write to %s", self.peer)
                        return
                    continue
                if conn.closed:
                    break
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            await self._linger()
        except Exception:
            log.exception("unexpected error writing to %s", self.peer)
        finally:
            if self._scope is not None:
                self._scope.cancel()

    async def _linger(self) -> None:
        if self.conn.session is not None:
            # After the WebSocket closing handshake the client sends nothing more, and
            # the server is the one to close the TCP connection (RFC 6455 7.1.1).
            return
        stream = self._stream
        with anyio.move_on_after(LINGER):
            try:
                await stream.send_eof()
            except NotImplementedError:  # TLS cannot half-close
                pass
            except IO_ERRORS:
                return
            try:
                while await stream.receive(_READ_SIZE):
                    pass
            except IO_ERRORS:
                pass
