"""Helpers for the protocol-core tests: no sockets, no clock, no loop.

A :class:`Pair` joins our :class:`ServerConnection` to a wsproto client
(``WSConnection(ConnectionType.CLIENT)``) in memory. Time is scripted: ``pair.now`` is the
monotonic time handed to the core and ``pair.wall`` the wall-clock time derived from it
(``WALL0 + now``), so timestamps are predictable.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.events import Event as WsEvent

from agentcast.protocol import (
    Authenticator,
    AuthFailure,
    AuthRequested,
    DevAuthenticator,
    Event,
    Hub,
    Identity,
    ServerConnection,
    Session,
    Settings,
)
from agentcast.protocol.outbox import Outbox

# Hypothesis profiles: ``ci`` (the CI env var is set) is derandomized so a CI run is
# reproducible; ``dev`` (default) is random; ``long`` (HYPOTHESIS_PROFILE=long) is a local
# soak. tests/model/conftest.py registers the same set; whichever conftest comes first
# registers them, so the whole suite runs one set of profiles.
_COMMON: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
_PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": 60, "derandomize": True, "print_blob": True, **_COMMON},
    "dev": {"max_examples": 60, **_COMMON},
    "long": {"max_examples": 2_000, "print_blob": True, **_COMMON},
}
for _name, _options in _PROFILES.items():
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, **_options)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

#: 2025-12-26T13:00:00.000Z, the seed's example timestamp.
WALL0 = 1766754000.0
TS0 = "2025-12-26T13:00:00.000Z"


def masked_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    declared: int | None = None,
) -> bytes:
    """A client frame built by hand (to send what a well-behaved client never would).

    ``rsv`` is the three RSV bits (0-7); ``declared`` overrides the length in the header.
    """
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + body


def http_request(
    target: str = "/ws",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """Raw HTTP/1.1 request bytes with a Host header."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


UPGRADE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and body of a raw HTTP response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class Pair:
    """Our ServerConnection and a wsproto client, joined in memory."""

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        settings: Settings | None = None,
        now: float = 0.0,
        client: str | None = "127.0.0.1",
    ) -> None:
        self.hub = hub if hub is not None else Hub(settings)
        self.now = now
        self.server = ServerConnection(self.hub, now=now, client=client)
        self.client = WSConnection(ConnectionType.CLIENT)
        #: Every event the server handed to its adapter, in order.
        self.events: list[Event] = []
        #: Every event the wsproto client saw, in order.
        self.received: list[WsEvent] = []
        self.accept: AcceptConnection | None = None

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    # -- driving the server -------------------------------------------------------------

    def _collect(self) -> list[Event]:
        new = self.server.events_received()
        self.events.extend(new)
        return new

    def feed(self, data: bytes) -> list[Event]:
        """Raw bytes from the client to the server; returns the new server events."""
        self.server.receive_data(data, self.now, self.wall)
        return self._collect()

    def tick(self, now: float) -> list[Event]:
        """Move time to *now* and fire the server's timers."""
        self.now = now
        self.server.handle_timer(now, self.wall)
        return self._collect()

    def eof(self) -> list[Event]:
        self.server.receive_eof(self.now, self.wall)
        return self._collect()

    def send(self, event: WsEvent) -> list[Event]:
        """Send a wsproto client event to the server."""
        return self.feed(self.client.send(event))

    def send_text(self, text: str) -> list[Event]:
        return self.send(Message(data=text))

    def send_json(self, obj: Any) -> list[Event]:
        return self.send_text(json.dumps(obj))

    def answer_auth(self, authenticator: Authenticator | None = None) -> None:
        """Answer every pending AuthRequested with *authenticator* (dev by default)."""
        auth = authenticator if authenticator is not None else DevAuthenticator()
        pending = [e for e in self.events if isinstance(e, AuthRequested)]
        for event in pending:
            self.events.remove(event)
            result = auth.authenticate(event.token, self.wall)
            self.server.complete_auth(result, self.now, self.wall)
            self._collect()

    # -- the client side ----------------------------------------------------------------

    def flush(self) -> list[WsEvent]:
        """Deliver the server's pending output to the client (until nothing is pending:
        every write completed, the backlog is 0); returns the client's events."""
        new: list[WsEvent] = []
        while data := self.server.data_to_send():
            self.client.receive_data(data)
            new += self.client.events()
        self.received.extend(new)
        for event in new:
            if isinstance(event, AcceptConnection):
                self.accept = event
        return new

    def messages(self) -> list[dict[str, Any]]:
        """Flush, and return the JSON messages the client got in this flush."""
        return [json.loads(e.data) for e in self.flush() if isinstance(e, TextMessage)]

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages()]

    def handshake(
        self,
        target: str = "/ws?token=abc123",
        *,
        subprotocols: Sequence[str] = (),
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        authenticator: Authenticator | None = None,
    ) -> list[dict[str, Any]]:
        """Upgrade, complete auth, and return the first messages the client got."""
        self.send(
            Request(
                host="localhost",
                target=target,
                subprotocols=list(subprotocols),
                extra_headers=list(extra_headers),
            )
        )
        self.answer_auth(authenticator)
        msgs = self.messages()
        assert self.accept is not None, self.received
        return msgs

    def close_events(self) -> list[CloseConnection]:
        return [e for e in self.received if isinstance(e, CloseConnection)]

    def pings(self) -> list[Ping]:
        return [e for e in self.received if isinstance(e, Ping)]

    def rejection(self) -> tuple[int, bytes]:
        """Status and body of an HTTP rejection the wsproto client saw."""
        status = next(e.status_code for e in self.received if isinstance(e, RejectConnection))
        body = b"".join(e.data for e in self.received if isinstance(e, RejectData))
        return status, body


