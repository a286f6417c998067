"""The presence window (PROTOCOL.md 4): presence changes of different users close together
go out together, one delivery per connection, without dropping the final state or
reordering one user's changes; the snapshot is what the clients were told."""

from __future__ import annotations

import json

import pytest

from agentcast.protocol import Hub, PreparedMessage, Settings, format_timestamp
from agentcast.protocol.messages import encode_data, encode_server_message, encode_with_data
from agentcast.protocol.outbox import Outbox

W = 1_766_754_000.0  # the helpers' WALL0


def window_hub(**settings: float) -> Hub:
    """A hub with a 0.1 s presence window and no per-user interval (its own tests)."""
    return Hub(Settings(presence_window=0.1, presence_interval=0, **settings))


def presence_of(msgs):
    return [
        (m["data"]["userId"], m["data"]["status"]) for m in msgs if m["type"] == "user_presence"
    ]


def view(first, later):
    """A client's view: its presence_state, then every user_presence, in order."""
    [state] = [m for m in first if m["type"] == "presence_state"]
    seen = {u["userId"]: u["status"] for u in state["data"]["users"]}
    for user, status in presence_of(first) + presence_of(later):
        if status == "offline":
            seen.pop(user, None)
        else:
            seen[user] = status
    return seen


def test_the_first_change_goes_at_once_and_the_next_ones_when_the_window_ends(h):
    hub = window_hub()
    woken = []
    hub.on_deadline = woken.append
    watcher, first = h.connect(hub, "watcher", now=0.0)
    assert presence_of(first) == [("user_watcher", "online")]  # a quiet hub: at once
    for n, name in enumerate(["a", "b", "c"]):
        h.connect(hub, name, now=0.02 * (n + 1))
    assert presence_of(watcher.messages()) == []  # held
    assert woken == [0.1]  # the adapter is told once
    assert hub.next_deadline() == 0.1
    hub.handle_timer(0.099, W)
    assert presence_of(watcher.messages()) == []
    hub.handle_timer(0.1, W + 0.1)
    msgs = watcher.messages()
    assert presence_of(msgs) == [("user_a", "online"), ("user_b", "online"), ("user_c", "online")]
    assert [m["timestamp"] for m in msgs] == [format_timestamp(W + 0.1)] * 3
    ids = [m["id"] for m in msgs]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert hub.stats.messages_out["user_presence"] == 1 + 4 * 3  # each message counted
    # A change within the window after that send is held until that window ends ...
    h.connect(hub, "d", now=0.15)
    assert hub.next_deadline() == 0.2
    hub.handle_timer(0.2, W)
    assert presence_of(watcher.messages()) == [("user_d", "online")]
    # ... and one after a quiet window goes at once again.
    h.connect(hub, "e", now=0.5)
    assert presence_of(watcher.messages()) == [("user_e", "online")]
    assert hub.next_deadline() is None


class Recorder:
    """A member that records what the hub delivers to it."""

    subscriptions = ()
    presence = "online"

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.got: list[PreparedMessage] = []

    def deliver(self, message, now, wall, *, counted=True) -> bool:
        self.got.append(message)
        return True


def test_held_changes_reach_each_connection_as_one_delivery(h):
    hub = window_hub()
    watcher = Recorder("watcher")
    hub.open_session(watcher, 0.0, W)
    session, sink = h.open_session(hub, "u0", now=0.01)
    for n in range(1, 5):
        h.open_session(hub, f"u{n}", now=0.01)
    watcher.got.clear()
    hub.handle_timer(0.1, W)
    [group] = watcher.got  # one delivery (one write), not five
    assert group.count == 5
    texts = [json.loads(p.text)["data"]["userId"] for p in group.parts]
    assert texts == [f"u{n}" for n in range(5)]
    assert [m["data"]["userId"] for m in sink.messages()] == texts
    assert session.messages_out == 3 + 5  # auth, presence_state, agent_state, then each


def test_a_users_changes_within_the_window_send_only_the_latest_in_its_place(h):
    hub = window_hub()
    watcher, _ = h.connect(hub, "watcher")
    a, _ = h.connect(hub, "a", now=0.01)
    h.connect(hub, "b", now=0.02)
    a.now = 0.03
    a.send_json({"type": "user_presence", "data": "busy"})
    a.now = 0.04
    a.send_json({"type": "user_presence", "data": "away"})
    hub.handle_timer(0.1, W)
    assert presence_of(watcher.messages()) == [("user_a", "away"), ("user_b", "online")]


