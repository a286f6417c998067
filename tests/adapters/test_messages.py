"""PROTOCOL.md sections 2-4 end to end: every message type and delivery rule, over real
sockets, with `websockets` clients, on asyncio and trio (see conftest.py)."""

from __future__ import annotations

import json
import re

import pytest

from agentcast.protocol import Settings, StaticAuthenticator

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class _Iso:
    """Equal to any ISO 8601 timestamp of the server's form."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and ISO.match(other) is not None

    __hash__ = None  # type: ignore[assignment]


ISO_ANY = _Iso()


def url(server, query=""):
    base = server.urls[0]
    return f"{base}?{query}" if query else base


async def join(clients, server, token):
    """Connect with *token* and read the greeting: auth, presence_state, agent_state,
    own presence."""
    peer = await clients.connect(url(server, f"token={token}"))
    auth = await peer.recv()
    assert auth["type"] == "auth"
    assert auth["data"] == {"success": True, "userId": f"user_{token}"}
    assert (await peer.recv())["type"] == "presence_state"
    assert (await peer.recv())["type"] == "agent_state"
    presence = await peer.recv()
    assert presence["type"] == "user_presence"
    assert presence["data"] == {"userId": f"user_{token}", "status": "online"}
    return peer


async def test_auth_is_the_first_message_then_presence_state(start_server, clients):
    server = await start_server()
    first = await clients.connect(url(server, "token=abc123"))
    auth = await first.recv()
    assert auth["type"] == "auth"
    assert auth["data"] == {"success": True, "userId": "user_abc123"}
    assert ISO.match(auth["timestamp"])
    state = await first.recv()
    assert state == {
        "type": "presence_state",
        "data": {"users": []},
        "timestamp": state["timestamp"],
    }
    agents = await first.recv()
    assert agents == {"type": "agent_state", "data": {"agents": []}, "timestamp": ISO_ANY}
    assert (await first.recv())["data"] == {"userId": "user_abc123", "status": "online"}

    second = await clients.connect(url(server, "token=other"))
    await second.recv()  # auth
    state = await second.recv()
    assert state["data"] == {"users": [{"userId": "user_abc123", "status": "online"}]}
    assert (await second.recv())["type"] == "agent_state"
    # The newcomer's arrival reaches everyone, itself included.
    assert (await first.recv())["data"] == {"userId": "user_other", "status": "online"}
    assert (await second.recv())["data"] == {"userId": "user_other", "status": "online"}
    assert server.clients_count() == 2
    assert server.authenticated_clients_count() == 2


async def test_broadcasts_reach_every_authenticated_client_and_no_one_else(start_server, clients):
    server = await start_server()
    a = await join(clients, server, "a")
    b = await join(clients, server, "b")
    await a.recv()  # b's arrival
    anonymous = await clients.connect(url(server))
    refused = await clients.connect(url(server, "token=not%20valid!"))
    assert (await anonymous.recv())["data"] == {"success": False, "error": "Missing token"}
    assert (await refused.recv())["data"] == {"success": False, "error": "Invalid token"}
    assert server.clients_count() == 4
    assert server.authenticated_clients_count() == 2

    status = server.broadcast_agent_status("planner", "working", "indexing", progress=40)
    chat = server.broadcast_chat_message("conv-1", "msg-1", "hello", "assistant")
    note = server.send_notification("success", "Build finished")
    assert (status.delivered, chat.delivered, note.delivered) == (2, 2, 2)
    assert status.id < chat.id < note.id

    for peer in (a, b):
        got = await peer.recv_many(3)
        assert [m["type"] for m in got] == ["agent_status", "chat_message", "notification"]
        assert got[0]["data"] == {
            "agentName": "planner",
            "state": "working",
            "currentTask": "indexing",
            "progress": 40,
        }
        assert got[0]["id"] == status.id
        assert got[1]["data"]["content"] == "hello"
        assert ISO.match(got[1]["data"]["timestamp"])
        assert got[2]["data"] == {"level": "success", "message": "Build finished"}
        assert got[2]["id"] == note.id
    # Unauthenticated clients receive nothing of it (the next message is our pong).
    assert await anonymous.nothing_pending()
    assert await refused.nothing_pending()


async def test_notification_to_one_user_reaches_all_of_its_connections_only(start_server, clients):
    server = await start_server()
    alice_1 = await join(clients, server, "alice")
    alice_2 = await clients.connect(url(server, "token=alice"))
    assert (await alice_2.recv())["data"]["userId"] == "user_alice"
    await alice_2.recv_many(2)  # presence_state, agent_state (alice was online already)
    bob = await join(clients, server, "bob")
    await alice_1.recv()  # bob's arrival
    await alice_2.recv()

    published = server.send_notification("warning", "only for alice", user_id="user_alice")
    assert published.delivered == 2
    for peer in (alice_1, alice_2):
        message = await peer.recv()
        assert message["type"] == "notification"
        assert message["data"] == {"level": "warning", "message": "only for alice"}
    assert await bob.nothing_pending()
    assert server.send_notification("info", "nobody", user_id="user_ghost").delivered == 0


async def test_presence_is_per_user_and_offline_after_the_grace_period(start_server, clients):
    server = await start_server(Settings(presence_grace=0.2))
    watcher = await join(clients, server, "watcher")
    u1 = await join(clients, server, "u")
    assert (await watcher.recv())["data"] == {"userId": "user_u", "status": "online"}
    u2 = await clients.connect(url(server, "token=u"))
    await u2.recv_many(3)  # auth, presence_state, agent_state: no user_presence

    await u2.send({"type": "user_presence", "data": "busy"})
    assert (await watcher.recv())["data"] == {"userId": "user_u", "status": "busy"}
    await u1.send({"type": "user_presence", "data": "away"})  # busy still wins: no message
    await u2.close()
    # Now only the "away" connection is left.
    assert (await watcher.recv())["data"] == {"userId": "user_u", "status": "away"}
    await u1.close()
    # The last connection went: offline once the grace period has passed.
    assert (await watcher.recv())["data"] == {"userId": "user_u", "status": "offline"}
    assert server.hub.presence() == {"user_watcher": "online"}


async def test_reconnect_within_the_grace_period_does_not_flap(start_server, clients):
    server = await start_server(Settings(presence_grace=5.0))
    watcher = await join(clients, server, "watcher")
    first = await join(clients, server, "u")
    await watcher.recv()  # u online
    await first.close()
    again = await clients.connect(url(server, "token=u"))
    await again.recv_many(3)  # auth, presence_state, agent_state
    assert await watcher.nothing_pending()  # neither offline nor online went out
    assert server.hub.presence()["user_u"] == "online"


async def test_ping_pong_and_bad_input_answers_keep_the_connection(start_server, clients):
    server = await start_server()
    peer = await join(clients, server, "p")
    await peer.send({"type": "ping"})
    pong = await peer.recv()
    assert pong["type"] == "pong"
    assert ISO.match(pong["timestamp"])
    cases = [
        ("not json", "Invalid message format"),
        (json.dumps({"type": "launch"}), "Unknown message type: launch"),
        (json.dumps({"type": "agent_status", "data": {}}), "Message type not allowed from client"),
        (json.dumps({"type": "user_presence", "data": "asleep"}), "Invalid presence status"),
    ]
    for text, error in cases:
        await peer.send(text)
        answer = await peer.recv()
        assert answer["type"] == "error"
        assert answer["data"]["error"] == error
    await peer.send(b"\x00binary")
    assert (await peer.recv())["data"]["error"] == "Binary messages are not supported"
    assert await peer.nothing_pending()
    assert server.clients_count() == 1


async def test_unauthenticated_client_may_only_ping(start_server, clients):
    server = await start_server()
    peer = await clients.connect(url(server))
    assert (await peer.recv())["data"]["success"] is False
    await peer.send({"type": "user_presence", "data": "online"})
    assert (await peer.recv())["data"]["error"] == "Not authenticated"
    await peer.send({"type": "ping"})
    assert (await peer.recv())["type"] == "pong"
    assert server.hub.presence() == {}


async def test_static_tokens_and_token_outside_the_url(start_server, clients):
    server = await start_server(authenticator=StaticAuthenticator({"s3cret": "alice"}))
    header = await clients.connect(
        url(server), additional_headers={"Authorization": "Bearer s3cret"}
    )
    assert (await header.recv())["data"] == {"success": True, "userId": "alice"}
    browser = await clients.connect(url(server), subprotocols=["agentcast.v1", "bearer.s3cret"])
    assert browser.ws.subprotocol == "agentcast.v1"
    assert (await browser.recv())["data"] == {"success": True, "userId": "alice"}
    wrong = await clients.connect(url(server, "token=guess"))
    assert (await wrong.recv())["data"] == {"success": False, "error": "Invalid token"}


async def test_broadcasts_keep_publish_order(start_server, clients):
    server = await start_server()
    peers = [await join(clients, server, f"o{i}") for i in range(3)]
    for i, peer in enumerate(peers):  # arrivals of the later ones
        await peer.recv_many(len(peers) - 1 - i)
    ids = [server.broadcast_chat_message("c", f"m{i}", str(i), "bot").id for i in range(200)]
    for peer in peers:
        got = await peer.recv_many(200)
        assert [m["id"] for m in got] == ids
        assert [m["data"]["content"] for m in got] == [str(i) for i in range(200)]


async def test_invalid_arguments_raise_value_error(start_server):
    server = await start_server()
    with pytest.raises(ValueError, match="state"):
        server.broadcast_agent_status("a", "sleeping")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        server.send_notification("loud", "x")  # type: ignore[arg-type]


async def test_a_burst_published_in_one_go_reaches_a_reader_that_keeps_up(start_server, clients):
    """Many messages published from one task without yielding are all queued before any
    is written. In one ``publishing_batch`` a client is judged by what it had not drained
    before the burst, so a reader that keeps up gets all of it; outside a batch the same
    burst passes max_send_buffer at once and closes it 1013."""
    server = await start_server(Settings(max_send_buffer=32 * 1024))
    reader = await join(clients, server, "reader")
    text = "x" * 1000
    with server.publishing_batch():
        for n in range(45):  # about 48 KB: past the limit, within the hard stop (twice)
            server.send_notification("info", f"{n:03d} {text}")
    got = await reader.recv_many(45)
    assert [m["data"]["message"][:3] for m in got] == [f"{n:03d}" for n in range(45)]
    for n in range(45):
        server.send_notification("info", f"{n:03d} {text}")
    code, reason = await reader.closed_by_server()
    assert (code, reason) == (1013, "client too slow")
