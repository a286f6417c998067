"""Who may open a WebSocket (or an event stream): origin, connection limits and rate.

The :class:`~agentcast.protocol.Hub` holds one :class:`Admission`; every
:class:`~agentcast.protocol.ServerConnection` asks it at the upgrade, before the ``101``:

1. the ``Origin`` allow-list (``403``), see :mod:`agentcast.protocol.origin`;
2. ``max_connections`` in total and ``max_connections_per_ip`` per remote address
   (``503``);
3. ``connection_rate``, new WebSocket connections per second per process, a token bucket
   (``503`` with ``Retry-After``). It is consulted last, so attempts already refused for
   another reason do not use up the allowance of everyone else;
4. once the token's verdict is in (still before the ``101``), ``max_connections_per_user``
   for a user, ``max_unauthenticated_connections`` for a connection without a valid
   token (``503``): token-less sockets cannot take the places of users.

An admitted upgrade holds a :class:`Ticket`, counted from the moment the upgrade is
requested (so upgrades waiting for a slow authenticator count too) until the connection
is closed, whichever way it ends; :meth:`Admission.release` is idempotent.

Where the adapter sees TCP connections (the reference server), ``max_connections_per_ip``
counts *every* one of them from the moment it is accepted (:meth:`Admission.connect`),
not only upgrades: silent sockets, and requests whose bodies are still arriving, hold a
file descriptor too. The upgrade on such a connection then skips the address count (it
holds one already). Under ASGI the HTTP server owns the sockets, and the address count
applies to upgrades.

Addresses are counted as the adapter reports them, except that an IPv4-mapped IPv6
address counts as its IPv4 address and any other IPv6 address counts as its /64: one
host usually holds a whole /64, so counting single IPv6 addresses would limit nothing.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .answers import HttpAnswer
from .origin import OriginAllowList
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["Admission", "Ticket", "address_key"]


@dataclass(frozen=True, slots=True)
class _Limit:
    """A refusal and what was exceeded, for metrics (:attr:`Admission.refused`)."""

    name: str
    answer: HttpAnswer


class Ticket:
    """One admitted connection's place in the counts."""

    __slots__ = ("address", "released", "total", "unauthenticated", "user_id")

    def __init__(self, address: str | None, *, total: bool = True) -> None:
        self.address = address
        #: Counted in ``max_connections`` (an upgrade), or only per address (a TCP
        #: connection, :meth:`Admission.connect`).
        self.total = total
        self.user_id: str | None = None
        self.unauthenticated = False
        self.released = False


@functools.lru_cache(maxsize=4096)
def address_key(client: str | None) -> str | None:
    """The key *client* (an address as the adapter reports it) is counted under
    (remembered for the last few thousand addresses: clients come back)."""
    if client is None:
        return None
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


_FORBIDDEN_ORIGIN = _Limit("origin", HttpAnswer.plain(403, "Forbidden: origin not allowed"))
_TOO_MANY = _Limit(
    "max_connections", HttpAnswer.plain(503, "Service Unavailable: too many connections")
)
_TOO_MANY_FROM_ADDRESS = _Limit(
    "max_connections_per_ip",
    HttpAnswer.plain(503, "Service Unavailable: too many connections from this address"),
)
_TOO_MANY_FOR_USER = _Limit(
    "max_connections_per_user",
    HttpAnswer.plain(503, "Service Unavailable: too many connections for this user"),
)
_TOO_MANY_UNAUTHENTICATED = _Limit(
    "max_unauthenticated_connections",
    HttpAnswer.plain(503, "Service Unavailable: too many connections without a valid token", ()),
)


