"""The socket driver: one plain TCP connection of the reference server on trio, one task.

:class:`SocketDriver` serves one connected, non-blocking socket with **one task** (the
connection's own, started by the accept loop), the way the asyncio driver serves one with
callbacks:

* the task waits until the socket is readable, but only until the core's
  ``next_deadline()`` and only while the core wants input (``wants_input``); it reads,
  feeds ``receive_data`` / ``receive_eof`` / ``handle_timer`` with the loop's clock,
  dispatches the events, and writes the answer to that input (a ``pong``, the ``101``)
  at once;
* output not caused by the connection's own input (a broadcast) only marks it:
  :class:`SocketFlusher`, one task for the whole server, writes every marked connection's
  whole backlog once per pass of the scheduler (at most
  :data:`~._driver.WRITES_PER_PASS` connections and :data:`~._driver.PASS_BUDGET` a
  pass, the others in the passes after, so that input on other sockets is read in
  between), without waking the connection's task;
* a connection reads its HTTP request (the upgrade) in a pass with room for it (at
  most :data:`~._driver.REQUESTS_PER_PASS` and :data:`~._driver.PASS_BUDGET` a pass);
  the others wait a pass, as on asyncio;
* a write is one non-blocking ``send()`` of everything ``data_to_send()`` holds. What the
  kernel does not take stays the core's backlog (the slow-client policy, 1013, sees it)
  and is written by the connection's task as the socket becomes writable; only while
  such a write is held back does the task wait for two things at once (readable and
  writable), with two short-lived waiters. An idle connection is one task waiting for its
  socket, no task group and no second task.

TLS connections (and any other anyio byte stream) keep :mod:`._stream_driver`. The rules
after the core is done (give up, linger) are :class:`~._driver.Driver`'s, shared with the
other drivers.

The waits of each input's round (the cancel scope with the core's deadline, the wait
for the socket, the clock) are trio's own calls: anyio's wrappers of them look up the
running backend on every call, most of what a connection cost in them.
"""

from __future__ import annotations

import logging
import math
import socket
import time

import anyio
import anyio.lowlevel

try:
    import trio
    import trio.lowlevel
except ImportError:  # pragma: no cover - trio is optional; this driver runs on trio only
    trio = None  # type: ignore[assignment]

from ._driver import (
    LINGER,
    PASS_BUDGET,
    READ_SIZE,
    REQUESTS_PER_PASS,
    WRITES_PER_LOOK,
    WRITES_PER_PASS,
    Driver,
)
from .service import Service

__all__ = ["SocketDriver", "SocketFlusher"]

log = logging.getLogger("agentcast.connection")


