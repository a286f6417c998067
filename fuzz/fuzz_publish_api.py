# Invariant: any publish body gets 202 (all published, in order), 400 (nothing) or 413; no raise.
# (Each item reaches exactly its recipients; the same answer whatever the split.)
"""Fuzz ``protocol.http.answer`` with a POST body, directly and through a connection.

The input's first byte picks the endpoint (``POST /api/agent-status``,
``/api/chat-messages`` or ``/api/notifications``, by its value modulo 3); the rest is the
request body, sent with a valid API key. The request head is sent in one piece, then the
body whole, byte by byte and split in two, through a :class:`ServerConnection` whose
``HttpRequest`` the adapter answers with ``answer``: the response bytes must be the same
each time, and the same as ``answer`` gives without a connection around it. A
listening WebSocket client (``user_fuzz``) must receive exactly the published items, in
array order, with the ids of the answer; an unauthenticated one nothing; for a ``400``
nobody anything (PROTOCOL.md 8: nothing of an invalid batch is published).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import (
    NOW,
    WALL0,
    check_server_output,
    dev_settings,
    fuzz_main,
    open_connection,
    same_everywhere,
)

from agentcast.protocol import HttpRequest, Hub, ServerConnection
from agentcast.protocol.http import PUBLISH_PATHS, answer

API_KEY = "fuzz-key"
MAX_BODY = 2048
KINDS = {
    "/api/agent-status": "agent_status",
    "/api/chat-messages": "chat_message",
    "/api/notifications": "notification",
}


def _head(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\n"
        "Host: localhost\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")


def _hub() -> tuple[Hub, ServerConnection, ServerConnection]:
    """A hub with a listening client (``user_fuzz``) and an unauthenticated one."""
    hub = Hub(dev_settings(api_key=API_KEY, max_body_size=MAX_BODY))
    return hub, open_connection(hub, "fuzz"), open_connection(hub, None)


def _replay(head: bytes, chunks: list[bytes]) -> tuple[bytes, list[Any], list[Any]]:
    hub, listener, stranger = _hub()
    conn = ServerConnection(hub, now=NOW, client="192.0.2.1")
    for chunk in [head, *chunks]:
        conn.receive_data(chunk, NOW, WALL0)
        for event in conn.events_received():
            assert isinstance(event, HttpRequest), event
            reply = answer(event, hub, now=NOW, wall=WALL0)
            conn.respond(reply)
    output = conn.data_to_send()
    assert conn.closed, "the request was not answered"
    heard = check_server_output(listener.data_to_send())
    overheard = check_server_output(stranger.data_to_send())
    return output, heard, overheard


def _check(
    path: str, body_sent: bytes, output: bytes, heard: list[Any], overheard: list[Any]
) -> None:
    head, _, body = output.partition(b"\r\n\r\n")
    status = int(head[9:12])
    assert overheard == [], "an unauthenticated connection got a broadcast"
    if status == 413:
        assert heard == []
        return
    reply = json.loads(body)
    assert isinstance(reply, dict), reply
    if status == 400:
        assert isinstance(reply.get("error"), str), reply
        assert reply["error"], reply
        assert heard == [], "an invalid request published something"
        return
    assert status == 202, output[:200]
    ids = reply["ids"] if "ids" in reply else [reply["id"]]
    assert ids == sorted(set(ids)), "ids not strictly increasing"
    kind = KINDS[path]
    assert all(m["type"] == kind for m in heard), heard
    # A notification for another user is published but reaches nobody here.
    assert [m["id"] for m in heard] == [i for i in ids if i in {m["id"] for m in heard}]
    assert reply["delivered"] == len(heard)
    # Each item arrives as posted: absent optional fields stay absent, a chat message's
    # timestamp defaults to the publishing time, a notification's userId only routes it.
    posted = json.loads(body_sent)
    items = posted if isinstance(posted, list) else [posted]
    assert len(items) == len(ids)
    want = []
    for item in items:
        data = {k: v for k, v in item.items() if v is not None}
        if kind == "chat_message":
            data.setdefault("timestamp", "2025-12-26T13:00:00.000Z")
        if kind == "notification" and data.pop("userId", "user_fuzz") != "user_fuzz":
            continue
        want.append(data)
    assert [m["data"] for m in heard] == want, (heard, want)


def check(data: bytes) -> None:
    """Post *data* (endpoint byte, body) to the publish API; see the module docstring."""
    path = list(PUBLISH_PATHS)[data[0] % 3 if data else 0]
    data = data[1:]
    head = _head(path, data)
    output, heard, overheard = same_everywhere(data, lambda chunks: _replay(head, chunks))
    _check(path, data, output, heard, overheard)
    if len(data) <= MAX_BODY:
        # The same answer without a connection around it.
        hub, _, _ = _hub()
        direct = answer(
            HttpRequest(
                method="POST",
                path=path,
                query="",
                headers=(("authorization", f"Bearer {API_KEY}"),),
                body=data,
                client="192.0.2.1",
            ),
            hub,
            now=NOW,
            wall=WALL0,
        )
        assert output.endswith(b"\r\n\r\n" + direct.body), (output, direct)
        assert output.startswith(f"HTTP/1.1 {direct.status} ".encode())


if __name__ == "__main__":
    fuzz_main(__file__)
    sys.exit(0)
