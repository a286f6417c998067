"""Messages of PROTOCOL.md sections 3 and 4: validation, decoding and encoding.

Every message is one JSON object ``{"type", "data"?, "timestamp"?}`` in one text frame.
Client messages are decoded by :func:`decode_client_message`, which returns either a
typed message or the exact :class:`MessageError` answer of section 6. Server messages are
built once as a :class:`PreparedMessage` (JSON text, UTF-8 bytes and the unmasked
WebSocket frame) so that a broadcast costs one encoding, whatever the number of recipients.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal

from .scope import EVERYONE, Scope, is_channel
from .sse import encode_event
from .timestamps import format_timestamp, is_iso_timestamp

__all__ = [
    "AGENT_STATES",
    "BROADCAST_TYPES",
    "NOTIFICATION_LEVELS",
    "PRESENCE_STATUSES",
    "AgentStatus",
    "AuthRefresh",
    "ChatMessage",
    "ClientMessage",
    "ClientPing",
    "ClientPong",
    "ErrorCode",
    "MessageError",
    "Notification",
    "PreparedMessage",
    "PresenceUpdate",
    "Subscribe",
    "Unsubscribe",
    "decode_client_message",
    "encode_server_message",
    "frame_text",
]

AgentState = Literal["idle", "working", "stopped"]
NotificationLevel = Literal["info", "success", "warning", "error"]
PresenceStatus = Literal["online", "away", "busy", "offline"]

AGENT_STATES: Final = frozenset({"idle", "working", "stopped"})
NOTIFICATION_LEVELS: Final = frozenset({"info", "success", "warning", "error"})
PRESENCE_STATUSES: Final = frozenset({"online", "away", "busy", "offline"})
#: Types that carry an ``id`` and go to many connections (PROTOCOL.md 3).
BROADCAST_TYPES: Final = frozenset(
    {"agent_status", "chat_message", "notification", "user_presence"}
)
#: Types only the server may send (PROTOCOL.md 6: "Message type not allowed from client").
SERVER_ONLY_TYPES: Final = frozenset(
    {
        "agent_status",
        "chat_message",
        "notification",
        "error",
        "presence_state",
        "agent_state",
        "resume",
        "subscribed",
        "unsubscribed",
    }
)
#: Unknown types are echoed in the error, cut to this many characters (PROTOCOL.md 6).
MAX_ECHOED_TYPE = 64
#: Longest string field accepted from server code or the publish API. Generous (a chat
#: message can be long); the point is a clear error instead of a 100 MB frame.
MAX_FIELD_LENGTH = 256 * 1024


class ErrorCode(StrEnum):
    """Stable machine-readable ``code`` of an ``error`` message (PROTOCOL.md 4, [ext])."""

    INVALID_FORMAT = "invalid_format"
    UNKNOWN_TYPE = "unknown_type"
    NOT_ALLOWED = "not_allowed"
    INVALID_PRESENCE = "invalid_presence"
    NOT_AUTHENTICATED = "not_authenticated"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    INVALID_CHANNEL = "invalid_channel"
    FORBIDDEN_CHANNEL = "forbidden_channel"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"


@dataclass(frozen=True, slots=True)
class MessageError:
    """The ``error`` answer to a bad client message; the connection stays open.

    ``expected``, when set, shows the shape the server takes instead (an extra field of
    the answer's ``data``, beside ``error`` and ``code``, which stay fixed for clients
    that match on them). ``channel``: the channel a refused ``subscribe`` named, so that
    a client that asked for several knows which one was refused (only ever a valid
    channel name).
    """

    code: ErrorCode
    error: str
    expected: str | None = None
    channel: str | None = None

    def to_data(self) -> dict[str, str]:
        """The ``data`` of the ``error`` message."""
        data = {"error": self.error, "code": self.code.value}
        if self.expected is not None:
            data["expected"] = self.expected
        if self.channel is not None:
            data["channel"] = self.channel
        return data


INVALID_FORMAT: Final = MessageError(ErrorCode.INVALID_FORMAT, "Invalid message format")
NOT_ALLOWED: Final = MessageError(ErrorCode.NOT_ALLOWED, "Message type not allowed from client")
#: A client sets its presence with the bare status string as ``data``; a natural guess
#: such as ``"data": {"status": "away"}`` gets this answer, which names the real shape.
PRESENCE_SHAPE: Final = (
    '{"type":"user_presence","data":"away"}, data one of "online", "away", "busy", "offline"'
)
INVALID_PRESENCE: Final = MessageError(
    ErrorCode.INVALID_PRESENCE, "Invalid presence status", expected=PRESENCE_SHAPE
)
NOT_AUTHENTICATED: Final = MessageError(ErrorCode.NOT_AUTHENTICATED, "Not authenticated")
BINARY_NOT_SUPPORTED: Final = MessageError(
    ErrorCode.BINARY_NOT_SUPPORTED, "Binary messages are not supported"
)
RATE_LIMITED: Final = MessageError(ErrorCode.RATE_LIMITED, "Rate limit exceeded")
INVALID_CHANNEL: Final = MessageError(ErrorCode.INVALID_CHANNEL, "Invalid channel name")


def forbidden_channel(channel: str) -> MessageError:
    """The answer to a ``subscribe`` the connection may not make (PROTOCOL.md 4a)."""
    return MessageError(ErrorCode.FORBIDDEN_CHANNEL, "Channel not allowed", channel=channel)


def too_many_subscriptions(channel: str, limit: int) -> MessageError:
    """The answer to a ``subscribe`` past the per-connection limit (PROTOCOL.md 4a)."""
    return MessageError(
        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
        f"Too many subscriptions (at most {limit})",
        channel=channel,
    )


# -- client messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientPing:
    """``{"type":"ping"}``: answered with ``pong``."""


@dataclass(frozen=True, slots=True)
class ClientPong:
    """``{"type":"pong"}``: an answer to our ``ping``; liveness only."""


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """``{"type":"user_presence","data":"away"}``: this connection's own status."""

    status: PresenceStatus


