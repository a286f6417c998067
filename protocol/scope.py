"""Scoped delivery (PROTOCOL.md section 4a): channels, audiences and who may subscribe.

Everything here is pure: values and functions, no hub, no session, no clock.

* :func:`validate_channel`: a channel name is 1–128 characters from ``[A-Za-z0-9_.:@/-]``
  (``conversation:conv-123``, ``agent:CLOUD_ASSISTANT``).
* :class:`Scope`: to whom one broadcast goes, an audience (``userIds``) and/or a
  ``channel``. :data:`EVERYONE` is the seed's rule: every authenticated connection.
* :func:`receives`: **the** delivery rule. Whether a connection of user *U* (``None``:
  unauthenticated) subscribed to channels *S* receives a message of scope *X*. Every way
  a broadcast can reach a connection (live, across processes, in a resume replay) keeps
  this rule; the hub's indexes only make it cheap.
* :class:`ChannelGrant`: what an identity may subscribe to (every channel, none, or exact
  names and ``prefix*`` patterns), as the authenticator says
  (:attr:`~agentcast.protocol.Identity.channels`).
* :class:`PendingVerdict`: an application's own answer (its
  :class:`~agentcast.protocol.auth.ChannelAuthorizer`: identity and channel in, yes or no
  out) may come later, so that a lookup in a database does not block the event loop.
* :func:`parse_user_ids` and :func:`split_scope`: validation of ``userIds`` and
  ``channel`` for the in-process API and the publish API.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final, NamedTuple
from urllib.parse import parse_qsl

from .errors import LocalProtocolError

__all__ = [
    "ALL_CHANNELS",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "EVERYONE",
    "MAX_CHANNEL_LENGTH",
    "MAX_USER_IDS",
    "MAX_USER_ID_LENGTH",
    "NO_CHANNELS",
    "ChannelGrant",
    "PendingVerdict",
    "Scope",
    "Verdict",
    "channels_in_query",
    "is_channel",
    "parse_user_ids",
    "receives",
    "split_scope",
    "validate_channel",
]

MAX_CHANNEL_LENGTH: Final = 128
#: A broadcast names at most this many users (PROTOCOL.md 4a); more is a fan-out to
#: everyone in disguise, and a batch item of 1,000 ids is already ~20 KiB of JSON.
MAX_USER_IDS: Final = 1000
#: The longest user id a scope may name (the JWT ``sub`` limit, the same reason: ids go
#: into messages and indexes).
MAX_USER_ID_LENGTH: Final = 256
#: Subscriptions per connection (PROTOCOL.md 4a); ``Settings.max_subscriptions``.
DEFAULT_MAX_SUBSCRIPTIONS: Final = 100

_CHANNEL = re.compile(r"[A-Za-z0-9_.:@/\-]{1,128}", re.ASCII)
_PREFIX = re.compile(r"[A-Za-z0-9_.:@/\-]{0,127}", re.ASCII)


def is_channel(name: object) -> bool:
    """Whether *name* is a valid channel name."""
    return isinstance(name, str) and _CHANNEL.fullmatch(name) is not None


def validate_channel(name: object, field: str = "channel") -> str:
    """*name* if it is a valid channel name, else :class:`ValueError` naming *field*."""
    if not is_channel(name):
        raise ValueError(
            f"{field} must be 1 to {MAX_CHANNEL_LENGTH} characters from A-Z a-z 0-9 _ . : @ / -"
        )
    assert isinstance(name, str)
    return name


@functools.lru_cache(maxsize=1)
def query_pairs(query: str) -> tuple[tuple[str, str], ...]:
    """``parse_qsl(query, keep_blank_values=True)``, parsed once for the several readers
    of one upgrade's query (the token, ``channels``, ``since``)."""
    return tuple(parse_qsl(query, keep_blank_values=True))


def channels_in_query(query: str) -> list[str]:
    """The channels a client asks for while connecting: ``channels=a,b`` in the URL
    (PROTOCOL.md 4a). Comma-separated, URL-decoded, blanks around names and empty entries
    ignored, each name once, in order. Names are not validated here: the session answers
    each one as it answers a ``subscribe``.
    """
    names: dict[str, None] = {}
    for key, value in query_pairs(query):
        if key == "channels":
            for part in value.split(","):
                name = part.strip()
                if name:
                    names[name] = None
    return list(names)


