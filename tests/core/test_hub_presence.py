"""The hub: per-user presence (PROTOCOL.md 4) and broadcast fan-out (section 3: a
broadcast is encoded and framed once, the same bytes object reaching every recipient)."""

from __future__ import annotations

import json

import pytest
from wsproto.events import CloseConnection, TextMessage

from agentcast.protocol import (
    Hub,
    Settings,
    format_timestamp,
)


@pytest.fixture
def hub() -> Hub:
    """Every presence change at once: most tests here are about aggregation and order;
    the presence interval (one message a second per user) has its own tests below."""
    return Hub(Settings(presence_interval=0, presence_window=0))


def presence(h, user: str, status: str, ident: str, wall: float | None = None) -> dict:
    stamp = h.TS0 if wall is None else wall
    return {
        "type": "user_presence",
        "data": {"userId": user, "status": status},
        "timestamp": stamp,
        "id": ident,
    }


def decode(pair, data: bytes) -> dict:
    """The one JSON message in *data*, as *pair*'s wsproto client reads it."""
    pair.client.receive_data(data)
    [event] = list(pair.client.events())
    assert isinstance(event, TextMessage)
    return json.loads(event.data)


def only_presence(msgs):
    return [m["data"] for m in msgs if m["type"] == "user_presence"]


def test_presence_state_snapshot_then_own_arrival(h, hub):
    alice, first = h.connect(hub, "alice")
    assert first[1] == {"type": "presence_state", "data": {"users": []}, "timestamp": h.TS0}
    assert first[2] == {"type": "agent_state", "data": {"agents": []}, "timestamp": h.TS0}
    assert first[3] == presence(h, "user_alice", "online", first[3]["id"])
    alice.send_json({"type": "user_presence", "data": "busy"})
    alice.messages()
    _bob, first = h.connect(hub, "bob")
    assert [m["type"] for m in first] == ["auth", "presence_state", "agent_state", "user_presence"]
    assert first[1]["data"] == {"users": [{"userId": "user_alice", "status": "busy"}]}
    assert first[3]["data"] == {"userId": "user_bob", "status": "online"}
    # The sender's own change reaches it, and everyone else.
    assert alice.messages() == [first[3]]


def test_unauthenticated_gets_no_presence_state(h, hub):
    _, first = h.connect(hub, None)
    assert [m["type"] for m in first] == ["auth"]


def test_user_presence_goes_to_everyone_including_the_sender(h, hub):
    alice, _ = h.connect(hub, "alice")
    bob, _ = h.connect(hub, "bob")
    anon, _ = h.connect(hub, None)
    for p in (alice, bob, anon):
        p.messages()
    alice.send_json({"type": "user_presence", "data": "away"})
    [to_alice] = alice.messages()
    assert to_alice == presence(h, "user_alice", "away", to_alice["id"])
    assert bob.messages() == [to_alice]
    assert anon.messages() == []


def test_aggregation_busy_over_online_over_away_and_only_changes_are_sent(h, hub):
    a1, _ = h.connect(hub, "alice")
    a2, _ = h.connect(hub, "alice")
    bob, _ = h.connect(hub, "bob")
    for p in (a1, a2, bob):
        p.messages()

    def step(conn, status):
        conn.send_json({"type": "user_presence", "data": status})
        a1.messages()
        a2.messages()
        return [d["status"] for d in only_presence(bob.messages())]

    assert step(a1, "away") == []  # a2 still online
    assert step(a2, "away") == ["away"]
    assert step(a2, "away") == []  # no change, nothing sent
    assert step(a1, "busy") == ["busy"]
    assert step(a2, "online") == []  # busy still wins
    assert step(a1, "away") == ["online"]
    assert step(a2, "offline") == ["away"]  # a connection's "offline" ranks lowest
    assert step(a1, "offline") == ["offline"]  # every connection says offline: at once
    assert hub.presence() == {"user_bob": "online"}
    assert step(a1, "online") == ["online"]
    assert hub.presence() == {"user_alice": "online", "user_bob": "online"}


