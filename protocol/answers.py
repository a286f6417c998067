"""HTTP answers: one type for every response the core decides, and its wire form.

An :class:`HttpAnswer` is a status, headers and a body. The core's own HTTP phase writes
it with :meth:`HttpAnswer.to_bytes`; an adapter whose HTTP server writes responses (ASGI)
takes :attr:`HttpAnswer.status` and :meth:`HttpAnswer.header_fields`. The ``content-type``
is one of the headers; ``content-length`` is computed, never stored.

The answers of PROTOCOL.md section 1 that do not depend on how the request was parsed
are here too, so the core and the adapters give the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from http import HTTPStatus

from .errors import LocalProtocolError

__all__ = [
    "JSON",
    "PLAIN_TEXT",
    "HttpAnswer",
    "body_too_large",
    "not_an_upgrade",
    "wrong_path",
]

#: The media type of the JSON answers (health, publish API).
JSON = "application/json"
#: The media type of the one-line plain-text answers (refused upgrades, bad requests).
PLAIN_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """One HTTP response: *status*, *headers* (``content-type`` first), *body*.

    With *body_omitted* (the answer to ``HEAD``, or a ``304``) the headers, the
    ``content-length`` included, are those of the full answer, and the body is not sent.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    body_omitted: bool = False

    @classmethod
    def plain(cls, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> HttpAnswer:
        """*reason* as a one-line plain-text body (a refusal or an error)."""
        return cls(status, (("content-type", PLAIN_TEXT), *headers), reason.encode() + b"\n")

    @classmethod
    def json(cls, status: int, obj: object, headers: Iterable[tuple[str, str]] = ()) -> HttpAnswer:
        """*obj* as a compact JSON body."""
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, (("content-type", JSON), *headers), body)

    @property
    def content_type(self) -> str:
        """The ``content-type`` header's value (``""`` if none)."""
        return next((value for name, value in self.headers if name == "content-type"), "")

    def without_body(self) -> HttpAnswer:
        """This answer's headers, and no body on the wire (see :attr:`body_omitted`)."""
        return replace(self, body_omitted=True)

    @property
    def wire_body(self) -> bytes:
        """The bytes sent after the headers: the body, or nothing."""
        return b"" if self.body_omitted else self.body

    def header(self, name: str) -> str | None:
        """The first value of header *name* (lower case), or ``None``."""
        return next((value for key, value in self.headers if key == name), None)

    def header_fields(self) -> list[tuple[bytes, bytes]]:
        """The headers as bytes, ``content-length`` added (what ASGI's ``headers`` takes)."""
        fields = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers]
        fields.insert(1, (b"content-length", str(len(self.body)).encode()))
        return fields

    def to_bytes(self) -> bytes:
        """The HTTP/1.1 response, closing the connection (``Connection: close``).

        Raises :class:`~agentcast.protocol.LocalProtocolError` if a header holds CR or LF.
        """
        lines = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}"]
        for name, value in self.headers:
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise LocalProtocolError("header names and values must not contain CR or LF")
            lines.append(f"{name}: {value}")
        # After the content type (always first), as every answer has them.
        lines[2:2] = [f"content-length: {len(self.body)}", "connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.wire_body


def not_an_upgrade(method: str) -> HttpAnswer:
    """A plain HTTP request for the WebSocket endpoint: ``426`` for ``GET`` (with
    ``Upgrade: websocket``), ``400`` for any other method (a bad upgrade)."""
    if method == "GET":
        return HttpAnswer.plain(
            426, "Upgrade Required: this endpoint speaks WebSocket", (("upgrade", "websocket"),)
        )
    return HttpAnswer.plain(400, "Bad Request: WebSocket upgrade must use GET")


def wrong_path(endpoint: str) -> HttpAnswer:
    """An upgrade for a path other than the WebSocket *endpoint*: ``404``."""
    return HttpAnswer.plain(404, f"Not Found: the WebSocket endpoint is {endpoint}")


def body_too_large(limit: int) -> HttpAnswer:
    """A request body over *limit* bytes (``max_body_size``): ``413``, in JSON like every
    other answer of the HTTP API (bodies are sent to the API only)."""
    return HttpAnswer.json(413, {"error": f"the body is larger than the limit of {limit} bytes"})
