"""What frames may cost: fragments, control frames and a client that does not read.

A message in fragments is held as its bytes and refused past ``max_message_frames``
(1008); an empty fragment finishing nothing is no proof of life; Pings and Pongs count
against the rate limit, a flood of them is closed 1008, after which the transport reads
nothing more; a Pong counts in the backlog, and past ``max_send_buffer`` only the latest
Ping is answered, while the adapter is told to stop reading.
"""

from __future__ import annotations

from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from agentcast.protocol import ConnectionClosed, Hub, Settings, WebSocketTransport

CONT, TEXT, BINARY, PING, PONG = 0x0, 0x1, 0x2, 0x9, 0xA


def opened(h, **settings):
    p = h.Pair(Hub(Settings(**settings)))
    p.handshake()
    return p


# -- fragments ------------------------------------------------------------------------------


def test_a_message_in_fragments_is_assembled_whatever_its_cut(h):
    p = opened(h)
    text = '{"type":"ping","x":"héllo wörld ✓"}'.encode()
    # Cut inside multi-byte characters too: the bytes are joined, then decoded once.
    frames = [h.masked_frame(TEXT, text[:21], fin=False)]
    frames += [h.masked_frame(CONT, text[i : i + 1], fin=False) for i in range(21, 30)]
    frames.append(h.masked_frame(CONT, text[30:]))
    p.feed(b"".join(frames))
    assert p.types() == ["pong"]
    assert p.server.transport.message_buffered == 0


def test_a_binary_message_in_fragments_is_one_message(h):
    p = opened(h)
    p.feed(h.masked_frame(BINARY, b"ab", fin=False) + h.masked_frame(CONT, b"cd"))
    [message] = p.messages()
    assert message["data"]["code"] == "binary_not_supported"


def test_an_unfinished_message_holds_its_bytes(h):
    p = opened(h)
    p.feed(h.masked_frame(TEXT, b"[1", fin=False))
    p.feed(b"".join(h.masked_frame(CONT, b",1", fin=False) for _ in range(500)))
    assert p.server.transport.message_buffered == 1002


def test_fragments_count_toward_max_message_size(h):
    p = opened(h, max_message_size=100)
    p.feed(h.masked_frame(TEXT, b"x" * 60, fin=False))
    p.feed(h.masked_frame(CONT, b"x" * 60, fin=False))
    [close] = [e for e in p.flush() if isinstance(e, CloseConnection)]
    assert (close.code, close.reason) == (1009, "message too big")


def test_a_message_in_more_than_max_message_frames_is_closed_1008(h):
    p = opened(h, max_message_frames=10)
    frames = [h.masked_frame(TEXT, b"[", fin=False)]
    frames += [h.masked_frame(CONT, b"", fin=False) for _ in range(8)]
    frames.append(h.masked_frame(CONT, b"]"))  # ten frames: allowed
    p.feed(b"".join(frames))
    assert [m["data"]["code"] for m in p.messages()] == ["invalid_format"]
    p.feed(b"".join(frames[:-1]) + h.masked_frame(CONT, b"", fin=False) * 1000)
    [close] = [e for e in p.flush() if isinstance(e, CloseConnection)]
    assert (close.code, close.reason) == (1008, "too many frames in one message")
    assert p.server.transport.message_buffered == 0


def test_empty_fragments_are_no_proof_of_life(h):
    p = opened(h, heartbeat_interval=10.0, heartbeat_timeout=20.0)
    p.feed(h.masked_frame(TEXT, b"[", fin=False))
    for second in range(1, 20):
        p.now = float(second)
        p.feed(h.masked_frame(CONT, b"", fin=False))
    p.tick(20.0)
    p.flush()
    assert [(c.code, c.reason) for c in p.close_events()] == [(4000, "heartbeat timeout")]
    # A fragment with bytes, or one that ends the message, is.
    q = opened(h, heartbeat_interval=10.0, heartbeat_timeout=20.0)
    q.feed(h.masked_frame(TEXT, b"[", fin=False))
    q.now = 15.0
    q.feed(h.masked_frame(CONT, b"1", fin=False))
    q.now = 30.0
    q.feed(h.masked_frame(CONT, b"]"))
    q.tick(34.9)
    q.flush()
    assert q.close_events() == []


# -- control frames ---------------------------------------------------------------------------


