"""The session layer: everything PROTOCOL.md says about an open connection's messages.

A :class:`Session` is fed already-decoded messages (``receive_text``) and liveness
(``touch``), and writes its answers to a :class:`Sink`. It knows nothing of frames or
sockets, so the same rules serve the reference server (where the sink is the
:class:`~agentcast.protocol.WebSocketTransport`), an ASGI server (where the sink queues
text for ``websocket.send``) and an event stream (PROTOCOL.md 11, where the sink writes
each message as a Server-Sent Event). What it owns:

* the auth outcome, sent first as the ``auth`` message, and in-band refresh (section 2);
* the heartbeat: JSON ``ping`` and a protocol Ping every interval, close 4000 after the
  timeout (section 5), judged on what the client sent (see :data:`LATE_WAKEUP`); token
  expiry, close 4001; an unauthenticated connection is closed 1008 after
  ``unauthenticated_timeout`` (a client that never authenticates holds a socket for
  nothing);
* the rate limit (messages, and protocol Pings and Pongs: :meth:`Session.receive_control`)
  and the ``error`` answers of section 6, and ``max_message_size`` (1009)
  for messages framed by someone else (an ASGI server): the core's own transport refuses
  an oversized message from its frame header, before buffering it, so such a message
  never reaches the session there;
* this connection's presence status, which the :class:`~agentcast.protocol.Hub`
  aggregates per user;
* its channel subscriptions (section 4a): ``subscribe``/``unsubscribe``, ``channels=`` at
  connect time, the per-connection limit, verdicts that come later, the replay of a
  ``subscribe`` with ``since`` (in the step that subscribes), and the re-check of every
  subscription when a refreshed token arrives;
* the slow-client policy: a backlog past ``max_send_buffer`` closes with 1013.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Protocol, assert_never

from .auth import AuthFailure, AuthResult, Identity
from .codes import CloseCode
from .config import Settings
from .events import AuthRequested, Event
from .messages import (
    BINARY_NOT_SUPPORTED,
    INVALID_CHANNEL,
    INVALID_PRESENCE,
    NOT_AUTHENTICATED,
    RATE_LIMITED,
    AuthRefresh,
    ClientPing,
    ClientPong,
    MessageError,
    PreparedMessage,
    PresenceStatus,
    PresenceUpdate,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    forbidden_channel,
    too_many_subscriptions,
)
from .outbox import Outbox
from .ratelimit import RateLimiter
from .scope import PendingVerdict, Verdict, is_channel
from .stats import Stats

__all__ = ["LATE_WAKEUP", "RECHECK_DELAY", "Host", "Session", "Sink"]

#: A client is silent only if nothing it sent has been read when we look. When the
#: adapter wakes the session more than this many seconds after the silence deadline it
#: asked for, the server was not looking in the meantime (a long GC pause, a VM stall, a
#: debugger, SIGSTOP, an overloaded loop), and what the client sent during that time may
#: still be waiting, unread, in the socket: event loops run due timers before or without
#: polling the sockets first. The session then does not close, but looks again
#: :data:`RECHECK_DELAY` later, after the adapter has read what was waiting.
LATE_WAKEUP = 0.1
#: How long after a late wake-up the session looks again (any delay puts at least one
#: pass of the event loop, which reads the sockets, before that look).
RECHECK_DELAY = 0.1
#: Late wake-ups in a row that may defer the verdict: a loop that is always this late
#: still closes silent clients, a little later.
_MAX_LATE_LOOKS = 3


class Host(Protocol):
    """What a session needs of the hub: the settings, the counters, and three calls.

    :class:`~agentcast.protocol.Hub` is one; the session never imports it.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def batch(self) -> int:
        """The publish batch being delivered (a number), or 0: within a batch a client is
        judged by what it had not drained when the batch began."""
        ...

    def open_session(
        self, member: Session, now: float, wall: float, *, resuming: bool = False
    ) -> None:
        """The session is open (its ``auth`` message is queued): register it. With
        *resuming*, :meth:`resume` follows."""
        ...

    def presence_changed(self, member: Session, now: float, wall: float) -> None:
        """The session's authenticated user set this connection's presence."""
        ...

    def close_session(self, member: Session, now: float, wall: float) -> None:
        """The session is closed: deliver nothing more to it. Idempotent."""
        ...

    def resume(
        self, member: Session, since: str, now: float, wall: float, *, complete: bool = True
    ) -> None:
        """The session asked to resume after *since* (PROTOCOL.md 7): replay, then
        ``resume``."""
        ...

    def authorize(self, identity: Identity, channel: str) -> Verdict:
        """May *identity* subscribe to *channel*: now (a bool) or later (a verdict)."""
        ...

    def add_subscription(self, member: Session, channel: str) -> None:
        """The session subscribed to *channel*: deliver the channel's messages to it."""
        ...

    def replay_channel(
        self, member: Session, channel: str, since: str, now: float, wall: float
    ) -> dict[str, object] | None:
        """The session, just subscribed to *channel*, asked for the channel's messages
        after *since* (PROTOCOL.md 4a): queue them; the ``complete``/``replayed`` part of
        the ``subscribed`` answer, or ``None`` if the replay closed the session (1013)."""
        ...

    def remove_subscription(self, member: Session, channel: str) -> None:
        """The session's subscription to *channel* ended. Idempotent."""
        ...


