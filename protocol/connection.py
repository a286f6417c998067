"""The agentcast server connection: the transport layer composed with a session.

:class:`ServerConnection` is what the reference server runs per TCP connection. It feeds
bytes to a :class:`~agentcast.protocol.WebSocketTransport`, answers what the contract
lets it answer by itself (404, 405, 426, 400, 401, and 403/503 from the hub's
:class:`~agentcast.protocol.admission.Admission`, pongs, closes, ``error`` messages),
and hands the adapter only what needs the outside world:

* :class:`~agentcast.protocol.events.AuthRequested`: run the authenticator, then call
  :meth:`ServerConnection.complete_auth` (the upgrade waits for it: with ``require_auth``
  a refused token gets ``401`` and no WebSocket);
* :class:`~agentcast.protocol.events.HttpRequest` for ``GET /healthz``, ``GET /metrics``
  and ``/api/...``: answer with :meth:`ServerConnection.respond` (see
  :mod:`agentcast.protocol.http` for the first and last);
* :class:`~agentcast.protocol.events.ConnectionClosed`: log it; close the socket once
  :meth:`ServerConnection.data_to_send` is written.

Drive it like this::

    conn = ServerConnection(hub, now=now, client=peer)
    conn.receive_data(data, now, wall)        # or receive_eof / handle_timer
    for event in conn.events_received(): ...  # dispatch
    writer.write(conn.data_to_send())         # when the previous write has completed
    wait until conn.next_deadline() or more bytes arrive

However the socket ends, tell the connection (``receive_eof`` or ``send_failed``) before
dropping it: that is what gives its place in the hub's connection limits back.
"""

from __future__ import annotations

from collections.abc import Callable

from .admission import Ticket
from .answers import HttpAnswer
from .auth import AuthResult
from .errors import LocalProtocolError
from .events import (
    AuthRequested,
    BytesReceived,
    ConnectionClosed,
    Event,
    HttpRequest,
    TextReceived,
    UpgradeRequested,
)
from .eventstream import EventStream, open_event_stream, stream_head, stream_headers
from .http import authorize
from .hub import Hub
from .routing import Route, refusal, route
from .session import Session
from .upgrade import SUBPROTOCOL, TOKEN_COOKIE, Upgrade, extract_token
from .websocket import TransportState, WebSocketTransport

__all__ = ["SUBPROTOCOL", "ServerConnection", "extract_token"]

#: The answer to a request whose body would pass ``max_pending_body_bytes``.
_BODIES_BUSY = HttpAnswer.json(
    503, {"error": "too many request bodies in progress, retry later"}, (("retry-after", "1"),)
)


