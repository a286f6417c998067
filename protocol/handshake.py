"""The HTTP request phase of a WebSocket transport: one HTTP/1.1 request, parsed by h11.

:class:`HttpPhase` reads one request and says what it is: a plain request for the
adapter (:class:`~agentcast.protocol.events.HttpRequest`), a valid upgrade for the
WebSocket endpoint (:class:`~agentcast.protocol.events.UpgradeRequested`), or an error
answered at once (an :class:`~agentcast.protocol.HttpAnswer`: ``400``, ``404``, ``413``,
``426``, ``431``). It never writes the ``101``: the owning
:class:`~agentcast.protocol.WebSocketTransport` does, with :meth:`HttpPhase.accept_head`,
and takes the bytes that followed the request from :meth:`HttpPhase.trailing_data`.

A request head is refused (``431``) exactly when it is longer than ``max_header_size``,
however the input is split; a body over ``max_body_size`` is refused (``413``) as soon
as its declared or received length passes the limit.

Whatever can be decided from the head is answered from the head, before any body is
read: a plain request for the WebSocket endpoint (``426``/``400``), an upgrade for
another path (``404``), and whatever the owner's *on_head* callback answers (the route,
the publish API's key, the budget for bodies: see
:class:`~agentcast.protocol.ServerConnection`). A client cannot make the server hold a
body it would refuse anyway.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import h11
from wsproto.utilities import generate_accept_token

from .answers import HttpAnswer, body_too_large, not_an_upgrade, wrong_path
from .events import HttpRequest, UpgradeRequested

__all__ = ["HeadCheck", "HttpOutcome", "HttpPhase"]

#: Asked once the head of a plain request (not for the WebSocket endpoint) is read, with
#: its method, path, headers and declared body length (``None``: chunked; ``0``: none):
#: an answer to give at once, or ``None`` to read the body.
HeadCheck = Callable[[str, str, tuple[tuple[str, str], ...], int | None], HttpAnswer | None]

#: What a request turned out to be (``None`` from :meth:`HttpPhase.receive_data`: not
#: complete yet).
HttpOutcome = HttpRequest | UpgradeRequested | HttpAnswer

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The ``101`` up to its accept token, the same for every upgrade.
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


class HttpPhase:
    """One server-side HTTP/1.1 request, up to its answer or its upgrade."""

    __slots__ = (
        "_body",
        "_client",
        "_complete_read",
        "_h11",
        "_headers",
        "_key",
        "_lookup",
        "_max_body_size",
        "_max_header_size",
        "_on_head",
        "_path",
        "_received",
        "_request",
        "interim",
    )

    def __init__(
        self,
        *,
        path: str,
        max_header_size: int,
        max_body_size: int,
        client: str | None,
        on_head: HeadCheck | None = None,
    ) -> None:
        self._path = path
        self._on_head = on_head
        self._client = client
        self._max_header_size = max_header_size
        self._max_body_size = max_body_size
        # h11 refuses an *incomplete* head past its limit, and receive_data shows it the
        # first max_header_size bytes on their own. With h11's limit one byte lower, a head
        # is refused exactly when it is longer than max_header_size, however the input is
        # split.
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_size - 1)
        self._received = 0  # bytes fed to h11, to measure the request head
        self._request: h11.Request | None = None
        # The request's headers decoded, once (names lower-cased by h11), and the first
        # value of each name.
        self._headers: tuple[tuple[str, str], ...] = ()
        self._lookup: dict[str, str] = {}
        self._body = bytearray()
        self._key = b""
        self._complete_read = False  # the whole request was read
        #: Output to write before any answer (``100 Continue``); the owner takes it.
        self.interim = b""

    @property
    def request_complete(self) -> bool:
        """The whole request has been read (it awaits its answer or its upgrade)."""
        return self._complete_read

    def receive_data(self, data: bytes) -> HttpOutcome | None:
        """Feed request bytes (never ``b""``); the outcome once the request is decided."""
        cut = self._max_header_size - self._received
        if self._request is None and 0 < cut < len(data):
            # h11 sees the first max_header_size bytes on their own: a head not complete
            # within them is refused (431) before h11 parses a malformed remainder (400),
            # however the input is split (found by fuzz/fuzz_http_upgrade.py).
            first = self.receive_data(data[:cut])
            if first is None:
                return self.receive_data(data[cut:])
            if isinstance(first, UpgradeRequested):
                self.hold(data[cut:])  # the first frames, pipelined with the request
            return first
        if self.request_complete:
            return None  # one request per connection: what follows is not parsed
        self._received += len(data)
        self._h11.receive_data(data)
        return self._next()

    def hold(self, data: bytes) -> None:
        """Keep bytes that arrive after a valid upgrade request (they are frames)."""
        self._h11.receive_data(data)

    def trailing_data(self) -> bytes:
        """The bytes received after the upgrade request: the first frames."""
        trailing = self._h11.trailing_data[0]
        return bytes(trailing) if trailing else b""

    def accept_head(self, subprotocol: str | None) -> bytes:
        """The ``101 Switching Protocols`` answering the upgrade."""
        head = _SWITCHING + generate_accept_token(self._key) + b"\r\n"
        if subprotocol is not None:
            head += b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1") + b"\r\n"
        return head + b"\r\n"

    # -- internals ------------------------------------------------------------------------

    def _next(self) -> HttpOutcome | None:
        conn = self._h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    return HttpAnswer.plain(431, "Request Header Fields Too Large")
                return HttpAnswer.plain(400, "Bad Request: malformed HTTP request")
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                self._request = event
                self._headers = _decode_headers(event)
                lookup = self._lookup
                for name, value in self._headers:
                    lookup.setdefault(name, value)
                early = self._at_head(event)
                if early is not None:
                    return early
                length = self._lookup.get("content-length")
                if length is not None and length.isdigit() and int(length) > self._max_body_size:
                    return body_too_large(self._max_body_size)
                if conn.they_are_waiting_for_100_continue:
                    self.interim += _CONTINUE
                if length is None and "transfer-encoding" not in lookup:
                    # No body (RFC 9112 6.3): the request is complete with its head, as
                    # h11's next event (EndOfMessage) would say; not asked for, as the
                    # upgrade needs nothing more of h11 than the bytes after the head.
                    self._complete_read = True
                    return self._complete()
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body_size:
                    return body_too_large(self._max_body_size)
            else:
                # EndOfMessage. (h11's ConnectionClosed needs b"" fed to it, which we never
                # do: EOF is the transport's receive_eof.)
                assert isinstance(event, h11.EndOfMessage)
                self._complete_read = True
                return self._complete()

    def _at_head(self, request: h11.Request) -> HttpAnswer | None:
        """The answer a head decides by itself (see the module doc), or ``None``."""
        path = request.target.decode("latin-1").partition("?")[0]
        method = request.method.decode("latin-1")
        header = self._lookup.get
        upgrade = "websocket" in _tokens(header("upgrade"))
        if path == self._path:
            return None if upgrade else not_an_upgrade(method)
        if upgrade:
            return wrong_path(self._path)
        if self._on_head is None:
            return None
        length: int | None = 0
        declared = header("content-length")
        if declared is not None and declared.isdigit():
            length = int(declared)
        elif header("transfer-encoding") is not None:
            length = None  # chunked: its length is known at its end
        return self._on_head(method, path, self._headers, length)

    def _complete(self) -> HttpOutcome:
        request = self._request
        assert request is not None
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = request.method.decode("latin-1")
        # The head decided the rest (_at_head): another path is a plain request, the
        # endpoint's path an upgrade.
        if path != self._path:
            return HttpRequest(
                method=method,
                path=path,
                query=query,
                headers=self._headers,
                body=bytes(self._body),
                client=self._client,
            )
        problem = self._upgrade_problem(method)
        if problem is not None:
            extra = [("sec-websocket-version", "13")] if "Version" in problem else []
            return HttpAnswer.plain(400, f"Bad Request: {problem}", extra)
        return UpgradeRequested(
            path=path,
            query=query,
            headers=self._headers,
            subprotocols=_protocols(self._lookup.get("sec-websocket-protocol")),
        )

    def _upgrade_problem(self, method: str) -> str | None:
        header = self._lookup.get
        if method != "GET":
            return "WebSocket upgrade must use GET"
        if "upgrade" not in _tokens(header("connection")):
            return "missing Connection: Upgrade"
        if header("sec-websocket-version") != "13":
            return "unsupported Sec-WebSocket-Version (13 expected)"
        key = header("sec-websocket-key")
        try:
            raw = base64.b64decode((key or "").encode("latin-1"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raw = b""
        if len(raw) != 16:
            return "missing or invalid Sec-WebSocket-Key"
        assert key is not None
        self._key = key.encode("latin-1")
        return None


def _tokens(value: str | None) -> set[str]:
    if value is None:
        return set()
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _decode_headers(request: h11.Request) -> tuple[tuple[str, str], ...]:
    # raw_items(): a list, where iterating the headers is a Python call per header.
    return tuple(
        [(k.lower().decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw_items()]
    )


def _protocols(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())
