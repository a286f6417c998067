"""PROTOCOL.md section 9: the closing handshake in both directions, EOF, the close
timeout, and the slow-client close (1013) with its backlog accounting.

Close codes tested elsewhere: 1002/1007/1008/1009 in test_s6_bad_input.py, 4000 in
test_s5_heartbeat.py, 4001 in test_s2_auth.py."""

from __future__ import annotations

import pytest
from wsproto.events import CloseConnection, Request, TextMessage

from agentcast.protocol import ConnectionClosed, Hub, PreparedMessage, Settings, TransportState


def closed_events(pair) -> list[ConnectionClosed]:
    return [e for e in pair.events if isinstance(e, ConnectionClosed)]


@pytest.mark.parametrize(("code", "reason"), [(1000, "bye"), (1001, ""), (4321, "app")])
def test_client_initiated_close_is_echoed(h, hub, pair, code, reason):
    pair.send(CloseConnection(code=code, reason=reason))
    [echo] = pair.flush()
    assert isinstance(echo, CloseConnection)
    assert echo.code == code
    assert closed_events(pair) == [ConnectionClosed(code=code, reason=reason)]
    assert pair.server.closed
    assert pair.server.next_deadline() is None
    assert hub.clients_count() == 0
    assert hub.stats.closes[code] == 1


def test_client_close_without_a_code(h, pair):
    pair.feed(h.masked_frame(0x8, b""))
    [echo] = pair.flush()
    assert isinstance(echo, CloseConnection)
    assert pair.server.closed
    assert [e.code for e in closed_events(pair)] == [1005]  # "no status received"


def test_server_close_waits_for_the_peer(h, hub, pair):
    pair.server.close(1001, "going away", 0.0, pair.wall)
    [close] = pair.flush()
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1001, "going away")
    assert not pair.server.closed
    assert pair.server.transport.state is TransportState.CLOSING
    assert closed_events(pair) == []
    assert hub.clients_count() == 0  # no more broadcasts for it
    # Messages that cross our close frame are not answered.
    pair.feed(h.masked_frame(0x1, b'{"type":"ping"}'))
    assert pair.flush() == []
    pair.send(close.response())
    assert closed_events(pair) == [ConnectionClosed(code=1001, reason="going away")]
    assert pair.server.closed
    assert pair.server.data_to_send() == b""


def test_server_close_is_idempotent(h, pair):
    pair.server.close(1000, "", 0.0, pair.wall)
    pair.server.close(1001, "again", 0.0, pair.wall)
    pair.flush()
    assert [c.code for c in pair.close_events()] == [1000]


def test_close_timeout_gives_up_on_the_peer(h):
    hub = Hub(Settings(close_timeout=5.0))
    p = h.Pair(hub)
    p.handshake()
    p.server.close(1001, "going away", 10.0, p.wall)
    p.flush()
    assert p.server.next_deadline() == 15.0
    p.tick(14.999)
    assert closed_events(p) == []
    p.tick(15.0)
    assert closed_events(p) == [ConnectionClosed(code=1001, reason="going away")]
    assert p.server.closed


def test_eof_is_1006(h, hub, pair):
    pair.eof()
    assert closed_events(pair) == [ConnectionClosed(code=1006, reason="")]
    assert pair.server.closed
    assert hub.clients_count() == 0
    assert pair.server.data_to_send() == b""


def test_eof_while_closing_keeps_our_code(h, pair):
    pair.server.close(1001, "going away", 0.0, pair.wall)
    pair.eof()
    assert closed_events(pair) == [ConnectionClosed(code=1001, reason="going away")]


def test_send_failed_ends_the_connection(h, hub, pair):
    hub.send_notification("info", "queued", now=0.0, wall=0.0)
    pair.server.send_failed(0.0, pair.wall)
    pair.events += pair.server.events_received()
    assert closed_events(pair) == [ConnectionClosed(code=1006, reason="")]
    assert pair.server.data_to_send() == b""
    assert pair.server.transport.backlog == 0
    assert hub.clients_count() == 0
    hub.send_notification("info", "later", now=0.0, wall=0.0)
    assert pair.server.data_to_send() == b""


def test_send_failed_before_the_upgrade(h, hub):
    p = h.Pair(hub)
    p.feed(h.http_request("/healthz")[:5])
    p.server.send_failed(0.0, p.wall)
    assert p.server.closed
    assert closed_events(p) == []


def test_data_after_close_is_ignored(h, pair):
    pair.send(CloseConnection(code=1000))
    pair.flush()
    pair.feed(h.masked_frame(0x1, b'{"type":"ping"}'))
    pair.eof()
    pair.tick(100.0)
    assert pair.server.data_to_send() == b""
    assert len(closed_events(pair)) == 1


# -- 1013: a client too slow to keep up ------------------------------------------------------


