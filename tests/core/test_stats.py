"""The counters the adapter exports as metrics (:class:`~agentcast.protocol.Stats`):
each inbound message, error answer, close and connection counted exactly once."""

from __future__ import annotations

from collections import Counter

from agentcast.protocol import (
    AuthFailure,
    AuthRequested,
    Hub,
    Settings,
)

W = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


# -- metrics counters ----------------------------------------------------------------------


def test_stats_count_every_inbound_message_and_error_once(h):
    hub = Hub()
    s, sink = h.open_session(hub, "u1")
    texts = [
        '{"type":"ping"}',
        '{"type":"ping"}',
        '{"type":"pong"}',
        '{"type":"pong"}',
        '{"type":"user_presence","data":"busy"}',
        '{"type":"user_presence","data":"online"}',
        '{"type":"auth","data":{"token":"t1"}}',
        '{"type":"auth","data":{"token":"t2"}}',
        "not json",
        "not json",
    ]
    for text in texts:
        s.receive_text(text, 1.0, W + 1)
    s.receive_binary(1.0, W + 1, 3)
    refreshes = s.events_received()
    assert refreshes == [
        AuthRequested(token="t1", refresh=True),
        AuthRequested(token="t2", refresh=True),
    ]
    for _ in refreshes:
        s.complete_auth(AuthFailure("Invalid token"), 1.0, W + 1)
    assert hub.stats.messages_in == Counter(ping=2, pong=2, user_presence=2, auth=2)
    assert hub.stats.errors == Counter(invalid_format=2, binary_not_supported=1, auth_failed=2)
    assert s.messages_in == 11
    types = [m["type"] for m in sink.messages()]
    assert types.count("pong") == 2
    assert types.count("error") == 3
    assert types.count("auth") == 2


def test_stats_count_each_heartbeat_timeout_and_close(h):
    hub = Hub()
    sessions = [h.open_session(hub, user) for user in ("u1", "u2")]
    for session, _ in sessions:
        session.handle_timer(60.0, W + 60)
    assert [sink.closed for _, sink in sessions] == [(4000, "heartbeat timeout")] * 2
    assert hub.stats.heartbeat_timeouts == 2
    for session, _ in sessions:
        session.ended(4000, 60.5, W + 60.5)
    assert hub.stats.closes == Counter({4000: 2})


def test_stats_count_each_rate_limit_close(h):
    hub = Hub(Settings(rate_burst=1, rate_limit_strikes=2))
    sessions = [h.open_session(hub, user) for user in ("u1", "u2")]
    for session, _ in sessions:
        for _ in range(3):
            session.receive_text('{"type":"ping"}', 1.0, W + 1)
    assert [sink.closed for _, sink in sessions] == [(1008, "rate limit exceeded")] * 2
    assert hub.stats.rate_limit_closes == 2
    assert hub.stats.errors == Counter(rate_limited=4)


def test_opened_total_counts_every_connection_authenticated_or_not(h):
    hub = Hub()
    h.open_session(hub, "u1")
    h.open_session(hub, None)
    h.open_session(hub, "u1")
    assert hub.stats.opened_total == 3
