"""One event stream of the ASGI adapter: the session as Server-Sent Events (PROTOCOL.md 11).

An ASGI ``http`` request for ``settings.events_path`` takes the same way as a WebSocket
(:mod:`._asgi_driver`): an :class:`~agentcast.protocol.Upgrade` (origin, limits, the
token from the query, ``Authorization: Bearer`` or the ``agentcast_token`` cookie,
``Last-Event-ID``), the authenticator's verdict, a refusal written as an HTTP answer.
Accepted, it answers ``200 text/event-stream`` and opens the session on an
:class:`~agentcast.protocol.eventstream.EventStream`: every rule is the core's, this
module only moves the body's bytes and time.

Three tasks, as for a WebSocket: the **writer** takes everything pending
(``take_bytes()``), sends it as one ``http.response.body`` chunk and reports the write
complete (``sent()``), so a reader that does not keep up is closed ``1013`` by the
session (the ASGI server's ``send`` waits while its transport buffer is full); once the
session has closed, it sends what is left (the ``close`` event) and ends the body, within
the close timeout. The **reader** waits for ``http.disconnect`` (the client left). The
**timer** calls the session's ``handle_timer`` at its deadlines (the heartbeat comment,
token expiry).
"""

from __future__ import annotations

import logging
import math
import time

import anyio
from anyio.abc import TaskGroup

from agentcast.protocol import AuthResult, CloseCode, HttpAnswer, Session, Upgrade
from agentcast.protocol.eventstream import EventStream, open_event_stream, stream_headers
from agentcast.protocol.outbox import Outbox
from agentcast.protocol.upgrade import TOKEN_COOKIE

from ._asgi_driver import Receive, Scope, Send, decode_headers, peer_of, send_answer
from .logs import log_close, log_open
from .service import Service, clock

__all__ = ["AsgiEventStream"]

log = logging.getLogger("agentcast.connection")

_INTERNAL_ERROR = HttpAnswer.plain(500, "Internal Server Error")


