"""Logs: one line per connection open and close, as text or JSON, never a token."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agentcast.adapters import configure_logging
from agentcast.protocol import StaticAuthenticator

# Not hypercorn: it tells the application 1006 for every close the client starts.
pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn")]

TOKEN = "s3cr3t-T0ken.value"


@pytest.fixture
def log_to():
    """``log_to(fmt)``: the agentcast logs at INFO into a StringIO; restored afterwards."""
    logger = logging.getLogger("agentcast")
    saved = (list(logger.handlers), logger.level, logger.propagate)

    def configure(fmt):
        stream = io.StringIO()
        configure_logging("info", fmt, stream)
        return stream

    yield configure
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


async def session(start_server, clients, http_request, wait_for):
    """Two WebSocket connections (one refused), a few messages, some plain HTTP."""
    server = await start_server(authenticator=StaticAuthenticator({TOKEN: "alice"}))
    alice = await clients.connect(f"{server.urls[0]}?token={TOKEN}")
    stranger = await clients.connect(f"{server.urls[0]}?token=wrong-{TOKEN}")
    for _ in range(3):
        await alice.send({"type": "ping"})
    await alice.recv_many(7)  # auth, presence_state, agent_state, user_presence, 3 pongs
    host, port = server.addresses[0]
    await http_request(f"http://{host}:{port}/healthz?token={TOKEN}")
    await alice.close()
    await stranger.close(4999)
    await wait_for(lambda: server.clients_count() == 0)
    return alice, stranger


async def test_one_json_line_per_open_and_close_without_tokens(
    start_server, clients, http_request, wait_for, log_to
):
    stream = log_to("json")
    alice, stranger = await session(start_server, clients, http_request, wait_for)
    output = stream.getvalue()
    assert TOKEN not in output
    records = [json.loads(line) for line in output.splitlines()]
    events = [r for r in records if r.get("event") in ("open", "close")]
    assert len(events) == 4  # nothing per message, nothing for the HTTP request
    alice_peer = "{}:{}".format(*alice.ws.local_address[:2])
    stranger_peer = "{}:{}".format(*stranger.ws.local_address[:2])
    by_peer = {(r["peer"], r["event"]): r for r in events}
    assert by_peer[alice_peer, "open"]["user"] == "alice"
    close = by_peer[alice_peer, "close"]
    assert (close["user"], close["code"], close["messages_in"]) == ("alice", 1000, 3)
    assert close["messages_out"] == 7
    assert close["duration"] >= 0
    assert close["level"] == "info"
    assert by_peer[stranger_peer, "open"]["user"] == "-"
    assert by_peer[stranger_peer, "close"]["code"] == 4999


async def test_text_format_is_one_readable_line_each(
    start_server, clients, http_request, wait_for, log_to
):
    stream = log_to("text")
    await session(start_server, clients, http_request, wait_for)
    lines = [line for line in stream.getvalue().splitlines() if "agentcast.connection" in line]
    assert len(lines) == 4
    assert TOKEN not in stream.getvalue()
    close = next(line for line in lines if "user=alice" in line and "closed" in line)
    assert "code=1000" in close
    assert "in=3 out=7" in close
