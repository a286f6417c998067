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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "AuthFailure",
    "AuthResult",
    "Authenticator",
    "DevAuthenticator",
    "Identity",
    "StaticAuthenticator",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who a token belongs to.

    ``expires_at`` is the wall-clock time (Unix seconds) after which the token is no longer
    valid; the connection is then closed with 4001 unless refreshed (PROTOCOL.md 2).
    """

    user_id: str
    expires_at: float | None = None


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
    """A fixed table ``token → userId``; tokens are compared in constant time."""

    table: Mapping[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        for token, user in self.table.items():
            if not token or not user:
                raise ValueError("static tokens and user ids must not be empty")

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
        return Identity(user_id=found)
