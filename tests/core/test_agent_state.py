"""PROTOCOL.md section 4: ``agent_state``, the latest state of every agent for a late joiner.

Right after ``presence_state`` an authenticated connection receives the latest
``agent_status`` data of every agent, in the order of their last update, with the scopes
of section 4a applied; agents not updated for ``agent_state_ttl`` are left out, the map
is bounded, and a snapshot is encoded once for every connection that sees the same.
Bytes in, bytes out, explicit times.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentcast.protocol import (
    AgentStatus,
    AuthFailure,
    AuthResult,
    Hub,
    Identity,
    Session,
    Settings,
)
from agentcast.protocol.agent_state import SNAPSHOT_REUSE, AgentStates
from agentcast.protocol.scope import ALL_CHANNELS, EVERYONE, NO_CHANNELS, ChannelGrant, Scope

W0 = 1766754000.0  # the conftest's WALL0


def at(now: float) -> dict[str, float]:
    return {"now": now, "wall": W0 + now}


def status(hub: Hub, name: str, state: Any = "working", now: float = 0.0, **more: Any):
    return hub.broadcast_agent_status(name, state, **more, **at(now))


def agents_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    [snapshot] = [m for m in messages if m["type"] == "agent_state"]
    return snapshot["data"]["agents"]


def names(messages: list[dict[str, Any]]) -> list[str]:
    return [a["agentName"] for a in agents_of(messages)]


class TableAuth:
    """token -> (user, grant)."""

    def __init__(self, table: dict[str, tuple[str, ChannelGrant]]) -> None:
        self.table = table

    def authenticate(self, token: str, wall: float) -> AuthResult:
        found = self.table.get(token)
        if found is None:
            return AuthFailure("Invalid token")
        return Identity(user_id=found[0], channels=found[1])


AUTH = TableAuth(
    {
        "alice": ("alice", ALL_CHANNELS),
        "alice-public": ("alice", ChannelGrant.parse(["public:*"])),
        "alice-none": ("alice", NO_CHANNELS),
        "bob": ("bob", ALL_CHANNELS),
    }
)


def join(h, hub: Hub, token: str, query: str = "", now: float = 0.0):
    pair = h.Pair(hub, now=now)
    target = f"/ws?token={token}" + (f"&{query}" if query else "")
    return pair, pair.handshake(target, authenticator=AUTH)


# -- the message and where it comes -------------------------------------------------------


def test_agent_state_follows_presence_state_and_precedes_the_own_arrival(h, hub):
    status(hub, "planner", "idle")
    _pair, first = h.connect(hub, "abc123", now=2.0)
    assert [m["type"] for m in first] == ["auth", "presence_state", "agent_state", "user_presence"]
    assert first[2] == {
        "type": "agent_state",
        "data": {"agents": [{"agentName": "planner", "state": "idle"}]},
        "timestamp": "2025-12-26T13:00:02.000Z",
    }
    assert "id" not in first[2]  # a snapshot, not a broadcast: no resume point
    assert hub.stats.messages_out["agent_state"] == 1


def test_with_channels_in_the_url_the_answers_follow_the_snapshot(h, hub):
    status(hub, "watched", channel="agent:watched")
    _pair, first = join(h, hub, "alice", "channels=agent:watched,no%20way")
    assert [m["type"] for m in first] == [
        "auth",
        "presence_state",
        "agent_state",
        "user_presence",
        "subscribed",
        "error",
    ]
    # The subscription held when the snapshot was made: the channel's agent is in it.
    assert names(first) == ["watched"]


def test_an_unauthenticated_connection_gets_no_snapshot(h, hub):
    status(hub, "planner")
    pair = h.Pair(hub)
    first = pair.handshake("/ws?token=no!")
    assert [m["type"] for m in first] == ["auth"]
    assert hub.stats.messages_out["agent_state"] == 0


def test_a_client_connecting_after_three_agents_reported_sees_each_at_its_latest(h, hub):
    status(hub, "planner", "working", current_task="Plan", progress=10)
    status(hub, "coder", "working", now=1.0)
    status(hub, "reviewer", "idle", now=2.0)
    status(hub, "planner", "working", current_task="Plan", progress=90, now=3.0)
    status(hub, "coder", "stopped", now=4.0)
    _pair, first = h.connect(hub, now=5.0)
    # The latest data of each, in the order of their last update.
    assert agents_of(first) == [
        {"agentName": "reviewer", "state": "idle"},
        {"agentName": "planner", "state": "working", "currentTask": "Plan", "progress": 90},
        {"agentName": "coder", "state": "stopped"},
    ]


def test_a_connected_client_is_not_sent_the_snapshot_again(h, hub):
    pair, _ = h.connect(hub)
    status(hub, "planner")
    assert [m["type"] for m in pair.messages()] == ["agent_status"]


# -- forgetting: TTL and bound -------------------------------------------------------------


def test_an_agent_not_updated_for_the_ttl_is_left_out(h):
    hub = Hub(Settings(agent_state_ttl=10.0))
    status(hub, "old", now=0.0)
    status(hub, "new", now=5.0)
    assert names(h.connect(hub, now=9.999)[1]) == ["old", "new"]
    assert names(h.connect(hub, now=10.0)[1]) == ["new"]
    assert hub.agent_states.expired == 1
    assert names(h.connect(hub, now=15.0)[1]) == []
    assert len(hub.agent_states) == 0


def test_an_update_renews_the_ttl(h):
    hub = Hub(Settings(agent_state_ttl=10.0))
    status(hub, "planner", "working", now=0.0)
    status(hub, "planner", "idle", now=8.0)
    assert agents_of(h.connect(hub, now=17.0)[1]) == [{"agentName": "planner", "state": "idle"}]


def test_the_map_is_bounded_and_drops_the_oldest_update_first(h):
    hub = Hub(Settings(agent_state_max=2))
    status(hub, "a", now=0.0)
    status(hub, "b", now=1.0)
    status(hub, "a", "idle", now=2.0)  # a is now the latest
    status(hub, "c", now=3.0)  # b is dropped
    assert names(h.connect(hub, now=4.0)[1]) == ["a", "c"]
    assert hub.agent_states.evicted == 1
    assert len(hub.agent_states) == 2


def test_settings_refuse_a_ttl_or_bound_that_keeps_nothing():
    with pytest.raises(ValueError, match="agent_state_ttl"):
        Settings(agent_state_ttl=0)
    with pytest.raises(ValueError, match="agent_state_max"):
        Settings(agent_state_max=0)


# -- scopes ------------------------------------------------------------------------------------


def test_a_status_for_an_audience_is_in_that_audience_s_snapshots_only(h, hub):
    status(hub, "public")
    status(hub, "private", user_ids=["alice"])
    assert names(join(h, hub, "alice")[1]) == ["public", "private"]
    assert names(join(h, hub, "bob")[1]) == ["public"]


def test_a_status_for_a_channel_is_in_its_subscribers_snapshots_only(h, hub):
    status(hub, "watched", channel="agent:watched")
    status(hub, "both", channel="agent:watched", user_ids=["bob"])
    assert names(join(h, hub, "alice", "channels=agent:watched")[1]) == ["watched"]
    assert names(join(h, hub, "bob", "channels=agent:watched")[1]) == ["watched", "both"]
    assert names(join(h, hub, "bob")[1]) == []


def test_a_scoped_update_does_not_hide_the_status_an_outsider_received(h, hub):
    """Statuses are kept per agent and scope: an outsider's snapshot shows the status it
    did receive, a subscriber's the latest one it would have received."""
    status(hub, "coder", "working", current_task="public work", now=0.0)
    status(hub, "coder", "working", current_task="secret work", channel="team", now=1.0)
    outsider = agents_of(join(h, hub, "bob", now=2.0)[1])
    assert outsider == [{"agentName": "coder", "state": "working", "currentTask": "public work"}]
    insider = agents_of(join(h, hub, "alice", "channels=team", now=2.0)[1])
    assert insider == [{"agentName": "coder", "state": "working", "currentTask": "secret work"}]
    status(hub, "coder", "idle", now=3.0)  # the public status is the latest again
    insider = agents_of(join(h, hub, "alice", "channels=team", now=4.0)[1])
    assert insider == [{"agentName": "coder", "state": "idle"}]


