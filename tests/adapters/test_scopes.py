"""Scoped delivery end to end (PROTOCOL.md section 4a): real sockets, `websockets` clients.

A server with JWT auth whose tokens allow ``conversation:team-*`` only: a subscription to
another channel is refused, a chat published to ``conversation:team-1`` with ``userIds``
reaches exactly the intended connections (in-process and over the publish API), seed
clients that never subscribe keep receiving unscoped broadcasts, ``channels=`` in the URL
subscribes at connect time, a refreshed token revokes a channel, an authorizer's answer
may come later, and the gauges count subscriptions.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from agentcast.protocol import Identity, Settings
from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet, make_dev_token
from agentcast.protocol.scope import PendingVerdict

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

SECRET = "scopes-test-secret-0123456789abcdef"
KEY = "k3y"
TEAM = ["conversation:team-*"]
TEAM_1 = "conversation:team-1"


def token(sub: str, channels: list[str] | None = TEAM) -> str:
    return make_dev_token(SECRET, sub, 600, time.time(), channels=channels)


async def jwt_server(start_server, **options: Any):
    # No presence window: each arrival reaches everyone at once, in the order these
    # tests read (a held arrival would come after the subscribe answers).
    return await start_server(
        Settings(api_key=KEY, presence_window=0),
        authenticator=JwtAuthenticator(JwtKeySet.from_secret(SECRET)),
        **options,
    )


async def join(clients, server, query: str):
    """A connected client, its opening messages (auth, presence_state, its own
    user_presence) read."""
    peer = await clients.connect(f"{server.urls[0]}?{query}")
    auth = await peer.recv()
    assert auth["data"]["success"] is True, auth
    assert (await peer.recv())["type"] == "presence_state"
    await peer.recv_until("user_presence")
    return peer


async def settle(peers) -> None:
    """Read the user_presence each peer got when the later ones (other users) joined."""
    for i, peer in enumerate(peers):
        for _ in range(len(peers) - 1 - i):
            assert (await peer.recv())["type"] == "user_presence"


async def answer(peer, kind: str, channel: str) -> dict[str, Any]:
    await peer.send({"type": kind, "data": {"channel": channel}})
    message = await peer.recv()
    return {"type": message["type"], "data": message["data"]}


async def post(http_request, server, path, body):
    host, port = server.addresses[0]
    status, _, raw = await http_request(
        f"http://{host}:{port}{path}",
        "POST",
        json.dumps(body).encode(),
        Authorization=f"Bearer {KEY}",
        **{"Content-Type": "application/json"},
    )
    return status, json.loads(raw)


def gauge(server, name: str) -> float | None:
    return server.metrics.registry.get_sample_value(f"agentcast_{name}")


async def test_a_team_token_sees_its_team_and_seed_clients_see_the_rest(
    start_server, clients, http_request
):
    server = await jwt_server(start_server)
    alice = await join(clients, server, f"token={token('alice')}")
    bob = await join(clients, server, f"token={token('bob')}&channels={TEAM_1}")
    assert (await bob.recv())["data"] == {"channel": TEAM_1}  # subscribed at connect time
    seed = await join(clients, server, f"token={token('carol', channels=None)}")
    await settle([alice, bob, seed])

    # What the token allows, and what it does not.
    assert await answer(alice, "subscribe", TEAM_1) == {
        "type": "subscribed",
        "data": {"channel": TEAM_1},
    }
    assert await answer(alice, "subscribe", "conversation:other") == {
        "type": "error",
        "data": {
            "error": "Channel not allowed",
            "code": "forbidden_channel",
            "channel": "conversation:other",
        },
    }
    refused = await answer(seed, "subscribe", TEAM_1)  # no channels claim: nothing
    assert refused["data"]["code"] == "forbidden_channel"
    assert (gauge(server, "channel_subscriptions"), gauge(server, "channels_subscribed")) == (2, 1)

    # A chat to the team channel for alice and carol: alice only (carol is not subscribed,
    # bob is not in the audience).
    published = server.broadcast_chat_message(
        "team-1", "m1", "for alice", "agent", channel=TEAM_1, user_ids=["alice", "carol"]
    )
    assert published.delivered == 1
    message = await alice.recv()
    assert (message["type"], message["data"]["content"]) == ("chat_message", "for alice")
    assert await bob.nothing_pending()
    assert await seed.nothing_pending()

    # The same over the publish API, to the whole channel: alice and bob.
    chat = {"conversationId": "team-1", "messageId": "m2", "content": "team", "sender": "a"}
    status, body = await post(
        http_request, server, "/api/chat-messages", {**chat, "channel": TEAM_1}
    )
    assert (status, body["delivered"]) == (202, 2)
    for peer in (alice, bob):
        assert (await peer.recv())["data"]["content"] == "team"
    assert await seed.nothing_pending()
    status, body = await post(
        http_request, server, "/api/chat-messages", {**chat, "channel": "conversation:other"}
    )
    assert (status, body["delivered"]) == (202, 0)

    # Unscoped broadcasts reach everyone, the seed client included.
    assert server.broadcast_agent_status("coder", "working").delivered == 3
    for peer in (alice, bob, seed):
        message = await peer.recv()
        assert message["type"] == "agent_status"
        assert await peer.nothing_pending()

    # A bad scope is a 400 that names the problem; nothing is published.
    status, body = await post(
        http_request, server, "/api/notifications", {"level": "info", "message": "m", "userIds": []}
    )
    assert (status, body) == (400, {"error": "userIds must name 1 to 1,000 users"})
    assert await alice.nothing_pending()


async def test_a_refreshed_token_revokes_a_channel(start_server, clients):
    server = await jwt_server(start_server)
    wide = token("alice", [*TEAM, "agent:*"])
    alice = await join(clients, server, f"token={wide}&channels=agent:coder,{TEAM_1}")
    assert [(await alice.recv())["data"]["channel"] for _ in range(2)] == ["agent:coder", TEAM_1]
    await alice.send({"type": "auth", "data": {"token": token("alice")}})
    assert (await alice.recv())["data"] == {"success": True, "userId": "alice"}
    revoked = await alice.recv()
    assert (revoked["type"], revoked["data"]) == (
        "unsubscribed",
        {"channel": "agent:coder", "reason": "no longer allowed"},
    )
    assert server.broadcast_agent_status("coder", "idle", channel="agent:coder").delivered == 0
    assert server.broadcast_agent_status("coder", "idle", channel=TEAM_1).delivered == 1
    assert (await alice.recv())["type"] == "agent_status"
    assert gauge(server, "channel_subscriptions") == 1


async def test_an_authorizer_may_answer_later(start_server, clients, wait_for):
    asked: list[tuple[str, str, PendingVerdict]] = []

    def authorizer(identity: Identity, channel: str) -> PendingVerdict:
        verdict = PendingVerdict()
        asked.append((identity.user_id, channel, verdict))
        return verdict

    server = await start_server(Settings(), authorizer=authorizer)
    alice = await join(clients, server, "token=alice")
    await alice.send({"type": "subscribe", "data": {"channel": "inbox:alice"}})
    await alice.send({"type": "subscribe", "data": {"channel": "inbox:bob"}})
    await wait_for(lambda: len(asked) == 2)
    assert [(user, channel) for user, channel, _ in asked] == [
        ("user_alice", "inbox:alice"),
        ("user_alice", "inbox:bob"),
    ]
    assert await alice.nothing_pending()  # no answer before the verdicts; the rest goes on
    server.complete_verdict(asked[1][2], False)
    server.complete_verdict(asked[0][2], True)
    first, second = await alice.recv(), await alice.recv()
    assert (first["data"]["code"], first["data"]["channel"]) == ("forbidden_channel", "inbox:bob")
    assert (second["type"], second["data"]) == ("subscribed", {"channel": "inbox:alice"})
    assert server.send_notification("info", "mail", channel="inbox:alice").delivered == 1
    assert (await alice.recv())["data"] == {"level": "info", "message": "mail"}
