"""A client's reconnect policy, Sans-IO: what each way a connection ends tells it to do
(PROTOCOL.md 9), and how long to wait before the next attempt.

:func:`close_decision` reads a close code; :class:`Backoff` spaces the attempts out with
full jitter; :class:`Reconnect` and :class:`Stop` are the decisions a
:class:`~agentcast.protocol.client.ClientSession` hands its adapter, and
:class:`Connected` / :class:`Disconnected` the events it surfaces to the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Literal

__all__ = [
    "ABNORMAL",
    "RECONNECT_CODES",
    "TOKEN_EXPIRED",
    "Backoff",
    "Connected",
    "Decision",
    "Disconnected",
    "Reconnect",
    "Stop",
    "close_decision",
]

#: Close codes after which a client reconnects (besides 4000-4499), PROTOCOL.md 9.
#: 1005 (no status) and 1006 (no close frame) mean the connection died without a word.
RECONNECT_CODES: Final = frozenset({1001, 1005, 1006, 1011, 1012, 1013})
TOKEN_EXPIRED: Final = 4001
ABNORMAL: Final = 1006


# -- decisions and events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Connect again after ``delay`` seconds; with ``refresh_token``, get a fresh token
    from the provider first."""

    delay: float
    code: int | None
    reason: str
    refresh_token: bool = False


@dataclass(frozen=True, slots=True)
class Stop:
    """Do not reconnect. ``code`` is the close code (``None``: a refused handshake, whose
    HTTP status is in ``status``)."""

    code: int | None
    reason: str
    status: int | None = None


Decision = Reconnect | Stop


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """A connection is open (the ``auth`` message follows). ``since`` is the id this
    connection resumes from (``None`` on a first connection), ``attempt`` the number of
    reconnects since the last stable connection."""

    type: ClassVar[str] = "connected"
    since: str | None
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected:
    """A connection ended. ``reconnect_in`` is the delay before the next attempt, or
    ``None`` when the client stops here."""

    type: ClassVar[str] = "disconnected"
    code: int | None
    reason: str
    reconnect_in: float | None
    status: int | None = None


def close_decision(code: int | None) -> Literal["reconnect", "refresh", "stop"]:
    """What a close *code* tells a client to do (PROTOCOL.md 9); ``None``: no close frame."""
    if code is None:
        return "reconnect"
    if code == TOKEN_EXPIRED:
        return "refresh"
    if 4000 <= code <= 4499 or code in RECONNECT_CODES:
        return "reconnect"
    return "stop"


# -- back-off ------------------------------------------------------------------------------


@dataclass(slots=True)
class Backoff:
    """Full-jitter exponential back-off: the n-th delay is uniform in
    ``[0, min(cap, base * 2**n))``. ``stable`` seconds connected start it over."""

    base: float = 0.5
    cap: float = 20.0
    stable: float = 60.0
    attempt: int = 0

    def next_delay(self, random: float) -> float:
        """The next delay for *random* drawn uniformly from ``[0, 1)``; counts an attempt."""
        if not 0.0 <= random < 1.0:
            raise ValueError("random must be in [0, 1)")
        # min() before the power would overflow: 2**attempt grows without bound.
        ceiling = self.cap if self.attempt >= 64 else min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random * ceiling

    def connected_for(self, seconds: float) -> None:
        """A connection ended after *seconds* open: a stable one resets the count."""
        if seconds >= self.stable:
            self.attempt = 0
