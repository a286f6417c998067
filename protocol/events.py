"""Events the core hands to its adapter (``events_received()``).

Small frozen, slotted, keyword-only dataclasses on one base, as in h11; adapters
dispatch on them with ``match`` and end with ``assert_never``. Tokens are never part
of a ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AuthRequested",
    "BytesReceived",
    "ConnectionClosed",
    "Event",
    "HttpRequest",
    "TextReceived",
    "UpgradeRequested",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest(Event):
    """A plain HTTP request (not an upgrade) that the adapter must answer.

    The body has been read whole and is within the configured size limit. Answer with
    ``send_http_response(...)``; the connection closes after the response.
    """

    method: str
    path: str
    # Not in the repr: the query may hold a token, the headers an API key (logs).
    query: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)
    client: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeRequested(Event):
    """A valid WebSocket upgrade for our path; the owner must ``accept()`` or ``reject()``."""

    path: str
    query: str = field(repr=False)  # may hold the token
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    subprotocols: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequested(Event):
    """The core needs a verdict on *token*: call ``complete_auth(result, now, wall)``.

    ``refresh`` is true for an in-band ``auth`` message on an open connection.
    """

    token: str = field(repr=False)
    refresh: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TextReceived(Event):
    """A complete text message (framing layer only: the session consumes these itself)."""

    text: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BytesReceived(Event):
    """A complete binary message (framing layer only)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The WebSocket session is over: *code* is the close code in effect (1006: no close
    frame, the transport just ended). Flush ``data_to_send()`` and close the socket."""

    code: int
    reason: str = ""
