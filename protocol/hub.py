"""The hub: every session of one process, the delivery rules and per-user presence.

It is the in-process API of PROTOCOL.md section 8 (the seed's ``wsManager``):
:meth:`Hub.broadcast_agent_status`, :meth:`Hub.broadcast_chat_message`,
:meth:`Hub.send_notification`, :meth:`Hub.clients_count` and
:meth:`Hub.authenticated_clients_count`. Like the rest of the core it reads no clock:
publishing takes the monotonic ``now`` and the wall-clock ``wall`` (the reference server's
``Server`` object supplies both). A broadcast is encoded and framed once, and the same
bytes object is queued on every recipient; nothing here waits for a socket.

Presence (section 4) is per user, aggregated over that user's connections: the strongest
connection status wins (``busy`` > ``online`` > ``away`` > ``offline``); when the last
connection goes, the user turns ``offline`` only after ``presence_grace`` seconds, so a
reload does not flap. A ``user_presence`` message goes out only when the aggregate changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .admission import Admission
from .config import Settings
from .messages import (
    AgentState,
    AgentStatus,
    ChatMessage,
    Notification,
    NotificationLevel,
    PreparedMessage,
    PresenceStatus,
)
from .stats import Stats

__all__ = ["Hub", "Member", "Published", "Stats"]

_RANK: dict[str, int] = {"offline": 0, "away": 1, "online": 2, "busy": 3}


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish did: the broadcast ``id`` and how many local connections got it."""

    id: str
    delivered: int


class Member(Protocol):
    """What the hub needs of a session: who it is, its presence, and a way to queue a
    message. :class:`~agentcast.protocol.Session` is one; the hub never imports it."""

    @property
    def user_id(self) -> str | None:
        """The authenticated user, or ``None``."""
        ...

    @property
    def presence(self) -> PresenceStatus:
        """This connection's own presence status."""
        ...

    def deliver(self, message: PreparedMessage, now: float, wall: float) -> bool:
        """Queue *message*; ``False`` if the member is closed or was dropped as too slow."""
        ...


class _User:
    __slots__ = ("sessions", "status")

    def __init__(self) -> None:
        self.sessions: dict[Member, None] = {}
        self.status: PresenceStatus = "offline"