@dataclass(frozen=True, slots=True)
class AuthRefresh:
    """``{"type":"auth","data":{"token":"…"}}``: an in-band token refresh ([ext])."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``{"type":"subscribe","data":{"channel":"…"}}`` (PROTOCOL.md 4a, [ext]); with
    ``"since":"<id>"``, the channel's messages after that id are replayed first."""

    channel: str
    since: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``{"type":"unsubscribe","data":{"channel":"…"}}`` (PROTOCOL.md 4a, [ext])."""

    channel: str


ClientMessage = ClientPing | ClientPong | PresenceUpdate | AuthRefresh | Subscribe | Unsubscribe


def decode_client_message(text: str) -> ClientMessage | MessageError:
    """Decode and validate one client text message (PROTOCOL.md sections 4 and 6).

    Never raises: any input is either a message or the section 6 error to answer with.
    Whether the sender may send it (authentication) is the session's decision.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and int-too-long; RecursionError a deep nest.
        return INVALID_FORMAT
    if not isinstance(obj, dict):
        return INVALID_FORMAT
    kind = obj.get("type")
    if not isinstance(kind, str):
        return INVALID_FORMAT
    if kind == "ping":
        return ClientPing()
    if kind == "pong":
        return ClientPong()
    if kind == "user_presence":
        status = obj.get("data")
        if isinstance(status, str) and status in PRESENCE_STATUSES:
            return PresenceUpdate(status)  # type: ignore[arg-type]
        return INVALID_PRESENCE
    if kind == "auth":
        data = obj.get("data")
        token = data.get("token") if isinstance(data, dict) else None
        if isinstance(token, str) and token:
            return AuthRefresh(token)
        return INVALID_FORMAT
    if kind == "subscribe":
        return _subscription(obj, Subscribe)
    if kind == "unsubscribe":
        return _subscription(obj, Unsubscribe)
    if kind in SERVER_ONLY_TYPES:
        return NOT_ALLOWED
    # A lone surrogate (JSON "\ud800") has no UTF-8 form: echo it as "?".
    echoed = kind[:MAX_ECHOED_TYPE].encode("utf-8", "replace").decode("utf-8")
    return MessageError(ErrorCode.UNKNOWN_TYPE, f"Unknown message type: {echoed}")


def _subscription(
    obj: dict[str, Any], kind: type[Subscribe | Unsubscribe]
) -> Subscribe | Unsubscribe | MessageError:
    """``data`` must be an object (else ``invalid_format``) naming a valid channel (else
    ``invalid_channel``). A ``subscribe``'s ``since``, if present and not ``null``, must
    be a string (else ``invalid_format``): whether it is an id the history knows is the
    history's to judge. Other fields of ``data`` are ignored."""
    data = obj.get("data")
    if not isinstance(data, dict):
        return INVALID_FORMAT
    channel = data.get("channel")
    if not is_channel(channel):
        return INVALID_CHANNEL
    assert isinstance(channel, str)
    if kind is Unsubscribe:
        return Unsubscribe(channel)
    since = data.get("since")
    if since is not None and not isinstance(since, str):
        return INVALID_FORMAT
    return Subscribe(channel, since)


