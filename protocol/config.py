"""Settings of the protocol core, with the reason for every default.

Adapters build one :class:`Settings` (from flags, environment or code) and hand it to
the :class:`~agentcast.protocol.Hub`; every connection reads its limits from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .agent_state import DEFAULT_AGENT_STATE_MAX, DEFAULT_AGENT_STATE_TTL
from .origin import OriginAllowList
from .scope import DEFAULT_MAX_SUBSCRIPTIONS

__all__ = [
    "DEFAULT_AGENT_STATE_MAX",
    "DEFAULT_AGENT_STATE_TTL",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONFLATION_THRESHOLD",
    "DEFAULT_CONNECTION_RATE",
    "DEFAULT_EVENTS_PATH",
    "DEFAULT_EVENTS_RETRY",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_HISTORY_TTL",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_IP",
    "DEFAULT_MAX_CONNECTIONS_PER_USER",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_FRAMES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_BODY_BYTES",
    "DEFAULT_MAX_SEND_BUFFER",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS",
    "DEFAULT_PATH",
    "DEFAULT_PRESENCE_GRACE",
    "DEFAULT_PRESENCE_INTERVAL",
    "DEFAULT_PRESENCE_WINDOW",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RATE_LIMIT_STRIKES",
    "DEFAULT_RATE_LIMIT_WINDOW",
    "DEFAULT_UNAUTHENTICATED_TIMEOUT",
    "Settings",
]

DEFAULT_PATH = "/ws"  # seed: ws://localhost:3000/ws?token=...
DEFAULT_EVENTS_PATH = "/events"  # PROTOCOL.md 11: the same session as Server-Sent Events
# The reconnect delay an EventSource is told (`retry:`): the few seconds browsers use by
# themselves, said explicitly so every browser waits the same.
DEFAULT_EVENTS_RETRY = 3.0
DEFAULT_HEARTBEAT_INTERVAL = 30.0  # seed: "Server sends ping every 30 seconds"
DEFAULT_HEARTBEAT_TIMEOUT = 60.0  # seed: "Clients that don't respond within 60 seconds"
DEFAULT_HISTORY_SIZE = 1000  # PROTOCOL.md 7: 1,000 messages or 5 minutes, the smaller
DEFAULT_HISTORY_TTL = 300.0
DEFAULT_PRESENCE_GRACE = 5.0  # PROTOCOL.md 4: a reload must not flap offline/online
# A user's presence goes out at most once per interval (the latest status wins, the last
# one always goes out): a person changes status a few times a minute, while one user's
# many tabs changing it as fast as their rate limits allow would otherwise be a message
# to every client for every change.
DEFAULT_PRESENCE_INTERVAL = 1.0
# Presence changes of different users within this window of the last ones sent go out
# together when it ends: in a reconnect storm (thousands of arrivals a second) each client
# gets one write with many arrivals instead of one write per arrival. The first change
# after a quiet window goes out at once. Each window costs a write to every client, so
# the longer it is the cheaper a storm; a quarter of a second is still "at once" to a
# person watching a presence list.
DEFAULT_PRESENCE_WINDOW = 0.25
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024  # PROTOCOL.md 6; client messages are tiny JSON objects
# A message may come in fragments (RFC 6455 5.4), but browsers and the usual client
# libraries send one frame per message; 1,024 leaves a fragmenting client 64 bytes a frame
# for a 64 KiB message, while a flood of tiny or empty fragments is closed 1009 quickly.
DEFAULT_MAX_MESSAGE_FRAMES = 1024
DEFAULT_MAX_SEND_BUFFER = 1024 * 1024  # PROTOCOL.md 9 (1013): ~5,000 notifications of backlog
# A healthy client drains its backlog within a round trip; 64 KiB pending (~300 statuses)
# means it is falling behind, and from then on only the latest status per agent is kept.
DEFAULT_CONFLATION_THRESHOLD = 64 * 1024
DEFAULT_RATE_LIMIT = 20.0  # PROTOCOL.md 6: messages per second, token bucket refill
DEFAULT_RATE_BURST = 40  # PROTOCOL.md 6: bucket size
DEFAULT_RATE_LIMIT_STRIKES = 10  # PROTOCOL.md 6: drops within the window before 1008
DEFAULT_RATE_LIMIT_WINDOW = 60.0  # PROTOCOL.md 6: "within a minute"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # PROTOCOL.md 1: never hang on a slowloris client
DEFAULT_MAX_HEADER_SIZE = 16 * 1024  # PROTOCOL.md 1; h11's own default, as nginx's 8-16 KiB
DEFAULT_MAX_BODY_SIZE = 1024 * 1024  # PROTOCOL.md 8: publish API bodies up to 1 MiB
DEFAULT_MAX_BATCH = 1000  # PROTOCOL.md 8: a batch holds up to 1,000 items
# Request bodies being received, over every connection of the process: 16 publishers
# sending a full 1 MiB batch at once. Past it a new request gets 503 after its head, so
# slow or stalled bodies cannot hold the process's memory.
DEFAULT_MAX_PENDING_BODY_BYTES = 16 * 1024 * 1024
# How long we wait for the peer's half of the closing handshake before we drop the
# connection (websockets waits 10 s; a dashboard that is going away answers in a round trip).
DEFAULT_CLOSE_TIMEOUT = 5.0
# Connection limits: over any of them the upgrade is answered 503.
# One process is sized for ~10,000 connections (a few tens of KiB each, and a file
# descriptor: raise `ulimit -n`); past that, run more processes (PROTOCOL.md 10).
DEFAULT_MAX_CONNECTIONS = 10_000
# One address may take 5 % of a process: a runaway reconnect loop or a single attacking
# host cannot fill the server, while an office behind one NAT address (a few hundred
# people, a tab or two each) still fits. Behind a reverse proxy every client has the
# proxy's address: raise this or set it to None there, and limit per client at the proxy.
DEFAULT_MAX_CONNECTIONS_PER_IP = 500
# A person has a tab or a few per device; 32 leaves room for connections a network change
# left half-open until their heartbeat timeout (60 s), and bounds a leaked token.
DEFAULT_MAX_CONNECTIONS_PER_USER = 32
# Connections without a valid token receive nothing but their failed `auth` and pings: a
# tenth of the process, so that token-less sockets cannot take the places of users.
DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS = 1000
# New WebSocket connections per second per process (a token bucket holding one second's
# worth): after a restart 10,000 clients come back within ~20 s of their jittered
# back-off instead of all at once; the others get 503 with Retry-After and retry.
DEFAULT_CONNECTION_RATE = 500.0
# An unauthenticated connection receives nothing but pings (PROTOCOL.md 2): keep it long
# enough for a person to read the failed `auth` in the dev tools, not long enough for
# token-less sockets to pile up. Closed with 1008 "authentication required": a policy
# close (section 9); 4001 would tell the client to fetch a fresh token, which it never had.
DEFAULT_UNAUTHENTICATED_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Limits and timings shared by every connection of a hub. Durations are seconds."""

    path: str = DEFAULT_PATH
    #: Where the event stream is served (PROTOCOL.md 11).
    events_path: str = DEFAULT_EVENTS_PATH
    #: The reconnect delay sent to event-stream clients (``retry:``), in seconds.
    events_retry: float = DEFAULT_EVENTS_RETRY
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    presence_grace: float = DEFAULT_PRESENCE_GRACE
    #: A user's ``user_presence`` goes out at most once per this many seconds (the latest
    #: status wins; the last one always goes out). ``0``: every change at once.
    presence_interval: float = DEFAULT_PRESENCE_INTERVAL
    #: Presence changes within this many seconds of the last ones sent are held and sent
    #: together when the window ends (one write per client); ``0``: each at once.
    presence_window: float = DEFAULT_PRESENCE_WINDOW
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Frames one client message may arrive in (RFC 6455 fragments); more: close 1009.
    max_message_frames: int = DEFAULT_MAX_MESSAGE_FRAMES
    max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER
    #: Past this backlog (bytes), a pending ``agent_status`` is replaced by a newer one
    #: for the same agent instead of queued behind it (conflation: a slow reader gets
    #: the latest state of each agent, not every step it missed).
    conflation_threshold: int = DEFAULT_CONFLATION_THRESHOLD
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_BURST
    rate_limit_strikes: int = DEFAULT_RATE_LIMIT_STRIKES
    rate_limit_window: float = DEFAULT_RATE_LIMIT_WINDOW
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    max_batch: int = DEFAULT_MAX_BATCH
    #: Bytes of request bodies being received at once, over every connection; a request
    #: whose body would pass it is answered 503 after its head.
    max_pending_body_bytes: int = DEFAULT_MAX_PENDING_BODY_BYTES
    #: Broadcasts kept for clients that resume (``since``, PROTOCOL.md 7): at most this
    #: many, none older than ``history_ttl`` seconds. ``0``: no resume (``complete: false``).
    history_size: int = DEFAULT_HISTORY_SIZE
    history_ttl: float = DEFAULT_HISTORY_TTL
    #: Refuse the upgrade with 401 when the token is missing or invalid (PROTOCOL.md 2).
    require_auth: bool = False
    #: The publish API key. ``None``: the publish API answers loopback clients only.
    api_key: str | None = field(default=None, repr=False)
    #: Origins allowed to open a WebSocket (``scheme://host[:port]``, or a wildcard first
    #: label ``https://*.example.com``); others get 403 at the upgrade. ``None``: any
    #: origin (dev; the server says so when it starts). An upgrade without ``Origin`` (a
    #: non-browser client) is always allowed: see :mod:`agentcast.protocol.origin`.
    allowed_origins: tuple[str, ...] | None = None
    #: Open (or upgrading) WebSocket connections per process; ``None``: unlimited.
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    #: ... per remote address (an IPv6 client counts per /64); ``None``: unlimited.
    max_connections_per_ip: int | None = DEFAULT_MAX_CONNECTIONS_PER_IP
    #: ... per authenticated user; ``None``: unlimited.
    max_connections_per_user: int | None = DEFAULT_MAX_CONNECTIONS_PER_USER
    #: ... without a valid token (counted within ``max_connections``); ``None``: unlimited.
    max_unauthenticated_connections: int | None = DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS
    #: New WebSocket connections per second per process; ``None``: unlimited.
    connection_rate: float | None = DEFAULT_CONNECTION_RATE
    #: Seconds before an unauthenticated connection is closed (1008); ``None``: never.
    unauthenticated_timeout: float | None = DEFAULT_UNAUTHENTICATED_TIMEOUT
    #: Channel subscriptions per connection, pending verdicts included (PROTOCOL.md 4a).
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    #: Serve the live dashboard at ``GET /`` and its files (the page, its style sheet and
    #: script, the browser client ``/agentcast.js`` and its ``.d.ts``). Off: all ``404``.
    dashboard: bool = True
    #: Seconds after which an agent that sent no ``agent_status`` is left out of the
    #: ``agent_state`` snapshot (PROTOCOL.md 4).
    agent_state_ttl: float = DEFAULT_AGENT_STATE_TTL
    #: Agent statuses kept for the snapshot (one per agent and scope); past it the one
    #: updated longest ago is dropped.
    agent_state_max: int = DEFAULT_AGENT_STATE_MAX

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if not self.events_path.startswith("/"):
            raise ValueError("events_path must start with '/'")
        if self.events_path == self.path:
            raise ValueError("events_path and path must differ")
        for name in (
            "heartbeat_interval",
            "heartbeat_timeout",
            "rate_limit",
            "rate_limit_window",
            "handshake_timeout",
            "close_timeout",
            "events_retry",
            "agent_state_ttl",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "presence_grace",
            "presence_interval",
            "presence_window",
            "history_size",
            "history_ttl",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")
        for name in (
            "max_message_size",
            "max_send_buffer",
            "conflation_threshold",
            "rate_burst",
            "rate_limit_strikes",
            "max_header_size",
            "max_body_size",
            "max_batch",
            "max_subscriptions",
            "max_message_frames",
            "max_pending_body_bytes",
            "agent_state_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "max_connections",
            "max_connections_per_ip",
            "max_connections_per_user",
            "max_unauthenticated_connections",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None: unlimited)")
        for name in ("connection_rate", "unauthenticated_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None: no limit)")
        origins: object = self.allowed_origins
        if origins is not None:
            if isinstance(origins, str):
                raise ValueError("allowed_origins is a sequence of origins, not one string")
            object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins or ()))
            OriginAllowList(self.allowed_origins or ())  # ValueError for a bad pattern