def test_a_refreshed_token_that_revokes_a_channel_removes_its_agents_from_the_next_snapshot(h, hub):
    status(hub, "public", channel="public:news")
    status(hub, "secret", channel="secret:plans")
    alice, first = join(h, hub, "alice", "channels=public:news,secret:plans")
    assert names(first) == ["public", "secret"]
    alice.send_json({"type": "auth", "data": {"token": "alice-public"}})
    alice.answer_auth(AUTH)
    assert [m["type"] for m in alice.messages()] == ["auth", "unsubscribed"]
    session = alice.server.session
    again = hub.agent_states.agents(session.user_id, session.subscriptions, 0.0)
    assert [a["agentName"] for a in again] == ["public"]
    # Reconnecting with the narrower token: the channel is refused, its agent left out.
    _pair, first = join(h, hub, "alice-public", "channels=public:news,secret:plans")
    assert names(first) == ["public"]
    assert first[-1]["data"]["code"] == "forbidden_channel"


def test_a_status_from_another_process_is_recorded_with_its_scope(h, hub):
    """The backplane's way in (``deliver_local``) feeds the snapshot like a publish."""
    item = AgentStatus(agent_name="remote", state="idle")
    hub.deliver_local(item, "00000000000000ff", scope=Scope.of(user_ids=["alice"]), **at(0))
    assert names(join(h, hub, "alice")[1]) == ["remote"]
    assert names(join(h, hub, "bob")[1]) == []


