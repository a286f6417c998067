"""The hub of one process in a cluster (PROTOCOL.md 10).

A :class:`ClusterHub` is a :class:`~agentcast.protocol.hub.Hub` whose broadcasts and
presence go through the cluster's log (:mod:`.cluster` holds the log's rules, the adapter
carries it). What comes back from the log, in log order, is delivered here under the ids
the log gave, kept in the process's :class:`~.cluster_history.ClusterHistory` for clients
that resume, and an agent's status recorded for the ``agent_state`` snapshot, so every
process holds the same history and the same agent states.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from .auth import ChannelAuthorizer
from .cluster import MessageEntry, prepare
from .cluster_agents import RowsRead
from .cluster_history import ClusterHistory
from .cluster_state import PresenceChange
from .config import Settings
from .history import HistoryEntry
from .hub import Hub, Published, _User
from .messages import (
    AgentStatus,
    ChatMessage,
    Notification,
    PreparedMessage,
    PresenceStatus,
    encode_data,
)
from .scope import EVERYONE, Scope

__all__ = ["ClusterHub", "ClusterLink"]


class ClusterLink(Protocol):
    """What a :class:`ClusterHub` needs from the adapter that carries the log."""

    def publish(
        self,
        item: AgentStatus | ChatMessage | Notification,
        *,
        now: float,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Published:
        """Send a broadcast to the cluster, with its scope (it comes back through the
        log)."""
        ...

    def local_status_changed(self, user_id: str, status: PresenceStatus) -> None:
        """This process's own status for *user_id* changed (``offline``: it holds none)."""
        ...

    def cluster_presence(self) -> dict[str, PresenceStatus]:
        """Every user online somewhere in the cluster (``presence_state``)."""
        ...

    def health(self) -> dict[str, object]:
        """The cluster part of ``/healthz``: ``status`` and a ``cluster`` object."""
        ...


class ClusterHub(Hub):
    """A hub whose broadcasts and presence go through a cluster-wide log.

    Publishing hands the payload to the :class:`ClusterLink`, and the local aggregate of
    a user's presence (strongest over this process's connections, ``offline`` after the
    grace) goes to the link instead of to the clients. What comes back through the log,
    in log order, is delivered with :meth:`deliver_entry` and
    :meth:`deliver_presence_changes`, under the ids the log gave. ``presence_state`` is
    the cluster's: what those changes told this process, so a snapshot and the
    ``user_presence`` messages after it make the cluster's true set.
    """

    def __init__(
        self,
        settings: Settings | None,
        link: ClusterLink,
        *,
        authorizer: ChannelAuthorizer | None = None,
    ) -> None:
        settings = settings if settings is not None else Settings()
        history = ClusterHistory(settings.history_size, settings.history_ttl)
        super().__init__(settings, authorizer=authorizer, history=history)
        #: The same object as :attr:`history`, with what only a cluster's has: filled
        #: from the log at start, told of every id and of gaps.
        self.cluster_history = history
        self.link = link

    def publish(
        self,
        item: AgentStatus | ChatMessage | Notification,
        *,
        now: float,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Published:
        return self.link.publish(item, now=now, wall=wall, scope=scope)

    def presence(self) -> dict[str, PresenceStatus]:
        return self.link.cluster_presence()

    def local_presence(self) -> dict[str, PresenceStatus]:
        """This process's own status of every user it holds (grace periods included)."""
        return {uid: u.status for uid, u in self._users.items() if u.status != "offline"}

    def health(self) -> dict[str, object]:
        body = super().health()
        cluster = self.link.health()
        degraded = "degraded" in (body["status"], cluster.get("status"))
        return {**body, **cluster, "status": "degraded" if degraded else "ok"}

    def deliver_entry(self, entry: MessageEntry, message_id: str, now: float, wall: float) -> int:
        """Deliver a broadcast from the log under *message_id* to the local connections
        its scope (which travelled with it) admits, through the hub's fan-out, the one
        place the scope rule is applied; keep it for resuming clients, and record an
        agent's status for ``agent_state``."""
        message = prepare(entry, message_id)
        if entry.type == "agent_status":
            status = AgentStatus.from_data(json.loads(entry.data))
            self.agent_states.record(status, entry.scope, now)
        self.history.append(HistoryEntry(message_id, message, now))
        return self._fan_out(message, now, wall)

    def load_agent_states(self, read: RowsRead, now: float) -> None:
        """Record the agent states kept beside the log (read when joining), oldest first,
        as of when they were published."""
        for row in read.rows:
            self.agent_states.record(row.status, row.scope, now - row.age)

    def deliver_presence_changes(
        self, changes: Sequence[PresenceChange], now: float, wall: float
    ) -> int:
        """Send ``user_presence`` for cluster-wide *changes* (consecutive in the log, in
        log order) to every local connection, as one delivery: one write per connection
        for all of them, as the presence window does in one process. Each keeps its own
        message and id. Every change of the cluster's presence comes through here, so the
        ``presence_state`` snapshot follows them: each user's entry is encoded once per
        change, and the snapshot joined once until the next change."""
        entries = self._entries
        messages = []
        for change in changes:
            user_id, status = change.user_id, change.status
            self.cluster_history.seen(str(change.id))
            if status == "offline":
                entries.pop(user_id, None)
            else:
                entries[user_id] = encode_data({"userId": user_id, "status": status})
            messages.append(
                PreparedMessage.build(
                    "user_presence", {"userId": user_id, "status": status}, wall, str(change.id)
                )
            )
        if not messages:
            return 0
        self._snapshot = None
        return self._fan_out(PreparedMessage.group(messages), now, wall)

    def _set_status(
        self, user_id: str, user: _User, status: PresenceStatus, now: float, wall: float
    ) -> None:
        if status == user.status:
            return
        user.status = status
        self.link.local_status_changed(user_id, status)
        if status == "offline" and not user.sessions:
            # Gone: the cluster's log carries the change; this process forgets the user
            # (the base hub does so once it has announced the change itself).
            del self._users[user_id]