# -- to whom a broadcast goes ------------------------------------------------------------


class Scope(NamedTuple):
    """To whom one broadcast goes (PROTOCOL.md 4a).

    ``user_ids``: the connections of these users only (``None``: any user).
    ``channel``: the connections subscribed to this channel only (``None``: no channel).
    Both: the subscribed connections of those users. Neither (:data:`EVERYONE`): every
    authenticated connection, the seed's rule. Build one with :meth:`of`, which validates.
    (A named tuple: immutable, and cheap to build once per published message.)
    """

    user_ids: frozenset[str] | None = None
    channel: str | None = None

    @classmethod
    def of(
        cls,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
        user_id: str | None = None,
    ) -> Scope:
        """A validated scope; :class:`ValueError` with the reason otherwise.

        *user_id* is a notification's single ``userId``, the one-element audience; it and
        *user_ids* exclude each other.
        """
        audience: frozenset[str] | None = None
        if user_id is not None:
            if user_ids is not None:
                raise ValueError("give userId or userIds, not both")
            if not isinstance(user_id, str):
                raise ValueError("userId must be a string")
            if not user_id:
                raise ValueError("userId must not be empty")
            audience = parse_user_ids([user_id], "userId")
        elif user_ids is not None:
            audience = parse_user_ids(user_ids)
        if channel is not None:
            validate_channel(channel)
        if audience is None and channel is None:
            return EVERYONE
        return cls(audience, channel)

    @property
    def everyone(self) -> bool:
        """Whether this is the seed's rule: every authenticated connection."""
        return self.user_ids is None and self.channel is None

    def to_data(self) -> dict[str, object]:
        """The publish API form (``userIds`` sorted, ``channel``); ``{}`` for everyone."""
        data: dict[str, object] = {}
        if self.user_ids is not None:
            data["userIds"] = sorted(self.user_ids)
        if self.channel is not None:
            data["channel"] = self.channel
        return data


#: Every authenticated connection (no audience, no channel).
EVERYONE: Final = Scope()


def receives(scope: Scope, user_id: str | None, subscriptions: Collection[str]) -> bool:
    """The delivery rule of PROTOCOL.md 4a, for one connection and one broadcast.

    A connection of *user_id* (``None``: not authenticated) subscribed to the channels
    *subscriptions* receives a broadcast of *scope* when it is authenticated, its user is
    in the audience (if the scope names one), and it is subscribed to the channel (if the
    scope names one). Nothing else decides.
    """
    if user_id is None:
        return False
    if scope.user_ids is not None and user_id not in scope.user_ids:
        return False
    return scope.channel is None or scope.channel in subscriptions


def parse_user_ids(value: object, field: str = "userIds") -> frozenset[str]:
    """A validated audience: 1 to 1,000 non-empty user ids (duplicates count once).

    *value* is any collection of strings (a JSON array, a list, a set); one string alone
    is refused (``user_ids="alice"`` would otherwise mean five one-letter users), and so
    is a mapping. The limit is on the entries as given, repeated ones included.
    """
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"{field} must be a list of user ids")
    ids: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{field} must hold non-empty strings")
        if len(item) > MAX_USER_ID_LENGTH:
            raise ValueError(f"{field}: a user id is longer than {MAX_USER_ID_LENGTH} characters")
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{field}: a user id is not valid Unicode") from None
        ids.append(item)
        if len(ids) > MAX_USER_IDS:
            break
    if not 1 <= len(ids) <= MAX_USER_IDS:
        raise ValueError(f"{field} must name 1 to {MAX_USER_IDS:,} users")
    return frozenset(ids)


def split_scope(data: object) -> tuple[object, Scope]:
    """Take ``userIds`` and ``channel`` out of a publish API item (PROTOCOL.md 8).

    Returns the item without them (for the payload's own ``from_data``) and its scope. A
    notification's ``userId`` stays in the item; with ``userIds`` beside it, the item is
    refused (:class:`ValueError`). Anything that is not an object is returned unchanged
    (its ``from_data`` refuses it).
    """
    if not isinstance(data, Mapping) or ("userIds" not in data and "channel" not in data):
        return data, EVERYONE
    rest = {k: v for k, v in data.items() if k not in ("userIds", "channel")}
    if "userIds" in data and rest.get("userId") is not None:
        raise ValueError("give userId or userIds, not both")
    user_ids = parse_user_ids(data["userIds"]) if "userIds" in data else None
    channel = validate_channel(data["channel"]) if "channel" in data else None
    return rest, Scope(user_ids, channel)  # both validated just above