def connect(
    hub: Hub, token: str | None = "abc123", *, now: float = 0.0
) -> tuple[Pair, list[dict[str, Any]]]:
    """A new client of *hub*, upgraded and authenticated; returns it and its first messages."""
    pair = Pair(hub, now=now)
    target = "/ws" if token is None else f"/ws?token={token}"
    return pair, pair.handshake(target)


def error(text: str, code: str) -> dict[str, Any]:
    """The data of an ``error`` message."""
    return {"error": text, "code": code}


class ListSink:
    """The smallest Sink, as an ASGI adapter provides: an outbox whose messages are taken
    as text, a ping counter and the close it was asked for."""

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.pings = 0
        self.closed: tuple[int, str] | None = None

    def send_ping(self, payload: bytes = b"") -> None:
        self.pings += 1

    def close(self, code: int, reason: str, now: float) -> None:
        self.closed = (code, reason)

    def messages(self) -> list[dict[str, Any]]:
        out = [json.loads(m.text) for m in self.outbox.take_messages()]
        self.outbox.sent()
        return out

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages()]


def open_session(hub: Hub, user: str | None, now: float = 0.0) -> tuple[Session, ListSink]:
    """A session of *user* (``None``: unauthenticated) on a :class:`ListSink`, opened at
    *now*, its first messages (auth, presence_state) read."""
    sink = ListSink()
    auth = Identity(user_id=user) if user is not None else AuthFailure("Missing token")
    session = Session(hub, sink, auth, now=now, wall=WALL0 + now)
    sink.messages()
    return session, sink


# -- Server-Sent Events ------------------------------------------------------------------

_SSE_LINE = re.compile(r"\r\n|\r|\n")


class SseEvent(NamedTuple):
    """One dispatched event as an ``EventSource`` sees it."""

    event: str
    data: str
    id: str | None  # the last event id in effect when it was dispatched
    retry: int | None  # the reconnect delay in effect when it was dispatched


def parse_sse(text: str) -> tuple[list[SseEvent], list[str]]:
    """The events and the comments of an event stream, read by the WHATWG HTML
    algorithm ("Interpreting an event stream"), written here from the specification so
    that the server's encoder is checked against the reader browsers implement. An
    incomplete last line is not read."""
    events: list[SseEvent] = []
    comments: list[str] = []
    data: list[str] = []
    kind = ""
    last_id: str | None = None
    retry: int | None = None
    for line in _SSE_LINE.split(text)[:-1]:
        if line == "":
            if data:
                events.append(SseEvent(kind or "message", "\n".join(data), last_id, retry))
            data, kind = [], ""
            continue
        if line.startswith(":"):
            comments.append(line[1:].removeprefix(" "))
            continue
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    return events, comments


class Stream:
    """Our ServerConnection serving an event stream to an in-memory client."""

    def __init__(
        self,
        hub: Hub,
        target: str = "/events?token=abc123",
        *,
        headers: Iterable[tuple[str, str]] = (),
        now: float = 0.0,
        client: str | None = "127.0.0.1",
        authenticator: Authenticator | None = None,
    ) -> None:
        self.hub = hub
        self.now = now
        self.server = ServerConnection(hub, now=now, client=client)
        self.events: list[Event] = []
        self.raw = b""
        self.server.receive_data(http_request(target, headers=headers), now, self.wall)
        self._collect()
        auth = authenticator if authenticator is not None else DevAuthenticator()
        for event in [e for e in self.events if isinstance(e, AuthRequested)]:
            self.events.remove(event)
            self.server.complete_auth(auth.authenticate(event.token, self.wall), now, self.wall)
            self._collect()
        self.read()

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    def _collect(self) -> list[Event]:
        new = self.server.events_received()
        self.events.extend(new)
        return new

    def read(self) -> bytes:
        """What the server wrote since the last read (the client read it all)."""
        data = self.server.data_to_send()
        self.raw += data
        return data

    def tick(self, now: float) -> list[Event]:
        self.now = now
        self.server.handle_timer(now, self.wall)
        return self._collect()

    def eof(self) -> list[Event]:
        self.server.receive_eof(self.now, self.wall)
        return self._collect()

    @property
    def status(self) -> int:
        return parse_response(self.raw)[0]

    @property
    def headers(self) -> dict[str, str]:
        return parse_response(self.raw)[1]

    @property
    def body(self) -> str:
        return parse_response(self.raw)[2].decode()

    def sse(self) -> list[SseEvent]:
        """Every event read so far."""
        self.read()
        return parse_sse(self.body)[0]

    def messages(self) -> list[dict[str, Any]]:
        """The JSON envelope of every event read so far."""
        return [json.loads(event.data) for event in self.sse()]

    def types(self) -> list[str]:
        return [event.event for event in self.sse()]


class Helpers:
    """What the tests share, handed out by the ``h`` fixture (tests are not a package,
    so they cannot import this module)."""

    WALL0 = WALL0
    TS0 = TS0
    UPGRADE_HEADERS = UPGRADE_HEADERS
    Pair = Pair
    ListSink = ListSink
    connect = staticmethod(connect)
    error = staticmethod(error)
    http_request = staticmethod(http_request)
    masked_frame = staticmethod(masked_frame)
    open_session = staticmethod(open_session)
    parse_response = staticmethod(parse_response)
    parse_sse = staticmethod(parse_sse)
    Stream = Stream


@pytest.fixture(scope="session")
def h() -> type[Helpers]:
    return Helpers


@pytest.fixture
def hub() -> Hub:
    """Each presence change at once (the presence window has its own tests)."""
    return Hub(Settings(presence_window=0))


@pytest.fixture
def pair(hub: Hub) -> Pair:
    """A client of ``hub`` authenticated as ``user_abc123``, its first messages read."""
    p = Pair(hub)
    p.handshake()
    return p
