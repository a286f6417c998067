"""Many concurrent clients, and clients that vanish with a TCP reset mid-broadcast."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
from websockets.asyncio.client import connect

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

USERS = 10  # clients share 10 users, so joins do not flood everyone with presence
# Every client comes from 127.0.0.1 at once: lift the per-address, per-user and
# connection-rate limits that would (rightly) refuse that from one real host.
UNLIMITED = Settings(
    max_connections_per_ip=None, max_connections_per_user=None, connection_rate=None
)


# -- client side (runs in the client thread) ----------------------------------------------


async def open_clients(url, n):
    async def one(i):
        return await connect(f"{url}?token=u{i % USERS}", proxy=None, ping_interval=None)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def read_ids(connections, kind, count, timeout=30):
    """For each connection, the ids of the first *count* messages of type *kind*."""

    async def one(ws):
        ids = []
        while len(ids) < count:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                ids.append(message["id"])
        return ids

    async with asyncio.timeout(timeout):
        return await asyncio.gather(*(one(ws) for ws in connections))


async def reset(connections):
    for ws in connections:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()


async def close_all(connections):
    await asyncio.gather(*(ws.close() for ws in connections))


# -- tests --------------------------------------------------------------------------------


# Not hypercorn: it makes one socket write per message sent (ASGI sends one message at a
# time), which makes this test slow there; its fan-out is covered by the test below.
@pytest.mark.servers("reference", "uvicorn")
async def test_500_concurrent_clients_all_receive_a_broadcast(start_server, clients, wait_for):
    server = await start_server(UNLIMITED)
    connections = await clients.call(open_clients, server.urls[0], 500)
    await wait_for(lambda: server.authenticated_clients_count() == 500)
    published = server.broadcast_agent_status("planner", "working", "fan-out", progress=50)
    assert published.delivered == 500
    got = await clients.call(read_ids, connections, "agent_status", 1)
    assert got == [[published.id]] * 500
    await clients.call(close_all, connections)
    await wait_for(lambda: server.clients_count() == 0)


async def test_resets_during_broadcasts_disturb_nobody_and_leave_nothing_counted(
    start_server, clients, wait_for, held, server_kind
):
    server = await start_server(UNLIMITED)
    connections = await clients.call(open_clients, server.urls[0], 200)
    await wait_for(lambda: server.authenticated_clients_count() == 200)
    victims, survivors = connections[:50], connections[50:]
    ids = []
    for round_ in range(20):
        for i in range(5):
            ids.append(server.broadcast_chat_message("c", f"m{round_}.{i}", "x" * 200, "bot").id)
        if round_ < 10:  # 5 clients vanish after each of the first 10 rounds
            await clients.call(reset, victims[5 * round_ : 5 * round_ + 5])
    got = await clients.call(read_ids, survivors, "chat_message", len(ids))
    assert all(received == ids for received in got)
    await wait_for(lambda: server.clients_count() == 150 and held(server) == 150)
    assert server.authenticated_clients_count() == 150
    # Counted as closed without a close frame: 1006, or as uvicorn reports a lost
    # connection to the application, 1005 (unless the adapter's write failed first).
    lost = (1006,) if server_kind != "uvicorn" else (1005, 1006)
    assert sum(server.hub.stats.closes[code] for code in lost) == 50
    await clients.call(close_all, survivors)
    await wait_for(lambda: held(server) == 0)
    assert server.backlog() == 0
