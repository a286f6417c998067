"""What every driver of the reference server does, however its bytes move.

A *driver* moves one TCP connection's bytes and time in and out of the core's
:class:`~agentcast.protocol.ServerConnection`, which decides everything. Three drivers
exist: :class:`~._asyncio_driver.AsyncioDriver` (asyncio and uvloop: protocol callbacks
and a timer handle, no task), :class:`~._socket_driver.SocketDriver` (trio: one task on
the non-blocking socket) and :class:`~._stream_driver.StreamDriver` (trio with TLS: two
tasks on an anyio byte stream). The ASGI adapter's driver (:mod:`._asgi_driver`) drives a
session without a transport and shares none of this.

:class:`Driver` holds what does not depend on how bytes move:

* the core's events: run the authenticator, answer ``/metrics`` and the HTTP API, log the
  open and the close, wake the service's hub timer when a session ends;
* the deadlines after the core is done (:meth:`Driver.give_up_at`): a closed connection
  gets ``close_timeout`` plus :data:`LINGER` to have its last bytes taken, then it is
  dropped; after a plain HTTP answer the socket half-closes and lingers
  (:attr:`Driver.lingers`);
* the bookkeeping when the socket goes away before the core is done
  (:meth:`Driver.socket_lost`), when a deadline fires (:meth:`Driver.deadline_reached`),
  and when something unexpected raises (:meth:`Driver.failed`: ``500`` or ``1011`` for
  this connection only).
"""

from __future__ import annotations

import logging
import time
from typing import assert_never, cast

import anyio

from agentcast.protocol import (
    AuthRequested,
    BytesReceived,
    CloseCode,
    ConnectionClosed,
    HttpAnswer,
    HttpRequest,
    Route,
    ServerConnection,
    TextReceived,
    TransportState,
    UpgradeRequested,
    route,
)

from .logs import log_close, log_open
from .service import Service, clock

__all__ = ["IO_ERRORS", "LINGER", "READ_SIZE", "Driver", "format_peer"]

log = logging.getLogger("agentcast.connection")

#: What a socket may raise when the peer goes away (ssl.SSLError is an OSError).
IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)
#: Bytes asked of the socket per read.
READ_SIZE = 65536
#: Connections a flusher writes in one pass of the event loop at most (~10 µs each): a
#: pass that writes a presence window's changes to 10,000 clients would otherwise keep
#: every other socket waiting for ~0.1 s.
WRITES_PER_PASS = 256
#: HTTP requests (WebSocket upgrades) read in one pass at most; the others wait a pass.
REQUESTS_PER_PASS = 16
#: Time (s) one pass spends writing marked connections, and likewise reading HTTP
#: requests, at most (each may overrun by one connection): the counts above bound a
#: pass on an idle machine, this one when each costs more (a large presence snapshot in
#: every handshake, a loaded machine), so that a pass stays short and the input waiting
#: on other sockets (a ping) is read every few milliseconds.
PASS_BUDGET = 0.003
#: Writes between two looks at the clock.
WRITES_PER_LOOK = 16
#: After an HTTP answer is written: half-close, then read and discard what the client
#: still sends (e.g. the rest of a refused request body) for this long, so that closing
#: a socket with unread input does not reset the connection before the client has read
#: our answer (Apache's "lingering close").
LINGER = 1.0

_AnyEvent = (
    AuthRequested | HttpRequest | ConnectionClosed | TextReceived | BytesReceived | UpgradeRequested
)