def test_pings_count_against_the_rate_limit_and_a_flood_is_closed_1008(h):
    p = opened(h, rate_limit=1.0, rate_burst=5, rate_limit_strikes=3)
    p.feed(h.masked_frame(PING, b"x") * 20)
    events = p.flush()
    assert sum(isinstance(e, Pong) for e in events) == 5  # the burst, then none
    [close] = [e for e in events if isinstance(e, CloseConnection)]
    assert (close.code, close.reason) == (1008, "rate limit exceeded")
    assert not any(isinstance(e, TextMessage) for e in events)  # no error per frame
    assert p.hub.stats.rate_limit_closes == 1
    # From then on nothing is read, not even the client's close frame: the close
    # timeout ends the connection.
    assert not p.server.wants_input
    p.feed(p.client.send(close.response()))
    assert not p.server.closed
    p.tick(p.hub.settings.close_timeout)
    assert p.server.closed
    assert p.events[-1] == ConnectionClosed(code=1008, reason="rate limit exceeded")


def test_pongs_count_too_and_get_no_answer(h):
    p = opened(h, rate_limit=1.0, rate_burst=5, rate_limit_strikes=3)
    p.feed(h.masked_frame(PONG, b"") * 7)
    assert [e for e in p.flush() if isinstance(e, CloseConnection)] == []
    p.feed(h.masked_frame(PONG, b""))  # the third strike
    [close] = [e for e in p.flush() if isinstance(e, CloseConnection)]
    assert close.code == 1008


def test_a_ping_within_the_limit_is_answered_and_shares_the_bucket_with_messages(h):
    p = opened(h, rate_limit=1.0, rate_burst=3)
    p.send(Ping(payload=b"a"))
    p.send_json({"type": "ping"})
    p.send(Ping(payload=b"b"))
    events = p.flush()
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"a", b"b"]
    p.send(Ping(payload=b"c"))  # the bucket is empty: dropped, no answer
    assert not any(isinstance(e, Pong) for e in p.flush())
    p.now = 1.0
    p.send(Ping(payload=b"d"))
    assert [e.payload for e in p.flush() if isinstance(e, Pong)] == [b"d"]


# -- a client that does not read --------------------------------------------------------------


def test_pongs_count_in_the_backlog_and_past_the_limit_only_the_latest_is_answered(h):
    limit = 1000
    p = opened(h, max_send_buffer=limit, rate_limit=1e9, rate_burst=10**9)
    box = p.server.transport.outbox
    pings = [h.masked_frame(PING, b"%03d" % n + b"p" * 100) for n in range(100)]
    p.feed(b"".join(pings[:9]))  # 9 Pongs of 105 bytes: under the limit
    assert box.backlog == 9 * 105
    assert p.server.wants_input
    p.feed(b"".join(pings[9:]))  # the tenth passes the limit: from then on, one Pong
    assert box.backlog == 10 * 105
    assert not p.server.wants_input  # the adapter stops reading
    pongs = [e.payload[:3] for e in p.flush() if isinstance(e, Pong)]
    assert pongs == [b"%03d" % n for n in range(9)] + [b"099"]
    assert p.server.wants_input  # written: read again
    # A backlog in flight counts as well.
    p.server.data_to_send()
    p.feed(pings[0])
    assert box.backlog == 105


def test_a_transport_without_a_session_answers_every_ping():
    # The RFC 6455 conformance echo runs the transport alone: no rate limit there.
    t = WebSocketTransport(now=0.0)
    t.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        0.0,
    )
    t.accept(0.0)
    t.data_to_send()
    t.receive_data(b"\x89\x81\x00\x00\x00\x00x" * 100, 0.0)
    assert t.data_to_send() == b"\x8a\x01x" * 100


def test_the_reason_the_transport_reads_nothing_more_is_a_1008_close_only(h):
    p = opened(h, max_message_size=100)
    p.feed(h.masked_frame(TEXT, b"x" * 200))
    [close] = [e for e in p.flush() if isinstance(e, CloseConnection)]
    assert close.code == 1009
    assert p.server.wants_input  # a 1009 still waits for the client's close frame
    p.feed(p.client.send(close.response()))
    assert p.server.closed
    assert not p.server.wants_input
    assert p.events[-1] == ConnectionClosed(code=1009, reason="message too big")


def test_without_the_declared_length_a_whole_message_is_still_measured(h, monkeypatch):
    # If a wsproto release hid the frame header, the size would be checked on arrival.
    monkeypatch.setattr("agentcast.protocol.frames.declared_remaining", lambda ws: 0)
    p = opened(h, max_message_size=100)
    p.feed(h.masked_frame(TEXT, b"x" * 200))
    [close] = [e for e in p.flush() if isinstance(e, CloseConnection)]
    assert (close.code, close.reason) == (1009, "message too big")
