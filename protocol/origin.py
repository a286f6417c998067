"""The ``Origin`` allow-list against cross-site WebSocket hijacking.

A browser attaches its cookies and other ambient credentials to a WebSocket upgrade
whatever page opened it, and the WebSocket API has no same-origin policy: a page on
``https://evil.example`` can open ``wss://our.server/ws``. What the browser does not let
that page forge is the ``Origin`` header. So when an allow-list is configured, an upgrade
whose ``Origin`` is not on it is refused with ``403``.

An upgrade *without* ``Origin`` is allowed: every browser sends the header on every
WebSocket handshake (RFC 6455 4.1, Fetch), so its absence means a non-browser client (a
CLI, a service, the Node client), which has no victim's cookies to abuse and could send
any ``Origin`` it liked anyway. The check protects browsers' users; it is not
authentication.

Patterns are serialized origins, ``scheme://host[:port]``, compared exactly (scheme, host
and port; the default port of the scheme may be written or left out), or with a wildcard
first label, ``https://*.example.com``, which matches ``https://a.example.com`` and
``https://a.b.example.com`` but neither ``https://example.com`` nor
``https://evilexample.com``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OriginAllowList"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int | None  # None: the scheme's default port (or a scheme without one)


def _parse(value: str, *, wildcard: bool = False) -> _Origin | None:
    if "://" not in value or any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    if (
        not parts.scheme
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        return None
    if "*" in host and not (
        wildcard and host.startswith("*.") and len(host) > 2 and "*" not in host[2:]
    ):
        return None
    scheme = parts.scheme.lower()
    if port is not None and port == _DEFAULT_PORTS.get(scheme):
        port = None
    return _Origin(scheme, host.lower(), port)


class OriginAllowList:
    """A compiled list of allowed origins. Raises :class:`ValueError` for a bad pattern."""

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        self._exact: set[_Origin] = set()
        self._suffixes: list[_Origin] = []  # host holds ".example.com"
        for pattern in patterns:
            origin = _parse(pattern.strip(), wildcard=True)
            if origin is None:
                raise ValueError(
                    f"not an origin pattern: {pattern!r} "
                    "(expected scheme://host[:port] or scheme://*.domain[:port])"
                )
            if origin.host.startswith("*."):
                self._suffixes.append(_Origin(origin.scheme, origin.host[1:], origin.port))
            else:
                self._exact.add(origin)

    def allows(self, origin: str) -> bool:
        """Whether the ``Origin`` header value *origin* is on the list."""
        parsed = _parse(origin.strip())
        if parsed is None:  # "null" (sandboxed frames, file:) and anything malformed
            return False
        if parsed in self._exact:
            return True
        return any(
            parsed.scheme == s.scheme
            and parsed.port == s.port
            and parsed.host.endswith(s.host)
            and len(parsed.host) > len(s.host)
            for s in self._suffixes
        )