def test_slow_client_is_closed_1013_and_nobody_else_is_affected(h):
    hub = Hub(Settings(max_send_buffer=4096))
    slow, _ = h.connect(hub, "slow")
    fast, _ = h.connect(hub, "fast")
    slow.messages()
    fast.messages()
    frame = len(
        PreparedMessage.build(
            "notification", {"level": "info", "message": "n" * 200}, h.WALL0, "0" * 16
        ).frame
    )
    published = 0
    while slow.server.transport.state is TransportState.OPEN:
        before = slow.server.transport.backlog  # slow never reads
        hub.send_notification("info", "n" * 200, now=0.0, wall=h.WALL0)
        published += 1
        assert published < 100
        assert [m["type"] for m in fast.messages()] == ["notification"]
    # Closed by exactly the publish that would have taken it past the limit.
    assert before <= 4096 < before + frame
    assert published > 1
    assert hub.stats.slow_client_drops == 1
    # The queued notifications were dropped; the close frame is what remains.
    events = slow.flush()
    assert not any(isinstance(e, TextMessage) for e in events)
    [close] = [e for e in events if isinstance(e, CloseConnection)]
    assert (close.code, close.reason) == (1013, "client too slow")
    assert hub.authenticated_clients_count() == 1
    hub.send_notification("info", "after", now=0.0, wall=h.WALL0)
    assert [m["data"]["message"] for m in fast.messages()] == ["after"]
    assert slow.flush() == []


def test_backlog_counts_the_write_in_flight(h):
    hub = Hub(Settings(max_send_buffer=1000))
    p, _ = h.connect(hub, "slow")
    transport = p.server.transport
    assert transport.backlog == 0
    hub.send_notification("info", "a" * 300, now=0.0, wall=0.0)
    frame_size = transport.backlog
    assert frame_size > 300
    in_flight = p.server.data_to_send()  # handed to the socket, not yet written
    assert len(in_flight) == frame_size
    assert transport.backlog == frame_size
    hub.send_notification("info", "b" * 300, now=0.0, wall=0.0)
    assert transport.backlog == 2 * frame_size
    assert p.server.data_to_send()  # the first write completed, the second is in flight
    assert transport.backlog == frame_size
    assert p.server.data_to_send() == b""  # that one completed too
    assert transport.backlog == 0


def test_write_in_flight_pushes_a_client_over_the_limit(h):
    hub = Hub(Settings(max_send_buffer=1000))
    p, _ = h.connect(hub, "slow")
    hub.send_notification("info", "a" * 600, now=0.0, wall=0.0)
    p.server.data_to_send()  # in flight, never completed
    hub.send_notification("info", "b" * 600, now=0.0, wall=0.0)
    assert p.server.transport.state is TransportState.CLOSING
    assert p.server.transport.close_code == 1013


def test_1013_never_drops_the_101(h):
    # A connection whose own first messages overflow the buffer before its first write:
    # the 101 response stays, so the client sees a valid handshake and then the close.
    hub = Hub(Settings(max_send_buffer=120))
    h.connect(hub, "other")
    p = h.Pair(hub)
    p.send(Request(host="localhost", target="/ws?token=abc123"))
    p.answer_auth()
    p.flush()
    assert p.accept is not None
    assert [(c.code, c.reason) for c in p.close_events()] == [(1013, "client too slow")]


def test_nothing_is_queued_after_our_close_frame(h):
    # After a 1009 the server waits for the client's close; broadcasts meanwhile must not
    # follow the close frame (RFC 6455 5.5.1), and the connection no longer counts.
    hub = Hub(Settings(max_message_size=100))
    p, _ = h.connect(hub, "big")
    other, _ = h.connect(hub, "other")
    p.messages()
    other.messages()
    p.send_text('{"type":"ping","x":"' + "a" * 100 + '"}')
    assert hub.clients_count() == 1
    hub.send_notification("info", "late", now=0.0, wall=h.WALL0)
    events = p.flush()
    assert [type(e).__name__ for e in events] == ["CloseConnection"]
    assert [m["data"]["message"] for m in other.messages() if m["type"] == "notification"] == [
        "late"
    ]
    p.send(events[0].response())
    assert closed_events(p) == [ConnectionClosed(code=1009, reason="message too big")]
    assert hub.stats.closes[1009] == 1


def test_close_frame_pipelined_with_the_upgrade(h, hub):
    # Frames sent right behind the request are read after the session has started:
    # the client gets its auth first, then the echo of its close.
    p = h.Pair(hub)
    request = p.client.send(Request(host="localhost", target="/ws?token=abc123"))
    p.feed(request + h.masked_frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
    p.answer_auth()
    events = p.flush()
    assert [type(e).__name__ for e in events] == [
        "AcceptConnection",
        "TextMessage",
        "TextMessage",
        "TextMessage",
        "TextMessage",
        "CloseConnection",
    ]
    assert closed_events(p) == [ConnectionClosed(code=1000, reason="bye")]
    assert hub.clients_count() == 0


def test_framing_violation_while_closing_ends_at_once_without_a_second_close(h, pair):
    pair.server.close(1001, "going away", 0.0, pair.wall)
    first = pair.server.data_to_send()
    pair.feed(h.masked_frame(0x3, b""))
    assert pair.server.data_to_send() == b""  # our close frame was already sent
    assert pair.server.closed
    assert closed_events(pair) == [ConnectionClosed(code=1002, reason="protocol error")]
    assert first.startswith(b"\x88")


def test_pings_crossing_our_close_frame_are_not_answered(h, pair):
    pair.server.close(1000, "", 0.0, pair.wall)
    pair.server.data_to_send()
    pair.now = 1.0
    pair.feed(h.masked_frame(0x9, b"p"))
    assert pair.server.data_to_send() == b""
    assert not pair.server.closed
    assert pair.server.transport.last_activity == 1.0  # still proof of life