def test_a_change_and_its_reversal_within_the_window_send_nothing(h):
    hub = window_hub()
    watcher, _ = h.connect(hub, "watcher")
    a, _ = h.connect(hub, "a", now=0.5)  # at once: a quiet window
    watcher.messages()
    a.now = 0.52
    a.send_json({"type": "user_presence", "data": "busy"})
    a.now = 0.53
    a.send_json({"type": "user_presence", "data": "online"})
    assert hub.next_deadline() == 0.6
    hub.handle_timer(0.6, W)
    assert presence_of(watcher.messages()) == []
    assert presence_of(a.messages()) == []
    # Nothing went out, so the next change is not held for a window.
    a.now = 1.0
    a.send_json({"type": "user_presence", "data": "away"})
    assert presence_of(watcher.messages()) == [("user_a", "away")]


def test_a_newcomer_within_the_window_gets_what_was_sent_then_the_held_changes(h):
    hub = window_hub(presence_grace=0)
    h.connect(hub, "watcher")
    leaver, _ = h.connect(hub, "leaver", now=0.2)  # at once
    h.connect(hub, "early", now=0.25)  # held
    leaver.now = 0.26
    leaver.send_json({"type": "user_presence", "data": "busy"})  # held
    newcomer, first = h.connect(hub, "newcomer", now=0.27)
    snapshot = first[1]["data"]["users"]
    assert snapshot == [
        {"userId": "user_watcher", "status": "online"},
        {"userId": "user_leaver", "status": "online"},
    ]
    assert first[1]["timestamp"] == format_timestamp(W + 0.27)  # stamped at its own time
    leaver.now = 0.28
    leaver.server.receive_eof(0.28, W)
    assert hub.next_deadline() == pytest.approx(0.3)
    hub.handle_timer(hub.next_deadline(), W)
    later = newcomer.messages()
    assert presence_of(later) == [
        ("user_early", "online"),
        ("user_leaver", "offline"),  # its place: its first held change (busy)
        ("user_newcomer", "online"),
    ]
    truth = hub.presence()
    assert view(first, later) == truth
    assert truth == {"user_watcher": "online", "user_early": "online", "user_newcomer": "online"}
    # The next newcomer's snapshot is the true set again, and matches what was sent.
    _, first = h.connect(hub, "next", now=0.9)
    assert {u["userId"] for u in first[1]["data"]["users"]} == set(truth)


def test_a_user_back_within_the_window_is_in_its_own_snapshot_and_never_flaps(h):
    """All of a user's connections go and one comes back before the offline went out:
    the clients were never told the user left, so the newcomer's snapshot already shows
    it and no user_presence follows for it, and nobody sees offline then online."""
    hub = window_hub(presence_grace=0)
    watcher, _ = h.connect(hub, "watcher")
    tab, _ = h.connect(hub, "tab", now=0.5)  # at once: a quiet window
    h.connect(hub, "other", now=0.52)  # held until 0.6
    tab.server.receive_eof(0.53, W)  # offline, held in its place
    back, first = h.connect(hub, "tab", now=0.55)
    assert {"userId": "user_tab", "status": "online"} in first[1]["data"]["users"]
    hub.handle_timer(0.6, W)
    later = back.messages()
    assert presence_of(watcher.messages()) == [
        ("user_tab", "online"),
        ("user_other", "online"),
    ]
    assert presence_of(later) == [("user_other", "online")]
    truth = hub.presence()
    assert truth == {"user_watcher": "online", "user_tab": "online", "user_other": "online"}
    assert view(first, later) == truth


def test_a_burst_of_arrivals_and_departures_ends_with_every_view_true(h):
    hub = window_hub(presence_grace=0)
    clients = {}
    now = 0.0
    for n in range(30):
        now += 0.007
        pair, first = h.connect(hub, f"u{n}", now=now)
        clients[n] = (pair, first, [])
        if n % 4 == 3:  # a departure now and then
            gone, _, _ = clients.pop(n - 2)
            gone.server.receive_eof(now, W)
        while (deadline := hub.next_deadline()) is not None and deadline <= now:
            hub.handle_timer(deadline, W)
        for pair, _, later in clients.values():
            later.extend(pair.messages())
    hub.handle_timer(now + 0.1, W)
    truth = hub.presence()
    assert len(truth) == 30 - 7
    for pair, first, later in clients.values():
        later.extend(pair.messages())
        assert view(first, later) == truth


