"""PROTOCOL.md section 5: heartbeat with scripted time, at the exact boundaries."""

from __future__ import annotations

import json
from collections import Counter

from wsproto.events import Message, Ping, Pong

from agentcast.protocol import (
    ConnectionClosed,
    Hub,
    Settings,
)
from agentcast.protocol.session import LATE_WAKEUP, RECHECK_DELAY


def test_no_ping_before_the_interval_then_json_ping_and_protocol_ping(h, pair):
    assert pair.server.next_deadline() == 30.0
    pair.tick(29.999)
    assert pair.flush() == []
    pair.tick(30.0)
    events = pair.flush()
    assert [type(e).__name__ for e in events] == ["TextMessage", "Ping"]
    assert pair.messages() == []  # nothing more queued
    assert json.loads(events[0].data) == {"type": "ping", "timestamp": "2025-12-26T13:00:30.000Z"}
    assert pair.server.next_deadline() == 60.0


def test_silent_client_is_closed_4000_at_exactly_the_timeout(h, pair):
    pair.tick(30.0)
    pair.flush()
    pair.tick(59.999)
    assert pair.flush() == []
    assert not pair.server.closed
    assert pair.close_events() == []
    pair.tick(60.0)
    pair.flush()
    [close] = pair.close_events()
    assert (close.code, close.reason) == (4000, "heartbeat timeout")
    # The server waits for the client's close frame (close_timeout), then it is over.
    assert pair.server.next_deadline() == 65.0
    pair.feed(pair.client.send(close.response()))
    assert [e for e in pair.events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(code=4000, reason="heartbeat timeout")
    ]
    assert pair.server.closed
    assert pair.server.next_deadline() is None


def test_client_answering_only_protocol_pings_stays_connected(h, pair):
    """The seed's clients never answer JSON pings; their WebSocket library answers the
    protocol Ping by itself. That must be enough, interval after interval."""
    now = 0.0
    for _ in range(10):
        deadline = pair.server.next_deadline()
        assert deadline == now + 30.0
        now = deadline
        pair.tick(now)
        events = pair.flush()
        [ping] = [e for e in events if isinstance(e, Ping)]
        pair.send(ping.response())  # what browsers and Node's ws do
    assert now == 300.0
    assert not pair.server.closed
    assert pair.close_events() == []
    pair.send_json({"type": "ping"})
    assert pair.types() == ["pong"]


def test_json_pong_alone_keeps_it_alive_too(h, pair):
    for now in (30.0, 60.0, 90.0):
        pair.tick(now)
        assert pair.types() == ["ping"]
        pair.send_json({"type": "pong"})
        assert pair.messages() == []  # a pong needs no answer
    assert not pair.server.closed


def test_any_inbound_frame_is_liveness(h, pair):
    pair.now = 50.0
    pair.send(Ping(payload=b"hi"))  # a client's protocol Ping is answered with a Pong
    [pong] = [e for e in pair.flush() if isinstance(e, Pong)]
    assert pong.payload == b"hi"
    pair.tick(60.0)
    pair.tick(109.999)
    pair.flush()
    assert pair.close_events() == []
    pair.tick(110.0)
    pair.flush()
    assert [c.code for c in pair.close_events()] == [4000]


def test_unsolicited_pong_frame_is_liveness(h, pair):
    pair.now = 40.0
    pair.send(Pong(payload=b""))
    assert pair.flush() == []
    pair.tick(60.0)
    pair.tick(99.999)
    pair.flush()
    assert pair.close_events() == []
    pair.tick(100.0)
    pair.flush()
    assert [c.code for c in pair.close_events()] == [4000]


def test_a_message_fragment_is_liveness(h, pair):
    pair.now = 45.0
    pair.send(Message(data='{"type":', message_finished=False))
    pair.tick(104.999)
    pair.flush()
    assert pair.close_events() == []
    pair.now = 104.999
    pair.send(Message(data='"ping"}', message_finished=True))
    assert "pong" in pair.types()


def test_deadline_is_armed_when_the_connection_opens(h, hub):
    # No message at all after the upgrade: the timeout still runs from the open.
    p = h.Pair(hub, now=7.0)
    p.handshake()
    assert p.server.next_deadline() == 37.0
    p.tick(37.0)
    p.tick(66.999)
    p.flush()
    assert p.close_events() == []
    p.tick(67.0)
    p.flush()
    assert [c.code for c in p.close_events()] == [4000]


def test_a_late_timer_sends_one_ping_and_keeps_the_schedule(h, hub):
    hub = Hub(Settings(heartbeat_interval=10.0, heartbeat_timeout=60.0))
    p = h.Pair(hub)
    p.handshake()
    p.tick(35.0)  # the adapter woke late: one ping, not three
    assert p.types() == ["ping"]
    assert p.server.next_deadline() == 40.0


