"""A ``subscribe`` with ``since`` in a cluster (PROTOCOL.md 4a and 10): real
``agentcast serve`` processes, one real Redis.

What a user must see: subscribed to a channel on one process, then gone; back on another
process, a ``subscribe`` with the last id it saw brings exactly the channel's messages it
missed that it may receive, wherever they were published, then ``subscribed`` with
``complete: true``.
"""

from __future__ import annotations

import json

import pytest

from .conftest import RedisServer
from .test_processes import Client, servers

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the clients' loop; each server runs its default backend


async def test_a_channel_s_missed_messages_on_another_process(
    redis_server: RedisServer, stream: str
) -> None:
    async with servers(redis_server, stream, 2) as (p1, p2):
        alice = await p1.client("alice", "room")
        await alice.next("subscribed")
        # On p2: once it has the last message, p2 has applied everything before it.
        witness = await p2.client("witness", "room")
        await witness.next("subscribed")
        await p2.publish({"level": "info", "message": "seen", "channel": "room"})
        seen = (await alice.until("seen"))[-1]["id"]
        await alice.close()
        await p1.publish({"level": "info", "message": "missed 1", "channel": "room"})
        await p2.publish(
            {"level": "info", "message": "for bob", "channel": "room", "userId": "user_bob"}
        )
        await p2.publish({"level": "info", "message": "elsewhere", "channel": "other"})
        await p1.publish({"level": "info", "message": "unscoped"})
        last = await p2.publish({"level": "info", "message": "missed 2", "channel": "room"})

        await witness.until("missed 2")
        back = await Client.open(p2.port, "alice")
        await back.next("agent_state")
        await back.ws.send(
            json.dumps({"type": "subscribe", "data": {"channel": "room", "since": seen}})
        )
        answer = await back.next("subscribed")
        replay = [m for m in back.received if m["type"] == "notification"]
        assert [m["data"]["message"] for m in replay] == ["missed 1", "missed 2"]
        assert replay[-1]["id"] == last["id"]
        assert answer["data"] == {"channel": "room", "complete": True, "replayed": 2}
        await p1.publish({"level": "info", "message": "live", "channel": "room"})
        assert [m["data"]["message"] for m in await back.until("live")] == ["live"]
        await back.close()
        await witness.close()
