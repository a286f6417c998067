"""The transport layer: one server-side HTTP/1.1 connection that may become a WebSocket.

:class:`WebSocketConnection` knows bytes, HTTP and RFC 6455, and nothing of agentcast's
messages: h11 parses the request, wsproto the frames after the upgrade. It is usable on
its own (the RFC 6455 conformance run puts an echo application on it), and
:class:`~agentcast.protocol.ServerConnection` composes it with a
:class:`~agentcast.protocol.Session`.

Inputs are verbs that take ``now``: :meth:`receive_data`, :meth:`receive_eof`,
:meth:`handle_timer`, :meth:`accept`, :meth:`close`. Outputs are nouns:
:meth:`data_to_send`, :meth:`events_received`, :meth:`next_deadline`. After every input,
dispatch the events, then write what :meth:`data_to_send` returns; once :attr:`closed` is
true and that data is written, close the socket.

Limits do not depend on how the input is split: the handshake timeout and header size
cut off slow or bloated requests, and a message is refused with 1009 as soon as its
declared length passes ``max_message_size``, before its payload is buffered.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from enum import Enum, auto

import h11
from wsproto.connection import Connection as _WsConnection
from wsproto.connection import ConnectionState as _WsState
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from ._framecut import HeaderCutter
from .answers import HttpAnswer, body_too_large, not_an_upgrade, wrong_path
from .codes import CloseCode
from .config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PATH,
)
from .errors import LocalProtocolError
from .events import (
    BytesReceived,
    ConnectionClosed,
    Event,
    HttpRequest,
    TextReceived,
    UpgradeRequested,
)
from .messages import PreparedMessage, frame_text
from .outbox import Outbox

__all__ = ["TransportState", "WebSocketTransport"]

#: The reasons we give when failing a connection (RFC 6455 7.1.7).
_FAILURE_REASONS: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.INVALID_DATA: "invalid UTF-8",
}


class TransportState(Enum):
    """Where a transport is. All transitions happen in :class:`WebSocketTransport`.

    HTTP ──request──▶ (answer) ──▶ CLOSED
    HTTP ──valid upgrade──▶ UPGRADING ──accept()──▶ OPEN ──close()──▶ CLOSING ──▶ CLOSED
                                      └─respond()─▶ CLOSED     └─peer close / failure──▶ CLOSED
    """

    HTTP = auto()
    UPGRADING = auto()
    OPEN = auto()
    CLOSING = auto()
    CLOSED = auto()


def _tokens(value: str | None) -> set[str]:
    if value is None:
        return set()
    return {part.strip().lower() for part in value.split(",") if part.strip()}


class WebSocketTransport:
    """One server-side connection: HTTP request handling, upgrade, RFC 6455 framing."""

    __slots__ = (
        "_body",
        "_client",
        "_close_code",
        "_close_reason",
        "_close_timeout",
        "_cutter",
        "_deadline",
        "_events",
        "_h11",
        "_handshake_key",
        "_max_body_size",
        "_max_header_size",
        "_max_message_size",
        "_msg_parts",
        "_msg_size",
        "_outbox",
        "_path",
        "_received",
        "_request",
        "_state",
        "_ws",
        "last_activity",
        "on_message",
    )

    def __init__(
        self,
        *,
        now: float,
        path: str = DEFAULT_PATH,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        client: str | None = None,
    ) -> None:
        self._state = TransportState.HTTP
        self._path = path
        self._client = client
        self._max_message_size = max_message_size
        self._max_body_size = max_body_size
        self._max_header_size = max_header_size
        self._close_timeout = close_timeout
        # h11 refuses an *incomplete* head past its limit, and receive_data shows it the
        # first max_header_size bytes on their own. With h11's limit one byte lower, a head
        # is refused exactly when it is longer than max_header_size, however the input is
        # split.
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=max_header_size - 1
        )
        self._received = 0  # bytes fed to h11, to measure the request head
        self._ws: _WsConnection | None = None
        self._cutter = HeaderCutter()
        self._request: h11.Request | None = None
        self._body: bytearray | None = None
        self._handshake_key = b""
        # The handshake deadline is armed at creation, not at the first byte.
        self._deadline: float | None = now + handshake_timeout
        self._outbox = Outbox()
        self._events: list[Event] = []
        self._msg_parts: list[str | bytes] = []
        self._msg_size = 0
        self._close_code: int = CloseCode.ABNORMAL
        self._close_reason = ""
        #: Monotonic time of the last frame received (any frame: PROTOCOL.md 5).
        self.last_activity = now
        #: If set, called with each complete message (and ``now``) as soon as it is
        #: decoded, instead of queuing it for :meth:`events_received`: the owner's answer
        #: then goes out before the output caused by the frames after it (a Pong, a close
        #: frame), however the input was split. :class:`ServerConnection` sets it.
        self.on_message: Callable[[TextReceived | BytesReceived, float], None] | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def closed(self) -> bool:
        """Nothing more will be read or produced: write what is left, then close."""
        return self._state is TransportState.CLOSED

    @property
    def close_code(self) -> int:
        """The close code in effect once closing has begun (1006 if no frame was seen)."""
        return self._close_code

    @property
    def backlog(self) -> int:
        """Bytes queued and not yet known to be written (pending plus the last write)."""
        return self._outbox.backlog

    @property
    def outbox(self) -> Outbox:
        """The pending output (the :class:`~agentcast.protocol.session.Sink` attribute)."""
        return self._outbox

    @property
    def on_output(self) -> Callable[[], None] | None:
        """Called when output becomes pending in an empty outbox, e.g. by a broadcast,
        so the adapter can wake its writer. ``None`` by default."""
        return self._outbox.on_output

    @on_output.setter
    def on_output(self, callback: Callable[[], None] | None) -> None:
        self._outbox.on_output = callback

    # -- outputs ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything pending, in one piece. Call it when the previous write has completed:
        the bytes returned count as the backlog until the next call."""
        return self._outbox.take_bytes()

    def events_received(self) -> list[Event]:
        """The events produced by the inputs since the last call, in order."""
        events = self._events
        self._events = []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (monotonic), or ``None``."""
        return self._deadline

    def _push(self, data: bytes) -> None:
        self._outbox.push(data)

    # -- inputs -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the socket. Peer faults never raise: they become an HTTP
        error answer or a close. ``b""`` is no data (EOF is :meth:`receive_eof`)."""
        if not data:
            return  # h11 would take b"" for EOF
        state = self._state
        cut = self._max_header_size - self._received
        if state is TransportState.HTTP and self._request is None and 0 < cut < len(data):
            # h11 sees the first max_header_size bytes on their own: a head not complete
            # within them is refused (431) before h11 parses a malformed remainder (400),
            # however the input is split (found by fuzz/fuzz_http_upgrade.py).
            self.receive_data(data[:cut], now)
            self.receive_data(data[cut:], now)
            return
        if state is TransportState.HTTP or state is TransportState.UPGRADING:
            assert self._h11 is not None
            if state is TransportState.HTTP and self._h11.their_state in _REQUEST_DONE:
                return  # a request awaits the adapter's answer; then the connection closes
            self._received += len(data)
            self._h11.receive_data(data)
            if state is TransportState.HTTP:
                self._process_http()
        elif state is TransportState.OPEN or state is TransportState.CLOSING:
            assert self._ws is not None
            # Each frame header on its own first: see _framecut.
            for piece in self._cutter.split(data):
                if self._state is TransportState.CLOSED:
                    break
                self._ws.receive_data(piece)
                self._process_frames(now)

    def receive_eof(self, now: float) -> None:
        """The peer closed its side of the TCP connection (or it broke)."""
        if self._state is TransportState.OPEN or self._state is TransportState.CLOSING:
            self._finish(self._close_code if self._state is TransportState.CLOSING else None)
        self._state = TransportState.CLOSED
        self._deadline = None

    def handle_timer(self, now: float) -> None:
        """Act on a deadline that has passed: the handshake timeout answers 408, the close
        timeout gives up on the peer's half of the closing handshake."""
        if self._deadline is None or now < self._deadline:
            return
        if self._state is TransportState.HTTP:
            self._respond(HttpAnswer.plain(408, "Request Timeout: the request took too long"))
        elif self._state is TransportState.UPGRADING:
            self._respond(HttpAnswer.plain(408, "Request Timeout: the upgrade was not completed"))
        else:  # CLOSING: the only other state with a deadline
            self._finish(self._close_code)

    def send_failed(self) -> None:
        """The socket could not take our data: produce nothing more."""
        self._outbox.discard()
        self._outbox.sent()
        if self._state is TransportState.OPEN or self._state is TransportState.CLOSING:
            self._finish(None)
        self._state = TransportState.CLOSED
        self._deadline = None

    # -- commands -----------------------------------------------------------------------

    def accept(
        self,
        now: float,
        subprotocol: str | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        """Answer the pending upgrade with 101 and start the WebSocket session.

        *on_open* is called right after the 101 is queued, before the bytes that followed
        the request are processed, so what it sends precedes any answer to them.
        """
        if self._state is not TransportState.UPGRADING:
            raise LocalProtocolError(f"accept() in state {self._state.name}")
        assert self._h11 is not None
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(self._handshake_key).decode()),
        ]
        if subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        head = "HTTP/1.1 101 Switching Protocols\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        self._push(head.encode("latin-1"))
        trailing, _ = self._h11.trailing_data
        # The handshake objects are not needed any more: drop them (idle memory).
        self._h11 = None
        self._request = None
        self._ws = _WsConnection(ConnectionType.SERVER)
        self._state = TransportState.OPEN
        self._deadline = None
        self.last_activity = now
        if on_open is not None:
            on_open()
        if trailing:
            self.receive_data(bytes(trailing), now)

    def respond(self, answer: HttpAnswer) -> None:
        """Answer the pending request: an :class:`~agentcast.protocol.events.HttpRequest`,
        or an upgrade refused (no WebSocket is opened). The connection then closes."""
        state = self._state
        if state is not TransportState.UPGRADING and (
            state is not TransportState.HTTP or self._body is None
        ):
            raise LocalProtocolError(f"respond() without a pending request ({state.name})")
        self._respond(answer)

    def send_frame(self, frame: bytes) -> None:
        """Queue a ready-made frame (a :class:`~agentcast.protocol.PreparedMessage`'s)."""
        if self._state is TransportState.OPEN:
            self._push(frame)

    def send_message(self, message: PreparedMessage) -> None:
        """Queue a server message (the :class:`~agentcast.protocol.session.Sink` method)."""
        if self._state is TransportState.OPEN:
            self._outbox.push(message)

    def send_text(self, text: str) -> None:
        """Queue one text message."""
        self.send_frame(frame_text(text.encode()))

    def send_bytes(self, data: bytes) -> None:
        """Queue one binary message."""
        if self._state is TransportState.OPEN:
            assert self._ws is not None
            self._push(self._ws.send(BytesMessage(data=data)))

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a protocol-level Ping frame."""
        if self._state is TransportState.OPEN:
            assert self._ws is not None
            self._push(self._ws.send(Ping(payload=payload)))

    def discard_pending(self) -> None:
        """Drop queued output that has not been handed to the socket (a slow client)."""
        self._outbox.discard()

    def close(self, code: int, reason: str, now: float) -> None:
        """Start the closing handshake with *code*; before the upgrade, just close."""
        state = self._state
        if state is TransportState.OPEN:
            assert self._ws is not None
            self._close_code = code
            self._close_reason = reason
            frame = self._ws.send(CloseConnection(code=code, reason=reason))
            self._state = TransportState.CLOSING
            self._deadline = now + self._close_timeout
            pending = bool(self._outbox)
            self._push(frame)
            if pending and self._outbox.on_output is not None:
                # The output callback also says "the deadline moved": an adapter waiting
                # for a write to complete (a client that reads nothing, 1013) must still
                # time the closing handshake out.
                self._outbox.on_output()
        elif state is TransportState.HTTP or state is TransportState.UPGRADING:
            self._state = TransportState.CLOSED
            self._deadline = None

    # -- HTTP ---------------------------------------------------------------------------

    def _respond(self, answer: HttpAnswer) -> None:
        self._push(answer.to_bytes())
        self._state = TransportState.CLOSED
        self._deadline = None
        self._h11 = None
        self._body = None

    def _process_http(self) -> None:
        conn = self._h11
        assert conn is not None
        while self._state is TransportState.HTTP:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    self._respond(HttpAnswer.plain(431, "Request Header Fields Too Large"))
                else:
                    self._respond(HttpAnswer.plain(400, "Bad Request: malformed HTTP request"))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                assert self._body is not None
                self._body += event.data
                if len(self._body) > self._max_body_size:
                    self._respond(body_too_large(self._max_body_size))
            else:
                # EndOfMessage. (h11's ConnectionClosed needs b"" fed to it, which we never
                # do: EOF is receive_eof.)
                assert isinstance(event, h11.EndOfMessage)
                self._on_request_complete()
                # One request per connection: what follows it is not parsed (a second
                # answer, a 400 to trailing garbage, would follow the adapter's).
                return

    def _on_request(self, request: h11.Request) -> None:
        self._request = request
        self._body = bytearray()
        length = _header(request, b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body_size:
            self._respond(body_too_large(self._max_body_size))
            return
        assert self._h11 is not None
        if self._h11.they_are_waiting_for_100_continue:
            self._push(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _on_request_complete(self) -> None:
        request = self._request
        assert request is not None
        assert self._body is not None
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = request.method.decode("latin-1")
        upgrade = "websocket" in _tokens(_header(request, b"upgrade"))
        if path != self._path:
            if upgrade:
                self._respond(wrong_path(self._path))
                return
            self._events.append(
                HttpRequest(
                    method=method,
                    path=path,
                    query=query,
                    headers=_decode_headers(request),
                    body=bytes(self._body),
                    client=self._client,
                )
            )
            return
        if not upgrade:
            self._respond(not_an_upgrade(method))
            return
        problem = self._upgrade_problem(request, method)
        if problem is not None:
            extra = [("sec-websocket-version", "13")] if "Version" in problem else []
            self._respond(HttpAnswer.plain(400, f"Bad Request: {problem}", extra))
            return
        self._state = TransportState.UPGRADING
        self._body = None
        self._events.append(
            UpgradeRequested(
                path=path,
                query=query,
                headers=_decode_headers(request),
                subprotocols=_protocols(_header(request, b"sec-websocket-protocol")),
            )
        )

    def _upgrade_problem(self, request: h11.Request, method: str) -> str | None:
        if method != "GET":
            return "WebSocket upgrade must use GET"
        if "upgrade" not in _tokens(_header(request, b"connection")):
            return "missing Connection: Upgrade"
        if _header(request, b"sec-websocket-version") != "13":
            return "unsupported Sec-WebSocket-Version (13 expected)"
        key = _header(request, b"sec-websocket-key")
        try:
            raw = base64.b64decode((key or "").encode("latin-1"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raw = b""
        if len(raw) != 16:
            return "missing or invalid Sec-WebSocket-Key"
        assert key is not None
        self._handshake_key = key.encode("latin-1")
        return None

    # -- WebSocket frames ---------------------------------------------------------------

    def _process_frames(self, now: float) -> None:
        ws = self._ws
        assert ws is not None
        seen = False
        for event in ws.events():
            seen = True
            if isinstance(event, TextMessage | BytesMessage):
                if self._state is TransportState.OPEN:
                    self._on_data(event, now)
            elif isinstance(event, Ping):
                if self._state is TransportState.OPEN:
                    self._push(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._on_close_frame(event)
                break
            # A Pong only proves liveness.
        if seen:
            self.last_activity = now
        if self._state is TransportState.OPEN:
            # The frame being received declares its length in its header: refuse it now
            # rather than after buffering its payload.
            remaining = _declared_remaining(ws)
            if self._msg_size + remaining > self._max_message_size:
                self._too_big(now)

    def _on_data(self, event: TextMessage | BytesMessage, now: float) -> None:
        data: str | bytes = event.data if isinstance(event.data, str) else bytes(event.data)
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode())
        else:
            size = len(data)
        self._msg_size += size
        if self._msg_size > self._max_message_size:
            self._too_big(now)
            return
        self._msg_parts.append(data)
        if not event.message_finished:
            return
        parts = self._msg_parts
        self._msg_parts = []
        self._msg_size = 0
        received: TextReceived | BytesReceived
        if isinstance(event, TextMessage):
            text = parts[0] if len(parts) == 1 else "".join(parts)  # type: ignore[arg-type]
            received = TextReceived(text=text)  # type: ignore[arg-type]
        else:
            blob = b"".join(parts)  # type: ignore[arg-type]
            received = BytesReceived(data=blob)
        if self.on_message is not None:
            self.on_message(received, now)
        else:
            self._events.append(received)

    def _too_big(self, now: float) -> None:
        self._msg_parts = []
        self._msg_size = 0
        self.close(CloseCode.TOO_BIG, "message too big", now)

    def _on_close_frame(self, event: CloseConnection) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is _WsState.REMOTE_CLOSING:
            # The peer started the closing handshake: echo its code and we are done.
            self._push(ws.send(event.response()))
            self._close_code = event.code
            self._close_reason = event.reason or ""
            self._finish(self._close_code)
        elif ws.state is _WsState.CLOSED:
            # The peer's answer to our close frame.
            self._finish(self._close_code)
        else:
            # wsproto reports a framing violation (1002) or invalid UTF-8 (1007) as a
            # close event while still OPEN: fail the connection (RFC 6455 7.1.7): send
            # the close frame and drop the TCP connection without waiting. The reason is
            # ours: wsproto's text depends on where the input was split.
            reason = _FAILURE_REASONS.get(event.code, "")
            if ws.state is _WsState.OPEN:
                self._push(ws.send(CloseConnection(code=event.code, reason=reason)))
            self._close_code = int(event.code)
            self._close_reason = reason
            self._finish(self._close_code)

    def _finish(self, code: int | None) -> None:
        self._state = TransportState.CLOSED
        self._deadline = None
        self._msg_parts = []
        self._events.append(
            ConnectionClosed(
                code=CloseCode.ABNORMAL if code is None else code,
                reason="" if code is None else self._close_reason,
            )
        )


#: h11's states of the client once its request is complete.
_REQUEST_DONE = (h11.DONE, h11.MUST_CLOSE)


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _decode_headers(request: h11.Request) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)


def _protocols(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _declared_remaining(ws: _WsConnection) -> int:
    """Payload bytes the data frame now being received still declares (0 if none).

    wsproto parses the header before any payload arrives but does not expose it; we read
    it from its frame decoder. If a wsproto release renames these, the check falls back to
    counting payload as it arrives (still bounded, one read larger).
    """
    decoder = getattr(getattr(ws, "_proto", None), "_frame_decoder", None)
    header = getattr(decoder, "header", None)
    if header is None or header.opcode.iscontrol():
        return 0
    consumed: int = getattr(decoder, "payload_consumed", 0)
    return max(0, int(header.payload_len) - consumed)
