"""PROTOCOL.md sections 2-6 and 9, model-checked: the hub and its connections as a state machine.

Hypothesis drives a :class:`~agentcast.protocol.Hub` and its
:class:`~agentcast.protocol.ServerConnection` objects through the public core API only,
with scripted time (``now`` monotonic, ``wall = WALL0 + now``). Each client is a wsproto
client joined in memory. Rules connect (valid, invalid or no token, passed in the query,
a header or a subprotocol), disconnect (close frame, abrupt EOF), send messages (valid,
invalid, presence changes, floods past the rate limit, protocol Pings), publish every kind
of broadcast, stall a handshake, and move the clock (exactly onto, just before and just
past every heartbeat, timeout, close-timeout and presence-grace deadline).

Scoped delivery (section 4a) is part of it: clients subscribe and unsubscribe (with
``subscribe`` messages or ``channels=`` in the URL), some channels are refused by an
in-process authorizer (whose answer for one channel changes, so that a refreshed token
revokes it), the per-connection limit is small, and every broadcast may name an
audience and a channel; the model says exactly who receives each one, so no message
ever reaches a connection outside its scope. Every new connection's ``agent_state``
snapshot (section 4) is checked against the statuses published so far: the latest per
agent and scope, within a small TTL and bound, only those the connection would have
received.

A plain-Python model next to it says what each client must have received, message by
message (type, data, timestamp, broadcast id), which close code it must have seen and
when, the aggregated presence and the counts. The driver behaves like an adapter: it
wakes every connection at its own ``next_deadline()`` and the hub at the hub's, and after
every input flushes ``data_to_send()`` to the client, which answers (protocol Pong, JSON
``pong``, the closing handshake) as its flags say.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import event as note
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from agentcast.protocol import (
    AuthRequested,
    ConnectionClosed,
    DevAuthenticator,
    Hub,
    Identity,
    ServerConnection,
    Settings,
)

WALL0 = 1_766_754_000.0  # 2025-12-26T13:00:00.000Z

INTERVAL = 30.0
TIMEOUT = 60.0
GRACE = 5.0
CLOSE_TIMEOUT = 2.5
HANDSHAKE_TIMEOUT = 10.0
# Longer than the heartbeat timeout, so a silent unauthenticated client gets 4000 and
# one that answers pings gets 1008 "authentication required".
UNAUTH_TIMEOUT = 75.0
RATE = 4.0
BURST = 8
STRIKES = 3
WINDOW = 60.0
MAX_SUBSCRIPTIONS = 2
# The agent_state snapshot forgets statuses not updated for this long, and keeps at most
# this many (agent, scope) entries: small, so that both limits are reached.
AGENT_STATE_TTL = 45.0
AGENT_STATE_MAX = 4
# A snapshot's encoding is reused for up to a second: its timestamp may be that old.
SNAPSHOT_REUSE = 1.0
# "secret": user_alice only, and only while it is open (the machine's authorizer; a rule
# closes and reopens it, and a refreshed token then loses it).
CHANNELS = ["c1", "c2", "secret"]

SETTINGS = Settings(
    # Every presence change at once: the model checks aggregation, grace and order; the
    # presence interval has its own tests (tests/core/test_hub_presence.py).
    presence_interval=0,
    presence_window=0,
    heartbeat_interval=INTERVAL,
    heartbeat_timeout=TIMEOUT,
    presence_grace=GRACE,
    close_timeout=CLOSE_TIMEOUT,
    handshake_timeout=HANDSHAKE_TIMEOUT,
    unauthenticated_timeout=UNAUTH_TIMEOUT,
    rate_limit=RATE,
    rate_burst=BURST,
    rate_limit_strikes=STRIKES,
    rate_limit_window=WINDOW,
    max_subscriptions=MAX_SUBSCRIPTIONS,
    agent_state_ttl=AGENT_STATE_TTL,
    agent_state_max=AGENT_STATE_MAX,
)


RANK = {"offline": 0, "away": 1, "online": 2, "busy": 3}
UNAUTHENTICATED_TYPES = {"auth", "pong", "ping", "error"}
MAX_CLIENTS = 10
# Every time step is a multiple of 1/4 s, so the model's arithmetic is exact.
STEPS = [0.25, 1.0, 2.5, 4.75, 5.0, 5.25, 29.75, 30.0, 60.0]

# What a client may send: (label, frame kind, payload).
CLIENT_MESSAGES: list[tuple[str, str, str]] = [
    ("ping", "text", '{"type":"ping"}'),
    ("pong", "text", '{"type":"pong"}'),
    ("not json", "text", "hello?"),
    ("not an object", "text", "[1,2]"),
    ("type not a string", "text", '{"type":5}'),
    ("unknown type", "text", '{"type":"dance","data":1}'),
    ("server-only type", "text", '{"type":"notification","data":{}}'),
    ("presence online", "text", '{"type":"user_presence","data":"online"}'),
    ("presence away", "text", '{"type":"user_presence","data":"away"}'),
    ("presence busy", "text", '{"type":"user_presence","data":"busy"}'),
    ("presence offline", "text", '{"type":"user_presence","data":"offline"}'),
    ("presence invalid", "text", '{"type":"user_presence","data":"dnd"}'),
    ("refresh alice", "text", '{"type":"auth","data":{"token":"alice"}}'),
    ("refresh bob", "text", '{"type":"auth","data":{"token":"bob"}}'),
    ("refresh invalid", "text", '{"type":"auth","data":{"token":"no!"}}'),
    ("binary", "binary", ""),
    ("subscribe c1", "text", '{"type":"subscribe","data":{"channel":"c1"}}'),
    ("subscribe c2", "text", '{"type":"subscribe","data":{"channel":"c2"}}'),
    ("subscribe secret", "text", '{"type":"subscribe","data":{"channel":"secret"}}'),
    ("subscribe bad", "text", '{"type":"subscribe","data":{"channel":"no way"}}'),
    ("unsubscribe c1", "text", '{"type":"unsubscribe","data":{"channel":"c1"}}'),
    ("unsubscribe secret", "text", '{"type":"unsubscribe","data":{"channel":"secret"}}'),
]


def iso(now: float) -> str:
    """The ``timestamp`` of a message sent at monotonic *now* (JS toISOString form)."""
    moment = datetime.fromtimestamp(WALL0 + now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def err(text: str, code: str) -> dict[str, str]:
    return {"error": text, "code": code}


#: A bad presence answer also names the shape the server takes.
HINT = {
    "expected": '{"type":"user_presence","data":"away"}, data one of "online", "away", "busy", '
    '"offline"'
}


# -- the model -------------------------------------------------------------------------


@dataclass
class Expected:
    """One message a client must receive: what, when, and which broadcast (if one)."""

    kind: str
    data: Any
    at: float
    entry: int | None = None


@dataclass
class MConn:
    """The model of one connection."""

    index: int
    user: str | None
    answers_ping: bool
    answers_json_ping: bool
    answers_close: bool
    created: float
    half: bool = False  # a handshake that never completes
    answered_408: bool = False
    state: str = "open"  # open -> closing -> closed, or open -> closed
    last_seen: float = 0.0
    next_ping: float = 0.0
    auth_deadline: float | None = None
    close_at: float | None = None  # closing: when the server stops waiting for the echo
    presence: str = "online"
    subs: dict[str, None] = field(default_factory=dict)  # in subscription order
    tokens: float = float(BURST)
    bucket_at: float = 0.0
    strikes: list[float] = field(default_factory=list)
    expected: list[Expected] = field(default_factory=list)
    close_frame: tuple[int, float] | None = None  # the server's close frame: code, when
    closed_code: int | None = None  # the code of the ConnectionClosed event
    deaf: bool = False  # closed for a flood: the server reads nothing more (not the echo)

    def deadline(self) -> float | None:
        if self.half:
            return self.created + HANDSHAKE_TIMEOUT if self.state == "open" else None
        if self.state == "open":
            d = min(self.next_ping, self.last_seen + TIMEOUT)
            return d if self.auth_deadline is None else min(d, self.auth_deadline)
        if self.state == "closing" and (not self.answers_close or self.deaf):
            return self.close_at
        return None


@dataclass
class MUser:
    status: str = "offline"
    conns: list[MConn] = field(default_factory=list)


class Model:
    """What PROTOCOL.md says must happen, written as directly as possible."""

    def __init__(self) -> None:
        self.now = 0.0
        self.conns: list[MConn] = []
        self.users: dict[str, MUser] = {}
        self.leaving: dict[str, float] = {}  # user -> when it turns offline (in order)
        self.log: list[str | None] = []  # broadcast ids, in publish order
        self.queue: list[tuple[MConn, str]] = []  # client answers still to process
        self.secret_open = True
        # (agent, audience, channel) -> (data, audience, channel, when), in update order.
        self.statuses: dict[tuple[Any, ...], tuple[Any, frozenset[str] | None, Any, float]] = {}

    # -- views -------------------------------------------------------------------------

    def sessions(self) -> list[MConn]:
        return [m for m in self.conns if not m.half and m.state == "open"]

    def authenticated(self) -> list[MConn]:
        return [m for m in self.sessions() if m.user is not None]

    def presence(self) -> dict[str, str]:
        return {uid: u.status for uid, u in self.users.items() if u.status != "offline"}

    def in_scope(self, user_ids: list[str] | None, channel: str | None) -> list[MConn]:
        """PROTOCOL.md 4a, written out: authenticated, in the audience if there is one,
        subscribed to the channel if there is one."""
        return [
            m
            for m in self.authenticated()
            if (user_ids is None or m.user in user_ids) and (channel is None or channel in m.subs)
        ]

    def deadline(self) -> float | None:
        times = [d for m in self.conns if (d := m.deadline()) is not None]
        times += self.leaving.values()
        return min(times) if times else None

    # -- output ------------------------------------------------------------------------

    def send(self, m: MConn, kind: str, data: Any, entry: int | None = None) -> None:
        if m.state != "open":
            return
        m.expected.append(Expected(kind, data, self.now, entry))
        if kind == "ping" and m.answers_json_ping:
            self.queue.append((m, "json pong"))

    def send_protocol_ping(self, m: MConn) -> None:
        if m.state == "open" and m.answers_ping:
            self.queue.append((m, "pong frame"))

    def broadcast(self, kind: str, data: Any, recipients: list[MConn], pid: str | None) -> int:
        entry = len(self.log)
        self.log.append(pid)
        for m in recipients:
            self.send(m, kind, data, entry)
        return len(recipients)

    def server_close(self, m: MConn, code: int, *, flood: bool = False) -> None:
        note(f"server close {code}")
        m.close_frame = (code, self.now)
        m.state = "closing"
        m.close_at = self.now + CLOSE_TIMEOUT
        m.deaf = flood
        self.leave(m)
        if m.answers_close and not m.deaf:
            self.queue.append((m, "close echo"))

    def drain(self) -> None:
        """The clients' automatic answers, in the order they were provoked."""
        while self.queue:
            m, what = self.queue.pop(0)
            if what == "pong frame":
                self.control(m)
            elif what == "json pong":
                self.text(m, "pong")
            elif m.state == "closing":  # close echo
                m.state = "closed"
                m.closed_code = m.close_frame[0] if m.close_frame else None

    # -- presence ----------------------------------------------------------------------

    def recompute(self, uid: str) -> None:
        user = self.users[uid]
        status = max((c.presence for c in user.conns), key=RANK.__getitem__)
        self.set_status(uid, user, status)

    def set_status(self, uid: str, user: MUser, status: str) -> None:
        if status != user.status:
            note(f"presence -> {status}")
            user.status = status
            self.broadcast(
                "user_presence", {"userId": uid, "status": status}, self.authenticated(), None
            )

    def record_status(self, data: Any, user_ids: list[str] | None, channel: str | None) -> None:
        audience = None if user_ids is None else frozenset(user_ids)
        key = (data["agentName"], audience, channel)
        self.statuses.pop(key, None)
        self.statuses[key] = (data, audience, channel, self.now)

    def agent_state(self, m: MConn) -> list[Any]:
        """PROTOCOL.md 4: of the newest AGENT_STATE_MAX statuses (per agent and scope)
        updated within the TTL, those *m* would have received; the latest per agent, in
        the order of their last update."""
        latest: dict[str, Any] = {}
        for data, audience, channel, when in list(self.statuses.values())[-AGENT_STATE_MAX:]:
            if when + AGENT_STATE_TTL <= self.now:
                continue
            if (audience is None or m.user in audience) and (channel is None or channel in m.subs):
                latest.pop(data["agentName"], None)
                latest[data["agentName"]] = data
        return list(latest.values())

    def join(self, m: MConn) -> None:
        assert m.user is not None
        snapshot = sorted(
            ({"userId": u, "status": s} for u, s in self.presence().items()),
            key=lambda item: item["userId"],
        )
        self.send(m, "presence_state", {"users": snapshot})
        self.send(m, "agent_state", {"agents": self.agent_state(m)})
        user = self.users.setdefault(m.user, MUser())
        if self.leaving.pop(m.user, None) is not None:
            note("reconnect within the presence grace")
        user.conns.append(m)
        self.recompute(m.user)

    def leave(self, m: MConn) -> None:
        """*m*'s session ends (its state has just left ``open``)."""
        if m.user is None:
            return
        user = self.users[m.user]
        user.conns.remove(m)
        if user.conns:
            self.recompute(m.user)
        else:
            self.leaving[m.user] = self.now + GRACE

    # -- inputs ------------------------------------------------------------------------

    def connect(self, m: MConn, token: str | None, channels: list[str] = []) -> None:  # noqa: B006
        self.conns.append(m)
        m.last_seen = m.bucket_at = self.now
        m.next_ping = self.now + INTERVAL
        if m.half:
            return
        if m.user is not None:
            self.send(m, "auth", {"success": True, "userId": m.user})
        else:
            reason = "Missing token" if token is None else "Invalid token"
            self.send(m, "auth", {"success": False, "error": reason})
            m.auth_deadline = self.now + UNAUTH_TIMEOUT
        # channels= subscribes before the session opens (the agent_state snapshot sees
        # those channels); the answers follow the session's first messages.
        before = len(m.expected)
        for channel in channels:
            self.subscription(m, "subscribe", channel)
        answers = m.expected[before:]
        del m.expected[before:]
        if m.user is not None:
            self.join(m)
        m.expected += answers
        self.drain()

    def subscription(self, m: MConn, verb: str, channel: str) -> None:
        if m.user is None:
            self.send(m, "error", err("Not authenticated", "not_authenticated"))
        elif channel not in CHANNELS:
            self.send(m, "error", err("Invalid channel name", "invalid_channel"))
        elif verb == "unsubscribe":
            m.subs.pop(channel, None)
            self.send(m, "unsubscribed", {"channel": channel})
        elif channel in m.subs:
            self.send(m, "subscribed", {"channel": channel})
        elif len(m.subs) >= MAX_SUBSCRIPTIONS:
            error = f"Too many subscriptions (at most {MAX_SUBSCRIPTIONS})"
            data = {**err(error, "too_many_subscriptions"), "channel": channel}
            self.send(m, "error", data)
        elif not self.allowed(m.user, channel):
            data = {**err("Channel not allowed", "forbidden_channel"), "channel": channel}
            self.send(m, "error", data)
        else:
            m.subs[channel] = None
            self.send(m, "subscribed", {"channel": channel})

    def allowed(self, user: str, channel: str) -> bool:
        return channel != "secret" or (user == "user_alice" and self.secret_open)

    def touch(self, m: MConn) -> None:
        m.last_seen = max(m.last_seen, self.now)

    def admit(self, m: MConn) -> bool:
        """The token bucket and strikes of PROTOCOL.md 6."""
        elapsed = self.now - m.bucket_at
        if elapsed > 0:
            m.tokens = min(float(BURST), m.tokens + elapsed * RATE)
            m.bucket_at = self.now
        if m.tokens >= 1:
            m.tokens -= 1
            return True
        m.strikes = [t for t in [*m.strikes, self.now] if t > self.now - WINDOW]
        self.send(m, "error", err("Rate limit exceeded", "rate_limited"))
        if len(m.strikes) >= STRIKES:
            self.server_close(m, 1008, flood=True)
        return False

    def control(self, m: MConn) -> None:
        """A protocol Ping or Pong from the client: proof of life, and a token of the
        same bucket as messages (a dropped one gets no error; strikes close 1008)."""
        if m.state != "open":
            return
        self.touch(m)
        elapsed = self.now - m.bucket_at
        if elapsed > 0:
            m.tokens = min(float(BURST), m.tokens + elapsed * RATE)
            m.bucket_at = self.now
        if m.tokens >= 1:
            m.tokens -= 1
            return
        m.strikes = [t for t in [*m.strikes, self.now] if t > self.now - WINDOW]
        if len(m.strikes) >= STRIKES:
            self.server_close(m, 1008, flood=True)

    def text(self, m: MConn, label: str) -> str | None:
        """One client message; returns a refresh token to answer after the chunk."""
        if m.state != "open":
            return None
        self.touch(m)
        if not self.admit(m):
            return None
        if label == "ping":
            self.send(m, "pong", None)
        elif label in ("not json", "not an object", "type not a string"):
            self.send(m, "error", err("Invalid message format", "invalid_format"))
        elif label == "unknown type":
            self.send(m, "error", err("Unknown message type: dance", "unknown_type"))
        elif label == "server-only type":
            self.send(m, "error", err("Message type not allowed from client", "not_allowed"))
        elif label.startswith(("presence", "refresh")) and m.user is None:
            # Authentication is checked before the status is.
            self.send(m, "error", err("Not authenticated", "not_authenticated"))
        elif label == "presence invalid":
            self.send(m, "error", {**err("Invalid presence status", "invalid_presence"), **HINT})
        elif label.startswith("presence"):
            assert m.user is not None
            m.presence = label.split()[1]
            self.recompute(m.user)
        elif label.startswith("refresh"):
            return label.split()[1]
        elif label == "binary":
            self.send(m, "error", err("Binary messages are not supported", "binary_not_supported"))
        elif label.startswith(("subscribe", "unsubscribe")):
            verb, channel = label.split()
            self.subscription(m, verb, channel)
        return None

    def refresh(self, m: MConn, token: str) -> None:
        if m.state != "open":
            return
        if token == "invalid":
            data: dict[str, Any] = {"success": False, "error": "Invalid token"}
        elif f"user_{token}" != m.user:
            data = {"success": False, "error": "Token is for another user"}
        else:
            data = {"success": True, "userId": m.user}
        self.send(m, "auth", data)
        if data["success"]:  # every subscription is asked again, in order
            assert m.user is not None
            for channel in list(m.subs):
                if not self.allowed(m.user, channel):
                    del m.subs[channel]
                    reason = {"channel": channel, "reason": "no longer allowed"}
                    self.send(m, "unsubscribed", reason)

    def client_close(self, m: MConn) -> None:
        self.touch(m)
        m.close_frame = (1000, self.now)  # the echo
        m.state = "closed"
        m.closed_code = 1000
        self.leave(m)

    def eof(self, m: MConn) -> None:
        if m.state == "open":
            m.state = "closed"
            if not m.half:
                m.closed_code = 1006
                self.leave(m)
        elif m.state == "closing":
            m.state = "closed"
            m.closed_code = m.close_frame[0] if m.close_frame else None

    def hub_timer(self) -> None:
        for uid in [u for u, at in self.leaving.items() if at <= self.now]:
            del self.leaving[uid]
            user = self.users.pop(uid)
            self.set_status(uid, user, "offline")

    def conn_timer(self, m: MConn) -> None:
        now = self.now
        if m.half:
            if m.state == "open" and now >= m.created + HANDSHAKE_TIMEOUT:
                m.state = "closed"
                m.answered_408 = True
            return
        if m.state == "closing":
            if (not m.answers_close or m.deaf) and m.close_at is not None and now >= m.close_at:
                note("close timeout")
                m.state = "closed"
                m.closed_code = m.close_frame[0] if m.close_frame else None
            return
        if m.state != "open":
            return
        if now >= m.last_seen + TIMEOUT:
            self.server_close(m, 4000)
        elif m.auth_deadline is not None and now >= m.auth_deadline:
            self.server_close(m, 1008)
        elif now >= m.next_ping:
            while m.next_ping <= now:
                m.next_ping += INTERVAL
            self.send(m, "ping", None)
            self.send_protocol_ping(m)
        self.drain()


