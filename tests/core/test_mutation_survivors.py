"""Assertions added for mutants that survived a mutmut run (docs/mutation.md).

Each test pins behaviour a user sees: the counters the adapter exports as metrics, the
close code and reason, the presence broadcast other clients get, the next deadline, and
the accounting the slow-client policy (1013) and conflation depend on.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from agentcast.protocol import (
    AgentStatus,
    AuthFailure,
    AuthRequested,
    ChatMessage,
    Hub,
    Identity,
    Notification,
    PreparedMessage,
    Session,
    Settings,
    format_timestamp,
)
from agentcast.protocol.messages import MAX_FIELD_LENGTH
from agentcast.protocol.outbox import Outbox

W = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


def open_session(h: Any, hub: Hub, user: str | None, now: float = 0.0) -> tuple[Session, Any]:
    sink = h.ListSink()
    auth = Identity(user_id=user) if user is not None else AuthFailure("Missing token")
    session = Session(hub, sink, auth, now=now, wall=W + now)
    sink.messages()  # auth, presence_state, ...
    return session, sink


# -- metrics counters ----------------------------------------------------------------------


def test_stats_count_every_inbound_message_and_error_once(h):
    hub = Hub()
    s, sink = open_session(h, hub, "u1")
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
    sessions = [open_session(h, hub, user) for user in ("u1", "u2")]
    for session, _ in sessions:
        session.handle_timer(60.0, W + 60)
    assert [sink.closed for _, sink in sessions] == [(4000, "heartbeat timeout")] * 2
    assert hub.stats.heartbeat_timeouts == 2
    for session, _ in sessions:
        session.ended(4000, 60.5, W + 60.5)
    assert hub.stats.closes == Counter({4000: 2})


def test_stats_count_each_rate_limit_close(h):
    hub = Hub(Settings(rate_burst=1, rate_limit_strikes=2))
    sessions = [open_session(h, hub, user) for user in ("u1", "u2")]
    for session, _ in sessions:
        for _ in range(3):
            session.receive_text('{"type":"ping"}', 1.0, W + 1)
    assert [sink.closed for _, sink in sessions] == [(1008, "rate limit exceeded")] * 2
    assert hub.stats.rate_limit_closes == 2
    assert hub.stats.errors == Counter(rate_limited=4)


# -- rate limit window ---------------------------------------------------------------------


def test_a_strike_exactly_one_window_old_no_longer_counts(h):
    # One token, refilled very slowly; two strikes within 10 s close the connection.
    hub = Hub(Settings(rate_limit=0.01, rate_burst=1, rate_limit_strikes=2, rate_limit_window=10))
    s, sink = open_session(h, hub, "u1")
    s.receive_text('{"type":"ping"}', 0.0, W)  # the token
    s.receive_text('{"type":"ping"}', 0.0, W)  # strike at 0
    s.receive_text('{"type":"ping"}', 10.0, W + 10)  # strike at 10: the one at 0 expired
    assert sink.closed is None
    assert [m["type"] for m in sink.messages()] == ["pong", "error", "error"]
    s.receive_text('{"type":"ping"}', 10.0, W + 10)  # second strike within the window
    assert sink.closed == (1008, "rate limit exceeded")


# -- presence ------------------------------------------------------------------------------


def test_a_fractional_presence_grace_still_delays_offline(h):
    hub = Hub(Settings(presence_grace=0.5))
    leaver, _ = open_session(h, hub, "u1")
    _, watcher = open_session(h, hub, "u2")
    leaver.close(1000, "bye", 1.0, W + 1)
    assert watcher.messages() == []
    assert hub.presence()["u1"] == "online"
    hub.handle_timer(1.5, W + 1.5)
    [offline] = watcher.messages()
    assert offline["type"] == "user_presence"
    assert offline["data"] == {"userId": "u1", "status": "offline"}
    assert offline["timestamp"] == format_timestamp(W + 1.5)


# -- max_message_size for messages framed elsewhere (ASGI) -----------------------------


def test_oversized_text_closes_1009_and_the_user_goes_offline_after_grace(h):
    hub = Hub(Settings(max_message_size=10))
    s, sink = open_session(h, hub, "u1")
    _, watcher = open_session(h, hub, "u2")
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
    hub = Hub(Settings(max_message_size=10, presence_grace=0))
    s, sink = open_session(h, hub, "u1")
    _, watcher = open_session(h, hub, "u2")
    sink.messages()  # u2 came online
    s.receive_text("ééééé", 1.0, W + 1)  # 5 characters, 10 bytes: allowed
    assert sink.closed is None
    s.receive_text("éééééé", 3.0, W + 3)  # 12 bytes
    assert sink.closed == (1009, "message too big")
    [offline] = watcher.messages()
    assert offline["data"] == {"userId": "u1", "status": "offline"}
    assert offline["timestamp"] == format_timestamp(W + 3)


def test_oversized_binary_closes_1009_without_an_error_message(h):
    hub = Hub(Settings(max_message_size=10, presence_grace=0))
    s, sink = open_session(h, hub, "u1")
    _, watcher = open_session(h, hub, "u2")
    sink.messages()  # u2 came online
    s.receive_binary(4.0, W + 4, 11)
    assert sink.closed == (1009, "message too big")
    assert sink.messages() == []
    assert hub.stats.errors == Counter()
    [offline] = watcher.messages()
    assert offline["timestamp"] == format_timestamp(W + 4)


# -- heartbeat and the end of a session ----------------------------------------------------


def test_a_late_timer_sends_one_ping_and_keeps_the_ping_grid(h):
    hub = Hub()
    s, sink = open_session(h, hub, "u1")
    s.touch(95.0)
    s.handle_timer(95.0, W + 95)  # pings were due at 30, 60 and 90
    assert [m["type"] for m in sink.messages()] == ["ping"]
    assert sink.pings == 1
    assert s.next_deadline() == 120.0
    s.handle_timer(119.0, W + 119)
    assert sink.pings == 1


def test_ended_session_is_closed_and_sends_nothing_more(h):
    hub = Hub()
    s, sink = open_session(h, hub, "u1")
    s.ended(1006, 1.0, W + 1)
    assert s.closed
    assert s.next_deadline() is None
    assert hub.clients_count() == 0
    assert hub.stats.closes == Counter({1006: 1})
    s.handle_timer(30.0, W + 30)
    s.receive_text('{"type":"ping"}', 30.0, W + 30)
    assert sink.pings == 0
    assert sink.messages() == []


# -- the outbox ----------------------------------------------------------------------------


def status(agent: str, state: str) -> PreparedMessage:
    data = {"agentName": agent, "state": state}
    return PreparedMessage.build("agent_status", data, W, key=agent)


def test_outbox_backlog_counts_taken_messages_until_sent():
    box = Outbox()
    assert not box
    box.push(b"x")
    assert box
    box.discard()
    first = PreparedMessage.build("notification", {"level": "info", "message": "1"}, W)
    second = PreparedMessage.build("notification", {"level": "info", "message": "2"}, W)
    box.push(first)
    box.push(second)
    size = len(first.frame) + len(second.frame)
    assert box.backlog == size
    assert box.take_messages() == [first, second]
    assert not box
    assert box.backlog == size  # in flight until the write completes
    box.sent()
    assert box.backlog == 0


def test_outbox_replace_needs_a_key_and_keeps_the_accounting_exact():
    box = Outbox()
    keyless = PreparedMessage.build("notification", {"level": "info", "message": "n"}, W)
    box.push(keyless)
    assert box.replace(keyless) is False
    assert box.take_messages() == [keyless]
    box.sent()

    old = status("a1", "working")
    new = status("a1", "idle")
    box.push(old)
    assert box.firm_backlog == 0  # all of it can be conflated
    assert box.replace(new) is True
    assert box.backlog == len(new.frame)
    assert box.firm_backlog == 0
    assert box.take_messages() == [new]


# -- validation answers (the publish API returns these texts as {"error": ...}) ------------


def test_unknown_type_with_a_lone_surrogate_is_echoed_with_a_replacement(h):
    hub = Hub()
    s, sink = open_session(h, hub, "u1")
    s.receive_text('{"type":"x\\ud800y"}', 1.0, W + 1)
    [answer] = sink.messages()
    assert answer["data"] == {"error": "Unknown message type: x?y", "code": "unknown_type"}
    assert sink.closed is None


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: ChatMessage.from_data([]), "chat message must be an object"),
        (lambda: Notification.from_data("n"), "notification must be an object"),
        (
            lambda: Notification(level="info", message="m", user_id=""),
            "userId must not be empty",
        ),
        (
            lambda: AgentStatus(agent_name="a", state="idle", progress=101),
            "progress must be a number from 0 to 100",
        ),
        (
            lambda: ChatMessage(conversation_id="c", message_id="m", content=5, sender="s"),
            "content must be a string",
        ),
        (
            lambda: ChatMessage(
                conversation_id="c", message_id="m", content="x", sender="s", timestamp="now"
            ),
            "timestamp must be an ISO 8601 date-time such as 2025-12-26T13:00:00.000Z",
        ),
        (
            lambda: ChatMessage(conversation_id="c", message_id="m", content="a\ud800", sender="s"),
            "content is not valid Unicode (a lone surrogate)",
        ),
        (
            lambda: AgentStatus(agent_name="a\udfff", state="idle"),
            "agentName is not valid Unicode (a lone surrogate)",
        ),
    ],
)
def test_invalid_publish_data_is_refused_with_its_exact_reason(make, error):
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        make()


def test_fields_of_exactly_the_maximum_length_are_accepted():
    longest = "x" * MAX_FIELD_LENGTH
    assert AgentStatus(agent_name=longest, state="idle").to_data()["agentName"] == longest
    chat = ChatMessage(conversation_id="c", message_id="m", content=longest, sender="s")
    assert chat.to_data(W)["content"] == longest
    with pytest.raises(ValueError, match="is longer than"):
        ChatMessage(conversation_id="c", message_id="m", content=longest + "x", sender="s")


# -- delivery accounting -------------------------------------------------------------------


def test_opened_total_counts_every_connection_authenticated_or_not(h):
    hub = Hub()
    open_session(h, hub, "u1")
    open_session(h, hub, None)
    open_session(h, hub, "u1")
    assert hub.stats.opened_total == 3


def test_a_conflated_agent_status_still_counts_as_delivered(h):
    hub = Hub(Settings(conflation_threshold=1))
    s, sink = open_session(h, hub, "u1")
    first = hub.broadcast_agent_status("a1", "working", now=1.0, wall=W + 1)
    out_before = s.messages_out
    second = hub.broadcast_agent_status("a1", "idle", now=2.0, wall=W + 2)
    assert (first.delivered, second.delivered) == (1, 1)
    assert s.messages_out == out_before + 1
    assert hub.stats.messages_out["agent_status"] == 2
    [latest] = sink.messages()  # the pending one was replaced
    assert latest["data"] == {"agentName": "a1", "state": "idle"}


def notifications_until_closed(h: Any, max_send_buffer: int) -> tuple[int, Any, Hub]:
    """Send four equal notifications to one client that reads nothing after the welcome."""
    hub = Hub(Settings(max_send_buffer=max_send_buffer))
    _, sink = open_session(h, hub, "u1")
    for sent in range(4):
        hub.send_notification("info", "m", now=1.0, wall=W + 1)
        if sink.closed is not None:
            return sent, sink, hub
    return 4, sink, hub


def test_a_backlog_of_exactly_max_send_buffer_is_kept_and_one_byte_more_is_1013(h):
    hub = Hub()
    _, probe = open_session(h, hub, "u1")
    hub.send_notification("info", "m", now=1.0, wall=W + 1)
    size = probe.outbox.backlog
    sent, sink, hub = notifications_until_closed(h, 3 * size)  # room for the welcome too
    assert sent == 3  # three fit exactly; the fourth is one too many
    assert sink.closed == (1013, "client too slow")
    assert hub.stats.slow_client_drops == 1
    sent, sink, _ = notifications_until_closed(h, 3 * size - 1)
    assert sent == 2
    assert sink.closed == (1013, "client too slow")
