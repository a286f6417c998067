"""A ``subscribe`` with ``since`` end to end (PROTOCOL.md 4a): real sockets, on asyncio and
trio, the reference server and the ASGI adapter, `websockets` clients and the Python client.

What a user sees: a client subscribed to a channel goes away; messages are published to
that channel (and elsewhere); a new connection subscribes with the last id it saw and
gets exactly the channel's missed messages, in order, then ``subscribed`` with
``complete: true``, then live traffic.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from agentcast.adapters.client import ChatMessage, Notification, Subscribed, connect
from agentcast.protocol import Settings

from .conftest import TIMEOUT, StartServer

pytestmark = pytest.mark.anyio


async def until_subscribed(peer: Any) -> list[dict[str, Any]]:
    """Every message up to and including ``subscribed`` (presence changes skipped)."""
    got = []
    while True:
        message = await peer.recv()
        if message["type"] == "user_presence":
            continue
        got.append(message)
        if message["type"] == "subscribed":
            return got


@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_missed_channel_messages_then_subscribed_complete(start_server, clients):
    server = await start_server(Settings(presence_window=0))
    first = await clients.connect(f"{server.urls[0]}?token=alice&channels=room:1")
    await first.recv_until("subscribed")
    seen = server.broadcast_chat_message("c", "m0", "seen", "bot", channel="room:1").id
    message = await first.recv_until("chat_message")
    assert message["id"] == seen
    await first.close()

    missed = [
        server.broadcast_chat_message("c", f"m{n}", f"missed {n}", "bot", channel="room:1").id
        for n in range(1, 4)
    ]
    server.broadcast_chat_message("c", "x", "another channel", "bot", channel="room:2")
    bob = ["user_bob"]
    server.broadcast_chat_message("c", "y", "for bob", "bot", channel="room:1", user_ids=bob)
    mine = server.send_notification("info", "for alice", user_id="user_alice", channel="room:1").id
    missed.append(mine)

    second = await clients.connect(f"{server.urls[0]}?token=alice")
    await second.recv_until("agent_state")
    await second.send({"type": "subscribe", "data": {"channel": "room:1", "since": seen}})
    got = await until_subscribed(second)
    assert [m["type"] for m in got] == [
        "chat_message",
        "chat_message",
        "chat_message",
        "notification",
        "subscribed",
    ]
    assert [m["id"] for m in got[:-1]] == missed
    assert [m["data"]["content"] for m in got[:3]] == ["missed 1", "missed 2", "missed 3"]
    assert got[-1]["data"] == {"channel": "room:1", "complete": True, "replayed": 4}

    live = server.broadcast_chat_message("c", "m9", "live", "bot", channel="room:1").id
    assert (await second.recv_until("chat_message"))["id"] == live
    assert await second.nothing_pending()


@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_an_unknown_since_subscribes_incomplete(start_server, clients):
    server = await start_server(Settings(presence_window=0))
    server.broadcast_chat_message("c", "m", "kept", "bot", channel="room:1")
    peer = await clients.connect(f"{server.urls[0]}?token=alice")
    await peer.recv_until("agent_state")
    since = "9999999999999-000000000001"  # not an id this server issued
    await peer.send({"type": "subscribe", "data": {"channel": "room:1", "since": since}})
    got = await until_subscribed(peer)
    assert [(m["type"], m["data"]) for m in got] == [
        ("subscribed", {"channel": "room:1", "complete": False})
    ]
    live = server.broadcast_chat_message("c", "m", "live", "bot", channel="room:1").id
    assert (await peer.recv_until("chat_message"))["id"] == live
    await peer.send({"type": "subscribe", "data": {"channel": "room:2", "since": 42}})
    error = await peer.recv_until("error")
    assert error["data"] == {"error": "Invalid message format", "code": "invalid_format"}


async def test_a_replay_that_cannot_fit_closes_1013(start_server: StartServer, clients):
    server = await start_server(Settings(max_send_buffer=8192, presence_window=0))
    start = server.broadcast_chat_message("c", "m", "start", "bot").id
    for n in range(200):
        server.broadcast_chat_message("c", "m", f"missed {n:03d}", "bot", channel="room:1")
    peer = await clients.connect(f"{server.urls[0]}?token=alice")
    await peer.recv_until("agent_state")
    await peer.send({"type": "subscribe", "data": {"channel": "room:1", "since": start}})
    assert await peer.closed_by_server() == (1013, "client too slow")


# -- the Python client ----------------------------------------------------------------------


async def test_the_python_client_subscribes_with_since(start_server: StartServer):
    server = await start_server(Settings(presence_window=0))
    url = server.urls[0]
    async with connect(url, token="alice") as client:
        await client.subscribe("room:1")
        with anyio.fail_after(TIMEOUT):
            async for item in client:
                if isinstance(item, Subscribed):
                    assert item.complete is None  # without since, as before
                    break
        seen = server.broadcast_chat_message("c", "m", "seen", "bot", channel="room:1").id
        with anyio.fail_after(TIMEOUT):
            async for item in client:
                if isinstance(item, ChatMessage):
                    assert item.id == seen
                    break

    missed = [
        server.broadcast_chat_message("c", "m", f"missed {n}", "bot", channel="room:1").id
        for n in range(3)
    ]
    server.broadcast_chat_message("c", "m", "another channel", "bot", channel="room:2")
    note = server.send_notification("info", "for alice", user_id="user_alice", channel="room:1")
    missed.append(note.id)

    async with connect(url, token="alice") as client:
        await client.subscribe("room:1", since=seen)
        replayed: list[Any] = []
        with anyio.fail_after(TIMEOUT):
            async for item in client:
                if isinstance(item, ChatMessage | Notification):
                    replayed.append(item)
                elif isinstance(item, Subscribed):
                    answer = item
                    break
        assert [m.id for m in replayed] == missed
        assert (answer.channel, answer.complete, answer.replayed) == ("room:1", True, 4)
        assert client.session.channels == {"room:1": None}
        live = server.broadcast_chat_message("c", "m", "live", "bot", channel="room:1").id
        with anyio.fail_after(TIMEOUT):
            async for item in client:
                if isinstance(item, ChatMessage):
                    assert item.id == live
                    break
