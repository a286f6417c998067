"""The client's rules, Sans-IO: what a well-behaved agentcast client does, decided once.

A :class:`ClientSession` is one logical client across any number of WebSocket connections.
The adapter (:mod:`agentcast.adapters.client`) opens a connection to :meth:`target`,
feeds it the text messages it receives and the close it sees, sends what
:meth:`texts_to_send` returns, sleeps until :meth:`next_deadline`, and follows the
:class:`Reconnect` / :class:`Stop` decisions. Like the server core it reads no clock and
draws no random number: ``now`` (monotonic), ``wall`` (Unix seconds) and ``random``
(uniform in ``[0, 1)``) are arguments. The rules (``docs/clients.md`` says them in prose):

* **Token**: in the ``token`` query parameter, an ``Authorization: Bearer`` header, or
  the subprotocols ``agentcast.v1, bearer.<token>`` (PROTOCOL.md 2).
* **Resume**: every reconnect asks for ``since=<the last id seen>`` (section 7); a
  ``resume`` with ``complete: false`` is surfaced as the :class:`Resume` message, so the
  application reloads its state.
* **Heartbeat**: a JSON ``ping`` is answered with ``pong`` (section 5). With
  ``idle_timeout`` set, a server silent that long is presumed gone: the adapter aborts
  the connection and it counts as ``1006``.
* **Close codes** (section 9): ``4000``–``4499`` and ``1001``, ``1005``, ``1006``,
  ``1011``, ``1012``, ``1013`` reconnect; ``4001`` first asks the token provider for a
  fresh token (without a provider it stops: the same token would be refused); ``1008``,
  ``4500``+ and every other code stop, with the code and reason surfaced. A refused
  handshake: ``401`` reconnects with a fresh token when a provider exists and stops
  otherwise, ``429`` and ``5xx`` reconnect, other statuses stop. A
  connection that could not be opened at all (refused, reset, DNS, TLS) reconnects.
* **Back-off**: full jitter, ``random * min(cap, base * 2**attempt)`` (0.5 s base, 20 s
  cap); the attempt count starts again once a connection has stayed open for a stable
  minute.
* **Token refresh**: with a token provider and a JWT with ``exp``, the session asks for
  a fresh token ``refresh_margin`` seconds before ``exp`` and sends it in band
  (``{"type":"auth","data":{"token":…}}``), so a long session is never closed ``4001``.
* **Presence**: the status the application last set is sent again after every
  successful ``auth``, since a new connection starts ``online``.
* **Channels**: the subscriptions hold across reconnects: they go in the URL
  (``channels=a,b``, so they are in place before a replay), and ``subscribe`` /
  ``unsubscribe`` are sent for changes while connected. One the server refuses (an
  ``error`` naming the channel) is dropped, not asked for again. A subscription asked
  for with ``since`` (an id the application kept) is a ``subscribe`` message with
  ``since``, sent at once when connected, else right after the next successful
  ``auth`` (not in the URL, which has no place for it), and again on each new connection
  until its ``subscribed`` answer comes; from then on it is a channel like the others.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from .client_messages import (
    AuthResult,
    Error,
    Ping,
    ServerMessage,
    Subscribed,
    parse_server_message,
)
from .errors import LocalProtocolError
from .reconnect import (
    ABNORMAL,
    RECONNECT_CODES,
    Backoff,
    Connected,
    Decision,
    Disconnected,
    Reconnect,
    Stop,
    close_decision,
)

__all__ = [
    "PRESENCE_STATUSES",
    "RECONNECT_CODES",
    "Backoff",
    "ClientSession",
    "Connected",
    "Decision",
    "Disconnected",
    "Reconnect",
    "Stop",
    "Target",
    "TokenPlacement",
    "close_decision",
    "jwt_expiry",
]

TokenPlacement = Literal["query", "header", "subprotocol"]
SUBPROTOCOL: Final = "agentcast.v1"
PRESENCE_STATUSES: Final = frozenset({"online", "away", "busy", "offline"})
#: Error codes that end a subscription the client asked for (it is not asked again).
REFUSED_SUBSCRIPTION: Final = frozenset(
    {"invalid_channel", "forbidden_channel", "too_many_subscriptions"}
)

# -- the URL and handshake -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to open one connection: what the adapter hands to its transport."""

    secure: bool
    host: str
    port: int
    #: The request target: path and query (``/ws?since=…``).
    resource: str
    #: ``Host`` header value (the port only when it is not the scheme's default).
    host_header: str
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show a token
        return f"Target({'wss' if self.secure else 'ws'}://{self.host_header}{self.path})"

    @property
    def path(self) -> str:
        return self.resource.partition("?")[0]


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (unverified: the client only schedules a refresh with
    it), or ``None`` when *token* is not a JWT or has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


