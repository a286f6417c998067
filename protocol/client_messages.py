"""Server messages as a client sees them: typed, parsed from one text frame, never raising.

:func:`parse_server_message` turns the JSON text of one server message (PROTOCOL.md
sections 3 and 4) into one of the frozen dataclasses below. A message of a type this
version does not know, or a known type whose ``data`` does not have the documented shape,
becomes :class:`Unknown` (with the decoded object), so a newer server never breaks an
older client. Every message keeps the envelope's ``timestamp`` and, for broadcasts, the
``id`` a client resumes from (section 7); ``raw`` is the whole decoded envelope.

These are the client's view. The server-side payload validators of the same names live
in :mod:`agentcast.protocol.messages`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "AgentState",
    "AgentStatus",
    "AuthResult",
    "ChatMessage",
    "Error",
    "Notification",
    "Ping",
    "Pong",
    "PresenceState",
    "Resume",
    "ServerMessage",
    "Subscribed",
    "Unknown",
    "Unsubscribed",
    "UserPresence",
    "parse_server_message",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    #: The envelope's ``timestamp`` (ISO 8601), or ``None`` if the server sent none.
    timestamp: str | None = None
    #: The broadcast id (PROTOCOL.md 3), the point a client resumes from; ``None`` for
    #: messages that carry none.
    id: str | None = None
    #: The whole decoded envelope, as received.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult(_Base):
    """``auth``: the verdict on the token (first message), or on an in-band refresh."""

    type: ClassVar[str] = "auth"
    success: bool
    user_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(_Base):
    """The server's heartbeat ``ping``; the client session answers it with ``pong``."""

    type: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(_Base):
    """The answer to the client's ``ping``."""

    type: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus(_Base):
    type: ClassVar[str] = "agent_status"
    agent_name: str
    state: str
    current_task: str | None = None
    progress: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage(_Base):
    """``chat_message``; ``sent_at`` is the message's own ``data.timestamp``."""

    type: ClassVar[str] = "chat_message"
    conversation_id: str
    message_id: str
    content: str
    sender: str
    sent_at: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification(_Base):
    type: ClassVar[str] = "notification"
    level: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UserPresence(_Base):
    """A user's aggregated presence changed."""

    type: ClassVar[str] = "user_presence"
    user_id: str
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceState(_Base):
    """Who is online when the connection authenticates: user id to status."""

    type: ClassVar[str] = "presence_state"
    users: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentState(_Base):
    """The latest status of every agent, sent once after ``presence_state``."""

    type: ClassVar[str] = "agent_state"
    agents: tuple[AgentStatus, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(_Base):
    """The end of a resume replay (PROTOCOL.md 7). ``complete`` false: messages were lost
    (history did not reach back, or the server restarted): reload your state."""

    type: ClassVar[str] = "resume"
    complete: bool
    replayed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(_Base):
    """``error``: the server's answer to a message it refused; the connection stays open."""

    type: ClassVar[str] = "error"
    error: str
    code: str | None = None
    #: The channel a subscription error is about (``invalid_channel``, ...).
    channel: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed(_Base):
    """``subscribed``: the connection receives *channel*'s messages now. After a
    ``subscribe`` with ``since`` (PROTOCOL.md 4a), ``complete`` says whether the missed
    messages were all replayed before it (``replayed`` of them); ``False``: the server
    could not tell what was missed, reload what you derive from that channel. ``None``
    without ``since``."""

    type: ClassVar[str] = "subscribed"
    channel: str
    complete: bool | None = None
    replayed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribed(_Base):
    type: ClassVar[str] = "unsubscribed"
    channel: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unknown(_Base):
    """A message this client does not know, or whose ``data`` has an unexpected shape
    (``kind`` is its ``type``, ``""`` if it had none)."""

    type: ClassVar[str] = "unknown"
    kind: str
    data: Any = None


ServerMessage = (
    AuthResult
    | Ping
    | Pong
    | AgentStatus
    | ChatMessage
    | Notification
    | UserPresence
    | PresenceState
    | AgentState
    | Resume
    | Error
    | Subscribed
    | Unsubscribed
    | Unknown
)


class _Shape(Exception):
    """``data`` does not have the documented shape."""


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _Shape(key)
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _Shape(key)
    return value


def _obj(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _Shape("data")
    return data


def _agent_status(data: Any, common: dict[str, Any]) -> AgentStatus:
    d = _obj(data)
    progress = d.get("progress")
    if progress is not None and (
        isinstance(progress, bool) or not isinstance(progress, int | float)
    ):
        raise _Shape("progress")
    return AgentStatus(
        agent_name=_str(d, "agentName"),
        state=_str(d, "state"),
        current_task=_opt_str(d, "currentTask"),
        progress=progress,
        **common,
    )


def _build(kind: str, data: Any, common: dict[str, Any]) -> ServerMessage:
    if kind == "auth":
        d = _obj(data)
        success = d.get("success")
        if not isinstance(success, bool):
            raise _Shape("success")
        return AuthResult(
            success=success, user_id=_opt_str(d, "userId"), error=_opt_str(d, "error"), **common
        )
    if kind == "ping":
        return Ping(**common)
    if kind == "pong":
        return Pong(**common)
    if kind == "agent_status":
        return _agent_status(data, common)
    if kind == "chat_message":
        d = _obj(data)
        return ChatMessage(
            conversation_id=_str(d, "conversationId"),
            message_id=_str(d, "messageId"),
            content=_str(d, "content"),
            sender=_str(d, "sender"),
            sent_at=_opt_str(d, "timestamp"),
            **common,
        )
    if kind == "notification":
        d = _obj(data)
        return Notification(level=_str(d, "level"), message=_str(d, "message"), **common)
    if kind == "user_presence":
        d = _obj(data)
        return UserPresence(user_id=_str(d, "userId"), status=_str(d, "status"), **common)
    if kind == "presence_state":
        users = _obj(data).get("users")
        if not isinstance(users, list):
            raise _Shape("users")
        table = {}
        for entry in users:
            e = _obj(entry)
            table[_str(e, "userId")] = _str(e, "status")
        return PresenceState(users=table, **common)
    if kind == "agent_state":
        agents = _obj(data).get("agents")
        if not isinstance(agents, list):
            raise _Shape("agents")
        return AgentState(agents=tuple(_agent_status(a, {}) for a in agents), **common)
    if kind == "resume":
        d = _obj(data)
        complete = d.get("complete")
        replayed = d.get("replayed")
        if not isinstance(complete, bool):
            raise _Shape("complete")
        if replayed is not None and (isinstance(replayed, bool) or not isinstance(replayed, int)):
            raise _Shape("replayed")
        return Resume(complete=complete, replayed=replayed, **common)
    if kind == "error":
        d = _obj(data)
        return Error(
            error=_str(d, "error"),
            code=_opt_str(d, "code"),
            channel=_opt_str(d, "channel"),
            **common,
        )
    if kind in ("subscribed", "unsubscribed"):
        d = _obj(data)
        if kind == "unsubscribed":
            return Unsubscribed(channel=_str(d, "channel"), **common)
        complete = d.get("complete")
        if complete is not None and not isinstance(complete, bool):
            raise _Shape("complete")
        replayed = d.get("replayed")
        if replayed is not None and (isinstance(replayed, bool) or not isinstance(replayed, int)):
            raise _Shape("replayed")
        return Subscribed(
            channel=_str(d, "channel"), complete=complete, replayed=replayed, **common
        )
    raise _Shape("type")


def parse_server_message(text: str) -> ServerMessage:
    """The typed message in *text* (one server text frame). Never raises: anything this
    client cannot read is an :class:`Unknown`."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return Unknown(kind="", data=text)
    if not isinstance(obj, dict):
        return Unknown(kind="", data=obj)
    kind = obj.get("type")
    timestamp = obj.get("timestamp")
    message_id = obj.get("id")
    common: dict[str, Any] = {
        "timestamp": timestamp if isinstance(timestamp, str) else None,
        "id": message_id if isinstance(message_id, str) else None,
        "raw": obj,
    }
    data = obj.get("data")
    if not isinstance(kind, str):
        return Unknown(kind="", data=data, **common)
    try:
        return _build(kind, data, common)
    except _Shape:
        return Unknown(kind=kind, data=data, **common)