def test_the_window_does_not_hide_a_grace_period_or_an_interval_that_ends_first(h):
    hub = Hub(Settings(presence_window=0.1, presence_interval=0, presence_grace=0.05))
    watcher, _ = h.connect(hub, "watcher")
    h.connect(hub, "held", now=0.01)  # held until 0.1
    hub.handle_timer(0.1, W)
    tab, _ = h.connect(hub, "tab", now=0.5)  # at once
    tab.server.receive_eof(0.52, W)  # offline at 0.57
    h.connect(hub, "late", now=0.53)  # held until 0.6
    assert hub.next_deadline() == pytest.approx(0.57)
    hub.handle_timer(hub.next_deadline(), W)
    assert hub.next_deadline() == pytest.approx(0.6)
    hub.handle_timer(hub.next_deadline(), W)
    assert presence_of(watcher.messages())[-2:] == [
        ("user_late", "online"),
        ("user_tab", "offline"),
    ]
    # A held change due before a grace period ends comes first.
    tab2, _ = h.connect(hub, "tab2", now=0.9)  # at once
    h.connect(hub, "next", now=0.95)  # held until 1.0
    tab2.server.receive_eof(0.96, W)  # offline at 1.01
    assert hub.next_deadline() == pytest.approx(1.0)


def test_a_group_is_taken_as_its_messages_by_a_text_transport():
    parts = [PreparedMessage.build("user_presence", {"n": n}, W, f"{n:016x}") for n in range(3)]
    group = PreparedMessage.group(parts)
    assert PreparedMessage.group(parts[:1]) is parts[0]
    assert group.frame == b"".join(p.frame for p in parts)
    assert group.event == b"".join(p.event for p in parts)  # on an event stream too
    assert len(group) == sum(len(p) for p in parts)
    outbox = Outbox()
    outbox.push(b"\x89\x00")
    outbox.push(group)
    outbox.push(parts[0])
    assert outbox.take_messages() == [*parts, parts[0]]


def test_a_snapshot_encoded_once_is_the_message_encoded_whole():
    data = {"users": [{"userId": "ü", "status": "online"}]}
    text = encode_with_data("presence_state", encode_data(data), W)
    assert text == encode_server_message("presence_state", data, W)
    assert json.loads(text)["data"] == data


# -- a window's changes on their way, a step at a time --------------------------------


def stepped_hub(step: int = 2, **settings: float) -> Hub:
    hub = window_hub(**settings)
    hub.presence_step = step
    return hub


def settle(hub: Hub, now: float) -> float:
    """Run the hub's timer at each deadline (a step due at once: a pass later) until none
    is left; the time then."""
    while (deadline := hub.next_deadline()) is not None:
        now = max(deadline, now + 0.001)
        hub.handle_timer(now, W)
    return now


def test_a_window_reaches_the_connections_a_step_at_a_time_and_each_once(h):
    hub = stepped_hub(step=2)
    woken = []
    watchers = [Recorder(f"w{n}") for n in range(5)]
    for watcher in watchers:
        hub.open_session(watcher, 0.0, W)
    settle(hub, 0.0)
    hub.on_deadline = woken.append
    for watcher in watchers:
        watcher.got.clear()
    # At once (a quiet window), to the first two connections; the next step due at once.
    _, sink = h.open_session(hub, "x", now=0.5)
    assert [len(w.got) for w in watchers] == [1, 1, 0, 0, 0]
    assert hub.next_deadline() == 0.5
    assert woken == [0.5]  # the adapter is told
    hub.handle_timer(0.501, W)
    assert [len(w.got) for w in watchers] == [1, 1, 1, 1, 0]
    assert hub.next_deadline() == 0.501
    hub.handle_timer(0.502, W)  # the last one and x's own connection
    assert [len(w.got) for w in watchers] == [1] * 5
    assert presence_of(sink.messages()) == [("x", "online")]
    assert hub.next_deadline() is None
    assert hub.stats.messages_out["user_presence"] >= 6
    for watcher in watchers:
        [message] = watcher.got
        assert json.loads(message.text)["data"] == {"userId": "x", "status": "online"}


def test_a_broadcast_while_a_window_is_on_its_way_comes_after_it_everywhere(h):
    hub = stepped_hub(step=2)
    pairs = [h.connect(hub, f"u{n}", now=0.01 * n)[0] for n in range(5)]
    hub.handle_timer(0.1, W)  # u1..u4, held: a step, the rest due
    assert hub.next_deadline() == 0.1
    hub.send_notification("info", "after", now=0.12, wall=W)
    assert hub.next_deadline() is None  # completed first
    for pair in pairs:
        types = [m["type"] for m in pair.messages()]
        assert types[-1] == "notification"
        assert "user_presence" in types[:-1]


