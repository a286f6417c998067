"""What a WebSocket and an event stream of the ASGI adapter share: the ASGI helpers, the
verdict on the request, and the three tasks that serve an open session.

:class:`AsgiTasks` serves one session over ASGI events with three tasks: the **reader**
(the subclass's :meth:`~AsgiTasks._read_loop`), the **writer**, the only task that sends,
and the **timer**, which sleeps until the session's ``next_deadline()`` and calls
``handle_timer``. The writer sends everything pending (the subclass's
:meth:`~AsgiTasks._send_pending`) and reports the write complete (``outbox.sent()``),
which is how the session's ``1013`` policy sees a client that does not keep up (the ASGI
server's ``send`` waits while its transport buffer is full); once the session has closed,
it sends what is left and the end (:meth:`~AsgiTasks._send_end`) within the close timeout,
then gives up on the client. A failure while serving is logged and closes the session
with ``1011``; nothing escapes to the ASGI server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from agentcast.protocol import AuthResult, CloseCode, HttpAnswer, Session, Upgrade
from agentcast.protocol.outbox import Outbox

from .logs import log_close, log_open
from .service import Service, clock

__all__ = [
    "AsgiTasks",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "decode_headers",
    "peer_of",
    "send_answer",
]

log = logging.getLogger("agentcast.connection")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_INTERNAL_ERROR = HttpAnswer.plain(500, "Internal Server Error")


def peer_of(scope: Scope) -> tuple[str | None, str]:
    """``(host, "host:port")`` of the scope's client, for the core and for logs."""
    client = scope.get("client")
    if client:
        host, port = str(client[0]), client[1]
        return host, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return None, "-"


def decode_headers(scope: Scope) -> tuple[tuple[str, str], ...]:
    return tuple(
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers") or ()
    )


async def send_answer(send: Send, answer: HttpAnswer, *, websocket: bool = False) -> None:
    """*answer* as ASGI messages (``websocket.http.response.*`` for a WebSocket scope,
    ``http.response.*`` otherwise)."""
    prefix = "websocket.http.response" if websocket else "http.response"
    headers = answer.header_fields()
    await send({"type": prefix + ".start", "status": answer.status, "headers": headers})
    await send({"type": prefix + ".body", "body": answer.wire_body})


