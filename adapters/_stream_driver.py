"""The stream driver: one connection of the reference server on trio (any anyio stream).

:class:`StreamDriver` serves one anyio byte stream with two tasks:

* the **pump** reads the socket, but only until the core's ``next_deadline()``, and only
  while the core wants input (``wants_input``: not while a client's backlog is past the
  limit, nor after a close for abuse; it waits for the writer then); it feeds
  ``receive_data`` / ``receive_eof`` / ``handle_timer`` with the loop's clock, then
  dispatches the events;
* the **writer** is the only task that writes: whenever the socket has taken its last
  write, it takes *everything* pending from ``data_to_send()`` and writes it in one call.
  The core counts that write as backlog until the next ``data_to_send()``, which is how it
  knows a client is too slow (1013).

A broadcast from anywhere appends to the outbox, whose ``on_output`` callback wakes the
writer (and re-arms the pump's deadline, in case the core has started closing). Nothing
raised here reaches the server: socket errors end this connection, and an unexpected
error closes it with 1011 after being logged. The rules after the core is done (give up,
linger) are :class:`~._driver.Driver`'s, shared with the asyncio driver.
"""

from __future__ import annotations

import logging
import math
import time

import anyio
from anyio.abc import ByteStream

from ._driver import IO_ERRORS, LINGER, READ_SIZE, Driver
from .service import Service, clock

__all__ = ["StreamDriver"]

log = logging.getLogger("agentcast.connection")


class StreamDriver(Driver):
    """Drives one :class:`~agentcast.protocol.ServerConnection` over one anyio byte stream
    until it is closed, with two tasks (a pump and a writer)."""

    __slots__ = ("_input_wanted", "_pumped", "_receive_scope", "_scope", "_stream", "_wakeup")

    def __init__(
        self, service: Service, stream: ByteStream, *, host: str | None, peer: str
    ) -> None:
        self._stream = stream
        self._wakeup = anyio.Event()
        # Set by the writer after each write: the pump, waiting for the core to want
        # input again, looks again.
        self._input_wanted = anyio.Event()
        self._receive_scope: anyio.CancelScope | None = None
        self._pumped = anyio.Event()  # the pump has stopped reading
        self._scope: anyio.CancelScope | None = None
        self._open(service, host=host, peer=peer, now=clock())

    # -- called from anywhere in the loop ------------------------------------------------

    def wake(self) -> None:
        """Output is pending or the state changed: wake the writer, and bring the pump's
        wait forward if the core now needs waking earlier (it started closing)."""
        if not self._wakeup.is_set():
            self._wakeup.set()
        scope = self._receive_scope
        if scope is not None:
            if self.conn.closed:
                # Closed from outside (the server shutting down, before a request came):
                # the pump stops reading, so that the writer may linger on the stream.
                scope.cancel()
                return
            deadline = self.conn.next_deadline()
            if deadline is not None and deadline < scope.deadline:
                scope.deadline = deadline

    def abort(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    # -- the tasks -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it is over, then close the socket."""
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._write_loop)
                try:
                    await self._pump()
                finally:
                    self._pumped.set()
                # The writer flushes what is left, lingers, and cancels us; if the client
                # does not read, give up.
                self.wake()
                now = clock()
                await anyio.sleep(self.give_up_at(now) - now)
                log.debug("gave up flushing to %s", self.peer)
                tg.cancel_scope.cancel()
        except Exception:  # pragma: no cover - both tasks catch their own errors
            log.exception("unexpected error on the connection from %s", self.peer)
        finally:
            self.socket_lost(clock(), time.time())
            self.let_go()
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
                if conn.wants_input:
                    try:
                        data = await stream.receive(READ_SIZE)
                    except IO_ERRORS:
                        eof = True
                else:
                    self._input_wanted = anyio.Event()
                    await self._input_wanted.wait()
            self._receive_scope = None
            now, wall = clock(), time.time()
            if data or eof:
                try:
                    if data:
                        conn.receive_data(data, now, wall)
                    else:
                        conn.receive_eof(now, wall)
                    self._process_events(now, wall)
                except Exception:
                    self.failed(now, wall)
            elif scope.cancelled_caught and not conn.closed:
                self.deadline_reached(scope.deadline, now, wall)
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
                        self.socket_lost(clock(), time.time(), write_failed=True)
                        return
                    self._input_wanted.set()
                    continue
                if conn.closed:
                    break
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            if self.lingers:
                await self._linger()
        except Exception:
            log.exception("unexpected error writing to %s", self.peer)
        finally:
            if self._scope is not None:
                self._scope.cancel()

    async def _linger(self) -> None:
        stream = self._stream
        with anyio.move_on_after(LINGER):
            try:
                await stream.send_eof()
            except NotImplementedError:  # TLS cannot half-close
                pass
            except IO_ERRORS:
                return
            await self._pumped.wait()  # one reader at a time
            try:
                while await stream.receive(READ_SIZE):
                    pass
            except IO_ERRORS:
                pass