# -- server broadcast payloads, validated --------------------------------------------------


def _string(data: Mapping[str, object], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if required and not value:
        raise ValueError(f"{key} must not be empty")
    if len(value) > MAX_FIELD_LENGTH:
        raise ValueError(f"{key} is longer than {MAX_FIELD_LENGTH} characters")
    _unicode(key, value)
    return value


def _unicode(key: str, value: str) -> None:
    """Refuse a string with a lone surrogate (JSON allows ``"\\ud800"``): it has no UTF-8
    form, so no text frame can carry it."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{key} is not valid Unicode (a lone surrogate)") from None


def _get(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key)


def _only(data: Mapping[str, object], allowed: frozenset[str]) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown field {str(key)[:MAX_ECHOED_TYPE]!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """``agent_status`` data. Construction validates; invalid values raise ``ValueError``."""

    agent_name: str
    state: AgentState
    current_task: str | None = None
    progress: float | None = None

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"agentName", "state", "currentTask", "progress"})

    def __post_init__(self) -> None:
        _string({"agentName": self.agent_name}, "agentName")
        if not isinstance(self.state, str) or self.state not in AGENT_STATES:
            raise ValueError("state must be one of idle, working, stopped")
        _string({"currentTask": self.current_task}, "currentTask", required=False)
        p = self.progress
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100
        ):
            raise ValueError("progress must be a number from 0 to 100")

    @classmethod
    def from_data(cls, data: object) -> AgentStatus:
        """Validate a ``data`` object as received by the publish API."""
        if not isinstance(data, Mapping):
            raise ValueError("agent status must be an object")
        _only(data, cls._FIELDS)
        return cls(
            agent_name=_get(data, "agentName"),
            state=_get(data, "state"),
            current_task=_get(data, "currentTask"),
            progress=_get(data, "progress"),
        )

    def to_data(self) -> dict[str, object]:
        data: dict[str, object] = {"agentName": self.agent_name, "state": self.state}
        if self.current_task is not None:
            data["currentTask"] = self.current_task
        if self.progress is not None:
            data["progress"] = self.progress
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """``chat_message`` data. ``timestamp`` ``None`` means "when it is published"."""

    conversation_id: str
    message_id: str
    content: str
    sender: str
    timestamp: str | None = None

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"conversationId", "messageId", "content", "sender", "timestamp"}
    )

    def __post_init__(self) -> None:
        _string({"conversationId": self.conversation_id}, "conversationId")
        _string({"messageId": self.message_id}, "messageId")
        if not isinstance(self.content, str):
            raise ValueError("content must be a string")
        if len(self.content) > MAX_FIELD_LENGTH:
            raise ValueError(f"content is longer than {MAX_FIELD_LENGTH} characters")
        _unicode("content", self.content)
        _string({"sender": self.sender}, "sender")
        if self.timestamp is not None and not is_iso_timestamp(self.timestamp):
            raise ValueError(
                "timestamp must be an ISO 8601 date-time such as 2025-12-26T13:00:00.000Z"
            )

    @classmethod
    def from_data(cls, data: object) -> ChatMessage:
        if not isinstance(data, Mapping):
            raise ValueError("chat message must be an object")
        _only(data, cls._FIELDS)
        return cls(
            conversation_id=_get(data, "conversationId"),
            message_id=_get(data, "messageId"),
            content=_get(data, "content"),
            sender=_get(data, "sender"),
            timestamp=_get(data, "timestamp"),
        )

    def to_data(self, wall: float) -> dict[str, object]:
        return {
            "conversationId": self.conversation_id,
            "messageId": self.message_id,
            "content": self.content,
            "sender": self.sender,
            "timestamp": self.timestamp if self.timestamp is not None else format_timestamp(wall),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """``notification`` data, and to whom: ``user_id`` ``None`` means every user."""

    level: NotificationLevel
    message: str
    user_id: str | None = None

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"level", "message", "userId"})

    def __post_init__(self) -> None:
        if not isinstance(self.level, str) or self.level not in NOTIFICATION_LEVELS:
            raise ValueError("level must be one of info, success, warning, error")
        _string({"message": self.message}, "message")
        _string({"userId": self.user_id}, "userId", required=False)
        if self.user_id == "":
            raise ValueError("userId must not be empty")

    @classmethod
    def from_data(cls, data: object) -> Notification:
        if not isinstance(data, Mapping):
            raise ValueError("notification must be an object")
        _only(data, cls._FIELDS)
        return cls(
            level=_get(data, "level"),
            message=_get(data, "message"),
            user_id=_get(data, "userId"),
        )

    def to_data(self) -> dict[str, object]:
        return {"level": self.level, "message": self.message}


# -- encoding ----------------------------------------------------------------------------

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


#: The JSON form of each message type seen (a handful of them).
_kinds: dict[str, str] = {}


def encode_server_message(
    kind: str, data: object, wall: float, message_id: str | None = None
) -> str:
    """The JSON text of a server message; ``data`` ``None`` leaves the field out."""
    if data is None and message_id is None:
        # Type and time only (a pong): the same text as the general case, without a dict.
        quoted = _kinds.get(kind)
        if quoted is None:
            quoted = _kinds[kind] = _dumps(kind)
        return f'{{"type":{quoted},"timestamp":"{format_timestamp(wall)}"}}'
    obj: dict[str, Any] = {"type": kind}
    if data is not None:
        obj["data"] = data
    obj["timestamp"] = format_timestamp(wall)
    if message_id is not None:
        obj["id"] = message_id
    return _dumps(obj)


def encode_data(data: object) -> str:
    """*data* as the JSON text a server message carries it in (for :func:`encode_with_data`)."""
    return _dumps(data)


def encode_with_data(kind: str, data_text: str, wall: float) -> str:
    """:func:`encode_server_message` around *data* encoded already (``data_text``, from
    :func:`encode_data`): a large snapshot is encoded once and stamped per recipient."""
    return (
        f'{{"type":{_dumps(kind)},"data":{data_text},"timestamp":{_dumps(format_timestamp(wall))}}}'
    )


def frame_text(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 5.2) as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class PreparedMessage:
    """A server message encoded once: its text, and the frame that carries it.

    Server frames are unmasked, so the same ``frame`` bytes object is queued on every
    recipient of a broadcast; the ASGI adapter sends ``text`` instead, and an event
    stream (PROTOCOL.md 11) the :attr:`event` bytes, encoded once too, at first use. A
    broadcast carries its :class:`~agentcast.protocol.scope.Scope` (PROTOCOL.md 4a)
    wherever it goes (delivery, history, another process); it is not part of the text.
    """

    __slots__ = ("_event", "count", "frame", "id", "key", "kind", "parts", "scope", "text")

    def __init__(
        self,
        kind: str,
        text: str,
        key: str | None = None,
        scope: Scope = EVERYONE,
        message_id: str | None = None,
    ) -> None:
        self.kind = kind
        self.text = text
        #: To whom the message goes, if it is a broadcast (PROTOCOL.md 4a).
        self.scope = scope
        #: Conflation key: a newer message with the same key may replace this one while
        #: it waits in a slow connection's backlog (``agent_status``: the agent's name).
        self.key = key
        #: The message's ``id`` (broadcasts), or ``None``.
        self.id = message_id
        self.frame = frame_text(text.encode())
        self._event: bytes | None = None
        #: The messages a group carries (:meth:`group`); empty for one message.
        self.parts: tuple[PreparedMessage, ...] = ()
        #: How many messages this is on the wire.
        self.count = 1

    @classmethod
    def group(cls, messages: Sequence[PreparedMessage]) -> PreparedMessage:
        """Messages of one kind queued as one: their frames back to back (still one
        message each on the wire), so that a recipient costs one ``deliver`` and one
        write for all of them. One message is returned as it is."""
        if len(messages) == 1:
            return messages[0]
        group = cls(messages[0].kind, "", scope=messages[0].scope)
        group.frame = b"".join(m.frame for m in messages)
        group.parts = tuple(messages)
        group.count = len(messages)
        return group

    @classmethod
    def build(
        cls,
        kind: str,
        data: object,
        wall: float,
        message_id: str | None = None,
        key: str | None = None,
        *,
        scope: Scope = EVERYONE,
    ) -> PreparedMessage:
        text = encode_server_message(kind, data, wall, message_id)
        return cls(kind, text, key, scope, message_id)

    @property
    def event(self) -> bytes:
        """The message as one Server-Sent Event: ``event:`` its type, ``id:`` its id (if
        it has one), ``data:`` the JSON text."""
        event = self._event
        if event is None:
            if self.parts:  # a group: each message an event of its own
                event = b"".join(part.event for part in self.parts)
            else:
                event = encode_event(self.text, event=self.kind, id=self.id)
            self._event = event
        return event

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"PreparedMessage({self.text!r})"