class Sink(Protocol):
    """Where a session's output goes: all a session needs of whatever carries it. The
    core's :class:`~agentcast.protocol.WebSocketTransport`, the ASGI adapter's WebSocket
    and the event stream (:class:`~agentcast.protocol.eventstream.EventStream`) implement
    it; the rules stay the session's."""

    @property
    def outbox(self) -> Outbox:
        """The connection's pending output; the session queues its messages there."""
        ...

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue the carrier's own keepalive with the heartbeat: a protocol-level Ping,
        a comment line on an event stream, or nothing (an ASGI server pings itself)."""
        ...

    def close(self, code: int, reason: str, now: float) -> None:
        """Start closing the connection with *code* (a close frame; a final ``close``
        event on an event stream)."""
        ...


class Session:
    """One client's session. Create it when the WebSocket opens, with the auth outcome.

    It sends ``auth`` (and, when authenticated, ``presence_state``) at once, and joins the
    hub, which then delivers broadcasts to it. Inputs take the monotonic ``now`` and the
    wall-clock ``wall``; after any of them, read :meth:`events_received` and
    :meth:`next_deadline`.
    """

    __slots__ = (
        "__weakref__",
        "_auth_deadline",
        "_close_silent",
        "_closed",
        "_events",
        "_expires_at",
        "_held",
        "_hub",
        "_last_seen",
        "_late_looks",
        "_limiter",
        "_look_again_at",
        "_next_ping",
        "_pending",
        "_rechecks",
        "_sink",
        "flooded",
        "identity",
        "messages_in",
        "messages_out",
        "presence",
        "subscriptions",
        "user_id",
    )

    def __init__(
        self,
        hub: Host,
        sink: Sink,
        auth: AuthResult | None,
        *,
        now: float,
        wall: float,
        close_silent: bool = True,
        channels: Iterable[str] = (),
        since: str | None = None,
    ) -> None:
        settings = hub.settings
        self._hub = hub
        self._sink = sink
        self._closed = False
        # Close with 4000 after heartbeat_timeout of silence. False where the transport
        # watches liveness itself: an ASGI server's keepalive sees the Pongs browsers send
        # by themselves, which never reach the application, so silence there proves nothing.
        self._close_silent = close_silent
        self._events: list[Event] | None = None  # a list only while events wait
        self._last_seen = now
        # After a late wake-up: the silence verdict waits until then (LATE_WAKEUP).
        self._look_again_at: float | None = None
        self._late_looks = 0
        self._next_ping = now + settings.heartbeat_interval
        self._expires_at: float | None = None
        # An unauthenticated connection is closed (1008) at this time.
        self._auth_deadline: float | None = None
        self._limiter = RateLimiter(
            settings.rate_limit,
            settings.rate_burst,
            settings.rate_limit_strikes,
            settings.rate_limit_window,
            now,
        )
        #: The authenticated user, or ``None``.
        self.user_id: str | None = None
        #: Who the token says this is (the latest refresh), or ``None``.
        self.identity: Identity | None = None
        #: The channels this connection is subscribed to (PROTOCOL.md 4a), in order.
        self.subscriptions: dict[str, None] = {}
        # Subscriptions waiting for the authorizer's verdict (they count against the limit),
        # and subscriptions being re-checked after a refresh (they hold meanwhile).
        self._pending: dict[str, PendingVerdict] = {}
        self._rechecks: dict[str, PendingVerdict] = {}
        #: This connection's own presence status (the hub aggregates per user).
        self.presence: PresenceStatus = "online"
        self.messages_in = 0
        self.messages_out = 0
        #: Closed for a flood over the rate limit (1008): its input is worth nothing now.
        self.flooded = False
        # Answers held back while the session opens (see below); None once it is open.
        self._held: list[tuple[str, object]] | None = None
        result = auth if auth is not None else AuthFailure("Missing token")
        if isinstance(result, Identity):
            self.user_id = result.user_id
            self.identity = result
            self._set_expiry(result, now, wall)
        elif settings.unauthenticated_timeout is not None:
            self._auth_deadline = now + settings.unauthenticated_timeout
        self._send_auth(result, now, wall)
        resuming = since is not None and self.user_id is not None
        # channels= in the URL: each one as a `subscribe`. The subscriptions hold before
        # the hub opens the session, so that its `agent_state` snapshot shows the agents
        # of those channels; the answers are held back and follow `presence_state`,
        # `agent_state` and the user's own `user_presence`. Past the limit, one more is
        # tried (and refused) so the client learns why.
        self._held = []
        for channel in list(dict.fromkeys(channels))[: settings.max_subscriptions + 1]:
            self._handle_subscription(channel, True, now, wall)
        held, self._held = self._held, None
        hub.open_session(self, now, wall, resuming=resuming)
        for kind, data in held:
            self._send(kind, data, now, wall)
        # since= in the URL: what the client missed, now that its channels are in place.
        if resuming:
            assert since is not None
            hub.resume(self, since, now, wall, complete=not self._pending)

    # -- state --------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def next_deadline(self) -> float | None:
        """The next heartbeat, timeout, token expiry or unauthenticated timeout
        (monotonic), or ``None`` once closed."""
        if self._closed:
            return None
        deadline = self._next_ping
        for other in (self._silence_deadline(), self._expires_at, self._auth_deadline):
            if other is not None and other < deadline:
                deadline = other
        return deadline

    def events_received(self) -> list[Event]:
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    # -- inputs -------------------------------------------------------------------------

    def touch(self, now: float) -> None:
        """The client proved it is alive (any frame, PROTOCOL.md 5)."""
        self._last_seen = max(self._last_seen, now)

    def receive_text(self, text: str, now: float, wall: float) -> None:
        """Handle one complete text message from the client."""
        if self._closed:
            return
        self.touch(now)
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if self._too_big(size, now, wall) or not self._admit(now, wall):
            return
        message = decode_client_message(text)
        stats = self._hub.stats
        match message:
            case MessageError():
                if (message is INVALID_PRESENCE or message is INVALID_CHANNEL) and (
                    self.user_id is None
                ):
                    message = NOT_AUTHENTICATED  # authentication is checked first
                self._error(message, now, wall)
            case ClientPing():
                stats.messages_in["ping"] += 1
                self._send("pong", None, now, wall)
            case ClientPong():
                stats.messages_in["pong"] += 1
            case PresenceUpdate(status=status):
                if self.user_id is None:
                    self._error(NOT_AUTHENTICATED, now, wall)
                    return
                stats.messages_in["user_presence"] += 1
                self.presence = status
                self._hub.presence_changed(self, now, wall)
            case AuthRefresh(token=token):
                if self.user_id is None:
                    self._error(NOT_AUTHENTICATED, now, wall)
                    return
                stats.messages_in["auth"] += 1
                refresh = AuthRequested(token=token, refresh=True)
                self._events = [*(self._events or ()), refresh]
            case Subscribe(channel=channel, since=since):
                self._handle_subscription(channel, True, now, wall, since)
            case Unsubscribe(channel=channel):
                self._handle_subscription(channel, False, now, wall)
            case _:
                assert_never(message)

    def receive_control(self, now: float, wall: float) -> bool:
        """A protocol Ping or Pong arrived: it counts against the rate limit like a
        message (a flood of them is as costly). ``False``: over the limit, drop it (a
        Ping goes unanswered, no ``error`` is sent: an answer per dropped frame would
        feed the flood); the strikes close 1008 as for messages."""
        if self._closed:
            return False
        if self._limiter.allow(now):
            return True
        if self._limiter.exhausted:
            self._flood(now, wall)
        return False

    def receive_binary(self, now: float, wall: float, size: int = 0) -> None:
        """A binary message of *size* bytes arrived: we do not take those (PROTOCOL.md 6)."""
        if self._closed:
            return
        self.touch(now)
        if not self._too_big(size, now, wall) and self._admit(now, wall):
            self._error(BINARY_NOT_SUPPORTED, now, wall)

    def complete_auth(self, result: AuthResult, now: float, wall: float) -> None:
        """Answer an in-band refresh (:class:`AuthRequested` with ``refresh=True``).

        The new token must be for the same user; on success its expiry replaces the old
        one. On failure the connection keeps its current identity until that expires.
        """
        if self._closed:
            return
        if isinstance(result, Identity) and result.user_id != self.user_id:
            result = AuthFailure("Token is for another user")
        if isinstance(result, Identity):
            self._set_expiry(result, now, wall)
            self.identity = result
        else:
            self._hub.stats.errors["auth_failed"] += 1
        self._send_auth(result, now, wall)
        if isinstance(result, Identity):
            self._recheck(result, now, wall)

    def handle_timer(self, now: float, wall: float) -> None:
        """Act on the deadlines that have passed at *now*."""
        if self._closed:
            return
        settings = self._hub.settings
        silence = self._silence_deadline()
        if silence is not None and now >= silence:
            if now - silence > LATE_WAKEUP and self._late_looks < _MAX_LATE_LOOKS:
                # We were not looking: read what is waiting before judging (LATE_WAKEUP).
                self._look_again_at = now + RECHECK_DELAY
                self._late_looks += 1
            else:
                self._hub.stats.heartbeat_timeouts += 1
                self.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", now, wall)
                return
        elif silence is not None:
            self._late_looks = 0
        if self._expires_at is not None and now >= self._expires_at:
            self.close(CloseCode.TOKEN_EXPIRED, "token expired", now, wall)
            return
        if self._auth_deadline is not None and now >= self._auth_deadline:
            self.close(CloseCode.POLICY, "authentication required", now, wall)
            return
        if now >= self._next_ping:
            interval = settings.heartbeat_interval
            while self._next_ping <= now:
                self._next_ping += interval
            self._send("ping", None, now, wall)
            self._sink.send_ping()

    def close(self, code: int, reason: str, now: float, wall: float) -> None:
        """Close the connection with *code* (e.g. 1001 at shutdown). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sink.close(code, reason, now)
        self._hub.close_session(self, now, wall)

    def ended(self, code: int, now: float, wall: float) -> None:
        """The transport is gone (closing handshake done, or the TCP connection ended)."""
        self._closed = True
        self._hub.close_session(self, now, wall)
        self._hub.stats.closes[code] += 1

    # -- channels (PROTOCOL.md 4a) --------------------------------------------------------

    def _handle_subscription(
        self, channel: str, subscribe: bool, now: float, wall: float, since: str | None = None
    ) -> None:
        """A ``subscribe`` (or ``unsubscribe``) of a valid or invalid *channel* name; a
        ``subscribe`` may carry a resume point, *since*."""
        if self.user_id is None:
            self._error(NOT_AUTHENTICATED, now, wall)
            return
        if not is_channel(channel):
            self._error(INVALID_CHANNEL, now, wall)
            return
        self._hub.stats.messages_in["subscribe" if subscribe else "unsubscribe"] += 1
        if subscribe:
            self._subscribe(channel, since, now, wall)
        else:
            self._end_subscription(channel, None, now, wall)

    def _subscribe(self, channel: str, since: str | None, now: float, wall: float) -> None:
        if channel in self.subscriptions:
            # Already: say so again. With since: the channel has been delivered live all
            # along, so nothing was missed and nothing is replayed.
            data: dict[str, object] = {"channel": channel}
            if since is not None:
                data |= {"complete": True, "replayed": 0}
            self._send("subscribed", data, now, wall)
            return
        if channel in self._pending:
            return  # answered once, when the verdict comes (with the first since)
        limit = self._hub.settings.max_subscriptions
        if len(self.subscriptions) + len(self._pending) >= limit:
            self._error(too_many_subscriptions(channel, limit), now, wall)
            return
        assert self.identity is not None
        answer = self._hub.authorize(self.identity, channel)
        pending = PendingVerdict()
        self._pending[channel] = pending
        if isinstance(answer, PendingVerdict) and answer.allowed is None:
            self._pending[channel] = answer
            answer.add_waiter(partial(self._verdict, channel, answer, since=since))
            return
        allowed = answer if isinstance(answer, bool) else bool(answer.allowed)
        self._verdict(channel, pending, allowed, now, wall, since=since)

    def _verdict(
        self,
        channel: str,
        verdict: PendingVerdict,
        allowed: bool,
        now: float,
        wall: float,
        *,
        since: str | None = None,
    ) -> None:
        """The authorizer's answer to a ``subscribe`` (now or later). Allowed: subscribed,
        and with *since* the channel's missed messages replayed in the same step (nothing
        is published in between), before the ``subscribed`` answer."""
        if self._closed or self._pending.get(channel) is not verdict:
            return  # the connection is gone, or the client unsubscribed meanwhile
        del self._pending[channel]
        if not allowed:
            self._error(forbidden_channel(channel), now, wall)
            return
        self.subscriptions[channel] = None
        self._hub.add_subscription(self, channel)
        data: dict[str, object] = {"channel": channel}
        if since is not None:
            replay = self._hub.replay_channel(self, channel, since, now, wall)
            if replay is None:
                return  # the replay did not fit: closed 1013
            data |= replay
        self._send("subscribed", data, now, wall)

    def _end_subscription(self, channel: str, reason: str | None, now: float, wall: float) -> None:
        """End a subscription (or a pending one) and say so: ``unsubscribed``, with a
        *reason* when the server ended it."""
        self._pending.pop(channel, None)
        self._rechecks.pop(channel, None)
        if self.subscriptions.pop(channel, 0) is None:
            self._hub.remove_subscription(self, channel)
        data = {"channel": channel} if reason is None else {"channel": channel, "reason": reason}
        self._send("unsubscribed", data, now, wall)

    def _recheck(self, identity: Identity, now: float, wall: float) -> None:
        """A refreshed token: every subscription is asked again; those no longer allowed
        end with ``unsubscribed`` and a reason. Until a later verdict comes, a
        subscription holds."""
        for channel in list(self.subscriptions):
            answer = self._hub.authorize(identity, channel)
            if isinstance(answer, PendingVerdict) and answer.allowed is None:
                self._rechecks[channel] = answer
                answer.add_waiter(partial(self._rechecked, channel, answer))
                continue
            self._rechecks.pop(channel, None)
            allowed = answer if isinstance(answer, bool) else bool(answer.allowed)
            if not allowed:
                self._end_subscription(channel, "no longer allowed", now, wall)

    def _rechecked(
        self, channel: str, verdict: PendingVerdict, allowed: bool, now: float, wall: float
    ) -> None:
        if self._closed or self._rechecks.get(channel) is not verdict:
            return
        del self._rechecks[channel]
        if not allowed and channel in self.subscriptions:
            self._end_subscription(channel, "no longer allowed", now, wall)

    # -- output -------------------------------------------------------------------------

    def deliver(
        self, message: PreparedMessage, now: float, wall: float, *, counted: bool = True
    ) -> bool:
        """Queue *message* (a broadcast, from the hub), applying the slow-client policy:
        ``False`` if the session is closed or this message made it drop the client.

        ``counted=False`` queues a snapshot the client needs whole (``presence_state``)
        outside the policy: its size follows the users online, not the client's speed.
        """
        if self._closed:
            return False
        outbox = self._sink.outbox
        if not counted:
            outbox.push(message, counted=False)
            self.messages_out += 1
            return True
        hub = self._hub
        settings = hub.settings
        if (
            message.key is not None
            and outbox.backlog > settings.conflation_threshold
            and outbox.replace(message)
        ):
            # A newer agent_status replaced the pending one for the same agent.
            self.messages_out += 1
            return True
        # outbox.size_of(message), inline: this runs once per recipient of a broadcast.
        size = len(message.event) if outbox.events else len(message.frame)
        # 1013 when what conflation cannot shrink passes the limit (within a batch: what
        # the client had not drained when the batch began); a hard stop at twice the
        # limit bounds memory even with very many distinct agents, or a batch.
        if outbox.too_slow(size, settings.max_send_buffer, hub.batch):
            hub.stats.slow_client_drops += 1
            outbox.discard_messages()
            self.close(CloseCode.TRY_AGAIN_LATER, "client too slow", now, wall)
            return False
        outbox.push(message)
        self.messages_out += message.count
        return True

    def _send(self, kind: str, data: object, now: float, wall: float) -> None:
        if self._held is not None:  # answers to channels= while the session opens
            self._held.append((kind, data))
            return
        self._hub.stats.messages_out[kind] += 1
        self.deliver(PreparedMessage.build(kind, data, wall), now, wall)

    def _send_auth(self, result: AuthResult, now: float, wall: float) -> None:
        if isinstance(result, Identity):
            data: dict[str, object] = {"success": True, "userId": result.user_id}
        else:
            data = {"success": False, "error": result.reason}
        self._send("auth", data, now, wall)

    def _error(self, error: MessageError, now: float, wall: float) -> None:
        self._hub.stats.errors[error.code.value] += 1
        self._send("error", error.to_data(), now, wall)

    def _silence_deadline(self) -> float | None:
        """When the client will have been silent for ``heartbeat_timeout``, or the second
        look after a late wake-up (whichever is later)."""
        if not self._close_silent:
            return None
        deadline = self._last_seen + self._hub.settings.heartbeat_timeout
        recheck = self._look_again_at
        return deadline if recheck is None or recheck < deadline else recheck

    def _too_big(self, size: int, now: float, wall: float) -> bool:
        """A message over ``max_message_size`` closes the connection (PROTOCOL.md 6)."""
        if size <= self._hub.settings.max_message_size:
            return False
        self.close(CloseCode.TOO_BIG, "message too big", now, wall)
        return True

    def _admit(self, now: float, wall: float) -> bool:
        """Count one inbound message against the rate limit (PROTOCOL.md 6)."""
        self.messages_in += 1
        if self._limiter.allow(now):
            return True
        self._error(RATE_LIMITED, now, wall)
        if self._limiter.exhausted:
            self._flood(now, wall)
        return False

    def _flood(self, now: float, wall: float) -> None:
        self._hub.stats.rate_limit_closes += 1
        self.flooded = True
        self.close(CloseCode.POLICY, "rate limit exceeded", now, wall)

    def _set_expiry(self, identity: Identity, now: float, wall: float) -> None:
        # exp is wall-clock; deadlines are monotonic: convert once, at the moment we learn it.
        exp = identity.expires_at
        self._expires_at = None if exp is None else now + (exp - wall)