# -- the real side ---------------------------------------------------------------------


@dataclass
class Client:
    """A wsproto client joined in memory to one ServerConnection, and what it saw."""

    conn: ServerConnection
    ws: WSConnection | None  # None: a stalled handshake (raw bytes only)
    model: MConn
    received: list[dict[str, Any]] = field(default_factory=list)
    close_frame: tuple[int, float] | None = None
    closed_codes: list[int] = field(default_factory=list)
    raw: bytes = b""
    handshake_done: bool = False
    output_over: bool = False  # a close frame or final answer was seen: nothing may follow
    sent_close: bool = False
    gone: bool = False  # the client's side of the TCP connection is closed
    refreshes: list[str] = field(default_factory=list)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split server output (unmasked frames, RFC 6455 5.2) into (opcode, payload)."""
    frames = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert second & 0x80 == 0, "server frames are never masked"
        length = second & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        frames.append((first & 0x0F, data[pos : pos + length]))
        pos += length
    assert pos == len(data), "output ends inside a frame"
    return frames


class HubMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.secret_open = True
        self.hub = Hub(SETTINGS, authorizer=self.authorize)
        self.model = Model()
        self.clients: list[Client] = []
        self.now = 0.0
        self.auth = DevAuthenticator()

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    def authorize(self, identity: Identity, channel: str) -> bool:
        return channel != "secret" or (identity.user_id == "user_alice" and self.secret_open)

    # -- driving the real side ---------------------------------------------------------

    def flush(self, c: Client) -> bool:
        """Deliver *c*'s pending output and feed back the client's answers."""
        data = c.conn.data_to_send()
        for event in c.conn.events_received():
            if isinstance(event, AuthRequested):
                assert event.refresh, "AuthRequested after the upgrade is a refresh"
                c.refreshes.append(event.token)
            elif isinstance(event, ConnectionClosed):
                c.closed_codes.append(event.code)
            else:  # pragma: no cover - nothing else reaches a WebSocket client's adapter
                raise AssertionError(f"unexpected event {event!r}")
        progressed = False
        for token in c.refreshes:
            c.conn.complete_auth(self.auth.authenticate(token, self.wall), self.now, self.wall)
            progressed = True
        c.refreshes.clear()
        if not data:
            return progressed
        assert not c.output_over, f"client {c.model.index}: output after close: {data!r}"
        assert not c.gone, f"client {c.model.index}: output after EOF: {data!r}"
        if c.ws is None:
            c.raw += data
            c.output_over = c.conn.closed
            return True
        frame_data = data
        if not c.handshake_done:
            head, sep, frame_data = data.partition(b"\r\n\r\n")
            assert sep, data
            assert head.startswith(b"HTTP/1.1 101 "), data
            c.handshake_done = True
        opcodes = [op for op, _ in server_frames(frame_data)]
        if 0x8 in opcodes:
            assert opcodes.index(0x8) == len(opcodes) - 1, "frames after the close frame"
            c.output_over = True
        c.ws.receive_data(data)
        out = b""
        for event in c.ws.events():
            if isinstance(event, AcceptConnection | Pong):
                continue
            if isinstance(event, TextMessage):
                message = json.loads(event.data)
                c.received.append(message)
                if message["type"] == "ping" and c.model.answers_json_ping:
                    out += c.ws.send(TextMessage(data='{"type":"pong"}'))
            elif isinstance(event, Ping):
                if c.model.answers_ping:
                    out += c.ws.send(event.response())
            elif isinstance(event, CloseConnection):
                assert c.close_frame is None, "two close frames"
                c.close_frame = (event.code, self.now)
                if not c.sent_close and c.model.answers_close:
                    out += c.ws.send(event.response())
            else:
                raise AssertionError(f"the server sent {event!r}")
        if out:
            c.conn.receive_data(out, self.now, self.wall)
        return True

    def pump(self) -> None:
        """Flush every connection, in creation order, until nothing moves."""
        for _ in range(50):
            moved = False
            for c in self.clients:
                moved = self.flush(c) or moved
            if not moved:
                return
        raise AssertionError("the connections never settle")

    def advance(self, target: float) -> None:
        """Move the clock to *target*, waking every deadline on the way, in order, as an
        adapter would: the hub first, then each connection, at its own next_deadline()."""
        assert target >= self.now
        for _ in range(1_000):
            times = [d for c in self.clients if (d := c.conn.next_deadline()) is not None]
            if (d := self.hub.next_deadline()) is not None:
                times.append(d)
            if (d := self.model.deadline()) is not None:
                times.append(d)
            due = [t for t in times if t <= target]
            if not due:
                break
            t = max(min(due), self.now)
            self.now = self.model.now = t
            hub_deadline = self.hub.next_deadline()
            if hub_deadline is not None and hub_deadline <= t:
                self.hub.handle_timer(t, self.wall)
                assert (self.hub.next_deadline() or t + 1) > t, "hub deadline not consumed"
            self.model.hub_timer()
            self.pump()
            for c in self.clients:
                deadline = c.conn.next_deadline()
                if deadline is not None and deadline <= t:
                    c.conn.handle_timer(t, self.wall)
                    after = c.conn.next_deadline()
                    assert after is None or after > t, f"deadline {after} not consumed at {t}"
                    self.pump()
                self.model.conn_timer(c.model)
        else:  # pragma: no cover - a deadline that never moves
            raise AssertionError("deadlines do not advance")
        self.now = self.model.now = target

    def settle(self) -> None:
        self.pump()
        self.model.drain()
        self.advance(self.now)  # anything due right now fires now

    def pick(self, index: int, ok: Callable[[Client], bool]) -> Client:
        candidates = [c for c in self.clients if ok(c)]
        return candidates[index % len(candidates)]

    def _open(self, c: Client) -> bool:
        return c.ws is not None and c.model.state == "open" and not c.gone

    def _has_open(self) -> bool:
        return any(self._open(c) for c in self.clients)

    # -- rules: connections ------------------------------------------------------------

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule(
        token=st.sampled_from(["alice", "bob", "carol", None, "no!way", "x" * 129]),
        via=st.sampled_from(["query", "header", "subprotocol"]),
        answers_ping=st.booleans(),
        answers_json_ping=st.booleans(),
        answers_close=st.booleans(),
        channels=st.sampled_from(["", "c1", "secret,c2", "c1,bad%20x,c1,c2,secret"]),
    )
    def connect(  # noqa: PLR0917 (hypothesis passes the rule's arguments by name)
        self,
        token: str | None,
        via: str,
        answers_ping: bool,
        answers_json_ping: bool,
        answers_close: bool,
        channels: str,
    ) -> None:
        valid = token is not None and token in ("alice", "bob", "carol")
        m = MConn(
            index=len(self.clients),
            user=f"user_{token}" if valid else None,
            answers_ping=answers_ping,
            answers_json_ping=answers_json_ping,
            answers_close=answers_close,
            created=self.now,
        )
        conn = ServerConnection(self.hub, now=self.now, client="127.0.0.1")
        ws = WSConnection(ConnectionType.CLIENT)
        c = Client(conn, ws, m)
        self.clients.append(c)
        target, headers, protocols = "/ws", [], []
        if token is not None and via == "query":
            target = "/ws?token=" + token.replace("!", "%21")
        elif token is not None and via == "header":
            headers = [(b"authorization", f"Bearer {token}".encode())]
        elif token is not None:
            protocols = ["agentcast.v1", f"bearer.{token}"]
        if channels:
            target += ("&" if "?" in target else "?") + "channels=" + channels
        request = Request(
            host="localhost", target=target, extra_headers=headers, subprotocols=protocols
        )
        conn.receive_data(ws.send(request), self.now, self.wall)
        events = conn.events_received()
        if token is None:
            assert events == []
        else:
            assert len(events) == 1
            assert isinstance(events[0], AuthRequested)
            assert events[0].token == token
            assert not events[0].refresh
            conn.complete_auth(self.auth.authenticate(token, self.wall), self.now, self.wall)
        names = list(dict.fromkeys(channels.replace("%20", " ").split(","))) if channels else []
        self.model.connect(m, token, names[: MAX_SUBSCRIPTIONS + 1])
        self.settle()

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule()
    def stall_handshake(self) -> None:
        """A slowloris client: half a request, then nothing (408 after the timeout)."""
        m = MConn(len(self.clients), None, False, False, False, self.now, half=True)
        conn = ServerConnection(self.hub, now=self.now, client="127.0.0.1")
        self.clients.append(Client(conn, None, m))
        conn.receive_data(b"GET /ws?token=alice HTTP/1.1\r\nHost: x\r\n", self.now, self.wall)
        assert conn.events_received() == []
        self.model.connect(m, "alice")
        self.settle()

    @precondition(_has_open)
    @rule(index=st.integers(min_value=0))
    def close_cleanly(self, index: int) -> None:
        c = self.pick(index, self._open)
        assert c.ws is not None
        c.sent_close = True
        c.conn.receive_data(c.ws.send(CloseConnection(code=1000, reason="bye")), *self.times)
        self.model.client_close(c.model)
        self.settle()

    @precondition(lambda self: any(not c.gone and not c.conn.closed for c in self.clients))
    @rule(index=st.integers(min_value=0))
    def abrupt_eof(self, index: int) -> None:
        c = self.pick(index, lambda c: not c.gone and not c.conn.closed)
        c.gone = True
        c.conn.receive_eof(*self.times)
        self.model.eof(c.model)
        self.settle()

    # -- rules: client messages --------------------------------------------------------

    @precondition(_has_open)
    @rule(
        index=st.integers(min_value=0),
        messages=st.lists(st.sampled_from(CLIENT_MESSAGES), min_size=1, max_size=14),
    )
    def send_messages(self, index: int, messages: list[tuple[str, str, str]]) -> None:
        """One chunk of client messages: a single one, or a flood past the rate limit."""
        self._chunk(self.pick(index, self._open), messages)

    def _chunk(
        self,
        c: Client,
        messages: list[tuple[str, str, str]],
        before_refresh: Callable[[], None] | None = None,
    ) -> None:
        """Send *messages* in one chunk; *before_refresh* runs after the server has read
        them and before the refreshes they asked for are answered."""
        assert c.ws is not None
        chunk = b""
        for _, kind, payload in messages:
            if kind == "text":
                chunk += c.ws.send(TextMessage(data=payload))
            else:
                chunk += c.ws.send(BytesMessage(data=b"\x00\x01"))
        c.conn.receive_data(chunk, *self.times)
        refreshes = [self.model.text(c.model, label) for label, _, _ in messages]
        if before_refresh is not None:
            before_refresh()
        self.model.drain()
        for token in refreshes:
            if token is not None:
                self.model.refresh(c.model, token)
        self.settle()

    @precondition(_has_open)
    @rule(index=st.integers(min_value=0))
    def send_protocol_ping(self, index: int) -> None:
        """Any frame proves the client alive; the server answers a Ping by itself."""
        c = self.pick(index, self._open)
        assert c.ws is not None
        c.conn.receive_data(c.ws.send(Ping(payload=b"still here")), *self.times)
        self.model.control(c.model)
        self.model.drain()
        self.settle()

    # -- rules: publishing -------------------------------------------------------------

    audiences = st.sampled_from(
        [None, None, ["user_alice"], ["user_bob", "user_carol"], ["user_nobody"]]
    )
    channels = st.sampled_from([None, None, "c1", "c2", "secret", "nobody"])

    def _published(self, kind: str, data: Any, result: Any, recipients: list[MConn]) -> None:
        delivered = self.model.broadcast(kind, data, recipients, result.id)
        assert result.delivered == delivered
        self.settle()

    @rule(
        agent=st.sampled_from(["planner", "coder"]),
        state=st.sampled_from(["idle", "working", "stopped"]),
        task=st.sampled_from([None, "Refactor the parser"]),
        progress=st.sampled_from([None, 0, 55.5, 100]),
        user_ids=audiences,
        channel=channels,
    )
    def broadcast_agent_status(  # noqa: PLR0917 (hypothesis passes them by name)
        self,
        agent: str,
        state: Any,
        task: str | None,
        progress: float | None,
        user_ids: list[str] | None,
        channel: str | None,
    ) -> None:
        result = self.hub.broadcast_agent_status(
            agent,
            state,
            task,
            progress,
            now=self.now,
            wall=self.wall,
            user_ids=user_ids,
            channel=channel,
        )
        data: dict[str, Any] = {"agentName": agent, "state": state}
        if task is not None:
            data["currentTask"] = task
        if progress is not None:
            data["progress"] = progress
        self.model.record_status(data, user_ids, channel)
        self._published("agent_status", data, result, self.model.in_scope(user_ids, channel))

    @rule(
        content=st.sampled_from(["hi", "héllo ✓ 🚀", ""]),
        stamp=st.sampled_from([None, "2025-12-26T13:00:00.000Z"]),
        user_ids=audiences,
        channel=channels,
    )
    def broadcast_chat_message(
        self, content: str, stamp: str | None, user_ids: list[str] | None, channel: str | None
    ) -> None:
        result = self.hub.broadcast_chat_message(
            "conv-1",
            "msg-1",
            content,
            "agent:coder",
            stamp,
            now=self.now,
            wall=self.wall,
            user_ids=user_ids,
            channel=channel,
        )
        data = {
            "conversationId": "conv-1",
            "messageId": "msg-1",
            "content": content,
            "sender": "agent:coder",
            "timestamp": stamp or iso(self.now),
        }
        self._published("chat_message", data, result, self.model.in_scope(user_ids, channel))

    @rule(
        level=st.sampled_from(["info", "success", "warning", "error"]),
        user=st.sampled_from([None, "user_alice", "user_bob", "user_carol", "user_nobody"]),
        user_ids=audiences,
        channel=channels,
    )
    def send_notification(
        self, level: Any, user: str | None, user_ids: list[str] | None, channel: str | None
    ) -> None:
        if user is not None and user_ids is not None:
            user_ids = None  # both is a ValueError (publish_invalid tries it)
        result = self.hub.send_notification(
            level,
            "Build finished",
            user,
            now=self.now,
            wall=self.wall,
            user_ids=user_ids,
            channel=channel,
        )
        audience = [user] if user is not None else user_ids
        recipients = self.model.in_scope(audience, channel)
        data = {"level": level, "message": "Build finished"}
        self._published("notification", data, result, recipients)

    @rule(
        which=st.sampled_from(
            ["progress", "state", "level", "empty name", "both audiences", "no users", "channel"]
        )
    )
    def publish_invalid(self, which: str) -> None:
        """Invalid arguments raise ValueError and reach nobody (PROTOCOL.md 8)."""
        now, wall = self.times
        try:
            if which == "progress":
                self.hub.broadcast_agent_status("a", "idle", None, 101, now=now, wall=wall)
            elif which == "state":
                self.hub.broadcast_agent_status("a", "flying", now=now, wall=wall)  # type: ignore[arg-type]
            elif which == "level":
                self.hub.send_notification("loud", "x", now=now, wall=wall)  # type: ignore[arg-type]
            elif which == "both audiences":
                self.hub.send_notification(
                    "info", "x", "user_alice", user_ids=["user_bob"], now=now, wall=wall
                )
            elif which == "no users":
                self.hub.broadcast_chat_message("c", "m", "x", "s", user_ids=[], now=now, wall=wall)
            elif which == "channel":
                self.hub.broadcast_agent_status("a", "idle", channel="no way", now=now, wall=wall)
            else:
                self.hub.broadcast_agent_status("", "idle", now=now, wall=wall)
        except ValueError:
            pass
        else:
            raise AssertionError(f"invalid {which} was published")
        self.settle()

    def _alice(self, c: Client) -> bool:
        return self._open(c) and c.model.user == "user_alice"

    @precondition(lambda self: any(self._alice(c) for c in self.clients))
    @rule(index=st.integers(min_value=0), subscribe_first=st.booleans())
    def revoke_by_refresh(self, index: int, subscribe_first: bool) -> None:
        """The secret channel closes, then alice refreshes her token: her subscription
        to it ends (``unsubscribed``, with a reason) and it delivers nothing more to her."""
        c = self.pick(index, self._alice)
        by_label = {label: (label, kind, payload) for label, kind, payload in CLIENT_MESSAGES}
        chunk = [by_label["subscribe secret"]] if subscribe_first else []

        def close_secret() -> None:
            self.secret_open = self.model.secret_open = False

        self._chunk(c, [*chunk, by_label["refresh alice"]], close_secret)

    @rule()
    def toggle_secret(self) -> None:
        """The application closes (or reopens) the secret channel: subscriptions that
        exist hold until the token is refreshed, new ones are refused."""
        self.secret_open = self.model.secret_open = not self.secret_open
        note(f"secret open: {self.secret_open}")
        self.settle()

    # -- rules: time -------------------------------------------------------------------

    @rule(step=st.sampled_from(STEPS))
    def wait(self, step: float) -> None:
        self.advance(self.now + step)
        self.settle()

    @precondition(lambda self: self.model.deadline() is not None)
    @rule(offset=st.sampled_from([-0.25, 0.0, 0.25]))
    def wait_for_next_deadline(self, offset: float) -> None:
        """Just before, exactly at, or just past the next thing the model expects."""
        deadline = self.model.deadline()
        assert deadline is not None
        self.advance(max(self.now, deadline + offset))
        self.settle()

    @property
    def times(self) -> tuple[float, float]:
        return self.now, self.wall

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def every_client_received_exactly_what_the_model_says(self) -> None:
        log = self.model.log
        for c in self.clients:
            m = c.model
            got = c.received
            want = m.expected
            kinds = [g["type"] for g in got]
            assert len(got) == len(want), (m.index, kinds, [w.kind for w in want])
            last_id = ""
            for g, w in zip(got, want, strict=True):
                assert g["type"] == w.kind, (m.index, kinds, [w.kind for w in want])
                data = g.get("data")
                if w.kind == "presence_state":
                    data = {"users": sorted(data["users"], key=lambda u: u["userId"])}
                assert data == w.data, (m.index, w.kind, data, w.data)
                if w.kind == "agent_state":  # built at most SNAPSHOT_REUSE ago
                    assert iso(w.at - SNAPSHOT_REUSE) < g["timestamp"] <= iso(w.at)
                else:
                    assert g["timestamp"] == iso(w.at), (m.index, w.kind, g["timestamp"], w.at)
                if w.entry is None:
                    assert "id" not in g
                    continue
                # Each broadcast has one id, the same for every recipient, and a client
                # sees them strictly increasing (publish order).
                if log[w.entry] is None:
                    log[w.entry] = g["id"]
                assert g["id"] == log[w.entry]
                assert g["id"] > last_id
                last_id = g["id"]
            if m.user is None:
                assert set(kinds) <= UNAUTHENTICATED_TYPES, kinds

    @invariant()
    def closes_as_the_model_says(self) -> None:
        for c in self.clients:
            m = c.model
            assert c.close_frame == m.close_frame, (m.index, c.close_frame, m.close_frame)
            assert c.conn.closed == (m.state == "closed"), (m.index, m.state)
            assert c.closed_codes == ([] if m.closed_code is None else [m.closed_code])
            if m.answered_408:
                assert c.raw.startswith(b"HTTP/1.1 408 "), c.raw
            elif m.half:
                assert c.raw == b""

    @invariant()
    def heartbeat_timeout_closes_exactly_the_silent(self) -> None:
        for c in self.clients:
            m = c.model
            if c.close_frame is not None and c.close_frame[0] == 4000:
                # Closed at the very moment it had been silent for the timeout.
                assert c.close_frame[1] == m.last_seen + TIMEOUT
            if m.state == "open" and not m.half:
                assert self.now < m.last_seen + TIMEOUT

    @invariant()
    def subscriptions_match(self) -> None:
        subscribed = [m.subs for m in self.model.authenticated()]
        assert self.hub.subscriptions_count() == sum(len(subs) for subs in subscribed)
        assert self.hub.channels_count() == len(set().union(*subscribed))
        for channel in CHANNELS:
            assert self.hub.subscribers(channel) == sum(channel in subs for subs in subscribed)

    @invariant()
    def presence_and_counts_match(self) -> None:
        assert self.hub.presence() == self.model.presence()
        assert self.hub.clients_count() == len(self.model.sessions())
        assert self.hub.authenticated_clients_count() == len(self.model.authenticated())

    @invariant()
    def no_deadline_in_the_past(self) -> None:
        deadline = self.hub.next_deadline()
        assert deadline is None or deadline >= self.now
        for c in self.clients:
            deadline = c.conn.next_deadline()
            if c.conn.closed:
                assert deadline is None
            else:
                assert deadline is not None, "an open connection always has a deadline"
                assert deadline >= self.now


# An example takes a few milliseconds: run several times the profile's count.
HubMachine.TestCase.settings = settings(
    settings.default, max_examples=settings.default.max_examples * 5, stateful_step_count=40
)
TestHubModel = HubMachine.TestCase