# -- the session ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Connection:
    opened_at: float
    last_received: float
    refresh_at: float | None = None
    refreshing: bool = False
    #: Channels asked for with since on this connection (not again at its auth).
    asked: set[str] = field(default_factory=set)


class ClientSession:
    """One logical client over successive connections. See the module doc for the rules.

    Drive it: ``target()`` → open the connection → ``opened(now, wall)`` →
    ``receive_text()`` for each message (send ``texts_to_send()`` after each input) →
    ``handle_timer()`` at ``next_deadline()`` → on the end of the connection
    ``connection_lost()`` (or ``handshake_refused()`` / ``connect_failed()``), which
    returns the :class:`Decision`. ``random`` arguments are uniform in ``[0, 1)``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_in: TokenPlacement = "query",
        can_refresh: bool = False,
        since: str | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        refresh_margin: float = 30.0,
        idle_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {parts.scheme or url!r}")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        if token_in not in ("query", "header", "subprotocol"):
            raise ValueError("token_in must be query, header or subprotocol")
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname
        default_port = 443 if self._secure else 80
        self._port = parts.port or default_port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._path = parts.path or "/"
        query = parse_qsl(parts.query, keep_blank_values=True)
        #: The channels this client is subscribed to (or asks for), kept across reconnects.
        self.channels: dict[str, None] = {
            name.strip(): None
            for k, v in query
            if k == "channels"
            for name in v.split(",")
            if name.strip()
        }
        # Channels asked for with since whose `subscribed` answer has not come: their
        # resume point, sent in a `subscribe` message instead of the URL.
        self._since: dict[str, str] = {}
        self._query = [
            (k, v)
            for k, v in query
            if k not in ("since", "channels") and not (k == "token" and token is not None)
        ]
        self._token = token
        self._token_in: TokenPlacement = token_in
        self._extra_headers = tuple((headers or {}).items())
        #: Whether the adapter has a token provider (then 4001 and 401 get a fresh token).
        self.can_refresh = can_refresh
        self._reconnect = reconnect
        self.backoff = backoff if backoff is not None else Backoff()
        self.refresh_margin = refresh_margin
        self.idle_timeout = idle_timeout
        #: The id of the last broadcast received: where the next connection resumes.
        self.last_id: str | None = since
        self._conn: _Connection | None = None
        self._out: list[str] = []
        self._presence: str | None = None
        self._stopped: Stop | None = None
        self._pending_expiry: float | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def stopped(self) -> Stop | None:
        """Why the client stopped for good, or ``None``."""
        return self._stopped

    @property
    def token(self) -> str | None:
        return self._token

    def set_token(self, token: str) -> None:
        """A fresh token for the next connection (from the provider)."""
        self._token = token

    # -- connecting -----------------------------------------------------------------------

    def target(self) -> Target:
        """Where to connect now: the URL with ``since`` (the last id seen) and the token."""
        if self._stopped is not None:
            raise LocalProtocolError("the client has stopped")
        query = list(self._query)
        headers = list(self._extra_headers)
        subprotocols: tuple[str, ...] = ()
        token = self._token
        if token is not None:
            if self._token_in == "query":
                query.append(("token", token))
            elif self._token_in == "header":
                headers.append(("Authorization", f"Bearer {token}"))
            else:
                subprotocols = (SUBPROTOCOL, f"bearer.{token}")
        channels = [name for name in self.channels if name not in self._since]
        if channels:
            query.append(("channels", ",".join(channels)))
        if self.last_id is not None:
            query.append(("since", self.last_id))
        resource = quote(self._path, safe="/:@!$&'()*+,;=-._~%")
        if query:
            resource += "?" + urlencode(query)
        return Target(
            secure=self._secure,
            host=self._host,
            port=self._port,
            resource=resource,
            host_header=self._host_header,
            headers=tuple(headers),
            subprotocols=subprotocols,
        )

    def opened(self, now: float, wall: float) -> Connected:
        """The WebSocket is open (``101`` received)."""
        attempt = self.backoff.attempt
        self._conn = _Connection(opened_at=now, last_received=now)
        self._out.clear()
        # The token this connection authenticates with; its expiry applies once auth succeeds.
        self._pending_expiry = None if self._token is None else jwt_expiry(self._token)
        return Connected(since=self.last_id, attempt=attempt)

    # -- receiving ------------------------------------------------------------------------

    def receive_text(self, text: str, now: float, wall: float) -> ServerMessage:
        """One server message: parsed, answered where the rules say so, its id recorded."""
        message = parse_server_message(text)
        conn = self._conn
        if conn is None:
            return message
        conn.last_received = max(conn.last_received, now)
        if message.id is not None:
            self.last_id = message.id
        if isinstance(message, Ping):
            self._out.append('{"type":"pong"}')
        elif isinstance(message, Subscribed):
            self._since.pop(message.channel, None)
        elif isinstance(message, Error):
            if message.code in REFUSED_SUBSCRIPTION and message.channel is not None:
                self.channels.pop(message.channel, None)
                self._since.pop(message.channel, None)
        elif isinstance(message, AuthResult):
            refresh = conn.refreshing
            conn.refreshing = False
            if message.success:
                self._schedule_refresh(conn, self._pending_expiry, now, wall)
                if not refresh and self._presence not in (None, "online"):
                    self._queue("user_presence", self._presence)
                if not refresh:
                    for channel, since in self._since.items():
                        if channel not in conn.asked:
                            self._queue("subscribe", {"channel": channel, "since": since})
            elif refresh:
                # The refresh was refused: the current token holds until the server closes
                # 4001, and the reconnect after it asks the provider again.
                self._pending_expiry = None
        return message

    def touch(self, now: float) -> None:
        """A frame other than a text message (a Ping, a Pong) proves the server alive."""
        if self._conn is not None:
            self._conn.last_received = max(self._conn.last_received, now)

    # -- sending --------------------------------------------------------------------------

    def texts_to_send(self) -> list[str]:
        """Messages to send now, in order."""
        texts = self._out
        self._out = []
        return texts

    def set_presence(self, status: str) -> None:
        """Set this client's presence; kept and sent again after every reconnect."""
        if status not in PRESENCE_STATUSES:
            raise ValueError(f"presence must be one of {', '.join(sorted(PRESENCE_STATUSES))}")
        self._presence = status
        if self._conn is not None:
            self._queue("user_presence", status)

    def subscribe(self, channel: str, since: str | None = None) -> None:
        """Subscribe to *channel*: now if connected, and on every reconnect. With *since*
        (an id of a message seen earlier), the channel's messages after it are replayed
        first, then ``subscribed`` says whether that was ``complete`` (PROTOCOL.md 4a)."""
        self.channels[channel] = None
        if since is None:
            self._since.pop(channel, None)
            if self._conn is not None:
                self._queue("subscribe", {"channel": channel})
            return
        self._since[channel] = since
        if self._conn is not None:
            self._conn.asked.add(channel)
            self._queue("subscribe", {"channel": channel, "since": since})

    def unsubscribe(self, channel: str) -> None:
        self.channels.pop(channel, None)
        self._since.pop(channel, None)
        if self._conn is not None:
            self._queue("unsubscribe", {"channel": channel})

    def send_ping(self) -> None:
        self._require_connection()
        self._out.append('{"type":"ping"}')

    def send_json(self, message: Any) -> None:
        """Send any JSON value as it is (a terminal client's typed line)."""
        self._require_connection()
        self._out.append(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    def refresh(self, token: str, now: float, wall: float) -> None:
        """Send a fresh token in band (the answer to a due refresh)."""
        self._token = token
        conn = self._conn
        if conn is None:
            return
        conn.refreshing = True
        conn.refresh_at = None
        self._pending_expiry = jwt_expiry(token)
        self._queue("auth", {"token": token})

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (monotonic), or ``None``."""
        conn = self._conn
        if conn is None:
            return None
        deadlines = []
        if conn.refresh_at is not None and not conn.refreshing:
            deadlines.append(conn.refresh_at)
        if self.idle_timeout is not None:
            deadlines.append(conn.last_received + self.idle_timeout)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> Literal["refresh", "abort"] | None:
        """``"refresh"``: get a fresh token and call :meth:`refresh`; ``"abort"``: the
        server has been silent for ``idle_timeout``, drop the connection (then
        :meth:`connection_lost` with ``None``)."""
        conn = self._conn
        if conn is None:
            return None
        if self.idle_timeout is not None and now >= conn.last_received + self.idle_timeout:
            return "abort"
        if conn.refresh_at is not None and not conn.refreshing and now >= conn.refresh_at:
            conn.refresh_at = None
            return "refresh"
        return None

    # -- the end of a connection ----------------------------------------------------------

    def connection_lost(self, code: int | None, reason: str, now: float, random: float) -> Decision:
        """The connection ended with close *code* (``None``: without a close frame)."""
        conn = self._conn
        self._conn = None
        if conn is not None:
            self.backoff.connected_for(now - conn.opened_at)
        if code is None:
            code, reason = ABNORMAL, reason or "connection lost"
        verdict = close_decision(code)
        if verdict == "stop" or (verdict == "refresh" and not self.can_refresh):
            return self._stop(Stop(code, reason))
        return self._retry(code, reason, random, refresh=verdict == "refresh")

    def handshake_refused(self, status: int, reason: str, random: float) -> Decision:
        """The server answered the upgrade with HTTP *status* instead of ``101``."""
        if status == 401 and self.can_refresh:
            return self._retry(None, reason, random, refresh=True, status=status)
        if status == 429 or 500 <= status <= 599:
            return self._retry(None, reason, random, status=status)
        return self._stop(Stop(None, reason, status))

    def connect_failed(self, reason: str, random: float) -> Decision:
        """No connection could be opened (refused, reset, DNS, TLS)."""
        return self._retry(None, reason, random)

    def close(self) -> None:
        """The application closes the client: no reconnect after this."""
        self._conn = None
        if self._stopped is None:
            self._stopped = Stop(1000, "closed by the client")

    # -- internals ------------------------------------------------------------------------

    def _retry(
        self,
        code: int | None,
        reason: str,
        random: float,
        *,
        refresh: bool = False,
        status: int | None = None,
    ) -> Decision:
        if self._stopped is not None:
            return self._stopped
        if not self._reconnect:
            return self._stop(Stop(code, reason, status))
        return Reconnect(
            self.backoff.next_delay(random), code, reason, refresh and self.can_refresh
        )

    def _stop(self, stop: Stop) -> Stop:
        if self._stopped is None:
            self._stopped = stop
        return self._stopped

    def _queue(self, kind: str, data: Any) -> None:
        self._out.append(
            json.dumps({"type": kind, "data": data}, separators=(",", ":"), ensure_ascii=False)
        )

    def _require_connection(self) -> None:
        if self._conn is None:
            raise LocalProtocolError("not connected")

    def _schedule_refresh(
        self, conn: _Connection, expiry: float | None, now: float, wall: float
    ) -> None:
        if expiry is None or not self.can_refresh:
            conn.refresh_at = None
            return
        remaining = expiry - wall
        # refresh_margin before exp; a token with less left than that refreshes at half
        # of what is left (never in the past).
        ahead = remaining - self.refresh_margin
        conn.refresh_at = now + (ahead if ahead > 0 else max(remaining, 0.0) / 2)
