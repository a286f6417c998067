# Invariant: bytes after the handshake get PROTOCOL.md 6 answers or a documented close; no raise.
# (Close codes 1002/1007/1008/1009 or the peer's own echoed; bounded output and buffering; the
# same result whatever the split.)
"""Fuzz the WebSocket frame stream of an open, authenticated :class:`ServerConnection`.

The input is what the client sends after a valid upgrade (masked frames, if it behaves).
It is replayed whole, byte by byte and split in two, then the peer hangs up. Events and
output bytes must be the same in each replay; the output must be valid server frames
carrying documented messages, errors and close codes; the pending output and the
partial message the connection holds stay within their limits after every chunk.
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
    open_connection,
    same_everywhere,
)

from agentcast.protocol import AuthRequested, DevAuthenticator, Hub

MAX_MESSAGE = 512


def _replay(chunks: list[bytes]) -> tuple[list[Any], bytes]:
    hub = Hub(dev_settings(max_message_size=MAX_MESSAGE))
    conn = open_connection(hub)
    events: list[Any] = []
    output = b""
    budget = 16 * 1024
    refreshes: list[str] = []
    for chunk in chunks:
        conn.receive_data(chunk, NOW, WALL0)
        for event in conn.events_received():
            events.append(describe(event))
            if isinstance(event, AuthRequested):
                refreshes.append(event.token)
        # The partial message held is bounded by max_message_size, checked from headers.
        held = conn.transport.message_buffered
        assert held <= MAX_MESSAGE, held
        output += conn.data_to_send()
        budget += len(chunk)
        assert len(output) <= budget, "output grows faster than input"
    # In-band token refreshes are answered once the input is in (an authenticator may
    # take any time, so where its answer lands among the others is not the core's).
    for token in refreshes:
        conn.complete_auth(DevAuthenticator().authenticate(token, WALL0), NOW, WALL0)
    output += conn.data_to_send()
    conn.receive_eof(NOW, WALL0)
    events.extend(describe(e) for e in conn.events_received())
    output += conn.data_to_send()
    assert conn.closed
    assert hub.clients_count() == 0
    return events, output


def check(data: bytes) -> None:
    """Replay *data* as the client's frames; see the module docstring."""
    events, output = same_everywhere(data, _replay)
    messages = check_server_output(output)
    # An authenticated client gets nothing it did not ask for but its own presence.
    for message in messages:
        assert message["type"] in {"pong", "error", "user_presence", "auth"}, message
    closed = [e for e in events if e[0] == "ConnectionClosed"]
    assert len(closed) == 1, events


if __name__ == "__main__":
    fuzz_main(__file__)
    sys.exit(0)