# -- who may subscribe to what -----------------------------------------------------------


class ChannelGrant:
    """The channels an identity may subscribe to: all, none, or exact names and patterns.

    A pattern is a prefix followed by ``*`` (``conversation:team-*`` allows
    ``conversation:team-1``; ``*`` alone allows every channel). Build it with
    :meth:`parse`, or use :data:`ALL_CHANNELS` / :data:`NO_CHANNELS`.
    """

    __slots__ = ("_everything", "_names", "_prefixes")

    def __init__(
        self, names: Iterable[str] = (), prefixes: Iterable[str] = (), *, everything: bool = False
    ) -> None:
        self._names = frozenset(names)
        self._prefixes = tuple(sorted(set(prefixes)))
        self._everything = everything or "" in self._prefixes

    @classmethod
    def parse(cls, patterns: object, field: str = "channels") -> ChannelGrant:
        """From a list of names and ``prefix*`` patterns (a JWT claim, a configuration).

        :class:`ValueError` for anything else: not a list of strings, or an entry that
        is neither a channel name nor a channel-name prefix followed by ``*``.
        """
        if isinstance(patterns, str | bytes | Mapping) or not isinstance(patterns, Iterable):
            raise ValueError(f"{field} must be a list of channel names or patterns")
        names: list[str] = []
        prefixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ValueError(f"{field} must hold strings")
            if pattern.endswith("*") and _PREFIX.fullmatch(pattern[:-1]) is not None:
                prefixes.append(pattern[:-1])
            elif is_channel(pattern):
                names.append(pattern)
            else:
                raise ValueError(f"{field} holds an entry that is not a channel or a pattern")
        return cls(names, prefixes)

    def allows(self, channel: str) -> bool:
        """Whether *channel* may be subscribed to."""
        if self._everything or channel in self._names:
            return True
        return any(channel.startswith(prefix) for prefix in self._prefixes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelGrant):
            return NotImplemented
        if self._everything or other._everything:
            return self._everything == other._everything
        return self._names == other._names and self._prefixes == other._prefixes

    def __hash__(self) -> int:
        return hash((self._everything, self._names, self._prefixes))

    def __repr__(self) -> str:
        if self._everything:
            return "ChannelGrant(everything=True)"
        return f"ChannelGrant(names={sorted(self._names)!r}, prefixes={list(self._prefixes)!r})"


#: Every channel (the dev authenticator, a static table without channel configuration).
ALL_CHANNELS: Final = ChannelGrant(everything=True)
#: No channel (a JWT without a ``channels`` claim).
NO_CHANNELS: Final = ChannelGrant()


class PendingVerdict:
    """A subscription verdict that comes later (an application's asynchronous lookup).

    An authorizer returns one instead of ``True``/``False`` and, when its lookup is done,
    calls :meth:`complete` with the answer and the time, from the adapter's event loop
    (the thread that feeds the core). The waiting session then answers the client. A
    verdict is completed once; a session that is gone by then is simply not answered.
    """

    __slots__ = ("_allowed", "_waiters")

    def __init__(self) -> None:
        self._allowed: bool | None = None
        self._waiters: list[Callable[[bool, float, float], None]] = []

    @property
    def done(self) -> bool:
        return self._allowed is not None

    @property
    def allowed(self) -> bool | None:
        """The answer, or ``None`` while pending."""
        return self._allowed

    def complete(self, allowed: bool, *, now: float, wall: float) -> None:
        """Give the answer. :class:`LocalProtocolError` if it was already given."""
        if self._allowed is not None:
            raise LocalProtocolError("this verdict has already been completed")
        self._allowed = bool(allowed)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter(self._allowed, now, wall)

    def add_waiter(self, waiter: Callable[[bool, float, float], None]) -> None:
        """Call *waiter(allowed, now, wall)* on completion (the session does this)."""
        if self._allowed is not None:
            raise LocalProtocolError("this verdict has already been completed")
        self._waiters.append(waiter)


#: An authorizer's answer: now (``True``/``False``) or later (:class:`PendingVerdict`).
Verdict = bool | PendingVerdict