def format_peer(address: object) -> tuple[str | None, str]:
    """``(host, "host:port")`` of a socket address, for the core and for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return host, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return None, str(address) if address else "-"


class Driver:
    """One connection's core and what is done with its events (see the module doc).
    Subclasses implement :meth:`wake` and :meth:`abort`."""

    __slots__ = (
        "__weakref__",
        "_failed",
        "_opened_at",
        "_service",
        "_session_closed",
        "conn",
        "peer",
    )

    _service: Service
    #: ``host:port`` of the client, for logs.
    peer: str
    conn: ServerConnection

    def _open(self, service: Service, *, host: str | None, peer: str, now: float) -> None:
        self._service = service
        self.peer = peer
        self.conn = ServerConnection(service.hub, now=now, client=host)
        self.conn.on_output = self.wake
        self._opened_at: float | None = None
        self._session_closed = False
        self._failed = False

    # -- what the service sees (Served) --------------------------------------------------

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet written."""
        return self.conn.transport.backlog

    def wake(self) -> None:
        """Output is pending or the state changed: get it written."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection without further ado (closing it cleanly failed)."""
        raise NotImplementedError

    def start_close(self, code: int, reason: str) -> None:
        """Start closing from the server side (1001 at shutdown)."""
        now, wall = clock(), time.time()
        try:
            self.conn.close(code, reason, now, wall)
            self._process_events(now, wall)
        except Exception:
            self.failed(now, wall)
        self.wake()

    # -- time and the end, for both drivers ----------------------------------------------

    @property
    def lingers(self) -> bool:
        """Once the core is done, half-close and discard the client's input for
        :data:`LINGER` seconds before closing: after a plain HTTP answer. After a
        WebSocket closing handshake the client sends nothing more, and the server is the
        one to close the TCP connection (RFC 6455 7.1.1)."""
        return self.conn.session is None

    def give_up_at(self, now: float) -> float:
        """When to drop a connection the core has closed at *now* if the client has not
        taken its last bytes yet."""
        return now + self._service.settings.close_timeout + LINGER

    def deadline_reached(self, deadline: float, now: float, wall: float) -> None:
        """The core's ``next_deadline()`` (*deadline*) has come."""
        try:
            # Never let the core see time before the deadline it asked for (a loop may
            # wake a hair early).
            self.conn.handle_timer(max(now, deadline), wall)
            self._process_events(now, wall)
        except Exception:
            self.failed(now, wall)

    def socket_lost(self, now: float, wall: float, *, write_failed: bool = False) -> None:
        """The socket is gone (dropped, given up on, or a write failed): the core must
        learn it, to free the connection's place in the hub and drop what it still had to
        send (after a failed write, even when it is done)."""
        if self.conn.closed and not write_failed:
            return
        try:
            self.conn.send_failed(now, wall)
            self._process_events(now, wall)
        except Exception:
            log.exception("error dropping the connection from %s", self.peer)

    def let_go(self) -> None:
        """The socket is gone and this driver is done: drop the core's output callback
        (this driver's :meth:`wake`), the one reference from the core back to the
        driver, so that the connection's objects are freed by reference counting as
        soon as the server forgets the driver, not by the garbage collector's full pass
        (the core lets go of its own callbacks when it closes)."""
        self.conn.on_output = None

    def failed(self, now: float, wall: float) -> None:
        """An unexpected error: log it and close this connection (500 or 1011), or drop
        it if that fails too."""
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
        self.abort()

    # -- events --------------------------------------------------------------------------

    def _process_events(self, now: float, wall: float) -> None:
        conn = self.conn
        while events := cast("list[_AnyEvent] | None", conn.take_events()):
            for event in events:
                self._on_event(event, now, wall)
        session = conn.session
        if session is not None:
            if self._opened_at is None:
                self._opened_at = now
                log_open(session.user_id, self.peer)
            if session.closed and not self._session_closed:
                # The user may now be in the presence grace period.
                self._session_closed = True
                self._service.wake_hub_timer()

    def _on_event(self, event: _AnyEvent, now: float, wall: float) -> None:
        match event:
            case AuthRequested(token=token):
                result = self._service.authenticator.authenticate(token, wall)
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
        service = self._service
        target = route(request.method, request.path, service.settings)
        if target is Route.METRICS:
            metrics = service.metrics
            reply = HttpAnswer(200, (("content-type", metrics.content_type),), metrics.render())
            self._respond(request, reply)
        elif target is Route.STATIC:
            reply = service.static.answer(
                request.method, request.path, request.header("if-none-match")
            )
            self._respond(request, reply)
        else:
            # At once; in a cluster a publish is answered once Redis gave the ids.
            service.answer(request, now, wall, lambda reply: self._respond(request, reply))

    def _respond(self, request: HttpRequest, reply: HttpAnswer) -> None:
        self.conn.respond(reply)
        # The path only: a query string may hold a token.
        log.debug("http %s %s -> %d peer=%s", request.method, request.path, reply.status, self.peer)

    def _log_close(self, code: int, now: float) -> None:
        session = self.conn.session
        duration = 0.0 if self._opened_at is None else now - self._opened_at
        log_close(
            session.user_id if session is not None else None,
            self.peer,
            code=code,
            duration=duration,
            messages_in=session.messages_in if session is not None else 0,
            messages_out=session.messages_out if session is not None else 0,
        )
        self._service.wake_hub_timer()
