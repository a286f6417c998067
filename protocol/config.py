"""Settings of the protocol core, with the reason for every default.

Adapters build one :class:`Settings` (from flags, environment or code) and hand it to
the :class:`~agentcast.protocol.Hub`; every connection reads its limits from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONFLATION_THRESHOLD",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_SEND_BUFFER",
    "DEFAULT_PATH",
    "DEFAULT_PRESENCE_GRACE",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RATE_LIMIT_STRIKES",
    "DEFAULT_RATE_LIMIT_WINDOW",
    "Settings",
]

DEFAULT_PATH = "/ws"  # seed: ws://localhost:3000/ws?token=...
DEFAULT_HEARTBEAT_INTERVAL = 30.0  # seed: "Server sends ping every 30 seconds"
DEFAULT_HEARTBEAT_TIMEOUT = 60.0  # seed: "Clients that don't respond within 60 seconds"
DEFAULT_PRESENCE_GRACE = 5.0  # PROTOCOL.md 4: a reload must not flap offline/online
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024  # PROTOCOL.md 6; client messages are tiny JSON objects
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
# How long we wait for the peer's half of the closing handshake before we drop the
# connection (websockets waits 10 s; a dashboard that is going away answers in a round trip).
DEFAULT_CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Limits and timings shared by every connection of a hub. Durations are seconds."""

    path: str = DEFAULT_PATH
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    presence_grace: float = DEFAULT_PRESENCE_GRACE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER
    #: Past this backlog (bytes), a pending ``agent_status`` is replaced by a newer one
    #: for the same agent instead of queued behind it (issue 6, conflation).
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
    #: Refuse the upgrade with 401 when the token is missing or invalid (PROTOCOL.md 2).
    require_auth: bool = False
    #: The publish API key. ``None``: the publish API answers loopback clients only.
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        for name in (
            "heartbeat_interval",
            "heartbeat_timeout",
            "rate_limit",
            "rate_limit_window",
            "handshake_timeout",
            "close_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.presence_grace < 0:
            raise ValueError("presence_grace must not be negative")
        for name in (
            "max_message_size",
            "max_send_buffer",
            "conflation_threshold",
            "rate_burst",
            "rate_limit_strikes",
            "max_header_size",
            "max_body_size",
            "max_batch",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
