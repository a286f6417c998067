"""PROTOCOL.md section 5 over real sockets, with short configured intervals.

A `websockets` client answers protocol Pings by itself (as browsers and Node's `ws` do)
and, with ``ping_interval=None``, sends nothing else on its own. To make one *silent*, the
test pauses its transport: it then reads nothing, so it answers nothing either.

Under an ASGI server the protocol Pings, and the Pongs that prove a client alive, are the
server's: they never reach the application. The adapter sends the JSON pings and leaves
closing dead peers to the server's keepalive (configured from the same settings, see
:func:`agentcast.adapters.asgi.uvicorn_options`).
"""

from __future__ import annotations

import anyio
import pytest

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

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


#: How a silent client is closed: by the session's own rule on the reference server, by
#: the keepalive of uvicorn (hypercorn pings but never times a Pong out: not tested here).
SILENCE_CLOSE = {
    "reference": (4000, "heartbeat timeout"),
    "uvicorn": (1011, "keepalive ping timeout"),
}


@pytest.mark.servers("reference", "uvicorn")
async def test_silent_client_is_closed(start_server, clients, wait_for, held, server_kind):
    server = await start_server(FAST)
    peer = await greeted(clients, server)
    await peer.pause_reading()
    await wait_for(lambda: server.clients_count() == 0)
    assert server.hub.stats.heartbeat_timeouts == (server_kind == "reference")
    await peer.resume_reading()
    assert await peer.closed_by_server() == SILENCE_CLOSE[server_kind]
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