def test_presence_rejects_a_bad_status_and_keeps_the_old_one(h, hub):
    alice, _ = h.connect(hub, "alice")
    alice.messages()
    alice.send_json({"type": "user_presence", "data": "sleeping"})
    [answer] = [m["data"] for m in alice.messages()]
    assert answer["error"] == "Invalid presence status"
    assert answer["code"] == "invalid_presence"
    assert hub.presence() == {"user_alice": "online"}


def _close(pair):
    pair.send(CloseConnection(code=1000))
    pair.flush()
    assert pair.server.closed


def test_the_issue_presence_scenario(h, hub):
    """Two connections of one user: close one (no change), close the other (offline only
    after the grace period)."""
    bob, _ = h.connect(hub, "bob")
    a1, _ = h.connect(hub, "alice")
    a2, _ = h.connect(hub, "alice")
    assert only_presence(bob.messages()) == [{"userId": "user_alice", "status": "online"}]
    a2.messages()

    a1.now = 1.0
    _close(a1)
    assert bob.messages() == []
    assert a2.messages() == []
    assert hub.next_deadline() is None

    a2.now = 10.0
    _close(a2)
    assert bob.messages() == []
    assert hub.presence() == {"user_alice": "online", "user_bob": "online"}
    assert hub.next_deadline() == 15.0  # default grace: 5 s
    hub.handle_timer(14.999, h.WALL0 + 14.999)
    assert bob.messages() == []
    hub.handle_timer(15.0, h.WALL0 + 15.0)
    [msg] = bob.messages()
    assert msg == presence(h, "user_alice", "offline", msg["id"], "2025-12-26T13:00:15.000Z")
    assert hub.presence() == {"user_bob": "online"}
    assert hub.next_deadline() is None


def test_reconnect_within_the_grace_period_broadcasts_nothing(h, hub):
    bob, _ = h.connect(hub, "bob")
    alice, _ = h.connect(hub, "alice")
    bob.messages()
    alice.now = 10.0
    alice.eof()  # the TCP connection just dropped (a reload)
    assert hub.next_deadline() == 15.0
    _again, first = h.connect(hub, "alice", now=12.0)
    assert [m["type"] for m in first] == ["auth", "presence_state", "agent_state"]
    assert first[1]["data"] == {
        "users": [
            {"userId": "user_bob", "status": "online"},
            {"userId": "user_alice", "status": "online"},
        ]
    }
    assert hub.next_deadline() is None
    hub.handle_timer(15.0, h.WALL0 + 15.0)
    hub.handle_timer(100.0, h.WALL0 + 100.0)
    assert bob.messages() == []
    assert hub.presence() == {"user_bob": "online", "user_alice": "online"}


def test_reconnect_after_the_grace_period_is_a_new_arrival(h, hub):
    bob, _ = h.connect(hub, "bob")
    alice, _ = h.connect(hub, "alice")
    bob.messages()
    alice.eof()
    hub.handle_timer(5.0, h.WALL0 + 5.0)
    h.connect(hub, "alice", now=6.0)
    assert [d["status"] for d in only_presence(bob.messages())] == ["offline", "online"]


def test_without_grace_the_last_close_is_offline_at_once(h):
    hub = Hub(Settings(presence_grace=0, presence_interval=0, presence_window=0))
    bob, _ = h.connect(hub, "bob")
    alice, _ = h.connect(hub, "alice")
    bob.messages()
    _close(alice)
    assert only_presence(bob.messages()) == [{"userId": "user_alice", "status": "offline"}]
    assert hub.next_deadline() is None


def test_unauthenticated_close_changes_no_presence(h, hub):
    bob, _ = h.connect(hub, "bob")
    anon, _ = h.connect(hub, None)
    bob.messages()
    _close(anon)
    assert bob.messages() == []
    assert hub.clients_count() == 1


