"""One event stream of the ASGI adapter: the session as Server-Sent Events (PROTOCOL.md 11).

An ASGI ``http`` request for ``settings.events_path`` takes the same way as a WebSocket
(:mod:`._asgi_driver`): an :class:`~agentcast.protocol.Upgrade` (origin, limits, the
token from the query, ``Authorization: Bearer`` or the ``agentcast_token`` cookie,
``Last-Event-ID``), the authenticator's verdict, a refusal written as an HTTP answer.
Accepted, it answers ``200 text/event-stream`` and opens the session on an
:class:`~agentcast.protocol.eventstream.EventStream`: every rule is the core's, this
module only moves the body's bytes and time.

Three tasks, as for a WebSocket (:mod:`._asgi_tasks`): the **writer** takes everything
pending (``take_bytes()``) and sends it as one ``http.response.body`` chunk; once the
session has closed, it sends what is left (the ``close`` event) and ends the body, within
the close timeout. The **reader** waits for ``http.disconnect`` (the client left). The
**timer** calls the session's ``handle_timer`` at its deadlines (the heartbeat comment,
token expiry).
"""

from __future__ import annotations

import logging
import time

from agentcast.protocol import CloseCode, Upgrade
from agentcast.protocol.eventstream import EventStream, open_event_stream, stream_headers
from agentcast.protocol.upgrade import TOKEN_COOKIE

from ._asgi_tasks import AsgiTasks, Receive, Scope, Send, decode_headers, peer_of, send_answer
from .service import Service, clock

__all__ = ["AsgiEventStream"]

log = logging.getLogger("agentcast.connection")


class AsgiEventStream(AsgiTasks):
    """Serves one ASGI ``http`` scope for the event stream, from request to end."""

    __slots__ = ("_sink",)

    what = "event stream"

    def __init__(self, service: Service, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(service, scope, receive, send)
        self._sink: EventStream | None = None

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
            result, refusal = self._verdict(upgrade)
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
            await self._serve(session, now)
        finally:
            upgrade.release()

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

    def _close_code(self) -> int | None:
        return None if self._sink is None else self._sink.close_code

    async def _send_pending(self) -> bool:
        data = self.outbox.take_bytes()
        if data:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        return bool(data)

    async def _send_end(self) -> None:
        await self._send({"type": "http.response.body", "body": b""})