# -- encoded once ------------------------------------------------------------------------------


def test_a_storm_of_late_joiners_shares_one_encoding(h, hub):
    for index in range(50):
        status(hub, f"agent-{index}", now=0.0)
    frames = set()
    for _ in range(5_000):
        sink = h.ListSink()
        Session(hub, sink, Identity(user_id="viewer"), now=0.5, wall=W0 + 0.5)
        [snapshot] = [m for m in sink.outbox.take_messages() if m.kind == "agent_state"]
        frames.add(id(snapshot.frame))
    assert hub.agent_states.encodings == 1
    assert len(frames) == 1  # the same bytes queued on every joiner


def test_a_change_or_the_reuse_limit_makes_a_new_snapshot(h, hub):
    status(hub, "planner", "working")
    first = h.connect(hub, now=0.0)[1]
    assert h.connect(hub, now=SNAPSHOT_REUSE - 0.001)[1][2] == first[2]
    assert hub.agent_states.encodings == 1
    later = h.connect(hub, now=SNAPSHOT_REUSE)[1]
    assert hub.agent_states.encodings == 2  # its timestamp is never older than the limit
    assert later[2]["timestamp"] == "2025-12-26T13:00:01.000Z"
    status(hub, "planner", "idle", now=1.5)
    assert agents_of(h.connect(hub, now=1.5)[1]) == [{"agentName": "planner", "state": "idle"}]
    assert hub.agent_states.encodings == 3


def test_one_encoding_per_distinct_set_of_visible_scopes(h, hub):
    status(hub, "public")
    status(hub, "team", channel="team")
    for _ in range(3):
        join(h, hub, "alice")
        join(h, hub, "bob")  # sees what alice sees without channels: the same snapshot
        join(h, hub, "alice", "channels=team")
    assert hub.agent_states.encodings == 2


# -- the store alone ------------------------------------------------------------------------------


def data(name: str, state: Any = "idle") -> AgentStatus:
    return AgentStatus(agent_name=name, state=state)


def test_the_store_indexes_scopes_while_any_status_holds_them():
    store = AgentStates(ttl=10.0, max_entries=10)
    audience = Scope.of(user_ids=["alice", "bob"])
    channel = Scope.of(channel="c")
    both = Scope.of(user_ids=["alice"], channel="c")
    store.record(data("a"), audience, 0.0)
    store.record(data("b"), audience, 1.0)  # a second status under the same scope
    store.record(data("c"), channel, 2.0)
    store.record(data("d"), both, 3.0)
    store.record(data("e"), EVERYONE, 4.0)
    assert store.visible_scopes("alice", ["c"]) == {audience, channel, both, EVERYONE}
    assert store.visible_scopes("bob", ["c"]) == {audience, channel, EVERYONE}
    store.expire(10.0)  # a goes; b still holds the audience scope
    assert store.visible_scopes("bob", []) == {audience, EVERYONE}
    store.expire(12.0)  # b and c go: the audience and the plain channel scope with them
    assert store.visible_scopes("alice", ["c"]) == {both, EVERYONE}
    store.expire(14.0)
    assert store.visible_scopes("alice", ["c"]) == set()
    assert store.expired == 5
    assert store.agents("alice", ["c"], 14.0) == []


def test_the_cache_of_encoded_snapshots_is_bounded():
    store = AgentStates()
    users = [f"user-{index}" for index in range(1_100)]
    for index, user in enumerate(users):
        store.record(data(f"agent-{index}"), Scope.of(user_ids=[user]), 0.0)
    messages = [store.snapshot(user, (), 0.0, W0) for user in users]
    assert store.encodings == len(users)  # one per distinct audience, each encoded once
    assert [json.loads(m.text)["data"]["agents"] for m in messages[:2]] == [
        [{"agentName": "agent-0", "state": "idle"}],
        [{"agentName": "agent-1", "state": "idle"}],
    ]
    store.snapshot(users[-1], (), 0.0, W0)  # the latest ones are still cached
    assert store.encodings == len(users)