class SocketFlusher:
    """Writes the output of the connections woken during one pass of the scheduler: once
    each, from one task, at the next pass; and bounds the HTTP requests (upgrades) read in
    one pass."""

    __slots__ = ("_marked", "_requests", "_requests_began", "_wakeup")

    def __init__(self) -> None:
        self._marked: list[SocketDriver] = []
        self._wakeup = anyio.Event()
        self._requests = 0  # HTTP requests read since this task last ran (one pass)
        self._requests_began = 0.0  # when the first of them was read

    def mark(self, connection: SocketDriver) -> None:
        self._marked.append(connection)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def may_read_request(self) -> bool:
        """Whether a connection may read its HTTP request (an upgrade) in this pass: the
        first one, then others for :data:`~._driver.PASS_BUDGET` and up to
        :data:`~._driver.REQUESTS_PER_PASS` (the pass ends when this task runs next), so
        that a reconnect storm's handshakes leave room for the open connections."""
        requests = self._requests
        if not requests:
            self._requests_began = time.monotonic()
            if not self._wakeup.is_set():
                self._wakeup.set()  # to count again from the next pass
        elif (
            requests >= REQUESTS_PER_PASS or time.monotonic() - self._requests_began >= PASS_BUDGET
        ):
            return False
        self._requests = requests + 1
        return True

    async def run(self) -> None:
        """Write the marked connections as they come, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            self._requests = 0
            await self._flush()

    async def _flush(self) -> None:
        # A function of its own, so that nothing refers to the connections written
        # while the task waits for the next ones (a closed one is freed at once).
        marked, self._marked = self._marked, []
        began = time.monotonic()
        for index, connection in enumerate(marked, 1):
            connection.flush()
            if (
                index % WRITES_PER_LOOK == 0
                and index < len(marked)
                and (index % WRITES_PER_PASS == 0 or time.monotonic() - began >= PASS_BUDGET)
            ):
                # A broadcast to thousands: let the input waiting on other sockets
                # (a ping) be read in between.
                await anyio.lowlevel.checkpoint()
                self._requests = 0
                began = time.monotonic()


class SocketDriver(Driver):
    """Drives one :class:`~agentcast.protocol.ServerConnection` over one connected
    non-blocking socket, from the task that calls :meth:`run`."""

    __slots__ = (
        "_flusher",
        "_marked",
        "_recheck",
        "_rest",
        "_scope",
        "_sock",
        "_task_scope",
        "_waits_for_input",
        "_write_failed",
    )

    def __init__(
        self,
        service: Service,
        sock: socket.socket,
        flusher: SocketFlusher,
        *,
        host: str | None,
        peer: str,
    ) -> None:
        self._sock = sock
        self._flusher = flusher
        self._marked = False
        #: The part of the last write the kernel has not taken yet (``None``: none).
        self._rest: memoryview | None = None
        #: The scope of the task's current wait (``None`` while it is not waiting).
        self._scope: trio.CancelScope | None = None
        self._recheck = False  # the wait was ended to look again, not by a deadline
        self._waits_for_input = True  # the current wait includes the socket's input
        self._task_scope: trio.CancelScope | None = None
        self._write_failed = False
        self._open(service, host=host, peer=peer, now=trio.current_time())

    # -- called from anywhere in the loop ------------------------------------------------

    def wake(self) -> None:
        """Output is pending or the state changed: have it written at the next pass, and
        bring the task's wait forward if the core now needs waking earlier."""
        if not self._marked:
            self._marked = True
            self._flusher.mark(self)
        scope = self._scope
        if scope is not None:
            if self.conn.closed:
                # Closed from outside (the server shutting down): stop reading, finish.
                self._look_again()
                return
            deadline = self.conn.next_deadline()
            if deadline is not None and deadline < scope.deadline:
                scope.deadline = deadline

    def abort(self) -> None:
        if self._task_scope is not None:
            self._task_scope.cancel()

    def flush(self) -> None:
        """Write everything pending in one ``send()``, unless a write is held back (the
        task writes the rest as the socket allows); have the task look again when the
        core is done (an answer given outside its input: a publish answered once Redis
        gave the ids) or wants input again."""
        self._marked = False
        if self._rest is not None or self._write_failed:
            return
        conn = self.conn
        data = conn.data_to_send()
        if data:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._fail_write()
                return
            if sent < len(data):
                self._rest = memoryview(data)[sent:]
                self._look_again()  # the task waits for the socket to take the rest
                return
            # Taken whole: no longer the core's backlog (as a stream's send() returning).
            conn.transport.outbox.sent()
        if conn.closed or (not self._waits_for_input and conn.wants_input):
            self._look_again()  # finish, or read again (the backlog fell under the limit)

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it is over, then close the socket."""
        try:
            with trio.CancelScope() as self._task_scope:
                await self._serve()
                await self._finish()
        except Exception:  # pragma: no cover - the core and the socket calls don't raise
            log.exception("unexpected error on the connection from %s", self.peer)
        finally:
            self._scope = None
            self.socket_lost(trio.current_time(), time.time(), write_failed=self._write_failed)
            self.let_go()
            self._sock.close()

    async def _serve(self) -> None:
        conn = self.conn
        sock = self._sock
        while not conn.closed and not self._write_failed:
            deadline = conn.next_deadline()
            readable = writable = False
            self._recheck = False
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._scope = scope
                self._waits_for_input = wanted = conn.wants_input
                if self._rest is not None:
                    readable, writable = await self._wait_both(wanted)
                elif wanted:
                    await trio.lowlevel.wait_readable(sock)
                    readable = True
                else:
                    await trio.sleep_forever()  # until a write completes or a deadline
            self._scope = None
            self._waits_for_input = True
            if writable:
                self._write_rest()
            if readable and conn.session is None:
                # An HTTP request (an upgrade): in a pass that has room for it.
                while not self._flusher.may_read_request():
                    await trio.lowlevel.checkpoint()
            now, wall = trio.current_time(), time.time()
            if readable:
                self._read(now, wall)
            elif scope.cancelled_caught and not self._recheck and not conn.closed:
                self.deadline_reached(scope.deadline, now, wall)
            self.flush()  # the answer to this input (or to the deadline) at once

    def _read(self, now: float, wall: float) -> None:
        conn = self.conn
        try:
            data = self._sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if data:
                conn.receive_data(data, now, wall)
            else:
                conn.receive_eof(now, wall)
            self._process_events(now, wall)
        except Exception:
            self.failed(now, wall)

    async def _finish(self) -> None:
        """The core is done: write what is left (until the give-up time), then close, or
        half-close and linger (:attr:`~._driver.Driver.lingers`)."""
        with trio.CancelScope(deadline=self.give_up_at(trio.current_time())) as given_up:
            while not self._write_failed:
                self.flush()
                if self._rest is None:
                    break
                await anyio.wait_writable(self._sock)
                self._write_rest()
            if self.lingers and not self._write_failed:
                await self._linger()
        if given_up.cancelled_caught:
            log.debug("gave up flushing to %s", self.peer)

    async def _linger(self) -> None:
        sock = self._sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        with anyio.move_on_after(LINGER):
            while True:
                await anyio.wait_readable(sock)
                try:
                    if not sock.recv(READ_SIZE):
                        return
                except BlockingIOError:
                    continue
                except OSError:
                    return

    # -- internals -----------------------------------------------------------------------

    async def _wait_both(self, read: bool) -> tuple[bool, bool]:
        """Wait until the socket is writable, or (with *read*) readable: which it is."""
        sock = self._sock
        ready = [False, False]

        async def wait(index: int, tg: anyio.abc.TaskGroup) -> None:
            if index:
                await anyio.wait_writable(sock)
            else:
                await anyio.wait_readable(sock)
            ready[index] = True
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, 1, tg)
            if read:
                tg.start_soon(wait, 0, tg)
        return ready[0], ready[1]

    def _write_rest(self) -> None:
        rest = self._rest
        if rest is None:
            return
        try:
            sent = self._sock.send(rest)
        except BlockingIOError:
            return
        except OSError:
            self._fail_write()
            return
        if sent < len(rest):
            self._rest = rest[sent:]
            return
        self._rest = None
        self.conn.transport.outbox.sent()

    def _fail_write(self) -> None:
        """The socket failed: the task ends, and tells the core (``socket_lost``)."""
        self._rest = None
        self._write_failed = True
        self._look_again()

    def _look_again(self) -> None:
        """End the task's current wait so that it looks at the state again."""
        scope = self._scope
        if scope is not None:
            self._recheck = True
            scope.cancel()