class ServerConnection:
    """One client of the agentcast server, from its first byte to its close."""

    __slots__ = (
        "__weakref__",
        "_address",
        "_body_reserved",
        "_client",
        "_events",
        "_hub",
        "_session",
        "_stream",
        "_stream_request",
        "_upgrade",
        "_wall",
        "_ws",
    )

    def __init__(self, hub: Hub, *, now: float, client: str | None = None) -> None:
        s = hub.settings
        self._hub = hub
        self._ws = WebSocketTransport(
            on_head=self._on_head,
            now=now,
            path=s.path,
            max_message_size=s.max_message_size,
            max_message_frames=s.max_message_frames,
            max_send_buffer=s.max_send_buffer,
            max_header_size=s.max_header_size,
            max_body_size=s.max_body_size,
            handshake_timeout=s.handshake_timeout,
            close_timeout=s.close_timeout,
            client=client,
        )
        self._client = client
        # Messages are handed to the session as the transport decodes them, so each
        # answer precedes the output of the frames after it (see WebSocketTransport).
        self._ws.on_message = self._on_message
        # Pings and Pongs count against the session's rate limit too.
        self._ws.on_control = self._on_control
        self._wall = 0.0  # the wall-clock time of the input being processed
        self._session: Session | None = None
        self._events: list[Event] | None = None  # a list only while events wait
        # The upgrade's decisions; it holds this connection's place in the hub's
        # connection counts until the connection is closed (released on every way it ends).
        self._upgrade: Upgrade | None = None
        # A request for the event stream waiting for its token's verdict; then the
        # stream (the session's sink).
        self._stream_request: HttpRequest | None = None
        self._stream: EventStream | None = None
        # Every TCP connection counts under its address (max_connections_per_ip) from
        # the start: silent sockets and slow bodies hold a file descriptor too.
        self._address: Ticket | None = None
        # Bytes of the process's budget for request bodies this connection's body holds.
        self._body_reserved = 0
        admitted = hub.admission.connect(client)
        if isinstance(admitted, HttpAnswer):
            self._ws.refuse(admitted)
        else:
            self._address = admitted

    # -- state --------------------------------------------------------------------------

    @property
    def transport(self) -> WebSocketTransport:
        return self._ws

    @property
    def session(self) -> Session | None:
        """The session once the WebSocket is open, else ``None``."""
        return self._session

    @property
    def closed(self) -> bool:
        return self._ws.closed

    @property
    def wants_input(self) -> bool:
        """Whether to read the socket now (see
        :attr:`~agentcast.protocol.WebSocketTransport.wants_input`): the adapter stops
        reading while this is false, and asks again after each write completes."""
        return self._ws.wants_input

    @property
    def on_output(self) -> Callable[[], None] | None:
        return self._ws.on_output

    @on_output.setter
    def on_output(self, callback: Callable[[], None] | None) -> None:
        self._ws.on_output = callback

    # -- outputs ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        return self._ws.data_to_send()

    def events_received(self) -> list[Event]:
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    def take_events(self) -> list[Event] | None:
        """:meth:`events_received`, but ``None`` when there are none: what an adapter
        calls after every input, most of which (a ping, a message) produce no event."""
        events = self._events
        self._events = None
        return events

    def next_deadline(self) -> float | None:
        stream = self._stream
        if (
            stream is not None
            and stream.closed_at is not None
            and self._ws.state is TransportState.STREAMING
        ):
            # The session closed outside an input (a broadcast dropped a slow client):
            # the stream ends at the next timer.
            return stream.closed_at
        deadline = self._ws.next_deadline()
        session = self._session
        if session is not None:
            other = session.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                return other
        return deadline

    # -- inputs -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float, wall: float) -> None:
        self._wall = wall
        ws = self._ws
        ws.receive_data(data, now)
        session = self._session
        if session is not None:
            session.touch(ws.last_activity)
        self._dispatch(now, wall)

    def receive_eof(self, now: float, wall: float) -> None:
        self._ws.receive_eof(now)
        self._dispatch(now, wall)

    def handle_timer(self, now: float, wall: float) -> None:
        self._ws.handle_timer(now)
        if self._session is not None:
            self._session.handle_timer(now, wall)
        self._dispatch(now, wall)

    def send_failed(self, now: float, wall: float) -> None:
        """The socket failed: the connection is over, nothing more is produced."""
        self._ws.send_failed()
        self._dispatch(now, wall)

    # -- commands -----------------------------------------------------------------------

    def complete_auth(self, result: AuthResult | None, now: float, wall: float) -> None:
        """Answer :class:`AuthRequested` (``None``: no token was given)."""
        if self._stream_request is not None:
            self._open_stream(self._stream_request, result, now, wall)
        elif self._ws.state is TransportState.UPGRADING:
            upgrade = self._upgrade
            assert upgrade is not None  # UPGRADING comes with an admitted upgrade
            refusal = upgrade.decide(result)
            if refusal is not None:
                self._ws.respond(refusal)
                self._release()  # answered: closed
                return

            def start() -> None:
                # Between the 101 and the frames pipelined with the request.
                self._session = upgrade.open(self._ws, result, now=now, wall=wall)

            self._wall = wall
            self._ws.accept(now, upgrade.subprotocol, start)
            self._dispatch(now, wall)
        elif self._session is not None:
            if result is None:
                raise LocalProtocolError("a refresh needs a result")
            self._session.complete_auth(result, now, wall)
            self._dispatch(now, wall)
        elif not self._ws.closed:
            raise LocalProtocolError(f"complete_auth() in state {self._ws.state.name}")

    def respond(self, answer: HttpAnswer) -> None:
        """Answer the pending :class:`~agentcast.protocol.events.HttpRequest` (or refuse
        the pending upgrade); the connection then closes."""
        self._ws.respond(answer)
        self._release()  # answered: closed

    def close(self, code: int, reason: str, now: float, wall: float) -> None:
        """Close from the server side (1001 at shutdown); before the upgrade, just close."""
        if self._session is not None:
            self._session.close(code, reason, now, wall)
        else:
            self._ws.close(code, reason, now)
        self._dispatch(now, wall)

    # -- internals ----------------------------------------------------------------------

    def _dispatch(self, now: float, wall: float) -> None:
        ws = self._ws
        stream = self._stream
        if (
            stream is not None
            and stream.close_code is not None
            and ws.state is TransportState.STREAMING
        ):
            # The session closed: its close event is queued, and the body ends with it.
            ws.close(stream.close_code, stream.close_reason, now)
        # After most inputs (a message, a ping) there are no events at all: the lists are
        # looked at in place, not asked for (events_received() makes an empty one).
        events = ws._events
        if events is not None:
            ws._events = None
            self._dispatch_events(events, now, wall)
        session = self._session
        if session is not None:
            if not session.closed and ws.state is TransportState.CLOSING:
                # The transport started closing by itself (1009): the session ends now,
                # so nothing is queued after the close frame.
                session.close(ws.close_code, "", now, wall)
            if session._events is not None:
                self._emit(*session.events_received())
        if ws.closed:
            self._release()

    def _dispatch_events(self, events: list[Event], now: float, wall: float) -> None:
        for event in events:
            match event:
                case UpgradeRequested():
                    self._on_upgrade(event, now, wall)
                case HttpRequest():
                    self._on_http(event, now, wall)
                case ConnectionClosed(code=code):
                    # Only an open WebSocket closes, and it has its session from the 101.
                    assert self._session is not None
                    self._session.ended(code, now, wall)
                    # What the frames before the close caused (a refresh) comes first,
                    # however the input was split (found by fuzz/fuzz_frames.py).
                    self._emit(*self._session.events_received(), event)
                case _:  # pragma: no cover - the transport emits nothing else
                    raise AssertionError(event)

    def _on_message(self, event: TextReceived | BytesReceived, now: float) -> None:
        session = self._session
        assert session is not None  # created before any frame is read
        if isinstance(event, TextReceived):
            session.receive_text(event.text, now, self._wall)
        else:
            session.receive_binary(now, self._wall)
        if session.flooded:
            self._ws.stop_reading()  # the rest of this read is not even parsed

    def _on_control(self, now: float) -> bool:
        session = self._session
        assert session is not None  # created before any frame is read
        allowed = session.receive_control(now, self._wall)
        if session.flooded:
            self._ws.stop_reading()
        return allowed

    def _on_head(
        self, method: str, path: str, headers: tuple[tuple[str, str], ...], length: int | None
    ) -> HttpAnswer | None:
        """A plain request's head is read: answer now what needs no body (the route's
        404/405, the publish API's 401/403), and reserve the body's place in the
        process's budget for bodies (503 when it is spent)."""
        settings = self._hub.settings
        target = route(method, path, settings)
        refused = refusal(target, path)
        if refused is None and target is Route.PUBLISH:
            given = next((value for name, value in headers if name == "authorization"), None)
            refused = authorize(given, self._client, settings.api_key)
        if refused is not None:
            return refused
        size = settings.max_body_size if length is None else min(length, settings.max_body_size)
        if size and not self._hub.admission.reserve_body(size):
            return _BODIES_BUSY
        self._body_reserved = size
        return None

    def _emit(self, *events: Event) -> None:
        self._events = [*(self._events or ()), *events]

    def _release_body(self) -> None:
        if self._body_reserved:
            self._hub.admission.release_body(self._body_reserved)
            self._body_reserved = 0

    def _release(self) -> None:
        """Closed: give back the body budget and the places in the hub's counts (each
        release is idempotent)."""
        self._release_body()
        if self._upgrade is not None:
            self._upgrade.release()
        if self._address is not None:
            self._hub.admission.release(self._address)

    def _on_upgrade(self, event: UpgradeRequested, now: float, wall: float) -> None:
        upgrade = Upgrade(
            self._hub,
            query=event.query,
            headers=event.headers,
            subprotocols=event.subprotocols,
            client=self._client,
            now=now,
            ticket=self._address,
        )
        if upgrade.refusal is not None:
            self._ws.respond(upgrade.refusal)
            return
        self._upgrade = upgrade
        if upgrade.token is None:
            self.complete_auth(None, now, wall)
        else:
            self._emit(AuthRequested(token=upgrade.token))

    def _on_http(self, event: HttpRequest, now: float, wall: float) -> None:
        # The head passed _on_head (route, key, budget); the body is read.
        self._release_body()
        if route(event.method, event.path, self._hub.settings) is Route.EVENTS:
            self._on_events(event, now, wall)
            return
        self._emit(event)

    def _on_events(self, event: HttpRequest, now: float, wall: float) -> None:
        """A request for the event stream: the upgrade's decisions, then (after the
        token's verdict, :meth:`complete_auth`) the stream or a refusal."""
        upgrade = Upgrade(
            self._hub,
            query=event.query,
            headers=event.headers,
            subprotocols=(),
            client=self._client,
            now=now,
            cookie=TOKEN_COOKIE,
            ticket=self._address,
        )
        if upgrade.refusal is not None:
            self._ws.respond(upgrade.refusal)
            return
        self._upgrade = upgrade
        self._stream_request = event
        if upgrade.token is None:
            self.complete_auth(None, now, wall)
        else:
            self._emit(AuthRequested(token=upgrade.token))

    def _open_stream(
        self, request: HttpRequest, result: AuthResult | None, now: float, wall: float
    ) -> None:
        upgrade = self._upgrade
        assert upgrade is not None  # set with the stream request
        self._stream_request = None
        if self._ws.closed:
            return  # the client left, or the request timed out, before the verdict
        refused = upgrade.decide(result)
        if refused is not None:
            self._ws.respond(refused)
            return
        self._ws.stream(stream_head(stream_headers(request.headers)))
        self._stream = EventStream(self._ws.outbox, self._hub.settings)
        self._wall = wall
        self._session = open_event_stream(upgrade, self._stream, result, now=now, wall=wall)
        self._dispatch(now, wall)
