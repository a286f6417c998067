"""agentcast's Sans-IO protocol core: pure state machines, no sockets, no clock.

Layers, each usable without the one above it:

* :class:`WebSocketTransport`: HTTP/1.1 (h11) and RFC 6455 framing (wsproto) for one
  server-side connection;
* :class:`Session`: the message layer of PROTOCOL.md (auth outcome, heartbeat, rate
  limit, validation, presence) over any :class:`Sink`;
* :class:`Hub`: every session, the delivery rules, per-user presence and the in-process
  publishing API;
* :class:`Upgrade`: the decisions between an upgrade request and an open session
  (admission, token, verdict), for any adapter, whoever does the HTTP upgrade;
* :class:`ServerConnection`: the first two composed, what the reference server runs;
  it also serves the session as Server-Sent Events (``GET /events``,
  :mod:`agentcast.protocol.eventstream`, encoder in :mod:`agentcast.protocol.sse`).

Time enters only as arguments: a monotonic ``now`` for deadlines and a wall-clock
``wall`` for the ``timestamp`` field.
"""

from .agent_state import AgentStates
from .answers import HttpAnswer
from .auth import (
    Authenticator,
    AuthFailure,
    AuthResult,
    ChannelAuthorizer,
    DevAuthenticator,
    Identity,
    StaticAuthenticator,
)
from .codes import CloseCode
from .config import Settings
from .connection import ServerConnection
from .errors import LocalProtocolError, ProtocolError
from .events import (
    AuthRequested,
    BytesReceived,
    ConnectionClosed,
    Event,
    HttpRequest,
    TextReceived,
    UpgradeRequested,
)
from .hub import Hub, Member, Published
from .messages import (
    AgentStatus,
    ChatMessage,
    ErrorCode,
    MessageError,
    Notification,
    PreparedMessage,
    decode_client_message,
    encode_server_message,
)
from .routing import Route, route
from .scope import EVERYONE, ChannelGrant, PendingVerdict, Scope
from .session import Host, Session, Sink
from .stats import Stats
from .timestamps import format_timestamp
from .upgrade import SUBPROTOCOL, Upgrade, extract_token
from .websocket import TransportState, WebSocketTransport

__all__ = [
    "EVERYONE",
    "SUBPROTOCOL",
    "AgentStates",
    "AgentStatus",
    "AuthFailure",
    "AuthRequested",
    "AuthResult",
    "Authenticator",
    "BytesReceived",
    "ChannelAuthorizer",
    "ChannelGrant",
    "ChatMessage",
    "CloseCode",
    "ConnectionClosed",
    "DevAuthenticator",
    "ErrorCode",
    "Event",
    "Host",
    "HttpAnswer",
    "HttpRequest",
    "Hub",
    "Identity",
    "LocalProtocolError",
    "Member",
    "MessageError",
    "Notification",
    "PendingVerdict",
    "PreparedMessage",
    "ProtocolError",
    "Published",
    "Route",
    "Scope",
    "ServerConnection",
    "Session",
    "Settings",
    "Sink",
    "StaticAuthenticator",
    "Stats",
    "TextReceived",
    "TransportState",
    "Upgrade",
    "UpgradeRequested",
    "WebSocketTransport",
    "decode_client_message",
    "encode_server_message",
    "extract_token",
    "format_timestamp",
    "route",
]
