# Invariant: any request bytes get one PROTOCOL.md 1 answer (101, 200 stream, a status); no raise.
# (After a non-101 answer the connection closes; output is bounded; the same result whatever the
# split. An event stream holds complete events, auth first.)
"""Fuzz the HTTP request / upgrade phase of :class:`ServerConnection`.

The input is the raw byte stream a TCP client sends. It is replayed (whole, byte by byte,
split in two) into a fresh hub, with and without ``require_auth``; the adapter's part is
played as the reference server plays it (dev authenticator, ``http.answer`` for
``/healthz`` and the publish API, a stand-in for ``/metrics``), then the handshake
timeout fires and the peer hangs up. The events and every output byte must be the same
in each replay, and the answer must be one PROTOCOL.md allows.
"""

from __future__ import annotations

import sys
from typing import Any

from _harness import (
    NOW,
    WALL0,
    check_server_output,
    describe,
    dev_settings,
    fuzz_main,
    same_everywhere,
)

from agentcast.protocol import (
    AuthRequested,
    DevAuthenticator,
    HttpAnswer,
    HttpRequest,
    Hub,
    ServerConnection,
)
from agentcast.protocol.http import answer

#: Final statuses PROTOCOL.md 1, 2 and 8 and the upgrade limits (origin, admission) allow
#: before or instead of a WebSocket.
STATUSES = frozenset({101, 200, 202, 400, 401, 403, 404, 405, 408, 413, 426, 431, 503})
MAX_OUTPUT = 64 * 1024


def _replay(chunks: list[bytes], require_auth: bool) -> tuple[list[Any], bytes]:
    hub = Hub(dev_settings(require_auth=require_auth, allowed_origins=("https://app.example.com",)))
    conn = ServerConnection(hub, now=NOW, client="127.0.0.1")
    events: list[Any] = []
    output = b""
    requests: list[HttpRequest] = []

    def dispatch() -> None:
        for event in conn.events_received():
            events.append(describe(event))
            if isinstance(event, AuthRequested):
                result = DevAuthenticator().authenticate(event.token, WALL0)
                conn.complete_auth(result, NOW, WALL0)
            elif isinstance(event, HttpRequest):
                requests.append(event)

    for chunk in chunks:
        conn.receive_data(chunk, NOW, WALL0)
        dispatch()
        output += conn.data_to_send()
        assert len(output) <= MAX_OUTPUT, "unbounded output"
    # Plain requests are answered once all the input is in, as an adapter that takes its
    # time would: what the client sent meanwhile must change nothing.
    assert len(requests) <= 1, "one request per connection"
    for request in requests:
        if request.path == "/metrics":
            conn.respond(
                HttpAnswer(200, (("content-type", "text/plain; version=0.0.4"),), b"# m\n")
            )
        else:
            reply = answer(request, hub, now=NOW, wall=WALL0)
            conn.respond(reply)
        output += conn.data_to_send()
    deadline = conn.next_deadline()
    if deadline is not None:
        assert deadline >= NOW
        conn.handle_timer(deadline, WALL0 + deadline - NOW)
        dispatch()
        output += conn.data_to_send()
    conn.receive_eof(NOW + 100, WALL0 + 100)
    dispatch()
    output += conn.data_to_send()
    assert conn.closed
    assert conn.next_deadline() is None
    assert hub.admission.connections == 0, "a closed connection still holds its place"
    return events, output


def _check_answer(output: bytes) -> None:
    head = output
    while head.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        head = head[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    assert head.startswith(b"HTTP/1.1 "), output[:200]
    status = int(head[9:12])
    assert status in STATUSES, status
    response, sep, rest = head.partition(b"\r\n\r\n")
    assert sep, "an incomplete response head"
    if status == 101:
        check_server_output(rest)
    elif b"content-type: text/event-stream" in response.lower():
        # The event stream (PROTOCOL.md 11): the reconnect delay, the auth event first,
        # complete events only, until the client hung up.
        assert rest.startswith(b"retry: "), rest[:200]
        assert b"\n\nevent: auth\n" in rest, rest[:200]
        assert rest.endswith(b"\n\n"), rest[-200:]
        assert b"connection: close" in response.lower()
    else:
        length = next(
            int(line.split(b":", 1)[1])
            for line in response.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert len(rest) == length, "the response is followed by more bytes"
        assert b"connection: close" in response.lower()


def check(data: bytes) -> None:
    """Replay *data* as a client's first bytes; see the module docstring."""
    for require_auth in (False, True):
        _, output = same_everywhere(data, lambda chunks, r=require_auth: _replay(chunks, r))
        _check_answer(output)


if __name__ == "__main__":
    fuzz_main(__file__)
    sys.exit(0)
