"""The dashboard's files over HTTP (PROTOCOL.md section 1, ``GET /``): pure answers.

The adapter reads a file's bytes (package data) once and wraps them in a
:class:`StaticFile`; :func:`static_answer` then answers each ``GET`` or ``HEAD`` of it:
``200`` with the content type, an ``ETag`` and ``Cache-Control: no-cache`` (a browser
revalidates each time and gets ``304`` while the file is unchanged, so an upgrade shows at
once), or ``304`` when ``If-None-Match`` names the current ETag. The page itself also
carries a strict ``Content-Security-Policy`` (only this origin's scripts, styles and
WebSocket: the page has no inline script or style) and ``Referrer-Policy: no-referrer``
(its URL may hold a token until the page removes it).

:func:`dashboard_page` writes the WebSocket endpoint (``settings.path``) into the page,
as a path relative to the page, so the dashboard works wherever the server is mounted.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass

from .answers import HttpAnswer
from .config import Settings

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "ENDPOINT_META",
    "StaticFile",
    "content_type_of",
    "dashboard_page",
    "etag_matches",
    "static_answer",
]

#: The dashboard page's policy: scripts, styles, images (and the empty ``data:`` icon)
#: and connections from its own origin only (``'self'`` covers ``ws:``/``wss:`` of the
#: same host), nothing inline, no framing, no plugins, forms posted nowhere else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: The tag of the page template that :func:`dashboard_page` fills in.
ENDPOINT_META = b'<meta name="agentcast-endpoint" content="ws">'

_UTF8 = "; charset=utf-8"
_CONTENT_TYPES = {
    ".html": "text/html" + _UTF8,
    ".css": "text/css" + _UTF8,
    ".js": "text/javascript" + _UTF8,
    # TypeScript has no registered media type; as text, a browser shows it.
    ".d.ts": "text/plain" + _UTF8,
}


def content_type_of(name: str) -> str:
    """The media type of a file of the dashboard by its *name*'s suffix."""
    for suffix, content_type in _CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return "application/octet-stream"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A file's bytes and what its answers say about them."""

    name: str
    body: bytes
    content_type: str
    #: A strong validator: a hash of the bytes, quoted.
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> StaticFile:
        """The file *name* (``index.html``) holding *body*."""
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return cls(name, body, content_type_of(name), etag)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names *etag* (``*``, or a list of tags
    compared weakly, RFC 9110 13.1.2)."""
    if if_none_match is None:
        return False
    for part in if_none_match.split(","):
        tag = part.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def static_answer(method: str, if_none_match: str | None, file: StaticFile) -> HttpAnswer:
    """The answer to ``GET`` or ``HEAD`` (*method*) of *file*: ``200``, or ``304`` when
    *if_none_match* names its ETag; a ``HEAD`` gets the headers only."""
    headers: list[tuple[str, str]] = [
        ("etag", file.etag),
        ("cache-control", "no-cache"),
        ("x-content-type-options", "nosniff"),
    ]
    if file.content_type.startswith("text/html"):
        headers += [
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
        ]
    if etag_matches(if_none_match, file.etag):
        # 304: no content type, no body; the length is the 200's (RFC 9110 8.6).
        return HttpAnswer(304, tuple(headers), file.body, body_omitted=True)
    answer = HttpAnswer(200, (("content-type", file.content_type), *headers), file.body)
    return answer.without_body() if method == "HEAD" else answer


def dashboard_page(template: bytes, settings: Settings) -> bytes:
    """The page template with the WebSocket endpoint filled in, relative to the page
    (``/ws`` -> ``ws``), so that a page served under a mount point (``/realtime/``)
    connects to the endpoint under it."""
    endpoint = html.escape(settings.path.lstrip("/"), quote=True)
    tag = b'<meta name="agentcast-endpoint" content="' + endpoint.encode() + b'">'
    return template.replace(ENDPOINT_META, tag, 1)
