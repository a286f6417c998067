"""Server-Sent Events (PROTOCOL.md section 11): the wire format, pure.

An event stream (WHATWG HTML, "Server-sent events") is UTF-8 text made of blocks, each
ended by a blank line. A block holds fields, one per line, ``name: value``: ``event``
(the type ``EventSource.addEventListener`` listens for), ``id`` (what the browser sends
back as ``Last-Event-ID`` when it reconnects), ``retry`` (the reconnect delay, in
milliseconds) and ``data`` (one line each; the client joins them with ``\\n``). A line
that starts with ``:`` is a comment, which the client ignores: it keeps idle proxies from
closing the stream.

The functions here turn values into those bytes and nothing else; they never produce a
stream the client would read differently from what was meant:

* ``data`` may hold any line breaks (``\\r\\n``, ``\\r`` or ``\\n``): each line becomes its
  own ``data:`` line, so the client reads the same lines back, joined with ``\\n``.
  (Every message agentcast sends is one line of JSON: JSON escapes line breaks.)
* ``event`` and ``id`` are one line by definition: a line break there is refused
  (:class:`ValueError`), and so is U+0000 in an ``id``, which a client ignores.
* A space after the colon is written always, so a value that starts with a space keeps
  it (the client strips exactly one).
"""

from __future__ import annotations

import re

__all__ = ["CONTENT_TYPE", "encode_comment", "encode_event", "encode_retry"]

#: The media type of an event stream.
CONTENT_TYPE = "text/event-stream"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _field(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"an SSE {name} must be one line")
    return f"{name}: {value}\n"


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event: ``event:`` (if given), ``id:`` (if given), one ``data:`` line per line
    of *data*, then the blank line that dispatches it."""
    out = ""
    if event is not None:
        out += _field("event", event)
    if id is not None:
        if "\0" in id:
            raise ValueError("an SSE id must not contain U+0000")
        out += _field("id", id)
    out += "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return (out + "\n").encode()


def encode_comment(text: str = "") -> bytes:
    """A comment (one ``:`` line per line of *text*), then a blank line; clients ignore
    it, proxies see bytes moving."""
    lines = "".join(f": {line}\n" if line else ":\n" for line in _LINE_BREAK.split(text))
    return (lines + "\n").encode()


def encode_retry(milliseconds: int) -> bytes:
    """The client's reconnect delay: ``retry: <ms>``, then a blank line."""
    if milliseconds < 0:
        raise ValueError("an SSE retry must not be negative")
    return f"retry: {milliseconds}\n\n".encode()
