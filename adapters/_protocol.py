"""One TCP connection of the reference server on asyncio (and uvloop): an asyncio Protocol.

On asyncio the reference server does not run tasks per connection. The event loop calls
:class:`ProtocolConnection` when bytes arrive (``data_received``), when the peer closes its
side (``eof_received``) and when the socket goes away (``connection_lost``); a timer handle
(``loop.call_at``) wakes the core at its ``next_deadline()``. Writing goes through the
transport, with the same rule as on trio: whenever the transport is not holding back
(``pause_writing`` / ``resume_writing``), everything pending is taken from
``data_to_send()`` and written in one call, and what the transport cannot take yet stays
in the core's outbox, where the slow-client policy (1013) and conflation see it.

Writes are batched per pass of the event loop by :class:`Flusher`: a broadcast, or any
other output not caused by the connection's own input, only marks its connections, and at
the start of the next pass each marked connection writes its whole backlog once (an answer
to the connection's own input, a pong or the ``101``, is written at the end of that
``data_received``). A presence storm (every new user is a message
to every other one) therefore costs one ``send()`` per connection per pass, not one per
message, and no task switch at all.

The trio path (:mod:`._connection`, two tasks on an anyio stream) behaves the same; both
share :class:`~._connection.ConnectionBase` for everything that is not moving bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, cast

from ._connection import LINGER, ConnectionBase, format_peer

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Flusher", "ProtocolConnection"]

log = logging.getLogger("agentcast.connection")


class Flusher:
    """Writes the output of the connections woken during one pass of the event loop:
    once each, from one callback at the start of the next pass."""

    __slots__ = ("_loop", "_marked", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._marked: list[ProtocolConnection] = []
        self._scheduled = False

    def mark(self, connection: ProtocolConnection) -> None:
        self._marked.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        marked, self._marked = self._marked, []
        for connection in marked:
            connection.flush()


class ProtocolConnection(ConnectionBase, asyncio.Protocol):
    """Drives one :class:`~agentcast.protocol.ServerConnection` from asyncio's callbacks."""

    __slots__ = (
        "_done",
        "_finishing",
        "_flusher",
        "_give_up_at",
        "_loop",
        "_marked",
        "_paused",
        "_timer",
        "_timer_at",
        "_tls",
        "_transport",
    )

    def __init__(self, server: Server, flusher: Flusher, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._flusher = flusher
        self._loop = loop
        self._tls = server.ssl_context is not None
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._marked = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: When to stop waiting for a closed connection's last bytes to be taken.
        self._give_up_at: float | None = None
        self._finishing = False  # the socket is being closed: write and read nothing more
        self._done = False  # connection_lost() has run

    # -- asyncio's callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        host, peer = format_peer(transport.get_extra_info("peername"))
        if server.socket_send_buffer:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.socket_send_buffer)
        self._open(server, host=host, peer=peer, now=self._loop.time())
        server._connections[self] = None
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._finishing:
            return  # lingering after an HTTP answer: discard what the client still sends
        now, wall = self._loop.time(), time.time()
        try:
            self.conn.receive_data(data, now, wall)
            self._process_events(now, wall)
        except Exception:
            self._fail(now, wall)
        self._after_input(now)
        if self._marked:
            # An answer to this input (a pong, the 101 and auth): write it now rather than
            # at the next pass. Broadcasts to other connections still wait for the pass.
            self.flush()

    def eof_received(self) -> bool:
        if self._finishing:
            self._close_transport()
            return False
        now, wall = self._loop.time(), time.time()
        try:
            self.conn.receive_eof(now, wall)
            self._process_events(now, wall)
        except Exception:
            self._fail(now, wall)
        self._after_input(now)
        if self._tls:
            # asyncio closes a TLS transport after this: write what is pending first.
            self.flush()
            return False
        return True  # keep our half open until what is pending is written

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._transport = None
        self._cancel_timer()
        conn = self.conn
        if not conn.closed:
            # Dropped, or given up on: the core must still learn that the socket is gone,
            # to free its place in the hub.
            now, wall = self._loop.time(), time.time()
            try:
                conn.send_failed(now, wall)
                self._process_events(now, wall)
            except Exception:
                log.exception("error dropping the connection from %s", self.peer)
        self._server._forget(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.flush()

    # -- ConnectionBase ------------------------------------------------------------------

    def wake(self) -> None:
        """Output is pending: write it at the start of the next pass of the loop."""
        if not self._marked and not self._done:
            self._marked = True
            self._flusher.mark(self)

    def _abort(self) -> None:
        transport = self._transport
        if transport is not None:
            self._finishing = True
            transport.abort()

    # -- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything pending in one call, unless the transport is holding back."""
        self._marked = False
        transport = self._transport
        if transport is None or self._finishing:
            return
        if self._paused:
            self._arm_timer()  # the core may have started closing (1013)
            return
        conn = self.conn
        try:
            data = conn.data_to_send()
            if data:
                transport.write(data)
                if not self._paused:
                    # The transport took it without holding back: the write is complete
                    # (as a stream's send() returning), no longer the core's backlog.
                    conn.transport.outbox.sent()
        except Exception:  # pragma: no cover - the core and a transport's write don't raise
            log.exception("unexpected error writing to %s", self.peer)
            self._abort()
            return
        if conn.closed:
            self._finish()
        else:
            self._arm_timer()

    def _finish(self) -> None:
        """The core is done and everything is written: close the socket."""
        transport = self._transport
        assert transport is not None
        self._finishing = True
        now = self._loop.time()
        if self._give_up_at is None:
            self._give_up_at = now + self._server.settings.close_timeout + LINGER
        if self.conn.session is not None:
            # After the WebSocket closing handshake the client sends nothing more, and the
            # server is the one to close the TCP connection (RFC 6455 7.1.1).
            self._close_transport()
            return
        # An HTTP answer: half-close, then read and discard what the client still sends
        # (e.g. the rest of a refused body) until its EOF or for LINGER seconds, so that
        # unread input does not reset the connection before the client has read the answer.
        if transport.can_write_eof():
            transport.write_eof()
        self._give_up_at = min(self._give_up_at, now + LINGER)
        self._arm_timer()

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()  # after the transport's own buffer is written
            self._arm_timer()  # the give-up deadline, for a client that never reads

    # -- time ----------------------------------------------------------------------------

    def _after_input(self, now: float) -> None:
        if self.conn.closed:
            if self._give_up_at is None:
                self._give_up_at = now + self._server.settings.close_timeout + LINGER
            self.wake()
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Have :meth:`_on_timer` called at the next deadline (an earlier call is harmless:
        it re-arms). Moving a deadline later keeps the armed handle, so a connection that
        keeps talking costs no timer churn."""
        deadline = self._give_up_at if self.conn.closed else self.conn.next_deadline()
        if deadline is None or self._done:
            self._cancel_timer()
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        conn = self.conn
        if conn.closed:
            give_up_at = self._give_up_at
            transport = self._transport
            if give_up_at is None or transport is None:
                return
            if now < give_up_at:
                self._arm_timer()
            elif self._finishing and conn.session is None and not transport.get_write_buffer_size():
                transport.close()  # the end of the lingering close after an HTTP answer
            else:
                log.debug("gave up flushing to %s", self.peer)
                self._finishing = True
                transport.abort()
            return
        wall = time.time()
        try:
            # Never let the core see time before the deadline it asked for (a loop may
            # wake a hair early).
            conn.handle_timer(max(now, self._timer_at), wall)
            self._process_events(now, wall)
        except Exception:
            self._fail(now, wall)
        self._after_input(now)