def test_slow_client_dropped_mid_broadcast_is_announced_after_the_broadcast(h):
    # The offline change caused by dropping a client during a fan-out must not overtake
    # the broadcast itself at the other recipients.
    hub = Hub(
        Settings(presence_grace=0, presence_interval=0, presence_window=0, max_send_buffer=1000)
    )
    first, _ = h.connect(hub, "first")
    slow, _ = h.connect(hub, "slow")
    last, _ = h.connect(hub, "last")
    first.messages()
    for i in range(10):
        hub.send_notification("info", f"{i:03d}" + "x" * 100, now=0.0, wall=h.WALL0)
        if slow.server.transport.closed or slow.server.transport.state.name == "CLOSING":
            break
        assert [m["type"] for m in first.messages()] == ["notification"]
        last.messages()
    else:
        raise AssertionError("slow was never dropped")
    assert i >= 1  # some broadcasts fit before the backlog passed the limit
    for p in (first, last):
        msgs = p.messages()
        assert [m["type"] for m in msgs] == ["notification", "user_presence"]
        assert msgs[1]["data"] == {"userId": "user_slow", "status": "offline"}
    assert hub.presence() == {"user_first": "online", "user_last": "online"}
    slow.flush()
    assert [(c.code, c.reason) for c in slow.close_events()] == [(1013, "client too slow")]


# -- a broadcast is built once ---------------------------------------------------------


def test_broadcast_to_1000_connections_queues_the_same_bytes_object(h):
    hub = Hub()
    conns = []
    # Spread the arrivals over time and addresses, as real clients would come.
    for i in range(1000):
        p = h.Pair(hub, now=i * 0.01, client=f"10.{i // 250}.{i % 250}.1")
        p.handshake(f"/ws?token=u{i % 500}")
        conns.append(p)
    anons = []
    for i in range(5):
        p = h.Pair(hub, now=10.0, client=f"10.9.{i}.1")
        p.handshake("/ws")
        anons.append(p)
    assert hub.authenticated_clients_count() == 1000
    for p in conns + anons:
        p.server.data_to_send()  # the previous write completed
        p.server.data_to_send()

    published = hub.broadcast_agent_status("planner", "working", now=10.0, wall=h.WALL0 + 10)
    assert published.delivered == 1000
    queued = [p.server.data_to_send() for p in conns]
    first = queued[0]
    assert all(data is first for data in queued)
    assert decode(conns[0], first) == {
        "type": "agent_status",
        "data": {"agentName": "planner", "state": "working"},
        "timestamp": "2025-12-26T13:00:10.000Z",
        "id": published.id,
    }
    assert all(p.server.data_to_send() == b"" for p in anons)

    # To one user: every connection of theirs (u7 holds two), the same object, nobody else.
    published = hub.send_notification("info", "hi", "user_u7", now=10.0, wall=h.WALL0 + 10)
    assert published.delivered == 2
    got = {i: p.server.data_to_send() for i, p in enumerate(conns)}
    hits = [i for i, data in got.items() if data]
    assert hits == [7, 507]
    assert got[7] is got[507]
    assert decode(conns[7], got[7])["data"] == {"level": "info", "message": "hi"}


W = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


# -- presence ------------------------------------------------------------------------------


def test_a_fractional_presence_grace_still_delays_offline(h):
    hub = Hub(Settings(presence_grace=0.5, presence_window=0))
    leaver, _ = h.open_session(hub, "u1")
    _, watcher = h.open_session(hub, "u2")
    leaver.close(1000, "bye", 1.0, W + 1)
    assert watcher.messages() == []
    assert hub.presence()["u1"] == "online"
    hub.handle_timer(1.5, W + 1.5)
    [offline] = watcher.messages()
    assert offline["type"] == "user_presence"
    assert offline["data"] == {"userId": "u1", "status": "offline"}
    assert offline["timestamp"] == format_timestamp(W + 1.5)


# -- at most one presence message a second per user -------------------------------------


def _set(pair, status: str, now: float) -> None:
    pair.now = now
    pair.send_json({"type": "user_presence", "data": status})
    pair.messages()