def test_timer_before_any_deadline_does_nothing(h, pair):
    pair.tick(1.0)
    assert pair.flush() == []
    assert pair.server.next_deadline() == 30.0


def test_next_deadline_values(h, hub):
    p = h.Pair(hub, now=100.0)
    assert p.server.next_deadline() == 110.0  # handshake timeout
    p.handshake()
    assert p.server.next_deadline() == 130.0  # first heartbeat
    p.tick(130.0)
    assert p.server.next_deadline() == 160.0  # next heartbeat and timeout coincide
    p.now = 140.0
    p.send_json({"type": "ping"})
    assert p.server.next_deadline() == 160.0
    p.tick(160.0)
    assert p.server.next_deadline() == 190.0
    p.server.close(1001, "going away", 170.0, p.wall)
    assert p.server.next_deadline() == 175.0  # close timeout
    p.flush()
    p.feed(p.client.send(p.close_events()[0].response()))
    assert p.server.next_deadline() is None


W = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


# -- heartbeat and the end of a session ----------------------------------------------------


def test_a_late_timer_sends_one_ping_and_keeps_the_ping_grid(h):
    hub = Hub()
    s, sink = h.open_session(hub, "u1")
    s.touch(95.0)
    s.handle_timer(95.0, W + 95)  # pings were due at 30, 60 and 90
    assert [m["type"] for m in sink.messages()] == ["ping"]
    assert sink.pings == 1
    assert s.next_deadline() == 120.0
    s.handle_timer(119.0, W + 119)
    assert sink.pings == 1


def test_ended_session_is_closed_and_sends_nothing_more(h):
    hub = Hub()
    s, sink = h.open_session(hub, "u1")
    s.ended(1006, 1.0, W + 1)
    assert s.closed
    assert s.next_deadline() is None
    assert hub.clients_count() == 0
    assert hub.stats.closes == Counter({1006: 1})
    s.handle_timer(30.0, W + 30)
    s.receive_text('{"type":"ping"}', 30.0, W + 30)
    assert sink.pings == 0
    assert sink.messages() == []


# -- a late wake-up: the server was not looking --------------------------------------------
# A client is silent only if nothing it sent has been read when the server looks. A
# wake-up long after the silence deadline (a GC pause, a VM stall, SIGSTOP) does not
# close: the server looks again a moment later, after reading what waited in the socket.


def test_a_late_wake_up_looks_again_before_closing(h, pair):
    pair.tick(30.0)
    pair.flush()
    pair.tick(64.0)  # the deadline was 60.0: the process was stopped for 4 s
    pair.flush()
    assert pair.close_events() == []
    assert pair.server.next_deadline() == 64.0 + RECHECK_DELAY
    # What the client sent during the pause is read now, before the second look.
    pair.send(Pong(payload=b""))
    pair.tick(64.0 + RECHECK_DELAY)
    pair.flush()
    assert pair.close_events() == []
    assert not pair.server.closed
    assert pair.server.next_deadline() == 90.0  # the heartbeat goes on as before


def test_a_client_still_silent_at_the_second_look_is_closed(h, pair):
    pair.tick(30.0)
    pair.tick(64.0)
    pair.flush()
    assert pair.close_events() == []
    pair.tick(64.0 + RECHECK_DELAY)
    pair.flush()
    assert [(c.code, c.reason) for c in pair.close_events()] == [(4000, "heartbeat timeout")]
    assert pair.hub.stats.heartbeat_timeouts == 1


def test_a_wake_up_within_the_tolerance_closes_at_once(h, pair):
    pair.tick(30.0)
    pair.tick(60.0 + LATE_WAKEUP / 2)
    pair.flush()
    assert [c.code for c in pair.close_events()] == [4000]


def test_a_loop_that_is_always_late_still_closes_silent_clients(h, pair):
    pair.tick(30.0)
    now = 61.0
    for _ in range(3):  # three late looks in a row are given the benefit of the doubt
        pair.tick(now)
        pair.flush()
        assert pair.close_events() == []
        now = pair.server.next_deadline() + 2 * LATE_WAKEUP
    pair.tick(now)
    pair.flush()
    assert [c.code for c in pair.close_events()] == [4000]


def test_the_benefit_of_the_doubt_is_renewed_once_the_client_is_heard(h, pair):
    for pause_end in (64.0, 134.0):
        pair.tick(pause_end)  # late, each time: looks again
        pair.flush()
        assert pair.close_events() == []
        pair.now = pause_end
        pair.send_json({"type": "pong"})  # what the client sent during the pause
        pair.tick(pause_end + RECHECK_DELAY)
        pair.flush()
    pair.tick(160.0)  # a heartbeat on time in between
    assert not pair.server.closed
