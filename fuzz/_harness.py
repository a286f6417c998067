# Shared by the fuzz harnesses: replaying one input in several splits, server output checks.
"""Helpers for the harnesses in this folder (not a harness itself).

Every harness replays its input whole, byte by byte, and split at a point derived from
the input, and asserts that the observable result is the same each time (PROTOCOL.md
limits and answers must not depend on how TCP cut the stream; STYLE.md 9). Run a harness
under atheris with ``python fuzz/<harness>.py [libFuzzer flags] [corpus dirs]``, or all of
them with ``fuzz/run``.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from collections.abc import Callable
from typing import Any

from agentcast.protocol import (
    AuthRequested,
    DevAuthenticator,
    Event,
    Hub,
    ServerConnection,
    Settings,
)

WALL0 = 1_766_754_000.0  # 2025-12-26T13:00:00.000Z
NOW = 1.0

#: Everything the server may say in an ``error`` message (PROTOCOL.md 6), but the
#: ``Unknown message type: <type>`` family, which :func:`check_error_text` allows too.
ERROR_TEXTS = frozenset(
    {
        "Invalid message format",
        "Message type not allowed from client",
        "Invalid presence status",
        "Not authenticated",
        "Binary messages are not supported",
        "Rate limit exceeded",
    }
)
#: What a client can be sent (PROTOCOL.md 4 and 7).
SERVER_TYPES = frozenset(
    {
        "auth",
        "ping",
        "pong",
        "agent_status",
        "chat_message",
        "notification",
        "user_presence",
        "presence_state",
        "agent_state",
        "error",
        "resume",
    }
)
#: Close codes the server starts a close with (PROTOCOL.md 9, from bad input).
SERVER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013, 4000, 4001})


def splits(data: bytes) -> list[list[bytes]]:
    """The ways an input is replayed: whole, byte by byte, and cut in two at a point
    derived from the data itself."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    if len(data) > 2:
        cut = 1 + data[-1] % (len(data) - 1)
        out.append([data[:cut], data[cut:]])
    return out


def same_everywhere(data: bytes, replay: Callable[[list[bytes]], Any]) -> Any:
    """Replay *data* in every split; assert the results are equal; return the first."""
    results = [replay(chunks) for chunks in splits(data)]
    for other in results[1:]:
        assert other == results[0], f"split-dependent result:\n{results[0]!r}\n!=\n{other!r}"
    return results[0]


def describe(event: Event) -> tuple[str, tuple[Any, ...]]:
    """An event as plain data (its fields, tokens and bodies included), for comparing."""
    return type(event).__name__, dataclasses.astuple(event)


def handshake_request(target: str = "/ws?token=fuzz", extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\n"
        "Host: localhost\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


def open_connection(hub: Hub, token: str | None = "fuzz") -> ServerConnection:
    """A WebSocket connection to *hub*, upgraded (authenticated with the dev
    authenticator unless *token* is ``None``), its first output already taken."""
    conn = ServerConnection(hub, now=NOW, client="127.0.0.1")
    target = "/ws" if token is None else f"/ws?token={token}"
    conn.receive_data(handshake_request(target), NOW, WALL0)
    for event in conn.events_received():
        assert isinstance(event, AuthRequested)
        conn.complete_auth(DevAuthenticator().authenticate(event.token, WALL0), NOW, WALL0)
    head = conn.data_to_send()
    assert head.startswith(b"HTTP/1.1 101 "), head
    conn.events_received()
    return conn


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame (masked, as RFC 6455 5.3 requires of clients)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = b"\x37\xfa\x21\x3d"
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split server output into (opcode, payload), checking each frame is one a server
    may send: final, no RSV bits, unmasked, a known opcode (RFC 6455 5.2)."""
    frames = []
    pos = 0
    while pos < len(data):
        assert pos + 2 <= len(data), "output ends inside a frame header"
        first, second = data[pos], data[pos + 1]
        assert first & 0xF0 == 0x80, f"server frame with FIN/RSV bits {first:#x}"
        assert second & 0x80 == 0, "masked server frame"
        opcode = first & 0x0F
        assert opcode in (0x1, 0x8, 0x9, 0xA), f"server opcode {opcode:#x}"
        length = second & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        assert pos + length <= len(data), "output ends inside a frame"
        frames.append((opcode, data[pos : pos + length]))
        pos += length
    return frames


def check_error_text(text: object) -> None:
    assert isinstance(text, str), text
    if text.startswith("Unknown message type: "):
        assert len(text) <= len("Unknown message type: ") + 64, text
    else:
        assert text in ERROR_TEXTS, text


def check_server_output(data: bytes) -> list[dict[str, Any]]:
    """Check WebSocket output as PROTOCOL.md 3, 6 and 9 describe it; return its messages.

    Every text frame is one JSON object with a known ``type`` and a ``timestamp``; errors
    carry a documented text; nothing follows a close frame; a close code is documented,
    or is the peer's own (valid) code echoed back.
    """
    messages = []
    frames = server_frames(data)
    for index, (opcode, payload) in enumerate(frames):
        if opcode == 0x1:
            message = json.loads(payload.decode("utf-8"))
            assert isinstance(message, dict), message
            assert message.get("type") in SERVER_TYPES, message
            assert isinstance(message.get("timestamp"), str), message
            if message["type"] == "error":
                check_error_text(message["data"]["error"])
            messages.append(message)
        elif opcode == 0x8:
            assert index == len(frames) - 1, "frames after the close frame"
            assert len(payload) != 1, "a one-byte close payload"
            if payload:
                (code,) = struct.unpack_from("!H", payload)
                valid_echo = code in (1000, 1001, 1003, 1010) or 3000 <= code <= 4999
                assert code in SERVER_CLOSE_CODES or valid_echo, code
                payload[2:].decode("utf-8")  # the reason is UTF-8
    return messages


def dev_settings(**overrides: Any) -> Settings:
    """Small limits, so that a short input reaches every one of them."""
    base: dict[str, Any] = {
        "max_header_size": 1024,
        "max_body_size": 2048,
        "max_message_size": 512,
        "max_batch": 8,
        # Every presence change at once: an input's effect is checked right after it.
        "presence_interval": 0,
        "presence_window": 0,
    }
    base.update(overrides)
    return Settings(**base)


def fuzz_main(path: str) -> None:
    """Run the harness at *path* under atheris with the command line's libFuzzer flags.

    The harness is loaded again with the code under test (agentcast, h11, wsproto)
    imported afresh under atheris's instrumentation, so coverage guides the fuzzer
    through that code, not through the standard library or the harness.
    """
    import importlib.util

    import atheris

    for name in list(sys.modules):
        if name.split(".")[0] in (*_INSTRUMENTED, "_harness"):
            del sys.modules[name]
    with atheris.instrument_imports(include=list(_INSTRUMENTED)):
        spec = importlib.util.spec_from_file_location("instrumented_harness", path)
        assert spec is not None
        assert spec.loader is not None
        harness = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(harness)
    atheris.Setup(sys.argv, harness.check)
    atheris.Fuzz()


_INSTRUMENTED = ("agentcast", "h11", "wsproto")
