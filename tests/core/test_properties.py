"""Properties (hypothesis): chunking invariance, robustness against any input, and codec
round trips. Profiles (example counts, derandomized in CI) are set in conftest.py."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Message, Request

from agentcast.protocol import (
    AgentStatus,
    AuthRequested,
    ChatMessage,
    ConnectionClosed,
    DevAuthenticator,
    Event,
    Hub,
    Notification,
    ServerConnection,
    Settings,
    decode_client_message,
    encode_server_message,
    format_timestamp,
)
from agentcast.protocol.messages import (
    AGENT_STATES,
    NOTIFICATION_LEVELS,
    PRESENCE_STATUSES,
    AuthRefresh,
    ClientPing,
    ClientPong,
    MessageError,
    PresenceUpdate,
)

WALL = 1766754000.0
LIMIT = 200  # max_message_size for the stream properties, so 1009 is reachable

# -- building client byte streams ------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, declared: int | None = None) -> bytes:
    """A masked client frame (the mask is fixed: the bytes must be reproducible)."""
    n = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes([first, 0x80 | n])
    elif n < 65536:
        header = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    key = b"\x11\x22\x33\x44"
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(s: str) -> bytes:
    return frame(0x1, s.encode())


FRAMES = {
    "ping": text('{"type":"ping"}'),
    "pong": text('{"type":"pong"}'),
    "away": text('{"type":"user_presence","data":"away"}'),
    "bad-json": text("not json"),
    "unicode": text('{"type":"' + "é€😀" * 3 + '"}'),
    "server-only": text('{"type":"notification"}'),
    "binary": frame(0x2, b"\x00\x01\x02"),
    "ws-ping": frame(0x9, b"hi"),
    "ws-pong": frame(0xA, b""),
    "fragmented": frame(0x1, b'{"type":', fin=False) + frame(0x9, b"") + frame(0x0, b'"ping"}'),
    "too-big": text('{"type":"ping","x":"' + "a" * LIMIT + '"}'),
    "big-header": frame(0x2, b"", declared=LIMIT + 1),
    "bad-utf8": frame(0x1, b'{"type":"\xc3\x28"}'),
    "bad-opcode": frame(0x3, b""),
    "close": frame(0x8, (1000).to_bytes(2, "big") + b"bye"),
}


def upgrade_request(target: str = "/ws?token=abc123") -> bytes:
    client = WSConnection(ConnectionType.CLIENT)
    return client.send(Request(host="localhost", target=target))


def run(chunks: list[bytes], settings: Settings) -> tuple[list[Event], bytes]:
    """Feed *chunks* to a fresh connection, answering auth as an adapter would; return the
    events and every byte the server wrote."""
    hub = Hub(settings)
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
    auth = DevAuthenticator()
    events: list[Event] = []
    out = bytearray()
    for chunk in chunks:
        conn.receive_data(chunk, 0.0, WALL)
        pending = conn.events_received()
        while pending:
            event = pending.pop(0)
            events.append(event)
            if isinstance(event, AuthRequested):
                conn.complete_auth(auth.authenticate(event.token, WALL), 0.0, WALL)
                pending += conn.events_received()
        out += conn.data_to_send()
    return events, bytes(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(c % (len(data) + 1) for c in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


STREAM_SETTINGS = Settings(max_message_size=LIMIT, rate_limit=1000.0, rate_burst=1000)


# An in-band refresh is answered by the adapter between reads, so what follows it in the
# same read is handled before the answer: it can only come last for the result to be the
# same whatever the split.
REFRESH = text('{"type":"auth","data":{"token":"abc123"}}')


@given(
    names=st.lists(st.sampled_from(sorted(FRAMES)), max_size=8),
    refresh=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_split_of_a_websocket_stream_gives_the_same_result(names, refresh, cuts):
    stream = upgrade_request() + b"".join(FRAMES[n] for n in names)
    stream += REFRESH if refresh else b""
    whole = run([stream], STREAM_SETTINGS)
    assert run(split(stream, cuts), STREAM_SETTINGS) == whole
    # Byte by byte is the most demanding split.
    assert run([stream[i : i + 1] for i in range(len(stream))], STREAM_SETTINGS) == whole
    assert whole[1].startswith(b"HTTP/1.1 101 ")


def http_stream(kind: str, pad: int, body: bytes) -> bytes:
    headers = f"Host: localhost\r\nX-Pad: {'p' * pad}\r\n"
    if kind == "length":
        head = f"POST /api/notifications HTTP/1.1\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        return head.encode() + body
    if kind == "chunked":
        head = f"POST /api/notifications HTTP/1.1\r\n{headers}Transfer-Encoding: chunked\r\n\r\n"
        chunked = b"".join(
            f"{len(body[i : i + 7]):x}\r\n".encode() + body[i : i + 7] + b"\r\n"
            for i in range(0, len(body), 7)
        )
        return head.encode() + chunked + b"0\r\n\r\n"
    return f"GET /healthz HTTP/1.1\r\n{headers}\r\n".encode()


@given(
    kind=st.sampled_from(["length", "chunked", "get"]),
    pad=st.integers(min_value=850, max_value=1000),  # around the 1 KiB header limit
    body=st.binary(max_size=120),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_split_of_an_http_request_gives_the_same_result(kind, pad, body, cuts):
    settings = Settings(max_header_size=1024, max_body_size=100)
    stream = http_stream(kind, pad, body)
    whole = run([stream], settings)
    assert run(split(stream, cuts), settings) == whole
    assert run([stream[i : i + 1] for i in range(len(stream))], settings) == whole


# -- nothing a client sends makes the core raise ---------------------------------------------


def open_pair(settings: Settings | None = None) -> tuple[ServerConnection, WSConnection]:
    hub = Hub(settings or Settings(rate_limit=1e6, rate_burst=10**6))
    conn = ServerConnection(hub, now=0.0)
    client = WSConnection(ConnectionType.CLIENT)
    conn.receive_data(client.send(Request(host="h", target="/ws?token=abc123")), 0.0, WALL)
    for event in conn.events_received():
        assert isinstance(event, AuthRequested)
        conn.complete_auth(DevAuthenticator().authenticate(event.token, WALL), 0.0, WALL)
    client.receive_data(conn.data_to_send())
    list(client.events())
    return conn, client


def replies(conn: ServerConnection, client: WSConnection) -> list[Any]:
    client.receive_data(conn.data_to_send())
    return [json.loads(e.data) for e in client.events() if isinstance(e, Message)]


@given(st.lists(st.text(max_size=300), max_size=10))
def test_arbitrary_text_messages_never_raise_and_get_at_most_one_reply_each(texts):
    conn, client = open_pair()
    for t in texts:
        conn.receive_data(client.send(Message(data=t)), 1.0, WALL)
        got = replies(conn, client)
        assert not conn.closed
        # One answer (pong, error, auth) or none (pong, presence with no change);
        # a presence change is one broadcast back to the sender.
        assert len(got) <= 1
        for msg in got:
            assert msg["type"] in {"pong", "error", "user_presence"}
    assert [e for e in conn.events_received() if not isinstance(e, AuthRequested)] == []


@given(st.lists(st.binary(max_size=300), max_size=10))
def test_arbitrary_binary_messages_get_the_binary_error(blobs):
    conn, client = open_pair()
    for blob in blobs:
        conn.receive_data(client.send(Message(data=blob)), 1.0, WALL)
        assert replies(conn, client) == [
            {
                "type": "error",
                "data": {
                    "error": "Binary messages are not supported",
                    "code": "binary_not_supported",
                },
                "timestamp": format_timestamp(WALL),
            }
        ]
    assert not conn.closed


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_after_the_handshake_never_raise(chunks):
    conn, _ = open_pair(Settings(max_message_size=LIMIT))
    for chunk in chunks:
        conn.receive_data(chunk, 1.0, WALL)
        conn.data_to_send()
    conn.handle_timer(1.0, WALL)
    closes = [e for e in conn.events_received() if isinstance(e, ConnectionClosed)]
    assert len(closes) <= 1
    conn.receive_eof(2.0, WALL)
    assert conn.closed
    closes += [e for e in conn.events_received() if isinstance(e, ConnectionClosed)]
    assert len(closes) == 1


@given(st.binary(max_size=400))
def test_arbitrary_bytes_before_the_handshake_never_raise(data):
    conn = ServerConnection(Hub(), now=0.0)
    conn.receive_data(data, 0.0, WALL)
    out = conn.data_to_send()
    assert out == b"" or out.startswith(b"HTTP/1.1 ")


# -- codec round trips ---------------------------------------------------------------------

client_messages = st.one_of(
    st.just(ClientPing()),
    st.just(ClientPong()),
    st.sampled_from(sorted(PRESENCE_STATUSES)).map(PresenceUpdate),
    st.text(min_size=1).map(AuthRefresh),
)


def encode_client(message: Any) -> dict[str, Any]:
    match message:
        case ClientPing():
            return {"type": "ping"}
        case ClientPong():
            return {"type": "pong"}
        case PresenceUpdate(status=status):
            return {"type": "user_presence", "data": status}
        case AuthRefresh(token=token):
            return {"type": "auth", "data": {"token": token}}
    raise AssertionError(message)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(client_messages, st.dictionaries(st.sampled_from(["timestamp", "id", "x"]), json_values))
def test_client_messages_round_trip(message, extra):
    obj = {**extra, **encode_client(message)}
    assert decode_client_message(json.dumps(obj)) == message
    assert decode_client_message(json.dumps(obj, ensure_ascii=False)) == message


@given(st.text(max_size=200))
def test_decode_never_raises(text):
    result = decode_client_message(text)
    assert isinstance(result, ClientPing | ClientPong | PresenceUpdate | AuthRefresh | MessageError)


walls = st.floats(min_value=0, max_value=4e9, allow_nan=False)
ids = st.none() | st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: f"{n:016x}")


@given(
    kind=st.sampled_from(
        [
            "auth",
            "ping",
            "pong",
            "error",
            "agent_status",
            "chat_message",
            "notification",
            "user_presence",
            "presence_state",
        ]
    ),
    data=json_values,
    wall=walls,
    message_id=ids,
)
def test_server_messages_round_trip(kind, data, wall, message_id):
    obj = json.loads(encode_server_message(kind, data, wall, message_id))
    assert obj.pop("type") == kind
    assert obj.pop("timestamp") == format_timestamp(wall)
    if data is not None:
        assert obj.pop("data") == data
    if message_id is not None:
        assert obj.pop("id") == message_id
    assert obj == {}


def test_a_message_of_type_and_time_only_is_their_compact_json_every_time():
    for kind in ("pong", "pong", 'quo"te'):  # the second from what the first remembered
        expected = {"type": kind, "timestamp": format_timestamp(WALL)}
        compact = json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
        assert encode_server_message(kind, None, WALL) == compact
    # With an id but no data: the general form, still without a "data" field.
    with_id = json.loads(encode_server_message("user_presence", None, WALL, "0001"))
    assert with_id == {"type": "user_presence", "timestamp": format_timestamp(WALL), "id": "0001"}


safe_text = st.text(min_size=1, max_size=50)


@given(
    st.builds(
        AgentStatus,
        agent_name=safe_text,
        state=st.sampled_from(sorted(AGENT_STATES)),
        current_task=st.none() | st.text(max_size=50),
        progress=st.none()
        | st.integers(min_value=0, max_value=100)
        | st.floats(min_value=0, max_value=100),
    )
)
def test_agent_status_round_trips(status):
    assert AgentStatus.from_data(json.loads(json.dumps(status.to_data()))) == status


@given(
    st.builds(
        ChatMessage,
        conversation_id=safe_text,
        message_id=safe_text,
        content=st.text(max_size=50),
        sender=safe_text,
        timestamp=walls.map(format_timestamp),
    ),
    walls,
)
def test_chat_message_round_trips(message, wall):
    assert ChatMessage.from_data(json.loads(json.dumps(message.to_data(wall)))) == message


@given(
    st.builds(
        Notification,
        level=st.sampled_from(sorted(NOTIFICATION_LEVELS)),
        message=safe_text,
        user_id=st.none() | safe_text,
    )
)
def test_notification_round_trips(note):
    data = note.to_data()
    if note.user_id is not None:
        data["userId"] = note.user_id
    assert Notification.from_data(json.loads(json.dumps(data))) == note


@given(st.integers(min_value=0, max_value=253402300799999))
def test_timestamp_matches_a_reference(ms):
    # Half a millisecond in, so float rounding of wall cannot cross a millisecond.
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert format_timestamp((ms + 0.5) / 1000) == (
        expected.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    )