def test_a_newcomer_while_a_window_is_on_its_way_gets_it_in_its_snapshot_not_twice(h):
    hub = stepped_hub(step=1, presence_grace=0)
    clients = [h.connect(hub, f"u{n}", now=0.01 * n) for n in range(4)]
    hub.handle_timer(0.1, W)  # u1..u3 on their way: one connection now
    newcomer, first = h.connect(hub, "late", now=0.11)  # held until 0.2
    assert {u["userId"] for u in first[1]["data"]["users"]} == {
        "user_u0",
        "user_u1",
        "user_u2",
        "user_u3",
    }
    clients[1][0].server.receive_eof(0.12, W)  # a recipient still waiting leaves
    settle(hub, 0.12)
    truth = hub.presence()
    assert "user_u1" not in truth
    later = newcomer.messages()
    assert presence_of(later).count(("user_u1", "online")) == 0  # only in its snapshot
    assert view(first, later) == truth
    for n, (pair, first) in enumerate(clients):
        if n != 1:
            assert view(first, pair.messages()) == truth


def test_a_window_that_ends_while_the_last_is_on_its_way_follows_it(h):
    hub = stepped_hub(step=1)
    watchers = [Recorder(f"w{n}") for n in range(6)]
    for watcher in watchers:
        hub.open_session(watcher, 0.0, W)
    settle(hub, 0.0)
    for watcher in watchers:
        watcher.got.clear()
    h.open_session(hub, "x", now=0.5)  # at once: a quiet window; a step of one
    h.open_session(hub, "y", now=0.51)  # held until 0.6
    hub.handle_timer(0.6, W)  # x's next step; y's group waits behind it
    assert [len(w.got) for w in watchers] == [1, 1, 0, 0, 0, 0]
    settle(hub, 0.6)
    for watcher in watchers:
        assert [json.loads(p.text)["data"]["userId"] for p in watcher.got] == ["x", "y"]


def test_a_client_dropped_during_a_step_goes_offline_after_that_step(h):
    """A slow client closed (1013) by a step: its user's offline follows the group in
    every connection's stream, held for the next window."""
    hub = Hub(
        Settings(presence_window=0.1, presence_interval=0, presence_grace=0, max_send_buffer=1000)
    )
    hub.presence_step = 2
    watcher, _ = h.connect(hub, "watcher")
    slow, _ = h.connect(hub, "slow", now=0.01)
    slow.server.session.deliver(  # a backlog just under the limit
        PreparedMessage.build("notification", {"m": "x" * 900}, W), 0.01, W
    )
    other, _ = h.connect(hub, "other", now=0.02)
    h.connect(hub, "a", now=0.03)
    hub.handle_timer(0.1, W)  # the first step, to watcher and slow: slow is dropped
    assert slow.server.transport.state.name == "CLOSING"
    settle(hub, 0.1)
    assert presence_of(watcher.messages()) == [
        ("user_slow", "online"),
        ("user_other", "online"),
        ("user_a", "online"),
        ("user_slow", "offline"),
    ]
    assert presence_of(other.messages())[-2:] == [("user_a", "online"), ("user_slow", "offline")]


def test_a_grace_period_that_ends_before_the_next_step_is_the_next_deadline(h):
    hub = stepped_hub(step=1, presence_grace=0.05)
    hub.on_deadline = None
    clients = [h.connect(hub, f"u{n}", now=0.0) for n in range(4)]
    settle(hub, 0.0)
    clients[1][0].server.receive_eof(0.5, W)  # offline at 0.55
    h.connect(hub, "v", now=0.6)  # at once: a step, the next due at once
    assert hub.next_deadline() == 0.55  # overdue: the earliest
    clients[2][0].server.receive_eof(0.605, W)  # offline at 0.655
    hub.handle_timer(0.61, W)  # a step; user_u1 offline, held for the window
    assert hub.next_deadline() == 0.61  # the next step, before the grace period ends
    settle(hub, 0.61)
    truth = hub.presence()
    assert set(truth) == {"user_u0", "user_u3", "user_v"}
    for n in (0, 3):
        pair, first = clients[n]
        assert view(first, pair.messages()) == truth
