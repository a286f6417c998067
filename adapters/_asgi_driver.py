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

Three tasks per connection (:mod:`._asgi_tasks`): the **reader** feeds
``websocket.receive`` to the session and ends it at ``websocket.disconnect``; the
**writer** is the only task that sends: it takes everything pending
(``take_messages()``), sends each text, and reports the write complete; the **timer**
calls ``handle_timer`` at the session's deadlines.

The driver registers itself with the :class:`~agentcast.adapters.service.Service` while
its WebSocket is open (gauges, drain) and calls ``on_serving`` with its task group once it
serves, so that an application without lifespan events can run the service's background
work there. Nothing a client sends makes an exception escape to the ASGI server: a
failure while serving one connection is logged and closes it with 1011.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from anyio.abc import TaskGroup

from agentcast.protocol import AuthRequested, CloseCode, HttpAnswer, Upgrade

from ._asgi_tasks import (
    AsgiTasks,
    Message,
    Receive,
    Scope,
    Send,
    decode_headers,
    peer_of,
    send_answer,
)
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


class AsgiDriver(AsgiTasks):
    """Serves one ASGI ``websocket`` scope from ``websocket.connect`` to the end."""

    __slots__ = ("_close", "_close_silent", "_on_serving")

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
        super().__init__(service, scope, receive, send)
        self._close_silent = close_silent
        self._on_serving = on_serving
        self._close: tuple[int, str] | None = None

    @property
    def serving(self) -> bool:
        """The WebSocket is open and its tasks run."""
        return self._task_group is not None and not self._ended

    # -- the Sink -----------------------------------------------------------------------

    def send_ping(self, payload: bytes = b"") -> None:
        """Protocol Pings are the ASGI server's (uvicorn ``--ws-ping-interval``)."""

    def close(self, code: int, reason: str, now: float) -> None:
        """The session closes: send what is pending, then ``websocket.close``, within the
        close timeout (then give up on the client)."""
        if self._close is not None:
            return
        self._close = (code, reason)
        self._wake_writer()

    # -- serving ------------------------------------------------------------------------

    async def run(self) -> None:
        message = await self._receive()
        if message.get("type") != "websocket.connect":
            return  # gone before it was announced
        host, _ = peer_of(self._scope)
        query = bytes(self._scope.get("query_string") or b"").decode("latin-1")
        upgrade = Upgrade(
            self._service.hub,
            query=query,
            headers=decode_headers(self._scope),
            subprotocols=self._scope.get("subprotocols") or (),
            client=host,
            now=clock(),
        )
        try:
            result, refusal = self._verdict(upgrade)
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
            await self._serve(session, now)
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

    def _serving(self, task_group: TaskGroup) -> None:
        if self._on_serving is not None:
            self._on_serving(self, task_group)

    def _close_code(self) -> int | None:
        return None if self._close is None else self._close[0]

    async def _send_pending(self) -> bool:
        messages = self.outbox.take_messages()
        for message in messages:
            await self._send({"type": "websocket.send", "text": message.text})
        return bool(messages)

    async def _send_end(self) -> None:
        assert self._close is not None
        code, reason = self._close
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

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

    # -- events -------------------------------------------------------------------------

    def _dispatch(self, now: float, wall: float) -> None:
        session = self.session
        assert session is not None
        for event in session.events_received():
            if isinstance(event, AuthRequested):  # an in-band refresh
                result = self._service.authenticator.authenticate(event.token, wall)
                session.complete_auth(result, now, wall)
                # The token's expiry moved: the timer must look at the deadline again.
                self._wake_timer()
