"""The hub: every session of one process, the delivery rules and per-user presence.

It is the in-process API of PROTOCOL.md section 8 (the seed's ``wsManager``):
:meth:`Hub.broadcast_agent_status`, :meth:`Hub.broadcast_chat_message`,
:meth:`Hub.send_notification`, :meth:`Hub.clients_count` and
:meth:`Hub.authenticated_clients_count`. Like the rest of the core it reads no clock:
publishing takes the monotonic ``now`` and the wall-clock ``wall`` (the reference server's
``Server`` object supplies both). A broadcast is encoded and framed once, and the same
bytes object is queued on every recipient; nothing here waits for a socket.

Scoped delivery (section 4a): a broadcast may name an audience (``user_ids``) and a
``channel``. Connections are indexed by user and by channel, so a scoped broadcast costs
work in proportion to its recipients; which connections receive it is
:func:`~agentcast.protocol.scope.receives`, and every broadcast goes through
:meth:`Hub._fan_out`, whose recipients are exactly the connections that rule admits. Who
may subscribe is asked through :meth:`Hub.authorize`: the in-process authorizer if there
is one, else the identity's grant.

Every broadcast gets its id from the hub's :class:`~agentcast.protocol.history.History`,
which keeps it (with its scope) for clients that resume (section 7): :meth:`Hub.resume`
replays what a reconnecting session missed, through the same rule, and
:meth:`Hub.replay_channel` what one channel's new subscriber missed (a ``subscribe`` with
``since``, section 4a).

Late joiners (section 4): every ``agent_status`` delivered here is recorded in
:attr:`Hub.agent_states`, and a new authenticated connection receives its
``agent_state`` snapshot right after ``presence_state``, built with the same rule
(:class:`~agentcast.protocol.agent_state.AgentStates`).

Presence (section 4) is per user, aggregated over that user's connections: the strongest
connection status wins (``busy`` > ``online`` > ``away`` > ``offline``); when the last
connection goes, the user turns ``offline`` only after ``presence_grace`` seconds, so a
reload does not flap. A ``user_presence`` message goes out only when the aggregate changes,
and at most once per ``presence_interval`` per user: a change within the interval after
the last one sent is held, and when the interval ends the user's status *then* goes out
(if it differs from the last one sent). So the latest status always goes out, one user's
changes are never reordered, and one user's many tabs cannot make the server broadcast
faster than that. The wait is a deadline of :meth:`Hub.next_deadline`.

A presence window's changes reach the connections :attr:`Hub.presence_step` at a time:
one step at once, the next ones each at a call of :meth:`Hub.handle_timer` (due at once:
the adapter calls it again at its next pass, after reading other sockets), so that a
reconnect storm's window, sent to thousands, does not hold up every other connection for
one long step. Every group goes to the connections in the same order, one group after the
other, and any other broadcast first completes the groups still on their way: nothing is
reordered for a connection. A connection that opens meanwhile is not among the group's
recipients; its ``presence_state`` already holds the group's changes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from .accepting import AcceptGuard
from .admission import Admission
from .agent_state import AgentStates
from .auth import ChannelAuthorizer, Identity
from .config import Settings
from .history import MAX_ID_LENGTH, History, HistoryEntry, MemoryHistory
from .messages import (
    AgentState,
    AgentStatus,
    ChatMessage,
    Notification,
    NotificationLevel,
    PreparedMessage,
    PresenceStatus,
    encode_data,
    encode_with_data,
)
from .scope import EVERYONE, PendingVerdict, Scope, Verdict, receives
from .stats import Stats

__all__ = ["Hub", "Member", "Published", "Stats"]

_RANK: dict[str, int] = {"offline": 0, "away": 1, "online": 2, "busy": 3}

#: Connections a presence window's changes are delivered to in one step (each ~1 µs);
#: the others in the next steps (:attr:`Hub.presence_step`).
PRESENCE_STEP = 1024


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

    @property
    def subscriptions(self) -> Collection[str]:
        """The channels this connection is subscribed to (PROTOCOL.md 4a)."""
        ...

    def deliver(
        self, message: PreparedMessage, now: float, wall: float, *, counted: bool = True
    ) -> bool:
        """Queue *message*; ``False`` if the member is closed or was dropped as too slow.
        ``counted=False``: a snapshot the client needs whole, outside the slow-client
        limit."""
        ...


class _User:
    __slots__ = ("announced", "announced_at", "sessions", "status")

    def __init__(self) -> None:
        self.sessions: dict[Member, None] = {}
        #: The aggregated status now, and the last one sent (and when).
        self.status: PresenceStatus = "offline"
        self.announced: PresenceStatus = "offline"
        self.announced_at = -math.inf


class _Spread:
    """A presence group on its way to the connections that were authenticated when it
    was sent: *recipients*, of which the first *done* have it."""

    __slots__ = ("done", "message", "recipients")

    def __init__(self, message: PreparedMessage, recipients: list[Member]) -> None:
        self.message = message
        self.recipients = recipients
        self.done = 0


class Hub:
    """Registry of sessions and users; delivery rules; presence; broadcast ids."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        authorizer: ChannelAuthorizer | None = None,
        history: History | None = None,
        epoch: int = 0,
    ) -> None:
        """*history*: where ids come from and broadcasts are kept for resuming (default:
        an in-memory ring of ``settings.history_size`` / ``history_ttl``). *epoch*: the
        first part of every id of the default history; an adapter passes the wall clock
        in milliseconds at start, so that the ids of a restarted process sort after every
        id it issued before (PROTOCOL.md 7)."""
        self.settings = settings if settings is not None else Settings()
        #: Issues broadcast ids and keeps what a resuming client may have missed.
        self.history: History = (
            history
            if history is not None
            else MemoryHistory(self.settings.history_size, self.settings.history_ttl, epoch=epoch)
        )
        #: Who may subscribe to what, asked instead of the identity's grant (``None``: the
        #: grant decides). See :class:`~agentcast.protocol.scope.ChannelAuthorizer`.
        self.authorizer = authorizer
        self.stats = Stats()
        #: Origin check, connection limits and rate, asked at every upgrade.
        self.admission = Admission(self.settings)
        #: The adapter's accept() back-off and shortages of file descriptors (``/healthz``
        #: and ``/metrics`` report them).
        self.accepting = AcceptGuard()
        #: The latest status of every agent, for the ``agent_state`` snapshot a new
        #: connection receives (PROTOCOL.md 4). Every ``agent_status`` delivered here is
        #: recorded, whichever process published it.
        self.agent_states = AgentStates(
            self.settings.agent_state_ttl, self.settings.agent_state_max
        )
        self._sessions: dict[Member, None] = {}
        self._authenticated: dict[Member, None] = {}
        self._users: dict[str, _User] = {}
        self._channels: dict[str, dict[Member, None]] = {}  # channel -> subscribers
        self._subscriptions = 0
        self._leaving: dict[str, float] = {}  # user id -> when it turns offline
        self._due: dict[str, float] = {}  # user id -> when its held presence goes out
        # Users gone offline whose "offline" is held (kept out of _users, which every
        # arrival's presence_state walks).
        self._gone: dict[str, _User] = {}
        #: Called with the time a presence change was held until: :meth:`next_deadline`
        #: may now be earlier than what the adapter's hub timer waits for (compare, O(1)).
        #: ``None`` by default.
        self.on_deadline: Callable[[float], None] | None = None
        # Presence as the clients were told it (users not offline): presence_state is
        # this, encoded once until the next change goes out (_snapshot).
        self._visible: dict[str, PresenceStatus] = {}
        self._entries: dict[str, str] = {}  # the same, each user's entry JSON-encoded
        self._snapshot: str | None = None
        # Presence changes waiting for the presence window to end (user id -> latest
        # status), when they go out together, and when the current window ends.
        self._held: dict[str, PresenceStatus] = {}
        self._held_until: float | None = None
        self._window_end = -math.inf
        #: The batch being published (:meth:`publishing_batch`), or 0.
        self.batch = 0
        self._batches = 0
        self._fanning_out = False
        self._deferred: list[tuple[Member, float, float]] = []
        #: Connections a presence group is delivered to in one step (see the module's
        #: docstring); the next step is due at once (:meth:`next_deadline`).
        self.presence_step = PRESENCE_STEP
        # Presence groups on their way, oldest first, and when the next step is due.
        self._spreading: deque[_Spread] = deque()
        self._spread_at = 0.0

    # -- the in-process API (PROTOCOL.md 8) ---------------------------------------------

    def clients_count(self) -> int:
        """Open WebSocket connections, authenticated or not."""
        return len(self._sessions)

    def authenticated_clients_count(self) -> int:
        return len(self._authenticated)

    def health(self) -> dict[str, object]:
        """The body of ``/healthz``:
        ``{"status":"ok","clients":N,"authenticated":M,"unauthenticated":U}`` (the last,
        ``N - M``, so an operator sees token-less sockets pile up); while the server
        cannot accept connections (out of file descriptors: see
        :mod:`agentcast.protocol.accepting`), ``"status":"degraded"`` with
        ``"accepting":false`` and the reason."""
        clients = self.clients_count()
        authenticated = self.authenticated_clients_count()
        body: dict[str, object] = {
            "status": "ok",
            "clients": clients,
            "authenticated": authenticated,
            "unauthenticated": clients - authenticated,
        }
        shortage = self.accepting.shortage
        if shortage is not None:
            body["status"] = "degraded"
            body["accepting"] = False
            body["acceptError"] = shortage.reason
        return body

    def broadcast_agent_status(
        self,
        agent_name: str,
        state: AgentState,
        current_task: str | None = None,
        progress: float | None = None,
        *,
        now: float,
        wall: float,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """Send ``agent_status`` to every authenticated connection, or to its scope:
        the connections of *user_ids*, those subscribed to *channel*, or both."""
        status = AgentStatus(
            agent_name=agent_name, state=state, current_task=current_task, progress=progress
        )
        scope = Scope.of(user_ids=user_ids, channel=channel)
        return self.publish(status, now=now, wall=wall, scope=scope)

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
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """Send ``chat_message`` to every authenticated connection, or to its scope
        (*user_ids*, *channel*, or both).

        ``timestamp`` (ISO 8601) defaults to the publishing time.
        """
        message = ChatMessage(
            conversation_id=conversation_id,
            message_id=message_id,
            content=content,
            sender=sender,
            timestamp=timestamp,
        )
        scope = Scope.of(user_ids=user_ids, channel=channel)
        return self.publish(message, now=now, wall=wall, scope=scope)

    def send_notification(
        self,
        level: NotificationLevel,
        message: str,
        user_id: str | None = None,
        *,
        now: float,
        wall: float,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """Send ``notification`` to every authenticated connection, or, with *user_id*,
        to every connection of that user and nobody else; or to a scope (*user_ids*,
        *channel*, or both). *user_id* and *user_ids* exclude each other."""
        scope = Scope.of(user_id=user_id, user_ids=user_ids, channel=channel)
        return self.publish(
            Notification(level=level, message=message), now=now, wall=wall, scope=scope
        )

    def publish(
        self,
        item: AgentStatus | ChatMessage | Notification,
        *,
        now: float,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Published:
        """Publish one validated payload (what the typed methods and the HTTP API use) to
        *scope* (default: every authenticated connection): the next id, kept in the
        history for resuming clients, delivered to this process's recipients."""
        message_id = self._next_id()
        message = self._prepare(item, message_id, now, wall, scope)
        self.history.append(HistoryEntry(message_id, message, now))
        return Published(message_id, self._fan_out(message, now, wall))

    @contextmanager
    def publishing_batch(self) -> Iterator[None]:
        """Within this block, publishes are one batch (the publish API's arrays).

        A client is judged too slow (``1013``) by what it had not drained when the batch
        began, not by what the batch itself queued in one step: a batch that fits in a
        reader's send buffer reaches every reader that keeps up. Nothing is delivered by
        this; each publish in the block applies its own scope.
        """
        self._batches += 1
        self.batch = self._batches
        try:
            yield
        finally:
            self.batch = 0

    def deliver_local(
        self,
        item: AgentStatus | ChatMessage | Notification,
        message_id: str,
        *,
        now: float,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Published:
        """Deliver *item* under *message_id* to this process's recipients in *scope*, by
        the rules of PROTOCOL.md sections 4 and 4a, without issuing an id: the way in for
        a message whose id was given elsewhere (another process, through a backplane,
        which must carry the scope along). *wall* is the publishing time, the message's
        ``timestamp``. A notification's ``user_id`` is its one-user audience; with an
        audience in *scope* as well it is a :class:`ValueError`. It is not appended to
        this hub's history: the history that issued the id keeps it."""
        message = self._prepare(item, message_id, now, wall, scope)
        return Published(message_id, self._fan_out(message, now, wall))

    def _prepare(
        self,
        item: AgentStatus | ChatMessage | Notification,
        message_id: str,
        now: float,
        wall: float,
        scope: Scope,
    ) -> PreparedMessage:
        """The message, encoded once, carrying its scope; an agent's status is also kept
        for the ``agent_state`` snapshot."""
        if isinstance(item, Notification) and item.user_id is not None:
            if scope.user_ids is not None:
                raise ValueError("give userId or userIds, not both")
            scope = Scope.of(user_id=item.user_id, channel=scope.channel)
        if isinstance(item, AgentStatus):
            self.agent_states.record(item, scope, now)
            message = PreparedMessage.build(
                "agent_status", item.to_data(), wall, message_id, key=item.agent_name, scope=scope
            )
        elif isinstance(item, ChatMessage):
            message = PreparedMessage.build(
                "chat_message", item.to_data(wall), wall, message_id, scope=scope
            )
        else:
            message = PreparedMessage.build(
                "notification", item.to_data(), wall, message_id, scope=scope
            )
        return message

    # -- resuming (PROTOCOL.md 7) -------------------------------------------------------

    def resume(
        self, member: Member, since: str, now: float, wall: float, *, complete: bool = True
    ) -> None:
        """Queue for *member* (an open, authenticated session, its ``channels=`` already
        subscribed) what it missed after *since*, then ``resume``.

        Each kept message is replayed only if :func:`~agentcast.protocol.scope.receives`
        admits the member for the message's own scope, as the live fan-out does. Called
        in the same step as the session's opening, so nothing is published in between:
        replay and live traffic meet without gap or duplicate. ``complete=False`` (a
        subscription of the URL still waits for its verdict, so the replay could miss its
        channel) answers ``complete: false`` without a replay.
        """
        user_id = member.user_id
        if user_id is None or member not in self._sessions:
            return  # unauthenticated (it receives no broadcast), or already closed
        entries = self._kept_since(since, now) if complete else None
        data = self._replay(member, entries, now, wall)
        if data is not None:
            self.stats.messages_out["resume"] += 1
            member.deliver(PreparedMessage.build("resume", data, wall), now, wall)
        if member in self._sessions:  # else closing it (1013) updated the presence
            self._aggregate(user_id, now, wall)

    def replay_channel(
        self, member: Member, channel: str, since: str, now: float, wall: float
    ) -> dict[str, object] | None:
        """Queue for *member* (an open, authenticated session that has just subscribed to
        *channel*: a ``subscribe`` with ``since``, PROTOCOL.md 4a) the messages of
        *channel* it missed after *since*: every kept message whose scope names that
        channel and admits the member (:func:`~agentcast.protocol.scope.receives`), in
        order. Called in the same step as the subscription, so nothing is published in
        between: replay and live traffic meet without gap or duplicate.

        Returns the rest of the ``subscribed`` answer: ``{"complete": True, "replayed":
        N}``, or ``{"complete": False}`` without a replay when the history cannot say what
        followed *since*; ``None`` when the replay did not fit in the send buffer and
        closed the member (1013).
        """
        entries = self._kept_since(since, now)
        if entries is not None:
            entries = [entry for entry in entries if entry.message.scope.channel == channel]
        return self._replay(member, entries, now, wall)

    def _kept_since(self, since: str, now: float) -> list[HistoryEntry] | None:
        """The history after *since*, or ``None`` (see :meth:`History.since`); a resume
        point longer than any id is not worth asking about."""
        if len(since) > MAX_ID_LENGTH:
            return None
        return self.history.since(since, now)

    def _replay(
        self, member: Member, entries: list[HistoryEntry] | None, now: float, wall: float
    ) -> dict[str, object] | None:
        """Queue the *entries* *member* may receive; the answer's data
        (``complete``/``replayed``), or ``None`` if the member was closed (1013)."""
        if entries is None:
            return {"complete": False}
        replayed = 0
        user_id, subscriptions = member.user_id, member.subscriptions
        for entry in entries:
            message = entry.message
            if receives(message.scope, user_id, subscriptions):
                if not member.deliver(message, now, wall):
                    return None  # closed 1013: the backlog did not fit
                self.stats.messages_out[message.kind] += 1
                replayed += 1
        return {"complete": True, "replayed": replayed}

    # -- channels (PROTOCOL.md 4a) ------------------------------------------------------

    def subscriptions_count(self) -> int:
        """Channel subscriptions over all connections (for metrics)."""
        return self._subscriptions

    def channels_count(self) -> int:
        """Channels with at least one subscribed connection (for metrics)."""
        return len(self._channels)

    def subscribers(self, channel: str) -> int:
        """Connections subscribed to *channel*."""
        found = self._channels.get(channel)
        return len(found) if found is not None else 0

    def authorize(self, identity: Identity, channel: str) -> Verdict:
        """May *identity* subscribe to *channel*? The authorizer's answer (``True``,
        ``False`` or a :class:`~agentcast.protocol.scope.PendingVerdict`), or, without
        one, the identity's grant. An authorizer that raises, or answers something
        else, refuses (and is counted: ``stats.errors["authorizer_failed"]``)."""
        authorizer = self.authorizer
        if authorizer is None:
            return identity.channels.allows(channel)
        try:
            verdict = authorizer(identity, channel)
        except Exception:
            verdict = None
        if isinstance(verdict, bool | PendingVerdict):
            return verdict
        self.stats.errors["authorizer_failed"] += 1
        return False

    def add_subscription(self, member: Member, channel: str) -> None:
        """*member* subscribed to *channel* (the session calls this once it is allowed)."""
        subscribers = self._channels.get(channel)
        if subscribers is None:
            subscribers = self._channels[channel] = {}
        if member not in subscribers:
            subscribers[member] = None
            self._subscriptions += 1

    def remove_subscription(self, member: Member, channel: str) -> None:
        """*member*'s subscription to *channel* ended. Idempotent."""
        subscribers = self._channels.get(channel)
        if subscribers is not None and subscribers.pop(member, 0) is None:
            self._subscriptions -= 1
            if not subscribers:
                del self._channels[channel]

    # -- time ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When a user in the presence grace period turns offline next, or a held
        presence change goes out, or the next step of a presence group on its way to
        the connections is due (at once), or ``None``."""
        deadline = min(self._leaving.values()) if self._leaving else None
        if self._spreading and (deadline is None or self._spread_at < deadline):
            deadline = self._spread_at
        if self._due:
            due = min(self._due.values())
            if deadline is None or due < deadline:
                deadline = due
        held = self._held_until
        if held is not None and (deadline is None or held < deadline):
            return held
        return deadline

    def handle_timer(self, now: float, wall: float) -> None:
        """Take the next step of the presence group on its way to the connections, then
        turn offline every user whose grace period has ended by *now*, then send the
        presence changes held until *now*, then those held for the presence window."""
        if self._spreading:
            self._step(now, wall)
        leaving = [user_id for user_id, at in self._leaving.items() if at <= now]
        for user_id in leaving:
            del self._leaving[user_id]
            self._set_status(user_id, self._users[user_id], "offline", now, wall)
        due = [user_id for user_id, at in self._due.items() if at <= now]
        for user_id in due:
            del self._due[user_id]
            user = self._users.get(user_id) or self._gone[user_id]
            self._announce(user_id, user, now, wall)
        if self._held_until is not None and self._held_until <= now:
            held, self._held = self._held, {}
            self._held_until = None
            self._window_end = now + self.settings.presence_window
            self._send_presence(held, now, wall)

    # -- presence -----------------------------------------------------------------------

    def presence(self) -> dict[str, PresenceStatus]:
        """Every user not offline and their aggregated status."""
        return {uid: u.status for uid, u in self._users.items() if u.status != "offline"}

    def _set_status(
        self, user_id: str, user: _User, status: PresenceStatus, now: float, wall: float
    ) -> None:
        user.status = status
        if user_id in self._due:
            return  # held: whatever the status is when the interval ends goes out
        next_at = user.announced_at + self.settings.presence_interval
        if now < next_at and status != user.announced:
            self._due[user_id] = next_at
            if status == "offline" and not user.sessions:
                self._gone[user_id] = self._users.pop(user_id)
            if self.on_deadline is not None:
                self.on_deadline(next_at)
            return
        self._announce(user_id, user, now, wall)

    def _announce(self, user_id: str, user: _User, now: float, wall: float) -> None:
        """Send *user*'s status if it is not the last one sent; forget a user who is
        offline with no connection left."""
        status = user.status
        if status == "offline" and not user.sessions:
            self._users.pop(user_id, None)
            self._gone.pop(user_id, None)
        if status == user.announced:
            return
        user.announced = status
        user.announced_at = now
        if self._held_until is None and now >= self._window_end:
            # The first change after a quiet window goes out at once, and opens a window.
            self._window_end = now + self.settings.presence_window
            self._send_presence({user_id: status}, now, wall)
            return
        # Within the window: held, and sent with the others when it ends (one write per
        # connection for all of them). A user held already keeps its place, with the
        # newer status: one message per user, the latest.
        self._held[user_id] = status
        if self._held_until is None:
            self._held_until = self._window_end
            if self.on_deadline is not None:
                self.on_deadline(self._window_end)

    def _snapshot_data(self) -> str:
        """The ``data`` of ``presence_state``, JSON-encoded: what the clients were told,
        joined from each user's entry once until the next change goes out."""
        data = self._snapshot
        if data is None:
            data = self._snapshot = '{"users":[' + ",".join(self._entries.values()) + "]}"
        return data

    def _send_presence(self, changes: dict[str, PresenceStatus], now: float, wall: float) -> None:
        """Send ``user_presence`` for each of *changes* that differs from what the
        clients were told, in order, to every authenticated connection as one delivery."""
        visible = self._visible
        messages = []
        for user_id, status in changes.items():
            if visible.get(user_id, "offline") == status:
                continue  # changed and changed back within the window
            if status == "offline":
                del visible[user_id]
                del self._entries[user_id]
            else:
                visible[user_id] = status
                self._entries[user_id] = encode_data({"userId": user_id, "status": status})
            messages.append(
                PreparedMessage.build(
                    "user_presence", {"userId": user_id, "status": status}, wall, self._next_id()
                )
            )
        if messages:
            self._snapshot = None
            self._spreading.append(
                _Spread(PreparedMessage.group(messages), list(self._authenticated))
            )
            if len(self._spreading) == 1:
                self._step(now, wall)  # else after the groups before it
            if self._spreading and self.on_deadline is not None:
                self.on_deadline(now)  # the next step

    def _step(self, now: float, wall: float) -> None:
        """Deliver the oldest presence group on its way to its next :attr:`presence_step`
        recipients (a connection closed meanwhile takes nothing)."""
        spread = self._spreading[0]
        start = spread.done
        spread.done = end = start + self.presence_step
        if end >= len(spread.recipients):
            self._spreading.popleft()
        self._spread_at = now
        self._fan_out(spread.message, now, wall, spread.recipients[start:end])

    def _catch_up(self, now: float, wall: float) -> None:
        """Complete every presence group still on its way (another broadcast follows)."""
        while self._spreading:
            self._step(now, wall)

    def _aggregate(self, user_id: str, now: float, wall: float) -> None:
        user = self._users[user_id]
        status = max((s.presence for s in user.sessions), key=_RANK.__getitem__)
        self._set_status(user_id, user, status, now, wall)

    # -- the seam for sessions (agentcast.protocol.session.Host) ------------------------

    def open_session(
        self, member: Member, now: float, wall: float, *, resuming: bool = False
    ) -> None:
        """A session opened. An authenticated one gets ``presence_state`` and
        ``agent_state`` first (the latter with the scopes of its user and of the
        subscriptions it already holds: ``channels=`` in the URL), then counts for its
        user's presence; an unauthenticated one is only counted. With *resuming*,
        :meth:`resume` follows in the same step, and the user's presence update waits
        for it: a resumed client gets its replay before live traffic."""
        user_id = member.user_id
        if user_id is not None:
            # What the clients were told, so that this snapshot and the user_presence
            # messages after it make the true set; encoded once until the next change.
            snapshot = PreparedMessage(
                "presence_state", encode_with_data("presence_state", self._snapshot_data(), wall)
            )
            self.stats.messages_out["presence_state"] += 1
            # Outside the slow-client limit: its size follows the users online, not the
            # client's speed, and a client must get it whole to know who is there.
            member.deliver(snapshot, now, wall, counted=False)
            self.stats.messages_out["agent_state"] += 1
            # Likewise: its size follows the agents (bounded by agent_state_max).
            member.deliver(
                self.agent_states.snapshot(user_id, member.subscriptions, now, wall),
                now,
                wall,
                counted=False,
            )
        self._sessions[member] = None
        self.stats.opened_total += 1
        if user_id is None:
            return
        self._authenticated[member] = None
        user = self._users.get(user_id)
        if user is None:
            held = self._gone.pop(user_id, None)  # back before its "offline" went out
            user = self._users[user_id] = _User() if held is None else held
        self._leaving.pop(user_id, None)
        user.sessions[member] = None
        if not resuming:
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
        for channel in member.subscriptions:
            self.remove_subscription(member, channel)
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
                self._set_status(user_id, user, "offline", now, wall)

    def _recipients(self, scope: Scope) -> list[Member]:
        """The connections :func:`~agentcast.protocol.scope.receives` admits for *scope*,
        found through the indexes, so the work follows the recipients, not the
        connections. Each index holds exactly the connections the rule admits for one
        part of a scope (every authenticated connection; a user's connections; a
        channel's subscribers, who are authenticated), so only a scope with both an
        audience and a channel needs the rule itself, on the smaller side."""
        user_ids = scope.user_ids
        channel = scope.channel
        if channel is None:
            if user_ids is None:
                return list(self._authenticated)
            return list(self._audience(user_ids))
        subscribers = self._channels.get(channel)
        if subscribers is None:
            return []
        if user_ids is None:
            return list(subscribers)
        candidates: Iterable[Member] = subscribers
        if len(user_ids) < len(subscribers):
            candidates = self._audience(user_ids)
        return [s for s in candidates if receives(scope, s.user_id, s.subscriptions)]

    def _audience(self, user_ids: Iterable[str]) -> Iterable[Member]:
        users = self._users
        for user_id in user_ids:
            user = users.get(user_id)
            if user is not None:
                yield from user.sessions

    def _fan_out(
        self,
        message: PreparedMessage,
        now: float,
        wall: float,
        recipients: list[Member] | None = None,
    ) -> int:
        """Deliver a broadcast to the connections of its scope (``message.scope``): the
        only way a broadcast reaches a connection. Presence groups on their way are
        completed first, so that no connection gets this before them. *recipients*: a
        step of a presence group (scope: every authenticated connection), those of
        the connections authenticated when it was sent that this step reaches."""
        delivered = 0
        nested = self._fanning_out
        if recipients is None:
            if self._spreading and not nested:
                self._catch_up(now, wall)
            recipients = self._recipients(message.scope)
        self._fanning_out = True
        try:
            for session in recipients:
                if session.deliver(message, now, wall):
                    delivered += 1
        finally:
            self._fanning_out = nested
        self.stats.messages_out[message.kind] += delivered * message.count
        if not nested:
            while self._deferred:
                session, at, at_wall = self._deferred.pop(0)
                self.close_session(session, at, at_wall)
        return delivered

    def _next_id(self) -> str:
        # Opaque, strictly increasing as a string too (fixed width), PROTOCOL.md 3.
        return self.history.next_id()
