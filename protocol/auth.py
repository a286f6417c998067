"""Authenticators: token in, identity or reason out (PROTOCOL.md section 2).

The core never calls an authenticator itself. It extracts the token, emits
:class:`~agentcast.protocol.events.AuthRequested`, and the adapter answers with
``complete_auth(result, ...)``: so an authenticator may be a pure function (the dev and
static ones here, a JWT verifier) or something slow the adapter awaits. Anything with a
matching ``authenticate`` method is an :class:`Authenticator`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .scope import ALL_CHANNELS, NO_CHANNELS, ChannelGrant, Verdict

__all__ = [
    "AuthFailure",
    "AuthResult",
    "Authenticator",
    "ChannelAuthorizer",
    "DevAuthenticator",
    "Identity",
    "StaticAuthenticator",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who a token belongs to.

    ``expires_at`` is the wall-clock time (Unix seconds) after which the token is no longer
    valid; the connection is then closed with 4001 unless refreshed (PROTOCOL.md 2).

    ``channels`` is what the identity may subscribe to (PROTOCOL.md 4a): every channel
    unless the authenticator says otherwise (a JWT says it with its ``channels`` claim).
    A hub with an in-process authorizer asks that instead.
    """

    user_id: str
    expires_at: float | None = None
    channels: ChannelGrant = ALL_CHANNELS


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a token was refused. The reason is shown to the client: it never holds the token."""

    reason: str


AuthResult = Identity | AuthFailure


@runtime_checkable
class Authenticator(Protocol):
    """Verifies a token. Must not raise for a bad token: return :class:`AuthFailure`."""

    def authenticate(self, token: str, wall: float) -> AuthResult:
        """Verify *token* at wall-clock time *wall* (Unix seconds)."""
        ...


_DEV_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,128}", re.ASCII)


class DevAuthenticator:
    """The embedded development authenticator: any well-formed token is a user.

    A token of 1–128 characters from ``[A-Za-z0-9_.-]`` authenticates as ``user_<token>``
    (the seed's own example: ``abc123`` is ``user_abc123``). Anyone can be anyone: this is
    for development only, and the server says so loudly when it starts.
    """

    def authenticate(self, token: str, wall: float) -> AuthResult:
        if _DEV_TOKEN.fullmatch(token) is None:
            return AuthFailure("Invalid token")
        return Identity(user_id=f"user_{token}")


@dataclass(frozen=True, slots=True)
class StaticAuthenticator:
    """A fixed table ``token → userId``; tokens are compared in constant time.

    Every user may subscribe to every channel, unless *channels* is given: then a user
    may subscribe to the channel names and ``prefix*`` patterns listed for it (a user not
    listed, to none).
    """

    table: Mapping[str, str] = field(repr=False)
    channels: Mapping[str, Iterable[str]] | None = None
    _grants: Mapping[str, ChannelGrant] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for token, user in self.table.items():
            if not token or not user:
                raise ValueError("static tokens and user ids must not be empty")
        if self.channels is not None:
            grants = {
                user: ChannelGrant.parse(patterns, f"channels of {user}")
                for user, patterns in self.channels.items()
            }
            object.__setattr__(self, "_grants", grants)

    def authenticate(self, token: str, wall: float) -> AuthResult:
        found: str | None = None
        probe = token.encode()
        # Compare against every entry, so the time taken says nothing about which
        # entry (or how much of one) matched.
        for known, user in self.table.items():
            if hmac.compare_digest(probe, known.encode()):
                found = user
        if found is None:
            return AuthFailure("Invalid token")
        if self._grants is None:
            return Identity(user_id=found)
        return Identity(user_id=found, channels=self._grants.get(found, NO_CHANNELS))


class ChannelAuthorizer(Protocol):
    """An application's own subscription rule (PROTOCOL.md 4a), asked instead of the
    identity's grant.

    Called as ``authorizer(identity, channel)`` for each ``subscribe`` (and again for each
    subscription when a refreshed token arrives). It must not raise and must not block:
    an answer that needs I/O is a :class:`~agentcast.protocol.scope.PendingVerdict`,
    completed later.
    """

    def __call__(self, identity: Identity, channel: str, /) -> Verdict: ...
