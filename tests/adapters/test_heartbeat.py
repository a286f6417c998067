"""PROTOCOL.md section 5 over real sockets, with short configured intervals.

A `websockets` client answers protocol Pings by itself (as browsers and Node's `ws` do)
and, with ``ping_interval=None``, sends nothing else on its own. To make one *silent*, the
test pauses its transport: it then reads nothing, so it answers nothing either.
"""

from __future__ import annotations

import anyio
import pytest

from agentcast.protocol import Settings

pytestmark = pytest.mark.anyio

FAST = Settings(heartbeat_interval=0.1, heartbeat_timeout=0.5)


async def greeted(clients, server, token="hb"):
    peer = await clients.connect(f"{server.urls[0]}?token={token}")
    assert (await peer.recv())["type"] == "auth"
    return peer


async def test_server_sends_json_ping_and_protocol_ping(start_server, clients, wait_for):
    server = await start_server(FAST)
    peer = await greeted(clients, server)
    ping = await peer.recv_until("ping")
    assert set(ping) == {"type", "timestamp"}
    await wait_for(lambda: any(line.startswith("< PING") for line in peer.frames.lines))


async def test_silent_client_is_closed_with_4000(start_server, clients, wait_for, held):
    server = await start_server(FAST)
    peer = await greeted(clients, server)
    await peer.pause_reading()
    await wait_for(lambda: server.hub.stats.heartbeat_timeouts == 1)
    assert server.clients_count() == 0
    await peer.resume_reading()
    assert await peer.closed_by_server() == (4000, "heartbeat timeout")
    await wait_for(lambda: held(server) == 0)


async def test_client_that_only_answers_protocol_pings_stays(start_server, clients):
    server = await start_server(FAST)
    peer = await greeted(clients, server)
    # Twice the timeout and more, without sending a single message of its own.
    await anyio.sleep(2 * FAST.heartbeat_timeout + 0.3)
    assert server.clients_count() == 1
    assert server.hub.stats.heartbeat_timeouts == 0
    pings = 0
    await peer.send({"type": "ping"})
    while (message := await peer.recv())["type"] != "pong":
        pings += message["type"] == "ping"
    assert pings >= 5  # the JSON pings it never answered
    assert sum(line.startswith("> PONG") for line in peer.frames.lines) >= 5