class AsgiEventStream:
    """Serves one ASGI ``http`` scope for the event stream, from request to end."""

    __slots__ = (
        "__weakref__",
        "_ended",
        "_flush_scope",
        "_opened_at",
        "_receive",
        "_scope",
        "_send",
        "_service",
        "_sink",
        "_task_group",
        "_timer_wakeup",
        "_writer_wakeup",
        "outbox",
        "peer",
        "session",
    )

    def __init__(self, service: Service, scope: Scope, receive: Receive, send: Send) -> None:
        self._service = service
        self._scope = scope
        self._receive = receive
        self._send = send
        #: The response body still to write (the sink's outbox).
        self.outbox = Outbox()
        self.outbox.on_output = self._wake
        self._sink: EventStream | None = None
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
        """Start closing from the server side (1001 at shutdown): the ``close`` event."""
        if self.session is not None:
            self.session.close(code, reason, clock(), time.time())

    def abort(self) -> None:
        """Stop serving now."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    # -- serving ------------------------------------------------------------------------

    async def run(self) -> None:
        service = self._service
        host, _ = peer_of(self._scope)
        headers = decode_headers(self._scope)
        upgrade = Upgrade(
            service.hub,
            query=bytes(self._scope.get("query_string") or b"").decode("latin-1"),
            headers=headers,
            subprotocols=(),
            client=host,
            now=clock(),
            cookie=TOKEN_COOKIE,
        )
        try:
            result: AuthResult | None = None
            refusal = upgrade.refusal
            if refusal is None:
                try:
                    if upgrade.token is not None:
                        result = service.authenticator.authenticate(upgrade.token, time.time())
                    refusal = upgrade.decide(result)
                except Exception:
                    log.exception("internal error on the event stream of %s", self.peer)
                    refusal = _INTERNAL_ERROR
            if refusal is not None:
                try:
                    await send_answer(self._send, refusal)
                except Exception:
                    log.debug("could not refuse the stream of %s", self.peer, exc_info=True)
                return
            fields = [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in stream_headers(headers)
            ]
            try:
                await self._send({"type": "http.response.start", "status": 200, "headers": fields})
            except Exception:  # the client left meanwhile
                log.debug("could not start the stream of %s", self.peer, exc_info=True)
                return
            now, wall = clock(), time.time()
            self._sink = EventStream(self.outbox, service.settings)
            session = open_event_stream(upgrade, self._sink, result, now=now, wall=wall)
            self.session = session
            self._opened_at = now
            log_open(session.user_id, self.peer)
            service.register(self)
            try:
                await self._serve()
            finally:
                if not self._ended:  # cancelled (the ASGI server's shutdown, an abort)
                    self._end(CloseCode.ABNORMAL, clock(), time.time())
                service.unregister(self)
        finally:
            upgrade.release()

    async def _serve(self) -> None:
        self._writer_wakeup = anyio.Event()
        self._timer_wakeup = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._write_loop)
            tg.start_soon(self._timer_loop)
            await self._read_loop()

    async def _read_loop(self) -> None:
        """Nothing comes from the client but its leaving."""
        while True:
            try:
                message = await self._receive()
            except Exception:
                log.debug("receive failed for %s", self.peer, exc_info=True)
                message = {"type": "http.disconnect"}
            if message.get("type") == "http.disconnect":
                self._end(CloseCode.GOING_AWAY, clock(), time.time())
                return

    async def _write_loop(self) -> None:
        outbox = self.outbox
        sink = self._sink
        assert sink is not None
        send = self._send
        with anyio.CancelScope() as flush:
            self._flush_scope = flush
            self._arm_flush_deadline()  # closed while opening (an unauthenticated client)
            try:
                while True:
                    data = outbox.take_bytes()
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                        outbox.sent()
                        continue
                    if sink.close_code is not None:
                        await send({"type": "http.response.body", "body": b""})
                        break
                    wakeup = self._writer_wakeup = anyio.Event()
                    if not outbox and sink.close_code is None:
                        await wakeup.wait()
            except Exception:
                log.debug("send failed for %s", self.peer, exc_info=True)
                outbox.discard()
                outbox.sent()
                self._end(CloseCode.ABNORMAL, clock(), time.time())
                return
        self._flush_scope = None
        if flush.cancelled_caught:
            log.debug("gave up flushing to %s", self.peer)
        assert sink.close_code is not None
        self._end(sink.close_code, clock(), time.time())

    async def _timer_loop(self) -> None:
        session = self.session
        assert session is not None
        while True:
            deadline = session.next_deadline()
            wakeup = self._timer_wakeup = anyio.Event()
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                await wakeup.wait()
            if deadline is None or not scope.cancelled_caught:
                continue
            now, wall = max(clock(), deadline), time.time()
            try:
                session.handle_timer(now, wall)
            except Exception:
                log.exception("internal error on the event stream of %s", self.peer)
                session.close(CloseCode.INTERNAL_ERROR, "internal error", now, wall)

    # -- internals ----------------------------------------------------------------------

    def _wake(self) -> None:
        """Output is pending, or the session closed: wake the writer; once closed, the
        rest must be written within the close timeout."""
        self._arm_flush_deadline()
        wakeup = self._writer_wakeup
        if wakeup is not None and not wakeup.is_set():
            wakeup.set()

    def _arm_flush_deadline(self) -> None:
        scope = self._flush_scope
        sink = self._sink
        if (
            scope is not None
            and sink is not None
            and sink.close_code is not None
            and scope.deadline == math.inf
        ):
            scope.deadline = clock() + self._service.settings.close_timeout

    def _end(self, code: int, now: float, wall: float) -> None:
        """The stream is over: tell the session (once), log it, stop the tasks."""
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
        self._service.wake_hub_timer()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