def test_a_users_changes_within_the_interval_are_held_and_the_latest_goes_out(h):
    hub = Hub(Settings(presence_interval=1.0, presence_window=0))
    woken = []
    hub.on_deadline = woken.append
    watcher, _ = h.connect(hub, "watcher")
    tab, _ = h.connect(hub, "storm")  # "online" went out at 0
    watcher.messages()
    for n, status in enumerate(["busy", "away", "online", "busy", "away"]):
        _set(tab, status, 0.1 * (n + 1))
    assert only_presence(watcher.messages()) == []  # held until the interval ends
    assert woken == [1.0]  # the adapter is told once when the hub needs waking
    assert hub.next_deadline() == 1.0
    hub.handle_timer(0.99, h.WALL0)
    assert only_presence(watcher.messages()) == []
    hub.handle_timer(1.0, h.WALL0 + 1)
    # The latest status, once, with the time it went out.
    [message] = [m for m in watcher.messages() if m["type"] == "user_presence"]
    stamp = format_timestamp(h.WALL0 + 1)
    assert message == presence(h, "user_storm", "away", message["id"], stamp)
    assert hub.next_deadline() is None
    # A change a whole interval after the last one sent goes out at once.
    _set(tab, "busy", 2.0)
    assert only_presence(watcher.messages()) == [{"userId": "user_storm", "status": "busy"}]
    # Changes that end where the last one sent was send nothing.
    _set(tab, "away", 2.5)
    _set(tab, "busy", 2.7)
    assert hub.next_deadline() == 3.0
    hub.handle_timer(3.0, h.WALL0 + 3)
    assert only_presence(watcher.messages()) == []
    assert hub.presence()["user_storm"] == "busy"


def test_held_changes_of_several_users_each_go_out_when_their_own_interval_ends(h):
    hub = Hub(Settings(presence_interval=1.0, presence_window=0))
    watcher, _ = h.connect(hub, "watcher")
    a, _ = h.connect(hub, "a")
    b, _ = h.connect(hub, "b", now=0.5)
    watcher.messages()
    _set(a, "busy", 0.6)
    _set(b, "away", 0.7)
    assert hub.next_deadline() == 1.0
    hub.handle_timer(1.0, h.WALL0)
    assert only_presence(watcher.messages()) == [{"userId": "user_a", "status": "busy"}]
    assert hub.next_deadline() == 1.5
    hub.handle_timer(1.5, h.WALL0)
    assert only_presence(watcher.messages()) == [{"userId": "user_b", "status": "away"}]


def test_leaving_within_the_interval_sends_offline_when_it_ends(h):
    hub = Hub(Settings(presence_grace=0, presence_interval=1.0, presence_window=0))
    watcher, _ = h.connect(hub, "watcher")
    gone, _ = h.connect(hub, "gone", now=0.2)
    back, _ = h.connect(hub, "back", now=0.2)
    watcher.messages()
    gone.now = back.now = 0.5
    _close(gone)
    _close(back)
    assert only_presence(watcher.messages()) == []
    assert hub.presence() == {"user_watcher": "online"}
    h.connect(hub, "back", now=0.8)  # back before the interval ended: nothing to say
    hub.handle_timer(1.2, h.WALL0)
    assert only_presence(watcher.messages()) == [{"userId": "user_gone", "status": "offline"}]
    assert hub.presence() == {"user_watcher": "online", "user_back": "online"}
    assert hub.next_deadline() is None


def test_the_grace_period_and_the_interval_together(h):
    hub = Hub(Settings(presence_grace=0.5, presence_interval=1.0, presence_window=0))
    watcher, _ = h.connect(hub, "watcher")
    tab, _ = h.connect(hub, "tab", now=0.1)
    other, _ = h.connect(hub, "other", now=0.1)
    _set(other, "busy", 0.15)  # held until 1.1
    watcher.messages()
    tab.now = 0.2
    _close(tab)
    assert hub.next_deadline() == 0.7  # the grace period ends first
    hub.handle_timer(0.7, h.WALL0)
    assert only_presence(watcher.messages()) == []  # offline, held until 1.1
    assert hub.next_deadline() == 1.1
    hub.handle_timer(1.1, h.WALL0)
    assert only_presence(watcher.messages()) == [
        {"userId": "user_other", "status": "busy"},
        {"userId": "user_tab", "status": "offline"},
    ]
    assert hub.presence() == {"user_watcher": "online", "user_other": "busy"}
