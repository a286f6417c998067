"""A broadcast never waits for a client: one that stops reading is closed with 1013 and
delays nobody; the server's memory does not grow with the number of broadcasts."""

from __future__ import annotations

import json
import socket

import anyio
import pytest

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

BROADCASTS = 2_000
LIMIT = 256 * 1024  # max_send_buffer: far below the 2 MB that go out
# Every STEP messages the publisher waits until the fast readers are at most WINDOW behind.
# A fast client's backlog (pending output plus the whole write in flight) then stays under
# 2 * (WINDOW + STEP) messages, well below LIMIT, however fast the machine is.
STEP = 25
WINDOW = 50
FAST = 3


async def collect(ws, into):
    """Client side: record every notification's (id, sequence number) until BROADCASTS."""
    while len(into) < BROADCASTS:
        message = json.loads(await ws.recv())
        if message["type"] == "notification":
            into.append((message["id"], int(message["data"]["message"][:5])))


async def test_slow_reader_is_dropped_with_1013_and_others_get_everything(
    start_server, clients, wait_for, held
):
    # Fixed kernel send buffers (Linux would otherwise autotune them up to 4 MiB, which
    # would swallow all 2 MB before the server saw any backlog).
    server = await start_server(
        Settings(max_send_buffer=LIMIT, presence_grace=0.2), socket_send_buffer=32768
    )
    url = f"{server.urls[0]}?token="
    fast = [await clients.connect(f"{url}fast{i}") for i in range(FAST)]
    # A small receive buffer (as on a phone on a bad network): the kernel cannot hide the
    # backlog, which then builds up in the server, where the 1013 policy sees it.
    sock = socket.create_connection(server.addresses[0])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    slow = await clients.connect(f"{url}slow", sock=sock)
    assert (await slow.recv())["type"] == "auth"
    await slow.pause_reading()  # it stops reading: the kernel buffers fill, then ours
    received = [[] for _ in fast]
    readers = [
        clients.portal.start_task_soon(collect, peer.ws, into)
        for peer, into in zip(fast, received, strict=True)
    ]

    padding = "x" * 1019
    ids = []
    peak = 0
    for n in range(BROADCASTS):
        # 1 KiB of message: a 5-digit sequence number and padding.
        ids.append(server.send_notification("info", f"{n:05d}{padding}").id)
        peak = max(peak, server.backlog())
        if n % STEP == STEP - 1:
            await wait_for(lambda n=n: min(map(len, received)) >= n + 1 - WINDOW)

    for reader in readers:
        await anyio.to_thread.run_sync(reader.result, 30)
    # Every fast client got every broadcast, in publish order.
    for got in received:
        assert [message_id for message_id, _ in got] == ids
        assert [seq for _, seq in got] == list(range(BROADCASTS))
    # The slow one was dropped as soon as its backlog passed the limit...
    assert server.hub.stats.slow_client_drops == 1
    assert server.clients_count() == FAST
    # ...so the pending output never held more than the limit plus the fast clients'
    # window: it does not grow with the number of broadcasts (2 MB per client here).
    assert peak <= LIMIT + FAST * 2 * (WINDOW + STEP) * 1100
    # Its user went offline once the presence grace period had passed.
    await wait_for(lambda: "user_slow" not in server.hub.presence())
    # When it reads again, it finds the close frame after the write that was in flight.
    await slow.resume_reading()
    assert await slow.closed_by_server() == (1013, "client too slow")
    # Then nothing is held for it any more.
    await wait_for(lambda: held(server) == FAST and server.backlog() == 0)
