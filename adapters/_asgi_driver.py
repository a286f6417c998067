"""One WebSocket of the ASGI adapter: the upgrade decisions, then a session over ASGI events.

Under ASGI the server (uvicorn, hypercorn...) does the HTTP upgrade and the framing, so
this module drives only the transport-free parts of the core:

* at ``websocket.connect``, an :class:`~agentcast.protocol.Upgrade`: admission, the token
  from the scope's query string, header or subprotocols, the authenticator's verdict, and
  the refusals (sent as a denial response where the server supports the
  ``websocket.http.response`` extension, else as a close before accepting, which the
  server answers ``403``);
* after ``websocket.accept``, a :class:`~agentcast.protocol.Session` whose
  :class:`~agentcast.protocol.Sink` is this connection: its outbox is the pending output,
  and its ``close`` asks the writer to send ``websocket.close`` once what is pending has
  been sent.

Three tasks per connection: the **reader** feeds ``websocket.receive`` to the session and
ends it at ``websocket.disconnect``; the **writer** is the only task that sends: it takes
everything pending (``take_messages()``), sends each text, and reports the write
complete (``sent()``), which is how the session's 1013 policy sees a client that does not
keep up (the ASGI server's ``send`` waits while its transport buffer is full); the
**timer** sleeps until the session's ``next_deadline()`` and calls ``handle_timer``.

The driver registers itself with the :class:`~agentcast.adapters.service.Service` while
its WebSocket is open (gauges, drain) and calls ``on_serving`` with its task group once it
serves, so that an application without lifespan events can run the service's background
work there. Nothing a client sends makes an exception escape to the ASGI server: a
failure while serving one connection is logged and closes it with 1011.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from agentcast.protocol import AuthRequested, AuthResult, CloseCode, HttpAnswer, Session, Upgrade
from agentcast.protocol.outbox import Outbox

from .logs import log_close, log_open
from .service import Service, clock

__all__ = [
    "AsgiDriver",
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


class AsgiDriver:
    """Serves one ASGI ``websocket`` scope from ``websocket.connect`` to the end."""

    __slots__ = (
        "__weakref__",
        "_close",
        "_close_silent",
        "_ended",
        "_flush_scope",
        "_on_serving",
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

    def __init__(
        self,
        service: Service,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        close_silent: bool = False,
        on_serving: Callable[[AsgiDriver, TaskGroup], None] | None = None,
    ) -> None:
        self._service = service
        self._close_silent = close_silent
        self._on_serving = on_serving
        self._scope = scope
        self._receive = receive
        self._send = send
        #: The pending output (the :class:`~agentcast.protocol.Sink` attribute).
        self.outbox = Outbox()
        self.outbox.on_output = self._wake_writer
        self.session: Session | None = None
        _, self.peer = peer_of(scope)
        self._close: tuple[int, str] | None = None
        self._flush_scope: anyio.CancelScope | None = None
        self._task_group: TaskGroup | None = None
        self._writer_wakeup: anyio.Event | None = None
        self._timer_wakeup: anyio.Event | None = None
        self._opened_at = 0.0
        self._ended = False

    @property
    def backlog(self) -> int:
        """Bytes pending and in flight (what the session's 1013 policy counts)."""
        return self.outbox.backlog

    @property
    def serving(self) -> bool:
        """The WebSocket is open and its tasks run."""
        return self._task_group is not None and not self._ended

    # -- what the service sees (Served) -------------------------------------------------

    def start_close(self, code: int, reason: str) -> None:
        """Start closing from the server side (1001 at shutdown)."""
        if self.session is not None:
            self.session.close(code, reason, clock(), time.time())

    def abort(self) -> None:
        """Stop serving now: the connection ends as abnormally closed (1006)."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    # -- the Sink -----------------------------------------------------------------------

    def send_ping(self, payload: bytes = b"") -> None:
        """Protocol Pings are the ASGI server's (uvicorn ``--ws-ping-interval``)."""

    def close(self, code: int, reason: str, now: float) -> None:
        """The session closes: send what is pending, then ``websocket.close``, within the
        close timeout (then give up on the client)."""
        if self._close is not None:
            return
        self._close = (code, reason)
        if self._flush_scope is not None:
            self._flush_scope.deadline = now + self._service.settings.close_timeout
        self._wake_writer()

    # -- serving ------------------------------------------------------------------------

    async def run(self) -> None:
        message = await self._receive()
        if message.get("type") != "websocket.connect":
            return  # gone before it was announced
        service = self._service
        host, _ = peer_of(self._scope)
        query = bytes(self._scope.get("query_string") or b"").decode("latin-1")
        upgrade = Upgrade(
            service.hub,
            query=query,
            headers=decode_headers(self._scope),
            subprotocols=self._scope.get("subprotocols") or (),
            client=host,
            now=clock(),
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
                    log.exception("internal error on the upgrade from %s", self.peer)
                    refusal = _INTERNAL_ERROR
            if refusal is not None:
                await self._deny(refusal)
                return
            try:
                await self._send({"type": "websocket.accept", "subprotocol": upgrade.subprotocol})
            except Exception:  # the client left during the upgrade
                log.debug("could not accept the WebSocket of %s", self.peer, exc_info=True)
                return
            now, wall = clock(), time.time()
            session = upgrade.open(
                self, result, now=now, wall=wall, close_silent=self._close_silent
            )
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

    async def _deny(self, refusal: HttpAnswer) -> None:
        extensions = self._scope.get("extensions") or {}
        try:
            if "websocket.http.response" in extensions:
                await send_answer(self._send, refusal, websocket=True)
            else:  # the server answers 403
                await self._send({"type": "websocket.close", "code": CloseCode.POLICY})
        except Exception:
            log.debug("could not refuse the upgrade of %s", self.peer, exc_info=True)

    async def _serve(self) -> None:
        self._writer_wakeup = anyio.Event()
        self._timer_wakeup = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._write_loop)
            tg.start_soon(self._timer_loop)
            if self._on_serving is not None:
                self._on_serving(self, tg)
            await self._read_loop()

    async def _read_loop(self) -> None:
        session = self.session
        assert session is not None
        while True:
            try:
                message = await self._receive()
            except Exception:
                log.debug("receive failed for %s", self.peer, exc_info=True)
                self._end(CloseCode.ABNORMAL, clock(), time.time())
                return
            now, wall = clock(), time.time()
            kind = message.get("type")
            if kind == "websocket.disconnect":
                code = message.get("code")
                # Without a code: "no status code was present" (RFC 6455 7.1.5).
                self._end(code if isinstance(code, int) else CloseCode.NO_STATUS, now, wall)
                return
            if kind != "websocket.receive":
                continue
            try:
                text = message.get("text")
                if isinstance(text, str):
                    session.receive_text(text, now, wall)
                else:
                    data = message.get("bytes")
                    session.receive_binary(now, wall, len(data) if data else 0)
                self._dispatch(now, wall)
            except Exception:
                self._fail(now, wall)

    async def _write_loop(self) -> None:
        outbox = self.outbox
        send = self._send
        with anyio.CancelScope() as flush:
            self._flush_scope = flush
            if self._close is not None:  # closed while opening (e.g. an instant 1009)
                flush.deadline = clock() + self._service.settings.close_timeout
            try:
                while True:
                    messages = outbox.take_messages()
                    if messages:
                        for message in messages:
                            await send({"type": "websocket.send", "text": message.text})
                        outbox.sent()
                        continue
                    if self._close is not None:
                        code, reason = self._close
                        await send({"type": "websocket.close", "code": code, "reason": reason})
                        break
                    wakeup = self._writer_wakeup = anyio.Event()
                    if not outbox and self._close is None:
                        await wakeup.wait()
            except Exception:
                # The client is gone (ClientDisconnected, a closed stream...): nothing
                # more can be written to it.
                log.debug("send failed for %s", self.peer, exc_info=True)
                outbox.discard()
                outbox.sent()
                self._end(CloseCode.ABNORMAL, clock(), time.time())
                return
        self._flush_scope = None
        if flush.cancelled_caught:
            log.debug("gave up flushing to %s", self.peer)
        assert self._close is not None
        self._end(self._close[0], clock(), time.time())

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

    # -- events -------------------------------------------------------------------------

    def _dispatch(self, now: float, wall: float) -> None:
        session = self.session
        assert session is not None
        for event in session.events_received():
            if isinstance(event, AuthRequested):  # an in-band refresh
                result = self._service.authenticator.authenticate(event.token, wall)
                session.complete_auth(result, now, wall)
                # The token's expiry moved: the timer must look at the deadline again.
                if self._timer_wakeup is not None:
                    self._timer_wakeup.set()

    def _wake_writer(self) -> None:
        wakeup = self._writer_wakeup
        if wakeup is not None and not wakeup.is_set():
            wakeup.set()

    def _fail(self, now: float, wall: float) -> None:
        """An unexpected error: log it and close this connection with 1011."""
        log.exception("internal error on the connection from %s", self.peer)
        session = self.session
        try:
            assert session is not None
            session.close(CloseCode.INTERNAL_ERROR, "internal error", now, wall)
        except Exception:  # pragma: no cover - Session.close does not raise
            log.exception("could not close the connection from %s cleanly", self.peer)
            self._end(CloseCode.ABNORMAL, now, wall)

    def _end(self, code: int, now: float, wall: float) -> None:
        """The connection is over: tell the session (once), log it, stop the tasks."""
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
