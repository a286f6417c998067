"""From a WebSocket upgrade request to an open session: the decisions, without a transport.

Whoever does the HTTP upgrade (the core's own :class:`~agentcast.protocol.ServerConnection`
over h11 and wsproto, or an ASGI server for the ASGI adapter) asks an :class:`Upgrade`
what to answer, in this order (PROTOCOL.md sections 1 and 2). A request for the event
stream (PROTOCOL.md 11) takes the same way, with the token also from a cookie
(:data:`TOKEN_COOKIE`), and a ``200`` head instead of the ``101``
(:mod:`agentcast.protocol.sse`):

1. admission at the request: origin (``403``), connection limits and rate (``503``),
   see :mod:`agentcast.protocol.admission`;
2. the token: from the query, ``Authorization: Bearer`` or a ``bearer.<token>``
   subprotocol (:func:`extract_token`); the adapter runs the authenticator on it; the
   resume point (:attr:`Upgrade.since`) from ``Last-Event-ID`` or ``since``;
3. the verdict: with ``require_auth`` a missing or refused token is ``401``; an identity
   is counted against ``max_connections_per_user``, a missing or refused token against
   ``max_unauthenticated_connections`` (``503``);
4. accept (with :attr:`Upgrade.subprotocol`), then :meth:`Upgrade.open` the
   :class:`~agentcast.protocol.Session` on the adapter's :class:`~agentcast.protocol.Sink`.

Drive it like this::

    upgrade = Upgrade(hub, query=q, headers=h, subprotocols=p, client=addr, now=now)
    refusal = upgrade.refusal                   # 403/503 at the request, or None
    if refusal is None:
        result = None if upgrade.token is None else authenticator.authenticate(...)
        refusal = upgrade.decide(result)        # 401/503, or None
    if refusal is not None:
        answer with the refusal (an HttpAnswer); no WebSocket
    else:
        accept with upgrade.subprotocol, then session = upgrade.open(sink, result, ...)
    ...
    upgrade.release()                           # when the connection is over, however

The connection holds its place in the hub's counts from the request until
:meth:`Upgrade.release` (idempotent; a refusal releases by itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .admission import Ticket
from .answers import HttpAnswer
from .auth import AuthFailure, AuthResult, Identity
from .errors import LocalProtocolError
from .scope import channels_in_query, query_pairs
from .session import Session, Sink

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["SUBPROTOCOL", "TOKEN_COOKIE", "Upgrade", "extract_since", "extract_token"]

#: The subprotocol a browser offers to pass its token as ``bearer.<token>`` (PROTOCOL.md 2).
SUBPROTOCOL = "agentcast.v1"
_BEARER_PROTOCOL = "bearer."
#: The cookie an event stream's token may come in (PROTOCOL.md 11): an ``EventSource``
#: can set neither a header nor a subprotocol, and a cookie keeps the token out of URLs.
TOKEN_COOKIE = "agentcast_token"


def extract_token(
    query: str,
    headers: Iterable[tuple[str, str]],
    subprotocols: Iterable[str],
    *,
    cookie: str | None = None,
) -> tuple[str | None, str | None]:
    """Find the client's token and the subprotocol to select (PROTOCOL.md 2).

    In order: the ``token`` query parameter, ``Authorization: Bearer``, the cookie named
    *cookie* (when given: an event stream's), then a ``bearer.<token>`` subprotocol
    offered beside ``agentcast.v1``. An empty value counts as no token. Returns
    ``(token, subprotocol)``.
    """
    headers = tuple(headers)
    offered = tuple(subprotocols)
    selected = SUBPROTOCOL if SUBPROTOCOL in offered else None
    for key, value in query_pairs(query):
        if key == "token":
            return (value or None), selected
    for key, value in headers:
        if key.lower() == "authorization":
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip(), selected
    if cookie is not None:
        found = _cookie(headers, cookie)
        if found:
            return found, selected
    if selected is not None:
        for proto in offered:
            if proto.startswith(_BEARER_PROTOCOL) and len(proto) > len(_BEARER_PROTOCOL):
                return proto[len(_BEARER_PROTOCOL) :], selected
    return None, selected


def extract_since(query: str, headers: Iterable[tuple[str, str]] = ()) -> str | None:
    """The resume point the client asked for (PROTOCOL.md 7 and 11): the
    ``Last-Event-ID`` header, which a reconnecting ``EventSource`` sends with the id of
    the last event it saw, else the ``since`` query parameter (the header wins: the URL an
    ``EventSource`` reconnects to still holds the ``since`` it first connected with). Any
    value, even malformed, is the history's to judge."""
    for key, value in headers:
        if key.lower() == "last-event-id" and value.strip():
            return value.strip()
    for key, value in query_pairs(query):
        if key == "since":
            return value
    return None


def _cookie(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The value of cookie *name* in the request's ``Cookie`` headers (RFC 6265 5.4:
    ``name=value`` pairs separated by ``;``), or ``None``."""
    for key, value in headers:
        if key.lower() != "cookie":
            continue
        for pair in value.split(";"):
            found, sep, content = pair.strip().partition("=")
            if sep and found.strip() == name:
                return content.strip().strip('"')
    return None


class Upgrade:
    """One upgrade request's way to an open session (or to a refusal). See the module doc."""

    __slots__ = (
        "_decided",
        "_hub",
        "_ticket",
        "channels",
        "refusal",
        "since",
        "subprotocol",
        "token",
    )

    def __init__(
        self,
        hub: Hub,
        *,
        query: str,
        headers: Iterable[tuple[str, str]],
        subprotocols: Iterable[str],
        client: str | None,
        now: float,
        cookie: str | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        """*cookie*: the name of a cookie that may hold the token (an event stream's,
        :data:`TOKEN_COOKIE`); ``None`` for a WebSocket. *ticket*: the connection's place
        under its address, taken when it was accepted
        (:meth:`~agentcast.protocol.admission.Admission.connect`); it then counts for the
        upgrade too."""
        headers = tuple(headers)
        self._hub = hub
        self._ticket: Ticket | None = None
        self._decided = False
        #: The token to verify, or ``None`` (then call :meth:`decide` with ``None``).
        self.token: str | None = None
        #: The subprotocol to select when accepting (``agentcast.v1`` or ``None``).
        self.subprotocol: str | None = None
        #: ``channels=a,b`` in the URL: subscribed right after ``auth`` (PROTOCOL.md 4a).
        #: (A tuple: the connection keeps its upgrade, and a tuple of strings is not
        #: tracked by the garbage collector.)
        self.channels: tuple[str, ...] = ()
        #: The resume point the client asked for (:func:`extract_since`), or ``None``.
        self.since: str | None = None
        decision = hub.admission.admit(headers, client, now, ticket=ticket)
        #: Set when the upgrade is refused (at the request, or by :meth:`decide`).
        self.refusal: HttpAnswer | None = None
        if isinstance(decision, HttpAnswer):
            self.refusal = decision
            return
        self._ticket = decision
        self.token, self.subprotocol = extract_token(query, headers, subprotocols, cookie=cookie)
        self.channels = tuple(channels_in_query(query))
        self.since = extract_since(query, headers)

    def decide(self, result: AuthResult | None) -> HttpAnswer | None:
        """The token's verdict (``None``: there was no token): a refusal, or ``None`` to
        accept. A refusal releases the connection's place."""
        if self.refusal is not None:
            return self.refusal
        if self._decided:
            raise LocalProtocolError("decide() called twice")
        self._decided = True
        admission = self._hub.admission
        refusal: HttpAnswer | None = None
        if isinstance(result, AuthFailure | None) and self._hub.settings.require_auth:
            reason = "missing token" if result is None else result.reason
            admission.refused["auth"] += 1
            refusal = HttpAnswer.plain(
                401, f"Unauthorized: {reason}", (("www-authenticate", "Bearer"),)
            )
        else:
            ticket = self._ticket
            assert ticket is not None  # admitted at the request (or refused above)
            if isinstance(result, Identity):
                refusal = admission.admit_user(ticket, result.user_id)
            else:
                refusal = admission.admit_unauthenticated(ticket)
        if refusal is not None:
            self.refusal = refusal
            self.release()
        return refusal

    def open(
        self,
        sink: Sink,
        result: AuthResult | None,
        *,
        now: float,
        wall: float,
        close_silent: bool = True,
    ) -> Session:
        """The session of the accepted upgrade (right after the ``101`` / accept).

        *close_silent*: see :class:`~agentcast.protocol.Session`.
        """
        if not self._decided or self.refusal is not None:
            raise LocalProtocolError("open() needs an accepted upgrade (decide() first)")
        return Session(
            self._hub,
            sink,
            result,
            now=now,
            wall=wall,
            close_silent=close_silent,
            channels=self.channels,
            since=self.since,
        )

    def release(self) -> None:
        """The connection is over: give its place in the hub's counts back. Idempotent."""
        if self._ticket is not None:
            self._hub.admission.release(self._ticket)
            self._ticket = None
