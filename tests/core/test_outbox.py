"""The outbox's accounting, which the slow-client policy (close 1013 past
``max_send_buffer``) and agent-status conflation depend on."""

from __future__ import annotations

import json
from typing import Any

from agentcast.protocol import (
    Hub,
    Notification,
    PreparedMessage,
    Published,
    Settings,
)
from agentcast.protocol.outbox import Outbox

W = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


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


# -- delivery accounting -------------------------------------------------------------------


def test_a_conflated_agent_status_still_counts_as_delivered(h):
    hub = Hub(Settings(conflation_threshold=1))
    s, sink = h.open_session(hub, "u1")
    first = hub.broadcast_agent_status("a1", "working", now=1.0, wall=W + 1)
    out_before = s.messages_out
    second = hub.broadcast_agent_status("a1", "idle", now=2.0, wall=W + 2)
    assert (first.delivered, second.delivered) == (1, 1)
    assert s.messages_out == out_before + 1
    assert hub.stats.messages_out["agent_status"] == 2
    [latest] = sink.messages()  # the pending one was replaced
    assert latest["data"] == {"agentName": "a1", "state": "idle"}


#: A notification long enough that three of them leave room for the welcome messages
#: (auth, presence_state, agent_state, user_presence) a new session gets first.
LONG = "m" * 100


def notifications_until_closed(h: Any, max_send_buffer: int) -> tuple[int, Any, Hub]:
    """Send four equal notifications to one client that reads nothing after the welcome."""
    hub = Hub(Settings(max_send_buffer=max_send_buffer))
    _, sink = h.open_session(hub, "u1")
    for sent in range(4):
        hub.send_notification("info", LONG, now=1.0, wall=W + 1)
        if sink.closed is not None:
            return sent, sink, hub
    return 4, sink, hub


def test_a_backlog_of_exactly_max_send_buffer_is_kept_and_one_byte_more_is_1013(h):
    hub = Hub()
    _, probe = h.open_session(hub, "u1")
    hub.send_notification("info", LONG, now=1.0, wall=W + 1)
    size = probe.outbox.backlog
    sent, sink, hub = notifications_until_closed(h, 3 * size)  # room for the welcome too
    assert sent == 3  # three fit exactly; the fourth is one too many
    assert sink.closed == (1013, "client too slow")
    assert hub.stats.slow_client_drops == 1
    sent, sink, _ = notifications_until_closed(h, 3 * size - 1)
    assert sent == 2
    assert sink.closed == (1013, "client too slow")


# -- what counts toward the limit: a snapshot does not, a batch is one step ---------------


def test_uncounted_bytes_stay_out_of_the_counted_backlog_until_written():
    snapshot = PreparedMessage.build("presence_state", {"users": []}, W)
    size = len(snapshot.frame)
    for take in ("bytes", "messages"):
        box = Outbox()
        box.push(b"ab")
        box.push(snapshot, counted=False)
        assert (box.backlog, box.counted_backlog, box.firm_backlog) == (2 + size, 2, 2)
        if take == "bytes":
            assert len(box.take_bytes()) == 2 + size
        else:
            assert box.take_messages() == [snapshot]
        assert box.counted_backlog == 2
        assert box.backlog == 2 + size
        box.sent()
        assert (box.backlog, box.counted_backlog) == (0, 0)
        assert box.take_bytes() == b""
        assert box.counted_backlog == 0


def test_firm_backlog_at_a_batch_is_what_was_there_when_the_batch_began():
    box = Outbox()
    box.push(b"x" * 10)
    assert box.firm_backlog_at(1) == 10
    box.push(b"y" * 5)
    assert box.firm_backlog_at(1) == 10  # the same batch: its own bytes do not count
    assert box.firm_backlog_at(2) == 15  # the next one starts from what is pending now


def notification(n: int, size: int = 200) -> Notification:
    return Notification(level="info", message=f"{n:04d}" + "x" * size)


def publish_batch(hub: Hub, items: list[Notification], now: float) -> list[Published]:
    """Publish *items* as one batch, as the publish API does with an array."""
    with hub.publishing_batch():
        return [hub.publish(item, now=now, wall=W + now) for item in items]


def test_a_presence_snapshot_past_the_send_buffer_reaches_the_newcomer_whole(h):
    hub = Hub(Settings(max_send_buffer=2000, presence_grace=60.0, presence_window=0))
    for n in range(30):  # gone, but online for their grace period
        session, _ = h.open_session(hub, f"u{n:02d}" + "x" * 60)
        session.close(1000, "bye", 0.0, W)
    pair, first = h.connect(hub, "newcomer")
    assert [m["type"] for m in first] == [
        "auth",
        "presence_state",
        "agent_state",
        "user_presence",
    ]
    assert len(json.dumps(first[1])) > 2000
    assert len(first[1]["data"]["users"]) == 30
    assert not pair.server.transport.closed
    assert hub.stats.slow_client_drops == 0
    # It does not shield a slow client: what comes after it is counted as ever.
    items = [notification(n) for n in range(12)]
    for item in items:
        hub.publish(item, now=1.0, wall=W + 1)
    assert hub.stats.slow_client_drops == 1


def test_a_batch_larger_than_the_send_buffer_reaches_a_client_that_has_drained(h):
    hub = Hub(Settings(max_send_buffer=4000))
    _, reader = h.open_session(hub, "reader")
    batch = [notification(n) for n in range(20)]  # ~6 KB, past the limit
    published = publish_batch(hub, batch, 1.0)
    assert [p.delivered for p in published] == [1] * 20
    assert reader.closed is None
    assert [m["data"]["message"][:4] for m in reader.messages()] == [f"{n:04d}" for n in range(20)]
    assert hub.batch == 0  # over once published
    # One message at a time, the same 6 KB is a client too slow to keep up.
    sent = 0
    for item in batch:
        hub.publish(item, now=2.0, wall=W + 2)
        if reader.closed is not None:
            break
        sent += 1
    assert reader.closed == (1013, "client too slow")
    assert 10 < sent < 15


def test_a_batch_on_top_of_what_a_client_has_not_drained_drops_it(h):
    hub = Hub(Settings(max_send_buffer=4000))
    _, behind = h.open_session(hub, "behind")
    _, reader = h.open_session(hub, "reader")
    reader.messages()
    for n in range(11):  # ~3.8 KB the client has not read (341 bytes each)
        hub.publish(notification(n), now=1.0, wall=W + 1)
    behind.outbox.take_messages()  # handed to a socket that does not take it
    reader.messages()
    publish_batch(hub, [notification(n) for n in range(3)], 2.0)
    assert behind.closed == (1013, "client too slow")
    assert reader.closed is None


def test_a_batch_stops_at_twice_the_send_buffer(h):
    hub = Hub(Settings(max_send_buffer=4000))
    _, reader = h.open_session(hub, "reader")
    published = publish_batch(hub, [notification(n) for n in range(60)], 1.0)
    assert reader.closed == (1013, "client too slow")
    delivered = sum(p.delivered for p in published)
    assert 20 < delivered < 30  # past 8,000 bytes (~300 bytes each), not before
