"""A reconnect storm over real sockets: many users arrive and some leave at once; every
client's view (its presence_state, then each user_presence) ends as the true set."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from agentcast.adapters import _asyncio_driver, _socket_driver
from agentcast.protocol import Settings

pytestmark = pytest.mark.anyio

# Every client comes from 127.0.0.1 at once: lift the limits that would refuse that.
STORM = Settings(
    presence_grace=0,
    max_connections_per_ip=None,
    max_connections_per_user=None,
    connection_rate=None,
)


async def storm(url, first, leaving, later):
    """*first* users connect at once; then *leaving* of them close while *later* more
    connect. Returns, for every client still connected, its view once it is the true
    set (or the test times out)."""

    async def one(i):
        return await connect(f"{url}?token=s{i}", proxy=None, ping_interval=None)

    connections = dict(enumerate(await asyncio.gather(*(one(i) for i in range(first)))))
    gone = list(range(leaving))
    more = range(first, first + later)
    opened = await asyncio.gather(*(connections[i].close() for i in gone), *(one(i) for i in more))
    for i in gone:
        del connections[i]
    connections.update(zip(more, opened[len(gone) :], strict=True))
    truth = {f"user_s{i}": "online" for i in connections}

    async def follow(ws):
        view = None
        while view != truth:
            message = json.loads(await ws.recv())
            if message["type"] == "presence_state":
                assert view is None
                view = {u["userId"]: u["status"] for u in message["data"]["users"]}
            elif message["type"] == "user_presence":
                data = message["data"]
                if data["status"] == "offline":
                    del view[data["userId"]]  # never an offline for someone not shown
                else:
                    view[data["userId"]] = data["status"]
        return view

    try:
        async with asyncio.timeout(20):
            return truth, await asyncio.gather(*(follow(ws) for ws in connections.values()))
    finally:
        await asyncio.gather(*(ws.close() for ws in connections.values()))


async def test_a_storm_of_arrivals_and_departures_ends_with_every_view_true(
    start_server, clients, wait_for
):
    server = await start_server(STORM)
    assert server.service.settings.presence_window > 0  # the default: changes go together
    truth, views = await clients.call(storm, server.urls[0], 60, 20, 30)
    assert len(views) == 70
    assert all(view == truth for view in views)
    await wait_for(lambda: server.hub.presence() == {})  # and all of them gone again


async def test_a_storm_read_a_request_a_pass_and_sent_a_few_connections_a_step_ends_true(
    start_server, clients, wait_for, monkeypatch
):
    """The same storm with the bounds made tight: each pass reads one HTTP request and
    writes 16 connections (no time left in the pass), and each presence window reaches
    five connections a step. Every view still ends as the true set."""
    for module in (_asyncio_driver, _socket_driver):
        monkeypatch.setattr(module, "PASS_BUDGET", 0.0)
    server = await start_server(STORM)
    server.hub.presence_step = 5
    truth, views = await clients.call(storm, server.urls[0], 60, 20, 30)
    assert len(views) == 70
    assert all(view == truth for view in views)
    await wait_for(lambda: server.hub.presence() == {})
