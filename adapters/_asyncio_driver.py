"""The asyncio driver: one connection of the reference server on asyncio (and uvloop).

On asyncio the reference server does not run tasks per connection. The event loop calls
:class:`AsyncioDriver` (an ``asyncio.Protocol``) when bytes arrive (``data_received``),
when the peer closes its side (``eof_received``) and when the socket goes away
(``connection_lost``); a timer handle (``loop.call_at``) wakes the core at its
``next_deadline()``. Writing goes through the transport, with the same rule as on trio:
whenever the transport is not holding back (``pause_writing`` / ``resume_writing``),
everything pending is taken from ``data_to_send()`` and written in one call, and what the
transport cannot take yet stays in the core's outbox, where the slow-client policy (1013)
and conflation see it.

Reading follows the core and the loop: the transport stops reading while the core does
not want input (``wants_input``: a client that does not read its backlog, or one closed
for abuse), and a connection that has been given :data:`PASS_BYTES` in a row yields the
loop for one pass (uvloop reads the same socket many times per pass; a flood must not
starve the other connections).

Writes are batched per pass of the event loop by :class:`Flusher`: a broadcast, or any
other output not caused by the connection's own input, only marks its connections, and at
the start of the next pass each marked connection writes its whole backlog once (at most
:data:`WRITES_PER_PASS` connections and :data:`PASS_BUDGET` a pass, the others in the
passes after, so that input on other sockets is read in between); an answer to the
connection's own input, a pong or the ``101``, is written at the end of that
``data_received``. A presence storm (every new user is a message to every other one, the
hub sending a window's changes together) therefore costs one ``send()`` per connection
per window, and no task switch. HTTP requests (upgrades) are read with the same kind of
bound: at most :data:`REQUESTS_PER_PASS` and :data:`PASS_BUDGET` a pass.

The trio drivers (:mod:`._socket_driver`, one task per connection and the same batching
of writes per pass; :mod:`._stream_driver`, two tasks on a TLS stream) behave the same;
all share :class:`~._driver.Driver` for everything that is not moving bytes, including
the rules after the core is done (give up, linger).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextvars
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import cast

from ._driver import (
    LINGER,
    PASS_BUDGET,
    REQUESTS_PER_PASS,
    WRITES_PER_LOOK,
    WRITES_PER_PASS,
    Driver,
    format_peer,
)
from .service import Service

__all__ = ["PASS_BYTES", "AsyncioDriver", "Flusher", "transport_maker"]

log = logging.getLogger("agentcast.connection")

#: Input a connection may hand the core before it yields the loop for a pass.
PASS_BYTES = 256 * 1024


class Flusher:
    """Writes the output of the connections woken during one pass of the event loop:
    once each, from one callback at the start of the next pass."""

    __slots__ = (
        "_held",
        "_loop",
        "_marked",
        "_requests",
        "_requests_began",
        "_scheduled",
        "context",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: The context the connections' timers run in: one for all (the loop would copy
        #: the current one for every timer, an object per connection for the garbage
        #: collector). Nothing here sets context variables.
        self.context = contextvars.copy_context()
        self._marked: list[AsyncioDriver] = []
        self._scheduled = False
        self._requests = 0  # HTTP requests (upgrades) read in this pass
        self._requests_began = 0.0  # when the first of them was read
        #: Connections whose request waits for a pass with room for it, in arrival order.
        self._held: deque[AsyncioDriver] = deque()

    def may_read_request(self) -> bool:
        """Whether a connection may read its HTTP request (an upgrade) in this pass: the
        first one, then others for :data:`PASS_BUDGET` and up to
        :data:`REQUESTS_PER_PASS`, so that a reconnect storm's handshakes (each ~0.5 ms
        with its presence snapshot) leave room for the open connections."""
        requests = self._requests
        if not requests:
            self._loop.call_soon(self._new_pass)
            self._requests_began = self._loop.time()
        elif (
            requests >= REQUESTS_PER_PASS or self._loop.time() - self._requests_began >= PASS_BUDGET
        ):
            return False
        self._requests = requests + 1
        return True

    def hold(self, connection: AsyncioDriver) -> None:
        """*connection*'s request waits for a pass with room for it (read by
        :meth:`AsyncioDriver.read_held`, in arrival order, before any newer one)."""
        self._held.append(connection)

    def _new_pass(self) -> None:
        self._requests = 0
        held = self._held
        while held and held[0].read_held():
            held.popleft()

    def mark(self, connection: AsyncioDriver) -> None:
        self._marked.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        marked, self._marked = self._marked, []
        self._scheduled = False
        clock = self._loop.time
        began = clock()
        written = 0
        for connection in marked:
            connection.flush()
            written += 1
            if written % WRITES_PER_LOOK == 0 and (
                written >= WRITES_PER_PASS or clock() - began >= PASS_BUDGET
            ):
                break
        if written < len(marked):
            # A broadcast to thousands: the rest in the next passes (first, in order), so
            # that the input waiting on other sockets (a ping) is read in between.
            del marked[:written]
            marked += self._marked
            self._marked = marked
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush)


class AsyncioDriver(Driver, asyncio.Protocol):
    """Drives one :class:`~agentcast.protocol.ServerConnection` from asyncio's callbacks;
    registered with the service from ``connection_made`` to ``connection_lost``."""

    __slots__ = (
        "_burst",
        "_done",
        "_finishing",
        "_flusher",
        "_give_up_at",
        "_held",
        "_loop",
        "_marked",
        "_paused",
        "_reading",
        "_send_buffer",
        "_timer",
        "_timer_at",
        "_tls",
        "_transport",
        "_yielding",
    )

    def __init__(
        self,
        service: Service,
        flusher: Flusher,
        loop: asyncio.AbstractEventLoop,
        *,
        tls: bool = False,
        send_buffer: int | None = None,
    ) -> None:
        self._service = service
        self._flusher = flusher
        self._loop = loop
        self._tls = tls
        self._send_buffer = send_buffer
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._reading = True  # the transport reads (not paused by us)
        self._burst = 0  # bytes read since the connection last yielded the loop
        self._held = b""  # a request read in a pass that had read enough of them
        self._yielding = False  # reading paused until the next pass
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
        host, peer = format_peer(transport.get_extra_info("peername"))
        if self._send_buffer:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        service = self._service
        now = self._loop.time()
        self._open(service, host=host, peer=peer, now=now)
        service.register(self)
        # Refused at once (too many connections from this address): the 503 goes out
        # at the next pass, then the lingering close.
        self._after_input(now)

    def data_received(self, data: bytes) -> None:
        if self._finishing:
            return  # lingering after an HTTP answer: discard what the client still sends
        if self.conn.session is None and (self._held or not self._flusher.may_read_request()):
            # Enough requests read in this pass: this one in a later pass, after those
            # already waiting, reading paused meanwhile.
            if not self._held:
                self._flusher.hold(self)
            self._held += data
            self._yielding = True
            self._follow_core()
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        now, wall = self._loop.time(), time.time()
        try:
            self.conn.receive_data(data, now, wall)
            self._process_events(now, wall)
        except Exception:
            self.failed(now, wall)
        self._burst += len(data)
        if self._burst > PASS_BYTES and not self._yielding:
            self._yielding = True
            self._loop.call_soon(self._next_pass)
        if self._marked and not self.conn.closed:
            # An answer to this input (a pong, the 101 and auth): write it now rather than
            # at the next pass (flush() then follows the core and arms the timer, as
            # _after_input does). Broadcasts to other connections still wait for the pass.
            self.flush()
            return
        self._after_input(now)
        if self._marked:
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
            self.failed(now, wall)
        self._after_input(now)
        if self._tls:
            # asyncio closes a TLS transport after this: write what is pending first.
            self.flush()
            return False
        return True  # keep our half open until what is pending is written

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self._transport
        self._done = True
        self._transport = None
        self._cancel_timer()
        self.socket_lost(self._loop.time(), time.time())
        self._service.unregister(self)
        self.let_go()
        # CPython 3.11's selector transport keeps its read callback, a bound method of
        # itself, once closed (3.12 drops it in close()): a reference cycle that only the
        # garbage collector's full pass frees. Its reader is removed by now (the socket
        # is closed right after this returns), so the callback is never called again.
        if getattr(transport, "_read_ready_cb", None) is not None:
            transport._read_ready_cb = None  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self._paused = True

    def _next_pass(self) -> None:
        self._burst = 0
        self._yielding = False
        self._follow_core()

    def read_held(self) -> bool:
        """Read the request held back (:meth:`Flusher.hold`) if this pass has room for
        it; whether it is done with (read, or the socket went away meanwhile)."""
        if self._transport is None or self._finishing:
            self._held = b""  # gone, or closed meanwhile (a handshake that timed out)
            return True
        if not self._flusher.may_read_request():
            return False
        data, self._held = self._held, b""
        self._yielding = False
        self._receive(data)
        self._follow_core()
        return True

    def _read_again(self) -> None:
        if not self._reading and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()

    def _follow_core(self) -> None:
        """Read, or not: not while the core wants no input or the connection yields the
        loop. (Once the core is done, the close and the linger take over.)"""
        transport = self._transport
        if transport is None or self._finishing or self.conn.closed:
            return
        reading = self.conn.wants_input and not self._yielding
        if reading != self._reading:
            if reading:
                self._read_again()
            else:
                self._reading = False
                transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self.flush()

    # -- Driver --------------------------------------------------------------------------

    def wake(self) -> None:
        """Output is pending: write it at the start of the next pass of the loop."""
        if not self._marked and not self._done:
            self._marked = True
            self._flusher.mark(self)

    def abort(self) -> None:
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
            self._follow_core()  # a client that does not read: its input may wait too
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
            self.abort()
            return
        if conn.closed:
            self._finish()
        else:
            self._follow_core()  # a write completed: the backlog may be back under the limit
            self._arm_timer()

    def _finish(self) -> None:
        """The core is done and everything is written: close the socket, or half-close
        and linger (:attr:`~._driver.Driver.lingers`)."""
        transport = self._transport
        assert transport is not None
        self._finishing = True
        now = self._loop.time()
        if self._give_up_at is None:
            self._give_up_at = self.give_up_at(now)
        if not self.lingers:
            self._close_transport()
            return
        # Until the client's EOF or for LINGER seconds, reading (and discarding).
        self._read_again()
        if transport.can_write_eof():
            transport.write_eof()
        self._give_up_at = min(self._give_up_at, now + LINGER)
        self._arm_timer()

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None:
            if self._tls or transport.get_write_buffer_size():
                transport.close()  # after the transport's own buffer is written
                self._arm_timer()  # the give-up deadline, for a client that never reads
            else:
                transport.close()  # nothing left to write: connection_lost at the next pass

    # -- time ----------------------------------------------------------------------------

    def _after_input(self, now: float) -> None:
        if self.conn.closed:
            if self._give_up_at is None:
                self._give_up_at = self.give_up_at(now)
            self.wake()
        else:
            self._follow_core()
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
        self._timer = self._loop.call_at(deadline, self._on_timer, context=self._flusher.context)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self.conn.closed:
            self._closed_timer(now)
            return
        self.deadline_reached(self._timer_at, now, time.time())
        self._after_input(now)

    def _closed_timer(self, now: float) -> None:
        """The core is done: end the linger, or give up on a client that does not read."""
        give_up_at = self._give_up_at
        transport = self._transport
        if give_up_at is None or transport is None:
            return
        if now < give_up_at:
            self._arm_timer()
        elif self._finishing and self.lingers and not transport.get_write_buffer_size():
            transport.close()  # the end of the lingering close after an HTTP answer
        else:
            log.debug("gave up flushing to %s", self.peer)
            self._finishing = True
            transport.abort()


def transport_maker(
    loop: asyncio.AbstractEventLoop,
) -> Callable[[socket.socket, asyncio.Protocol], object] | None:
    """How to wrap an accepted plain TCP socket in a transport of *loop* at once, or
    ``None`` when the loop has no synchronous way (uvloop: ``connect_accepted_socket``,
    a coroutine, then).

    On asyncio's own selector loops this is what ``connect_accepted_socket`` does inside
    (``_make_socket_transport``: the transport registers its reader and schedules
    ``connection_made``), without the coroutine, its future and the task around it:
    per accepted connection, that is most of what accepting costs in Python."""
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        make: Callable[[socket.socket, asyncio.Protocol], object] | None = getattr(
            loop, "_make_socket_transport", None
        )
        return make
    return None
