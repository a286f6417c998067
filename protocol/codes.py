"""WebSocket close codes (PROTOCOL.md section 9, RFC 6455 section 7.4).

One :class:`CloseCode` enum for every close the core sends, reports or counts. Being an
``IntEnum``, a member compares and hashes as its number, so codes read off the wire (a
peer's close frame, an ASGI ``websocket.disconnect``) and members are interchangeable as
dictionary keys and in comparisons.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


class CloseCode(IntEnum):
    """The close codes agentcast uses."""

    #: Normal closure.
    NORMAL = 1000
    #: The server is shutting down (clients reconnect with jittered back-off).
    GOING_AWAY = 1001
    #: An RFC 6455 framing violation.
    PROTOCOL_ERROR = 1002
    #: A close frame without a status code (RFC 6455 7.1.5); never sent.
    NO_STATUS = 1005
    #: The transport ended without a close frame; never sent on the wire.
    ABNORMAL = 1006
    #: Invalid UTF-8 in a text message.
    INVALID_DATA = 1007
    #: Policy: rate-limit abuse, origin not allowed, authentication required.
    POLICY = 1008
    #: A message over ``max_message_size``.
    TOO_BIG = 1009
    #: An unexpected error in the server.
    INTERNAL_ERROR = 1011
    #: At the connection limit, or a client too slow to keep up.
    TRY_AGAIN_LATER = 1013
    #: No frame from the client within ``heartbeat_timeout``.
    HEARTBEAT_TIMEOUT = 4000
    #: The token's ``exp`` passed without a refresh.
    TOKEN_EXPIRED = 4001
