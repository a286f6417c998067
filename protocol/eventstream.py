"""A session carried as Server-Sent Events (PROTOCOL.md section 11), without a transport.

``GET /events`` opens the same :class:`~agentcast.protocol.Session` as a WebSocket, by
the same :class:`~agentcast.protocol.Upgrade` decisions (origin, limits, token, ``401``;
the token may also come from the :data:`~agentcast.protocol.upgrade.TOKEN_COOKIE`
cookie, and ``Last-Event-ID`` is the resume point), and answers ``200`` with a
``text/event-stream`` body instead of a ``101``. The session does not know the
difference: its :class:`~agentcast.protocol.Sink` is an :class:`EventStream`, whose
outbox writes each message as one event (:attr:`PreparedMessage.event
<agentcast.protocol.PreparedMessage.event>`, encoded once per broadcast), whose
protocol-level ping is a comment line, and whose close is a final ``close`` event after
which the body ends. Every rule (delivery, order, the slow-client ``1013``, the
unauthenticated timeout, token expiry) stays the session's and the hub's.

Downstream only: the client cannot send on this stream, so it can neither answer a ping
nor prove it is alive, and silence never closes it (no ``4000``): the comment every
heartbeat interval keeps proxies from closing an idle stream, and a client that is gone
shows as a failed write or a backlog past ``max_send_buffer``. A token refused without
``require_auth`` gets the ``auth`` event (``success: false``) and the stream ends: an
unauthenticated stream would carry nothing.

Whoever writes the HTTP response (the core's :class:`~agentcast.protocol.ServerConnection`,
or an ASGI server) does this::

    upgrade = Upgrade(hub, ..., cookie=TOKEN_COOKIE)      # then decide(), as for a WebSocket
    write 200 with stream_headers(request_headers)       # stream_head() for raw HTTP/1.1
    sink = EventStream(outbox, hub.settings)             # retry: first
    session = open_event_stream(upgrade, sink, result, now=now, wall=wall)
    write outbox.take_bytes() whenever it has some; end the body once sink.close_code is set
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .auth import AuthResult
from .codes import CloseCode
from .config import Settings
from .outbox import Outbox
from .session import Session
from .sse import CONTENT_TYPE, encode_comment, encode_event, encode_retry
from .upgrade import Upgrade

__all__ = [
    "PING_COMMENT",
    "EventStream",
    "close_event",
    "open_event_stream",
    "stream_head",
    "stream_headers",
]

#: The comment sent every heartbeat interval (the stream's protocol-level ping).
PING_COMMENT = encode_comment("ping")


def close_event(code: int, reason: str) -> bytes:
    """The last event of a stream the server ends: ``event: close``, ``data:``
    ``{"type":"close","data":{"code":…,"reason":…}}`` (the WebSocket close code and
    reason the session closed with, e.g. ``1001`` at shutdown)."""
    data = {"type": "close", "data": {"code": int(code), "reason": reason}}
    return encode_event(json.dumps(data, separators=(",", ":")), event="close")


def stream_headers(request_headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The response headers of an event stream opened by a request with
    *request_headers* (already admitted: its ``Origin``, if any, is allowed).

    For a cross-origin ``EventSource`` (``withCredentials``: the cookie), the allowed
    origin is named and credentials are allowed, as CORS requires for a credentialed
    request; nothing is cached, and nginx is told not to buffer the stream.
    """
    headers: list[tuple[str, str]] = [
        ("content-type", CONTENT_TYPE),
        ("cache-control", "no-cache, no-store"),
        ("x-accel-buffering", "no"),
    ]
    origin = next((value for name, value in request_headers if name.lower() == "origin"), None)
    if origin is not None:
        headers += [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("vary", "Origin"),
        ]
    return tuple(headers)


def stream_head(headers: Iterable[tuple[str, str]]) -> bytes:
    """The HTTP/1.1 ``200`` head of an event stream: its body runs until the connection
    closes (no length, ``Connection: close``)."""
    lines = ["HTTP/1.1 200 OK", *(f"{name}: {value}" for name, value in headers)]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class EventStream:
    """The :class:`~agentcast.protocol.Sink` of a session carried as an event stream.

    It turns *outbox* into an event stream's (messages written as events) and queues
    ``retry:`` first. When the session closes, the ``close`` event is queued and
    :attr:`close_code` is set: write what is pending, then end the body. The outbox's
    ``on_output`` is called then too, whatever was pending, so that a writer waiting on
    a client that reads nothing learns that the stream is over.
    """

    __slots__ = ("close_code", "close_reason", "closed_at", "outbox")

    def __init__(self, outbox: Outbox, settings: Settings) -> None:
        outbox.events = True
        #: The pending output: the response body still to write. (An attribute, not a
        #: property: the session reads it once per message delivered.)
        self.outbox = outbox
        #: The code the session closed with, once it has (then the stream ends).
        self.close_code: int | None = None
        self.close_reason = ""
        #: When the session closed (monotonic), once it has.
        self.closed_at: float | None = None
        outbox.push(encode_retry(round(settings.events_retry * 1000)))

    def send_ping(self, payload: bytes = b"") -> None:
        """The heartbeat: a comment line, which keeps proxies from closing the stream."""
        if self.close_code is None:
            self.outbox.push(PING_COMMENT)

    def close(self, code: int, reason: str, now: float) -> None:
        """Queue the ``close`` event; the stream ends once it is written."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self.closed_at = now
        outbox = self.outbox
        outbox.push(close_event(code, reason))
        if outbox.on_output is not None:
            outbox.on_output()


def open_event_stream(
    upgrade: Upgrade, sink: EventStream, result: AuthResult | None, *, now: float, wall: float
) -> Session:
    """The session of an accepted event stream (its ``200`` head written): ``auth`` and,
    when authenticated, ``presence_state`` are queued. Never closed for silence (the
    client cannot send); closed at once when not authenticated."""
    session = upgrade.open(sink, result, now=now, wall=wall, close_silent=False)
    if not session.authenticated:
        session.close(CloseCode.POLICY, "authentication required", now, wall)
    return session