class AsgiTasks:
    """One ASGI scope's session and the tasks that serve it (see the module doc)."""

    __slots__ = (
        "__weakref__",
        "_ended",
        "_flush_scope",
        "_opened_at",
        "_receive",
        "_scope",
        "_send",
        "_service",
        "_task_group",
        "_timer_wakeup",
        "_writer_wakeup",
        "outbox",
        "peer",
        "session",
    )

    #: What this serves, for the logs ("connection", "event stream").
    what = "connection"

    def __init__(self, service: Service, scope: Scope, receive: Receive, send: Send) -> None:
        self._service = service
        self._scope = scope
        self._receive = receive
        self._send = send
        #: The pending output (the sink's outbox).
        self.outbox = Outbox()
        self.outbox.on_output = self._wake_writer
        self.session: Session | None = None
        _, self.peer = peer_of(scope)
        self._flush_scope: anyio.CancelScope | None = None
        self._task_group: TaskGroup | None = None
        self._writer_wakeup: anyio.Event | None = None
        self._timer_wakeup: anyio.Event | None = None
        self._opened_at = 0.0
        self._ended = False

    # -- what the service sees (Served) -------------------------------------------------

    @property
    def backlog(self) -> int:
        """Bytes pending and in flight (what the session's 1013 policy counts)."""
        return self.outbox.backlog

    def start_close(self, code: int, reason: str) -> None:
        """Start closing from the server side (1001 at shutdown)."""
        if self.session is not None:
            self.session.close(code, reason, clock(), time.time())

    def abort(self) -> None:
        """Stop serving now: the session ends as abnormally closed (1006)."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    # -- what a subclass gives ----------------------------------------------------------

    def _close_code(self) -> int | None:
        """The code the session closed with, once it has."""
        raise NotImplementedError

    async def _send_pending(self) -> bool:
        """Send what is pending; whether there was anything."""
        raise NotImplementedError

    async def _send_end(self) -> None:
        """Send the end (after everything pending)."""
        raise NotImplementedError

    async def _read_loop(self) -> None:
        """Receive until the client leaves (then :meth:`_end`)."""
        raise NotImplementedError

    def _serving(self, task_group: TaskGroup) -> None:
        """The tasks run (nothing by default)."""

    # -- serving ------------------------------------------------------------------------

    def _verdict(self, upgrade: Upgrade) -> tuple[AuthResult | None, HttpAnswer | None]:
        """The authenticator's result for the request's token, and the refusal (``None``:
        accepted). An authenticator that fails is a ``500``."""
        result: AuthResult | None = None
        refusal = upgrade.refusal
        if refusal is None:
            try:
                if upgrade.token is not None:
                    result = self._service.authenticator.authenticate(upgrade.token, time.time())
                refusal = upgrade.decide(result)
            except Exception:
                log.exception("internal error on the %s of %s", self.what, self.peer)
                refusal = _INTERNAL_ERROR
        return result, refusal

    async def _serve(self, session: Session, now: float) -> None:
        """Serve the opened *session* until it ends."""
        self.session = session
        self._opened_at = now
        log_open(session.user_id, self.peer)
        service = self._service
        service.register(self)
        try:
            self._writer_wakeup = anyio.Event()
            self._timer_wakeup = anyio.Event()
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._write_loop)
                tg.start_soon(self._timer_loop)
                self._serving(tg)
                await self._read_loop()
        finally:
            if not self._ended:  # cancelled (the ASGI server's shutdown, an abort)
                self._end(CloseCode.ABNORMAL, clock(), time.time())
            service.unregister(self)
            self._let_go()

    async def _write_loop(self) -> None:
        outbox = self.outbox
        with anyio.CancelScope() as flush:
            self._flush_scope = flush
            self._arm_flush_deadline()  # closed while opening
            try:
                while True:
                    if await self._send_pending():
                        outbox.sent()
                        continue
                    if self._close_code() is not None:
                        await self._send_end()
                        break
                    wakeup = self._writer_wakeup = anyio.Event()
                    if not outbox and self._close_code() is None:
                        await wakeup.wait()
            except Exception:
                # The client is gone (a disconnect, a closed stream...): nothing more can
                # be written to it.
                log.debug("send failed for %s", self.peer, exc_info=True)
                outbox.discard()
                outbox.sent()
                self._end(CloseCode.ABNORMAL, clock(), time.time())
                return
        self._flush_scope = None
        if flush.cancelled_caught:
            log.debug("gave up flushing to %s", self.peer)
        code = self._close_code()
        assert code is not None
        self._end(code, clock(), time.time())

    async def _timer_loop(self) -> None:
        session = self.session
        assert session is not None
        while True:
            deadline = session.next_deadline()
            wakeup = self._timer_wakeup = anyio.Event()
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                await wakeup.wait()
            if deadline is None or not scope.cancelled_caught:
                continue  # woken to look at the deadline again
            # Never let the core see time before the deadline it asked for.
            now, wall = max(clock(), deadline), time.time()
            try:
                session.handle_timer(now, wall)
            except Exception:
                self._fail(now, wall)

    # -- internals ----------------------------------------------------------------------

    def _let_go(self) -> None:
        """It is over: drop the references back to this object (the outbox's wake-up
        callback, the session, whose sink it may be, and the task group), so that the
        connection's objects are freed by reference counting, not by the garbage
        collector's full pass."""
        self.outbox.on_output = None
        self.session = None
        self._task_group = None

    def _wake_writer(self) -> None:
        """Output is pending, or the session closed: wake the writer; once closed, the
        rest must be written within the close timeout."""
        self._arm_flush_deadline()
        wakeup = self._writer_wakeup
        if wakeup is not None and not wakeup.is_set():
            wakeup.set()

    def _wake_timer(self) -> None:
        """A deadline may have moved: the timer looks at it again."""
        if self._timer_wakeup is not None:
            self._timer_wakeup.set()

    def _arm_flush_deadline(self) -> None:
        scope = self._flush_scope
        if scope is not None and scope.deadline == math.inf and self._close_code() is not None:
            scope.deadline = clock() + self._service.settings.close_timeout

    def _fail(self, now: float, wall: float) -> None:
        """An unexpected error: log it and close the session with 1011."""
        log.exception("internal error on the %s of %s", self.what, self.peer)
        session = self.session
        assert session is not None
        session.close(CloseCode.INTERNAL_ERROR, "internal error", now, wall)

    def _end(self, code: int, now: float, wall: float) -> None:
        """It is over: tell the session (once), log it, stop the tasks."""
        if self._ended:
            return
        self._ended = True
        session = self.session
        assert session is not None
        session.ended(code, now, wall)
        log_close(
            session.user_id,
            self.peer,
            code=code,
            duration=now - self._opened_at,
            messages_in=session.messages_in,
            messages_out=session.messages_out,
        )
        # The user may now be in the presence grace period.
        self._service.wake_hub_timer()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
