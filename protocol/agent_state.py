"""The latest state of every agent, for late joiners: the ``agent_state`` snapshot.

PROTOCOL.md section 4: right after ``presence_state``, every authenticated connection
receives ``{"type":"agent_state","data":{"agents":[…]}}``, the latest ``agent_status``
data of every agent, in the order of their last update, so a dashboard opened late shows
every agent's current state without waiting for each one to report again.

:class:`AgentStates` keeps that state, pure (no clock: time comes in as ``now``):

* :meth:`AgentStates.record` takes one published status and its
  :class:`~agentcast.protocol.scope.Scope`. Statuses are kept per agent **and scope**:
  a status published to a channel does not hide, from a connection outside that channel,
  the status it did receive earlier. The latest update of a key wins and moves it to the
  end of the order.
* :meth:`AgentStates.snapshot` is the ``agent_state`` message for one connection (its
  user and its subscriptions): of the statuses whose scope
  :func:`~agentcast.protocol.scope.receives` admits for it, the latest per agent name.
* Entries not updated for ``ttl`` seconds are forgotten; at most ``max_entries`` are
  kept, the one updated longest ago dropped first (:attr:`AgentStates.evicted`).
* A snapshot is encoded once per distinct set of visible scopes (every connection of a
  deployment without scopes shares one), reused while nothing changed, for at most
  :data:`SNAPSHOT_REUSE` seconds, so that its ``timestamp`` is never older than that. A
  storm of late joiners costs one encoding, and the same frame bytes are queued on all
  of them.

It is the state a backplane feeds: every ``agent_status`` delivered in this process,
published here or arriving from another process (``Hub.deliver_local``,
``ClusterHub.deliver_entry``), is recorded by the hub; a process of a cluster that starts
later records the cluster's stored state (:mod:`.cluster_agents`, oldest first) before it
serves clients.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from .messages import AgentStatus, PreparedMessage
from .scope import EVERYONE, Scope, receives

__all__ = [
    "DEFAULT_AGENT_STATE_MAX",
    "DEFAULT_AGENT_STATE_TTL",
    "SNAPSHOT_REUSE",
    "AgentStates",
]

#: An agent that has not reported for a day is gone (PROTOCOL.md 4, ``agent_state_ttl``).
DEFAULT_AGENT_STATE_TTL: Final = 24 * 3600.0
#: Entries kept (an agent publishing under several scopes holds one per scope): about
#: 100 bytes each on the wire, so a full snapshot is about 1 MB.
DEFAULT_AGENT_STATE_MAX: Final = 10_000
#: An encoded snapshot is reused for at most this many seconds (its ``timestamp`` says
#: when it was built); within it, a burst of late joiners shares one encoding.
SNAPSHOT_REUSE: Final = 1.0
#: Encoded snapshots kept at once (one per distinct set of visible scopes; beyond this
#: the cache starts afresh, which costs encodings, never correctness).
_CACHE_SIZE: Final = 1024


class _Entry:
    __slots__ = ("at", "data", "name", "scope")

    def __init__(self, name: str, scope: Scope, data: Mapping[str, object], at: float) -> None:
        self.name = name
        self.scope = scope
        self.data = data
        self.at = at


class AgentStates:
    """The latest ``agent_status`` of each agent (per scope), and the snapshots of it."""

    __slots__ = (
        "_by_channel",
        "_by_user",
        "_cache",
        "_entries",
        "_scopes",
        "encodings",
        "evicted",
        "expired",
        "max_entries",
        "ttl",
    )

    def __init__(
        self, ttl: float = DEFAULT_AGENT_STATE_TTL, max_entries: int = DEFAULT_AGENT_STATE_MAX
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # (agent name, scope) -> entry, in the order of their last update.
        self._entries: dict[tuple[str, Scope], _Entry] = {}
        # How many entries hold each scope, and the scoped ones indexed so that the
        # scopes a connection sees are found from its user and subscriptions.
        self._scopes: dict[Scope, int] = {}
        self._by_channel: dict[str, dict[Scope, None]] = {}
        self._by_user: dict[str, dict[Scope, None]] = {}  # audience-only scopes
        # Visible scopes -> (the encoded snapshot, when it was built).
        self._cache: dict[frozenset[Scope], tuple[PreparedMessage, float]] = {}
        #: Entries dropped because the map was full (oldest update first), for metrics.
        self.evicted = 0
        #: Entries dropped because they were not updated for ``ttl`` seconds.
        self.expired = 0
        #: Snapshots encoded (each one shared by every connection that sees the same).
        self.encodings = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- feeding it -----------------------------------------------------------------------

    def record(self, status: AgentStatus, scope: Scope, now: float) -> None:
        """*status*, published to *scope* at *now*, is its agent's latest under that scope.

        Call it in the order the statuses were delivered (*now* not decreasing).
        """
        self.expire(now)
        key = (status.agent_name, scope)
        old = self._entries.pop(key, None)
        if old is None:
            self._add_scope(scope)
        self._entries[key] = _Entry(status.agent_name, scope, status.to_data(), now)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
            self.evicted += 1
        self._cache.clear()

    def expire(self, now: float) -> None:
        """Forget the entries not updated for ``ttl`` seconds by *now*."""
        entries = self._entries
        dropped = False
        while entries:
            key = next(iter(entries))
            if entries[key].at + self.ttl > now:
                break
            self._drop(key)
            self.expired += 1
            dropped = True
        if dropped:
            self._cache.clear()

    # -- reading it -----------------------------------------------------------------------

    def visible_scopes(self, user_id: str, subscriptions: Collection[str]) -> frozenset[Scope]:
        """The scopes of the kept statuses that a connection of *user_id* subscribed to
        *subscriptions* receives: the indexes find the candidates, the rule
        :func:`~agentcast.protocol.scope.receives` decides."""
        candidates: list[Scope] = [EVERYONE] if EVERYONE in self._scopes else []
        candidates.extend(self._by_user.get(user_id, ()))
        by_channel = self._by_channel
        for channel in subscriptions:
            candidates.extend(by_channel.get(channel, ()))
        return frozenset(s for s in candidates if receives(s, user_id, subscriptions))

    def agents(self, user_id: str, subscriptions: Collection[str], now: float) -> list[object]:
        """The ``agents`` of the snapshot for this connection (see :meth:`snapshot`)."""
        self.expire(now)
        return self._agents(self.visible_scopes(user_id, subscriptions))

    def snapshot(
        self, user_id: str, subscriptions: Collection[str], now: float, wall: float
    ) -> PreparedMessage:
        """The ``agent_state`` message for a connection of *user_id* subscribed to
        *subscriptions* at *now* (monotonic; *wall* is its ``timestamp``): the latest
        status of every agent it would have received, in the order of their last update.
        Built once per distinct set of visible scopes and reused while nothing changed
        (for at most :data:`SNAPSHOT_REUSE` seconds)."""
        self.expire(now)
        visible = self.visible_scopes(user_id, subscriptions)
        cached = self._cache.get(visible)
        if cached is not None and now - cached[1] < SNAPSHOT_REUSE:
            return cached[0]
        message = PreparedMessage.build("agent_state", {"agents": self._agents(visible)}, wall)
        self.encodings += 1
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[visible] = (message, now)
        return message

    def _agents(self, visible: frozenset[Scope]) -> list[object]:
        latest: dict[str, Mapping[str, object]] = {}
        for entry in self._entries.values():
            if entry.scope in visible:
                latest.pop(entry.name, None)  # a later update moves the agent to the end
                latest[entry.name] = entry.data
        return list(latest.values())

    # -- the scope indexes ----------------------------------------------------------------

    def _add_scope(self, scope: Scope) -> None:
        count = self._scopes.get(scope, 0)
        self._scopes[scope] = count + 1
        if count:
            return
        if scope.channel is not None:
            self._by_channel.setdefault(scope.channel, {})[scope] = None
        elif scope.user_ids is not None:
            for user_id in scope.user_ids:
                self._by_user.setdefault(user_id, {})[scope] = None

    def _drop(self, key: tuple[str, Scope]) -> None:
        scope = self._entries.pop(key).scope
        count = self._scopes.pop(scope) - 1
        if count:
            self._scopes[scope] = count
            return
        if scope.channel is not None:
            _unindex(self._by_channel, scope.channel, scope)
        elif scope.user_ids is not None:
            for user_id in scope.user_ids:
                _unindex(self._by_user, user_id, scope)


def _unindex(index: dict[str, dict[Scope, None]], name: str, scope: Scope) -> None:
    scopes = index[name]
    del scopes[scope]
    if not scopes:
        del index[name]
