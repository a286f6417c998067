"""The outbox's accounting, which the slow-client policy (close 1013 past
``max_send_buffer``) and agent-status conflation depend on."""

from __future__ import annotations

from typing import Any

from agentcast.protocol import (
    Hub,
    PreparedMessage,
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


def notifications_until_closed(h: Any, max_send_buffer: int) -> tuple[int, Any, Hub]:
    """Send four equal notifications to one client that reads nothing after the welcome."""
    hub = Hub(Settings(max_send_buffer=max_send_buffer))
    _, sink = h.open_session(hub, "u1")
    for sent in range(4):
        hub.send_notification("info", "m", now=1.0, wall=W + 1)
        if sink.closed is not None:
            return sent, sink, hub
    return 4, sink, hub


def test_a_backlog_of_exactly_max_send_buffer_is_kept_and_one_byte_more_is_1013(h):
    hub = Hub()
    _, probe = h.open_session(hub, "u1")
    hub.send_notification("info", "m", now=1.0, wall=W + 1)
    size = probe.outbox.backlog
    sent, sink, hub = notifications_until_closed(h, 3 * size)  # room for the welcome too
    assert sent == 3  # three fit exactly; the fourth is one too many
    assert sink.closed == (1013, "client too slow")
    assert hub.stats.slow_client_drops == 1
    sent, sink, _ = notifications_until_closed(h, 3 * size - 1)
    assert sent == 2
    assert sink.closed == (1013, "client too slow")
