"""PROTOCOL.md section 6: every row of the bad-input table, with the exact answer and
what happens to the connection afterwards."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from wsproto.events import CloseConnection, Message, TextMessage

from agentcast.protocol import (
    ConnectionClosed,
    Hub,
    Settings,
    format_timestamp,
)

TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def assert_still_open(pair) -> None:
    """The connection stays open: a later ping still gets its pong."""
    pair.send_json({"type": "ping"})
    assert pair.types() == ["pong"]
    assert not pair.server.closed


def error_reply(pair, text: str, code: str, **extra: str) -> None:
    data = {"error": text, "code": code, **extra}
    assert pair.messages() == [{"type": "error", "data": data, "timestamp": pair_ts(pair)}]


def pair_ts(pair) -> str:
    return format_timestamp(pair.wall)


# -- error rows: the connection stays open -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "",
        "{",
        "{'type': 'ping'}",
        '{"type":"ping"} trailing',
        "[]",
        "1",
        "null",
        '"ping"',
        "{}",
        '{"data":"online"}',
        '{"type":1}',
        '{"type":null}',
        '{"type":["ping"]}',
        '{"type":{"x":1}}',
        "[" * 50000,  # nesting deep enough to exhaust the parser's recursion
        '{"type":"ping","n":' + "1" * 5000 + "}",  # an integer too long to convert
    ],
)
def test_invalid_format(h, pair, text):
    pair.send_text(text)
    error_reply(pair, "Invalid message format", "invalid_format")
    assert_still_open(pair)


@pytest.mark.parametrize(
    ("kind", "echoed"),
    [
        ("hello", "hello"),
        ("", ""),
        ("PING", "PING"),
        ("t" * 64, "t" * 64),
        ("u" * 65, "u" * 64),
        ("é" * 100, "é" * 64),
    ],
)
def test_unknown_type_is_echoed_truncated_to_64(h, pair, kind, echoed):
    pair.send_json({"type": kind})
    error_reply(pair, f"Unknown message type: {echoed}", "unknown_type")
    assert_still_open(pair)


@pytest.mark.parametrize(
    "kind",
    ["agent_status", "chat_message", "notification", "error", "presence_state", "agent_state"],
)
def test_server_only_types_are_not_allowed(h, pair, kind):
    pair.send_json({"type": kind, "data": {"agentName": "x", "state": "idle"}})
    error_reply(pair, "Message type not allowed from client", "not_allowed")
    assert_still_open(pair)


@pytest.mark.parametrize("data", ["sleeping", "Online", "", 5, None, {"status": "away"}, ["busy"]])
def test_bad_presence_status(h, pair, data):
    msg = {"type": "user_presence"} if data is None else {"type": "user_presence", "data": data}
    pair.send_json(msg)
    # The error text and code stay those clients match on; "expected" shows the shape.
    expected = (
        '{"type":"user_presence","data":"away"}, data one of "online", "away", "busy", "offline"'
    )
    error_reply(pair, "Invalid presence status", "invalid_presence", expected=expected)
    assert_still_open(pair)


@pytest.mark.parametrize("data", ["away", "sleeping", None])
def test_presence_while_unauthenticated(h, hub, data):
    # The authentication check comes first, whatever the status (docs/decisions.md).
    p = h.Pair(hub)
    p.handshake("/ws")
    msg = {"type": "user_presence"} if data is None else {"type": "user_presence", "data": data}
    p.send_json(msg)
    error_reply(p, "Not authenticated", "not_authenticated")
    assert hub.presence() == {}
    assert_still_open(p)


def test_binary_frame(h, pair):
    pair.send(Message(data=b'{"type":"ping"}'))
    error_reply(pair, "Binary messages are not supported", "binary_not_supported")
    assert_still_open(pair)


def test_fragmented_binary_message_gets_one_error(h, pair):
    pair.send(Message(data=b"ab", message_finished=False))
    assert pair.messages() == []
    pair.send(Message(data=b"cd", message_finished=True))
    error_reply(pair, "Binary messages are not supported", "binary_not_supported")


def test_fragmented_text_message_is_one_message(h, pair):
    for part in ('{"ty', 'pe":"pi', 'ng"}'):
        pair.send(Message(data=part, message_finished=part.endswith("}")))
    assert pair.types() == ["pong"]


def test_unknown_fields_are_ignored(h, pair):
    pair.send_json({"type": "ping", "data": {"x": 1}, "timestamp": "whenever", "extra": True})
    assert pair.types() == ["pong"]


def test_nothing_a_client_sends_affects_others(h, hub):
    bad, _ = h.connect(hub, "bad")
    good, _ = h.connect(hub, "good")
    bad.messages()
    good.messages()
    for text in ("x", "[]", '{"type":"notification"}', '{"type":"user_presence","data":"z"}'):
        bad.send_text(text)
    assert good.messages() == []
    assert_still_open(good)


# -- close rows ----------------------------------------------------------------------------


def small(h, limit: int = 1000):
    hub = Hub(Settings(max_message_size=limit))
    p = h.Pair(hub)
    p.handshake()
    return p


def closed_with(pair, code: int, reason: str | None = None) -> CloseConnection:
    pair.flush()
    [close] = pair.close_events()
    assert close.code == code
    if reason is not None:
        assert close.reason == reason
    return close


def test_message_at_the_limit_passes(h):
    p = small(h)
    text = json.dumps({"type": "ping", "pad": "é" * 10})
    text = text[:-1] + "," + '"x":"' + "a" * (1000 - len(text.encode()) - 7) + '"}'
    assert len(text.encode()) == 1000
    p.send_text(text)
    assert p.types() == ["pong"]


def test_message_over_the_limit_closes_1009(h):
    p = small(h)
    p.send_text('{"type":"ping","x":"' + "é" * 490 + '"}')  # 1001 bytes as UTF-8
    events = p.flush()
    assert not any(isinstance(e, TextMessage) for e in events)  # no pong, no error
    [close] = [e for e in events if isinstance(e, CloseConnection)]
    assert (close.code, close.reason) == (1009, "message too big")
    # The server waits for the client's half of the handshake.
    assert not p.server.closed
    p.feed(p.client.send(close.response()))
    assert [e for e in p.events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(code=1009, reason="message too big")
    ]


def test_binary_message_over_the_limit_closes_1009(h):
    p = small(h)
    p.send(Message(data=b"x" * 1001))
    closed_with(p, 1009)


def test_oversized_frame_header_closes_1009_before_its_payload(h):
    p = small(h)
    p.feed(h.masked_frame(TEXT, b"", declared=1001)[:8])  # header + mask, no payload
    closed_with(p, 1009, "message too big")


def test_huge_declared_length_closes_1009_at_once(h, pair):
    # With the default 64 KiB limit: a header declaring 2**62 bytes.
    pair.feed(h.masked_frame(BINARY, b"", declared=2**62)[:14])
    closed_with(pair, 1009)


def test_frame_header_at_the_limit_is_read(h):
    p = small(h)
    frame = h.masked_frame(TEXT, b'{"type":"ping","x":"' + b"a" * 978 + b'"}')
    assert len(frame) == 8 + 1000
    p.feed(frame[:8])
    assert p.flush() == []
    p.feed(frame[8:])
    assert p.types() == ["pong"]


def test_fragmented_message_over_the_limit_closes_1009(h):
    p = small(h)
    p.send(Message(data="x" * 600, message_finished=False))
    assert p.flush() == []
    p.send(Message(data="x" * 401, message_finished=True))
    closed_with(p, 1009)


def test_fragmented_message_over_the_limit_by_its_header_closes_1009(h):
    p = small(h)
    p.feed(h.masked_frame(TEXT, b"x" * 600, fin=False))
    p.feed(h.masked_frame(CONT, b"", declared=401)[:8])  # header + mask, no payload
    closed_with(p, 1009)


def test_control_frames_between_fragments_do_not_count(h):
    p = small(h)
    p.feed(h.masked_frame(TEXT, b'{"type":"ping","x":"' + b"a" * 400, fin=False))
    p.feed(h.masked_frame(PING, b"p" * 100))
    p.feed(h.masked_frame(CONT, b"a" * 578 + b'"}'))
    assert p.types() == ["pong"]


def test_invalid_utf8_closes_1007(h, pair):
    pair.feed(h.masked_frame(TEXT, b'{"type":"\xff"}'))
    pair.flush()
    [close] = pair.close_events()
    assert close.code == 1007
    # Failing the connection: no wait for the client (RFC 6455 7.1.7).
    assert pair.server.closed
    assert [e.code for e in pair.events if isinstance(e, ConnectionClosed)] == [1007]


def test_invalid_utf8_split_across_fragments_closes_1007(h, pair):
    pair.feed(h.masked_frame(TEXT, b'{"type":"\xe2\x82', fin=False))
    pair.feed(h.masked_frame(CONT, b'"}'))
    pair.flush()
    assert [c.code for c in pair.close_events()] == [1007]


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param((TEXT, b"{}", {"mask": False}), id="unmasked"),
        pytest.param((0x3, b"", {}), id="reserved-opcode-3"),
        pytest.param((0xB, b"", {}), id="reserved-control-opcode"),
        pytest.param((TEXT, b"{}", {"rsv": 4}), id="rsv1"),
        pytest.param((TEXT, b"{}", {"rsv": 1}), id="rsv3"),
        pytest.param((PING, b"", {"fin": False}), id="fragmented-control"),
        pytest.param((PING, b"x" * 126, {}), id="control-over-125"),
        pytest.param((CONT, b"x", {}), id="continuation-without-start"),
        pytest.param((CLOSE, b"\x03\xe8\xff", {}), id="close-reason-not-utf8"),
        pytest.param((CLOSE, b"\x03", {}), id="close-payload-of-one-byte"),
        pytest.param((CLOSE, b"\x00\x00", {}), id="close-code-0"),
    ],
)
def test_framing_violation_closes(h, pair, frame):
    opcode, payload, kwargs = frame
    pair.feed(h.masked_frame(opcode, payload, **kwargs))
    pair.flush()
    [close] = pair.close_events()
    expected = 1007 if payload == b"\x03\xe8\xff" else 1002
    assert close.code == expected
    assert pair.server.closed
    assert [e.code for e in pair.events if isinstance(e, ConnectionClosed)] == [expected]


def test_new_message_inside_a_fragmented_one_closes_1002(h, pair):
    pair.feed(h.masked_frame(TEXT, b"{", fin=False))
    pair.feed(h.masked_frame(TEXT, b"}"))
    pair.flush()
    assert [c.code for c in pair.close_events()] == [1002]


# -- rate limit ----------------------------------------------------------------------------


def test_rate_limit_error_drops_the_message_then_1008(h, pair):
    for _ in range(40):  # the burst
        pair.send_json({"type": "ping"})
    assert pair.types() == ["pong"] * 40
    for strike in range(1, 10):
        pair.send_json({"type": "ping"})
        error_reply(pair, "Rate limit exceeded", "rate_limited")
        assert not pair.server.closed, strike
    pair.send_json({"type": "ping"})  # the 10th drop
    error_reply(pair, "Rate limit exceeded", "rate_limited")
    [close] = pair.close_events()
    assert (close.code, close.reason) == (1008, "rate limit exceeded")


def test_rate_limit_refills_at_the_rate(h, pair):
    for _ in range(40):
        pair.send_json({"type": "ping"})
    pair.send_json({"type": "ping"})
    assert pair.types() == ["pong"] * 40 + ["error"]
    pair.now = 0.05  # 20/s: one token back
    pair.send_json({"type": "ping"})
    pair.send_json({"type": "ping"})
    assert pair.types() == ["pong", "error"]
    pair.now = 10.0  # refilled to the burst, not beyond
    for _ in range(41):
        pair.send_json({"type": "ping"})
    assert pair.types() == ["pong"] * 40 + ["error"]


def test_binary_and_bad_messages_count_against_the_rate_limit(h, pair):
    for _ in range(20):
        pair.send(Message(data=b"x"))
        pair.send_text("nope")
    pair.send_json({"type": "ping"})
    msgs = pair.messages()
    assert msgs[-1]["data"] == h.error("Rate limit exceeded", "rate_limited")
    assert len(msgs) == 41


def test_strikes_older_than_the_window_are_forgotten(h):
    hub = Hub(Settings(rate_limit=1.0, rate_burst=1, rate_limit_strikes=3))
    p = h.Pair(hub)
    p.handshake()
    p.send_json({"type": "ping"})
    p.send_json({"type": "ping"})  # strike 1 at 0
    p.send_json({"type": "ping"})  # strike 2 at 0
    assert p.types() == ["pong", "error", "error"]
    p.now = 30.0
    p.send_json({"type": "pong"})  # keep the heartbeat happy, uses the refilled token
    p.now = 60.0
    p.send_json({"type": "ping"})
    p.send_json({"type": "ping"})  # strike 3, but strikes 1 and 2 are a minute old
    assert not p.server.closed
    p.send_json({"type": "ping"})  # strike 4: two within the minute
    p.now = 60.5
    p.send_json({"type": "ping"})  # strike 5: three within the minute -> 1008
    p.flush()
    assert [c.code for c in p.close_events()] == [1008]


def test_after_the_rate_limit_close_input_is_ignored(h, hub):
    hub = Hub(Settings(rate_limit=1.0, rate_burst=1, rate_limit_strikes=1))
    p = h.Pair(hub)
    p.handshake()
    p.send_json({"type": "ping"})
    p.send_json({"type": "ping"})
    assert p.types() == ["pong", "error"]
    assert [c.code for c in p.close_events()] == [1008]
    p.now = 100.0  # the bucket is full again, but the session is over
    p.feed(h.masked_frame(TEXT, b'{"type":"ping"}') + h.masked_frame(BINARY, b"x"))
    assert p.flush() == []


def test_answers_keep_the_order_of_the_input_in_one_read(h):
    # A ping, a protocol Ping and an oversized message arrive in one read: the pong, the
    # Pong and the close come out in that order, as they would if read one by one.
    p = small(h)
    p.feed(
        h.masked_frame(TEXT, b'{"type":"ping"}')
        + h.masked_frame(PING, b"p")
        + h.masked_frame(TEXT, b"x" * 1001)
        + h.masked_frame(TEXT, b'{"type":"ping"}')
    )
    events = p.flush()
    assert [type(e).__name__ for e in events] == ["TextMessage", "Pong", "CloseConnection"]
    assert json.loads(events[0].data)["type"] == "pong"
    assert events[2].code == 1009


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (bytes([0x83, 0x80, 0, 0, 0, 0]), 1002, "protocol error"),
        (bytes([0x81, 0x81, 0, 0, 0, 0, 0xFF]), 1007, "invalid UTF-8"),
    ],
)
def test_failure_reasons_are_ours_and_fixed(h, pair, data, code, reason):
    pair.feed(data)
    pair.flush()
    assert [(c.code, c.reason) for c in pair.close_events()] == [(code, reason)]
    assert [e for e in pair.events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(code=code, reason=reason)
    ]


def test_binary_over_the_rate_limit_is_dropped_with_the_rate_error(h):
    hub = Hub(Settings(rate_limit=1.0, rate_burst=1))
    p = h.Pair(hub)
    p.handshake()
    p.send(Message(data=b"x"))
    p.send(Message(data=b"y"))
    assert [m["data"]["code"] for m in p.messages()] == ["binary_not_supported", "rate_limited"]


def test_size_limit_holds_without_the_header_check(h, monkeypatch):
    # If a wsproto release hid the frame header from us, the limit would still hold,
    # counted as the payload arrives.
    from agentcast.protocol import frames

    monkeypatch.setattr(frames, "declared_remaining", lambda ws: 0)
    p = small(h)
    frame = h.masked_frame(TEXT, b"x" * 1001)
    p.feed(frame[:600])
    assert p.flush() == []
    p.feed(frame[600:])
    closed_with(p, 1009, "message too big")


def test_the_frame_header_length_is_read_from_wsproto(h):
    # The 1009-from-the-header check reads wsproto's frame decoder, which has no public
    # accessor. If a wsproto release renames what it reads, this fails loudly, rather
    # than the limit silently moving to after the payload has been buffered.
    from wsproto.connection import Connection, ConnectionType

    from agentcast.protocol.frames import declared_remaining

    ws = Connection(ConnectionType.SERVER)
    assert declared_remaining(ws) == 0
    frame = h.masked_frame(TEXT, b"x" * 300)
    ws.receive_data(frame[:8])  # the header (2 + 2 length + 4 mask) and 0 payload bytes
    list(ws.events())
    assert declared_remaining(ws) == 300
    ws.receive_data(frame[8:108])
    list(ws.events())
    assert declared_remaining(ws) == 200


W = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


# -- rate limit window ---------------------------------------------------------------------


def test_a_strike_exactly_one_window_old_no_longer_counts(h):
    # One token, refilled very slowly; two strikes within 10 s close the connection.
    hub = Hub(Settings(rate_limit=0.01, rate_burst=1, rate_limit_strikes=2, rate_limit_window=10))
    s, sink = h.open_session(hub, "u1")
    s.receive_text('{"type":"ping"}', 0.0, W)  # the token
    s.receive_text('{"type":"ping"}', 0.0, W)  # strike at 0
    s.receive_text('{"type":"ping"}', 10.0, W + 10)  # strike at 10: the one at 0 expired
    assert sink.closed is None
    assert [m["type"] for m in sink.messages()] == ["pong", "error", "error"]
    s.receive_text('{"type":"ping"}', 10.0, W + 10)  # second strike within the window
    assert sink.closed == (1008, "rate limit exceeded")


# -- max_message_size for messages framed elsewhere (ASGI) -----------------------------


def test_oversized_text_closes_1009_and_the_user_goes_offline_after_grace(h):
    hub = Hub(Settings(max_message_size=10, presence_window=0))
    s, sink = h.open_session(hub, "u1")
    _, watcher = h.open_session(hub, "u2")
    sink.messages()  # u2 came online
    s.receive_text('{"type":"ping","x":1}', 2.0, W + 2)
    assert sink.closed == (1009, "message too big")
    assert sink.messages() == []
    assert hub.stats.messages_in == Counter()
    assert s.messages_in == 0
    assert hub.next_deadline() == 7.0  # grace (5 s) from the close
    hub.handle_timer(7.0, W + 7)
    assert [m["data"] for m in watcher.messages()] == [{"userId": "u1", "status": "offline"}]


def test_oversized_text_counts_utf8_bytes_and_offline_is_stamped_at_the_close(h):
    hub = Hub(Settings(max_message_size=10, presence_grace=0, presence_window=0))
    s, sink = h.open_session(hub, "u1")
    _, watcher = h.open_session(hub, "u2")
    sink.messages()  # u2 came online
    s.receive_text("ééééé", 1.0, W + 1)  # 5 characters, 10 bytes: allowed
    assert sink.closed is None
    s.receive_text("éééééé", 3.0, W + 3)  # 12 bytes
    assert sink.closed == (1009, "message too big")
    [offline] = watcher.messages()
    assert offline["data"] == {"userId": "u1", "status": "offline"}
    assert offline["timestamp"] == format_timestamp(W + 3)


def test_oversized_binary_closes_1009_without_an_error_message(h):
    hub = Hub(Settings(max_message_size=10, presence_grace=0, presence_window=0))
    s, sink = h.open_session(hub, "u1")
    _, watcher = h.open_session(hub, "u2")
    sink.messages()  # u2 came online
    s.receive_binary(4.0, W + 4, 11)
    assert sink.closed == (1009, "message too big")
    assert sink.messages() == []
    assert hub.stats.errors == Counter()
    [offline] = watcher.messages()
    assert offline["timestamp"] == format_timestamp(W + 4)


def test_a_partial_message_is_held_up_to_its_received_bytes(h, pair):
    """What the transport holds of a message still arriving is what came of it so far
    (bounded by max_message_size)."""
    frame = h.masked_frame(0x1, b"x" * 1000)
    pair.feed(frame[:500])
    held = pair.server.transport.message_buffered
    assert 0 < held <= 500
    pair.feed(frame[500:])
    assert pair.server.transport.message_buffered == 0