class Admission:
    """Counts connections per process, per address and per user; decides upgrades."""

    __slots__ = (
        "_bodies",
        "_bucket",
        "_origins",
        "_per_address",
        "_per_user",
        "_settings",
        "_total",
        "_unauthenticated",
        "refused",
    )

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        origins = settings.allowed_origins
        self._origins = None if origins is None else OriginAllowList(origins)
        self._total = 0
        self._per_address: dict[str, int] = {}
        self._per_user: dict[str, int] = {}
        self._unauthenticated = 0
        self._bodies = 0  # bytes of request bodies being received, reserved at the head
        # One second's worth of connections; full at the first upgrade it sees.
        rate = settings.connection_rate
        self._bucket = None if rate is None else TokenBucket(rate, max(1.0, rate))
        #: Refused upgrades by what was exceeded (``origin``, ``max_connections``,
        #: ``max_connections_per_ip``, ``max_connections_per_user``,
        #: ``max_unauthenticated_connections``, ``connection_rate``; ``auth`` for a 401),
        #: for metrics.
        self.refused: Counter[str] = Counter()

    # -- counts -------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Admitted connections not yet closed (upgrading or open)."""
        return self._total

    def connections_from(self, client: str | None) -> int:
        """Admitted connections counted under *client*'s address."""
        key = address_key(client)
        return 0 if key is None else self._per_address.get(key, 0)

    def connections_of(self, user_id: str) -> int:
        """Admitted connections authenticated as *user_id*."""
        return self._per_user.get(user_id, 0)

    @property
    def unauthenticated(self) -> int:
        """Admitted connections without a valid token."""
        return self._unauthenticated

    @property
    def pending_bodies(self) -> int:
        """Bytes reserved for request bodies being received."""
        return self._bodies

    # -- decisions ----------------------------------------------------------------------

    def reserve_body(self, size: int) -> bool:
        """Reserve *size* bytes of ``max_pending_body_bytes`` for a request body about to
        be read; ``False`` (nothing reserved) if they do not fit. Give them back with
        :meth:`release_body` once the body is read or the connection is gone."""
        if self._bodies + size > self._settings.max_pending_body_bytes:
            self.refused["max_pending_body_bytes"] += 1
            return False
        self._bodies += size
        return True

    def release_body(self, size: int) -> None:
        """Give back what :meth:`reserve_body` reserved."""
        self._bodies -= size

    def origin_allowed(self, headers: Iterable[tuple[str, str]]) -> bool:
        """Whether the request's ``Origin`` passes the allow-list (absent: yes)."""
        if self._origins is None:
            return True
        values = [value for name, value in headers if name.lower() == "origin"]
        if not values:
            return True
        # More than one Origin is not something a browser sends: refuse the ambiguity.
        return len(values) == 1 and self._origins.allows(values[0])

    def connect(self, client: str | None) -> Ticket | HttpAnswer:
        """A TCP connection from *client* was accepted: a :class:`Ticket` counted under
        its address until released, or the answer that refuses it (``503``) over
        ``max_connections_per_ip``."""
        address = address_key(client)
        if self._address_full(address):
            self.refused[_TOO_MANY_FROM_ADDRESS.name] += 1
            return _TOO_MANY_FROM_ADDRESS.answer
        self._count_address(address)
        return Ticket(address, total=False)

    def admit(
        self,
        headers: Iterable[tuple[str, str]],
        client: str | None,
        now: float,
        *,
        ticket: Ticket | None = None,
    ) -> Ticket | HttpAnswer:
        """Decide an upgrade from *client*: a :class:`Ticket`, counted until released, or
        the answer that refuses it. *ticket*: the connection's ticket of :meth:`connect`,
        which then counts for the upgrade too (the address is not counted again)."""
        settings = self._settings
        refusal: _Limit | None = None
        address = None if ticket is not None else address_key(client)
        if not self.origin_allowed(headers):
            refusal = _FORBIDDEN_ORIGIN
        elif settings.max_connections is not None and self._total >= settings.max_connections:
            refusal = _TOO_MANY
        elif self._address_full(address):
            refusal = _TOO_MANY_FROM_ADDRESS
        else:
            refusal = self._take_rate_token(now)
        if refusal is not None:
            self.refused[refusal.name] += 1
            return refusal.answer
        self._total += 1
        if ticket is not None:
            ticket.total = True
            return ticket
        self._count_address(address)
        return Ticket(address)

    def admit_user(self, ticket: Ticket, user_id: str) -> HttpAnswer | None:
        """Count *ticket*'s connection for *user_id*, or refuse it (the caller then
        rejects the upgrade and releases the ticket)."""
        if ticket.released or ticket.user_id is not None:
            return None
        limit = self._settings.max_connections_per_user
        if limit is not None and self._per_user.get(user_id, 0) >= limit:
            self.refused[_TOO_MANY_FOR_USER.name] += 1
            return _TOO_MANY_FOR_USER.answer
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        ticket.user_id = user_id
        return None

    def admit_unauthenticated(self, ticket: Ticket) -> HttpAnswer | None:
        """Count *ticket*'s connection as one without a valid token, or refuse it over
        ``max_unauthenticated_connections`` (the caller then rejects the upgrade and
        releases the ticket)."""
        limit = self._settings.max_unauthenticated_connections
        if limit is not None and self._unauthenticated >= limit:
            self.refused[_TOO_MANY_UNAUTHENTICATED.name] += 1
            return _TOO_MANY_UNAUTHENTICATED.answer
        self._unauthenticated += 1
        ticket.unauthenticated = True
        return None

    def release(self, ticket: Ticket) -> None:
        """The connection is closed: give its places back. Idempotent."""
        if ticket.released:
            return
        ticket.released = True
        if ticket.total:
            self._total -= 1
        if ticket.unauthenticated:
            self._unauthenticated -= 1
        _decrement(self._per_address, ticket.address)
        _decrement(self._per_user, ticket.user_id)

    def _address_full(self, address: str | None) -> bool:
        limit = self._settings.max_connections_per_ip
        return (
            address is not None and limit is not None and self._per_address.get(address, 0) >= limit
        )

    def _count_address(self, address: str | None) -> None:
        if address is not None:
            self._per_address[address] = self._per_address.get(address, 0) + 1

    def _take_rate_token(self, now: float) -> _Limit | None:
        bucket = self._bucket
        if bucket is None or bucket.take(now):
            return None
        retry = (("retry-after", str(bucket.retry_after())),)
        return _Limit(
            "connection_rate",
            HttpAnswer.plain(
                503, "Service Unavailable: too many new connections, retry later", retry
            ),
        )


def _decrement(counts: dict[str, int], key: str | None) -> None:
    if key is None:
        return
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