class Hub:
    """Registry of sessions and users; delivery rules; presence; broadcast ids."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.stats = Stats()
        #: Origin check, connection limits and rate, asked at every upgrade.
        self.admission = Admission(self.settings)
        self._sessions: dict[Member, None] = {}
        self._authenticated: dict[Member, None] = {}
        self._users: dict[str, _User] = {}
        self._leaving: dict[str, float] = {}  # user id -> when it turns offline
        self._seq = 0
        self._fanning_out = False
        self._deferred: list[tuple[Member, float, float]] = []

    # -- the in-process API (PROTOCOL.md 8) ---------------------------------------------

    def clients_count(self) -> int:
        """Open WebSocket connections, authenticated or not."""
        return len(self._sessions)

    def authenticated_clients_count(self) -> int:
        return len(self._authenticated)

    def broadcast_agent_status(
        self,
        agent_name: str,
        state: AgentState,
        current_task: str | None = None,
        progress: float | None = None,
        *,
        now: float,
        wall: float,
    ) -> Published:
        """Send ``agent_status`` to every authenticated connection."""
        status = AgentStatus(
            agent_name=agent_name, state=state, current_task=current_task, progress=progress
        )
        return self.publish(status, now=now, wall=wall)

    def broadcast_chat_message(
        self,
        conversation_id: str,
        message_id: str,
        content: str,
        sender: str,
        timestamp: str | None = None,
        *,
        now: float,
        wall: float,
    ) -> Published:
        """Send ``chat_message`` to every authenticated connection.

        ``timestamp`` (ISO 8601) defaults to the publishing time.
        """
        message = ChatMessage(
            conversation_id=conversation_id,
            message_id=message_id,
            content=content,
            sender=sender,
            timestamp=timestamp,
        )
        return self.publish(message, now=now, wall=wall)

    def send_notification(
        self,
        level: NotificationLevel,
        message: str,
        user_id: str | None = None,
        *,
        now: float,
        wall: float,
    ) -> Published:
        """Send ``notification`` to every authenticated connection, or, with *user_id*,
        to every connection of that user and nobody else."""
        return self.publish(
            Notification(level=level, message=message, user_id=user_id), now=now, wall=wall
        )

    def publish(
        self, item: AgentStatus | ChatMessage | Notification, *, now: float, wall: float
    ) -> Published:
        """Publish one validated payload (what the typed methods and the HTTP API use)."""
        return self.deliver_local(item, self._next_id(), now=now, wall=wall)

    def deliver_local(
        self,
        item: AgentStatus | ChatMessage | Notification,
        message_id: str,
        *,
        now: float,
        wall: float,
    ) -> Published:
        """Deliver *item* under *message_id* to this process's recipients, by the rules
        of PROTOCOL.md section 4, without issuing an id: the way in for a message whose
        id was given elsewhere (another process, through a backplane). *wall* is the
        publishing time, the message's ``timestamp``."""
        recipients: Iterable[Member]
        if isinstance(item, AgentStatus):
            message = PreparedMessage.build(
                "agent_status", item.to_data(), wall, message_id, key=item.agent_name
            )
            recipients = self._authenticated
        elif isinstance(item, ChatMessage):
            message = PreparedMessage.build("chat_message", item.to_data(wall), wall, message_id)
            recipients = self._authenticated
        else:
            message = PreparedMessage.build("notification", item.to_data(), wall, message_id)
            if item.user_id is None:
                recipients = self._authenticated
            else:
                user = self._users.get(item.user_id)
                recipients = user.sessions if user is not None else ()
        return Published(message_id, self._fan_out(message, recipients, now, wall))

    # -- time ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When a user in the presence grace period turns offline next, or ``None``."""
        return min(self._leaving.values()) if self._leaving else None

    def handle_timer(self, now: float, wall: float) -> None:
        """Turn offline every user whose grace period has ended by *now*."""
        due = [user_id for user_id, at in self._leaving.items() if at <= now]
        for user_id in due:
            del self._leaving[user_id]
            user = self._users.pop(user_id)
            self._set_status(user_id, user, "offline", now, wall)

    # -- presence -----------------------------------------------------------------------

    def presence(self) -> dict[str, PresenceStatus]:
        """Every user not offline and their aggregated status."""
        return {uid: u.status for uid, u in self._users.items() if u.status != "offline"}

    def _set_status(
        self, user_id: str, user: _User, status: PresenceStatus, now: float, wall: float
    ) -> None:
        if status == user.status:
            return
        user.status = status
        message = PreparedMessage.build(
            "user_presence", {"userId": user_id, "status": status}, wall, self._next_id()
        )
        self._fan_out(message, self._authenticated, now, wall)

    def _aggregate(self, user_id: str, now: float, wall: float) -> None:
        user = self._users[user_id]
        status = max((s.presence for s in user.sessions), key=_RANK.__getitem__)
        self._set_status(user_id, user, status, now, wall)

    # -- the seam for sessions (agentcast.protocol.session.Host) ------------------------

    def open_session(self, member: Member, now: float, wall: float) -> None:
        """A session opened. An authenticated one gets ``presence_state`` first, then
        counts for its user's presence; an unauthenticated one is only counted."""
        user_id = member.user_id
        if user_id is not None:
            snapshot = [{"userId": uid, "status": st} for uid, st in self.presence().items()]
            self.stats.messages_out["presence_state"] += 1
            member.deliver(
                PreparedMessage.build("presence_state", {"users": snapshot}, wall), now, wall
            )
        self._sessions[member] = None
        self.stats.opened_total += 1
        if user_id is None:
            return
        self._authenticated[member] = None
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User()
        self._leaving.pop(user_id, None)
        user.sessions[member] = None
        self._aggregate(user_id, now, wall)

    def presence_changed(self, member: Member, now: float, wall: float) -> None:
        """An authenticated session set its own presence status: re-aggregate its user."""
        user_id = member.user_id
        assert user_id is not None  # only an authenticated session has a presence to set
        self._aggregate(user_id, now, wall)

    def close_session(self, member: Member, now: float, wall: float) -> None:
        """A session closed (idempotent): it receives nothing more, and its user turns
        offline after the grace period if it was the user's last connection."""
        if member not in self._sessions:
            return
        if self._fanning_out:
            # Never reorder: a presence change caused by dropping a client during a
            # broadcast goes out after that broadcast has reached everyone.
            self._deferred.append((member, now, wall))
            return
        del self._sessions[member]
        if self._authenticated.pop(member, 0) is None:
            user_id = member.user_id
            assert user_id is not None
            user = self._users[user_id]
            del user.sessions[member]
            if user.sessions:
                self._aggregate(user_id, now, wall)
            elif self.settings.presence_grace > 0:
                self._leaving[user_id] = now + self.settings.presence_grace
            else:
                del self._users[user_id]
                self._set_status(user_id, user, "offline", now, wall)

    def _fan_out(
        self, message: PreparedMessage, recipients: Iterable[Member], now: float, wall: float
    ) -> int:
        delivered = 0
        nested = self._fanning_out
        self._fanning_out = True
        try:
            for session in list(recipients):
                if session.deliver(message, now, wall):
                    delivered += 1
        finally:
            self._fanning_out = nested
        self.stats.messages_out[message.kind] += delivered
        if not nested:
            while self._deferred:
                session, at, at_wall = self._deferred.pop(0)
                self.close_session(session, at, at_wall)
        return delivered

    def _next_id(self) -> str:
        # Opaque, strictly increasing as a string too (fixed width), PROTOCOL.md 3.
        self._seq += 1
        return f"{self._seq:016x}"
