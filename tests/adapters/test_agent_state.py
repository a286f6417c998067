"""Late joiners see the present (PROTOCOL.md section 4, ``agent_state``), end to end.

Real sockets and `websockets` clients, on every way of starting the server: a client
that connects after agents reported (in-process and over the publish API) receives each
agent's latest status right after ``presence_state``; a status published to an audience
or a channel never reaches another user's snapshot; the gauges count what is kept and
dropped.
"""

from __future__ import annotations

import json

import pytest

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]


async def greeting(clients, server, query: str):
    """Connect; return the peer and its ``agent_state`` message, checking that it comes
    right after ``auth`` and ``presence_state``."""
    peer = await clients.connect(f"{server.urls[0]}?{query}")
    first = await peer.recv_many(3)
    assert [m["type"] for m in first] == ["auth", "presence_state", "agent_state"]
    assert first[0]["data"]["success"] is True
    return peer, first[2]


async def test_a_late_joiner_sees_every_agent_at_its_latest_state(
    start_server, clients, http_request
):
    server = await start_server()
    server.broadcast_agent_status("planner", "working", "Plan the release", progress=10)
    server.broadcast_agent_status("coder", "working", "Write the parser")
    host, port = server.addresses[0]
    status, _, _ = await http_request(
        f"http://{host}:{port}/api/agent-status",
        "POST",
        json.dumps(
            [{"agentName": "reviewer", "state": "idle"}, {"agentName": "coder", "state": "stopped"}]
        ).encode(),
        **{"Content-Type": "application/json"},
    )
    assert status == 202
    server.broadcast_agent_status("planner", "working", "Plan the release", progress=80)

    _peer, snapshot = await greeting(clients, server, "token=late")
    assert snapshot["data"] == {
        "agents": [
            {"agentName": "reviewer", "state": "idle"},
            {"agentName": "coder", "state": "stopped"},
            {
                "agentName": "planner",
                "state": "working",
                "currentTask": "Plan the release",
                "progress": 80,
            },
        ]
    }
    assert "id" not in snapshot


async def test_a_scoped_status_never_appears_in_another_user_s_snapshot(start_server, clients):
    # Every presence change at once (no window), so the arrivals below come in order.
    server = await start_server(Settings(presence_window=0))
    server.broadcast_agent_status("public", "idle")
    server.broadcast_agent_status(
        "alices-agent", "working", "private task", user_ids=["user_alice"]
    )
    server.broadcast_agent_status("team-agent", "working", "team task", channel="team:red")

    def names(snapshot):
        return [a["agentName"] for a in snapshot["data"]["agents"]]

    bob, snapshot = await greeting(clients, server, "token=bob")
    assert names(snapshot) == ["public"]
    assert "private task" not in json.dumps(snapshot)
    _alice, snapshot = await greeting(clients, server, "token=alice")
    assert names(snapshot) == ["public", "alices-agent"]
    # Subscribing while connecting: the channel's agent is in the snapshot, and the
    # subscription is answered after it (and after the user's own arrival).
    member, snapshot = await greeting(clients, server, "token=carol&channels=team:red")
    assert names(snapshot) == ["public", "team-agent"]
    after = await member.recv_many(2)
    assert [(m["type"], m["data"]) for m in after] == [
        ("user_presence", {"userId": "user_carol", "status": "online"}),
        ("subscribed", {"channel": "team:red"}),
    ]
    # Bob got nothing else: arrivals only (his own, alice's, carol's).
    arrivals = [m["data"]["userId"] for m in await bob.recv_many(3)]
    assert arrivals == ["user_bob", "user_alice", "user_carol"]
    assert await bob.nothing_pending()


async def test_the_gauges_count_what_is_kept_and_dropped(start_server, clients):
    server = await start_server(Settings(agent_state_max=2))
    for name in ("a", "b", "c"):
        server.broadcast_agent_status(name, "idle")

    def sample(name, **labels):
        return server.metrics.registry.get_sample_value(f"agentcast_{name}", labels or None)

    assert sample("agent_states") == 2
    assert sample("agent_states_dropped_total", reason="limit") == 1
    assert sample("agent_states_dropped_total", reason="ttl") == 0
    _peer, snapshot = await greeting(clients, server, "token=viewer")
    assert [a["agentName"] for a in snapshot["data"]["agents"]] == ["b", "c"]
