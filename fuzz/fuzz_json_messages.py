# Invariant: any client text gets its PROTOCOL.md 4/6 answer and the socket stays open; no raise.
# (decode_client_message agrees with section 6; the same answer whatever the fragmentation.)
"""Fuzz ``decode_client_message`` and the session's answer to one client message.

The input, decoded as UTF-8 (invalid bytes replaced, as a text frame must be valid
UTF-8), is one client message. ``decode_client_message`` must return what PROTOCOL.md 6
says, read independently here (:func:`expected_verdict`). Then the message is sent to an
authenticated connection as one text frame, as one frame per byte (a fragmented
message) and as two fragments, and must be answered the same each time; then to an
unauthenticated one. Each answer must be what PROTOCOL.md 4 and 6 say (``pong``, an
``error``, a ``user_presence``, an ``auth`` answer to a refresh, or nothing), and the
connection must stay open.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import (
    NOW,
    WALL0,
    check_server_output,
    describe,
    dev_settings,
    fuzz_main,
    masked,
    open_connection,
    same_everywhere,
)

from agentcast.protocol import (
    DevAuthenticator,
    Hub,
    MessageError,
    decode_client_message,
)
from agentcast.protocol.messages import AuthRefresh, ClientPing, ClientPong, PresenceUpdate

#: Longest input fuzz/run generates: client messages are small JSON objects (the size
#: limits are fuzz_frames.py's), and every byte becomes a frame in the byte-by-byte replay.
MAX_LEN = 512
STATUSES = ("online", "away", "busy", "offline")
SERVER_ONLY = ("agent_status", "chat_message", "notification", "error", "presence_state")


def expected_verdict(text: str) -> tuple[str, Any]:
    """PROTOCOL.md 6 read directly: ``("error", text)`` or what the message is."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "error", "Invalid message format"
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return "error", "Invalid message format"
    kind = obj["type"]
    data = obj.get("data")
    if kind in ("ping", "pong"):
        return kind, None
    if kind == "user_presence":
        if isinstance(data, str) and data in STATUSES:
            return "presence", data
        return "error", "Invalid presence status"
    if kind == "auth":
        token = data.get("token") if isinstance(data, dict) else None
        if isinstance(token, str) and token:
            return "refresh", token
        return "error", "Invalid message format"
    if kind in SERVER_ONLY:
        return "error", "Message type not allowed from client"
    # Cut to 64 characters; a lone surrogate (no UTF-8 form) is shown as "?".
    shown = "".join("?" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in kind[:64])
    return "error", f"Unknown message type: {shown}"


def _verdict(text: str) -> tuple[str, Any]:
    message = decode_client_message(text)
    match message:
        case MessageError(error=error):
            return "error", error
        case ClientPing():
            return "ping", None
        case ClientPong():
            return "pong", None
        case PresenceUpdate(status=status):
            return "presence", status
        case AuthRefresh(token=token):
            return "refresh", token
    raise AssertionError(f"decode_client_message returned {message!r}")


def _fragments(chunks: list[bytes]) -> bytes:
    """The pieces of one text message as frames: a first frame, then continuations."""
    pieces = chunks or [b""]
    frames = b""
    for index, piece in enumerate(pieces):
        opcode = 0x1 if index == 0 else 0x0
        frames += masked(opcode, piece, fin=index == len(pieces) - 1)
    return frames


def _replay(chunks: list[bytes], token: str | None) -> tuple[list[Any], bytes]:
    # However the message is cut into fragments (one a byte, too), its meaning is the same:
    # the cap on fragments per message (1008) has its own tests, so it is out of the way.
    hub = Hub(dev_settings(max_message_size=64 * 1024, max_message_frames=1 << 20))
    conn = open_connection(hub, token)
    conn.receive_data(_fragments(chunks), NOW, WALL0)
    events = [describe(e) for e in conn.events_received()]
    for name, fields in events:
        if name == "AuthRequested":
            result = DevAuthenticator().authenticate(fields[0], WALL0)
            conn.complete_auth(result, NOW, WALL0)
    assert not conn.closed, "a bad message closed the connection"
    return events, conn.data_to_send()


def _answer(verdict: tuple[str, Any], token: str | None) -> list[tuple[str, Any]]:
    """What the client must receive for *verdict* (type, data without ``code``)."""
    kind, value = verdict
    user = None if token is None else f"user_{token}"
    needs_auth = kind in ("presence", "refresh") or value == "Invalid presence status"
    if needs_auth and user is None:
        return [("error", "Not authenticated")]
    if kind == "error":
        return [("error", value)]
    if kind == "ping":
        return [("pong", None)]
    if kind == "pong":
        return []
    if kind == "presence":
        # The connection was "online"; the user's status changes unless it stays so.
        return [] if value == "online" else [("user_presence", {"userId": user, "status": value})]
    result = DevAuthenticator().authenticate(value, WALL0)
    if getattr(result, "user_id", None) == user:
        return [("auth", {"success": True, "userId": user})]
    reason = "Invalid token" if hasattr(result, "reason") else "Token is for another user"
    return [("auth", {"success": False, "error": reason})]


def check(data: bytes) -> None:
    """Decode *data* as one client message and send it; see the module docstring."""
    text = data.decode("utf-8", "replace")
    verdict = _verdict(text)
    assert verdict == expected_verdict(text), (verdict, expected_verdict(text))
    payload = text.encode("utf-8")
    for token in ("fuzz", None):
        if token is None:  # the transport is the same: fragment the message one way only
            events, output = _replay([payload], token)
        else:
            events, output = same_everywhere(payload, lambda chunks, t=token: _replay(chunks, t))
        got = []
        for message in check_server_output(output):
            body = message.get("data")
            if message["type"] == "error":
                assert set(body) == {"error", "code"} | (
                    {"expected"} if body["code"] == "invalid_presence" else set()
                ), body
                body = body["error"]
            got.append((message["type"], body))
        assert got == _answer(verdict, token), (got, _answer(verdict, token))
        refreshes = [e for e in events if e[0] == "AuthRequested"]
        assert len(refreshes) == (verdict[0] == "refresh" and token is not None)


if __name__ == "__main__":
    fuzz_main(__file__)
    sys.exit(0)
