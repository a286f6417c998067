"""Agent-status conflation for slow readers, decided in the core."""

from __future__ import annotations

import json

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from agentcast.protocol import (
    AuthRequested,
    DevAuthenticator,
    Hub,
    ServerConnection,
    Settings,
)

WALL = 1_766_754_000.0


def _open(hub: Hub, token: str) -> tuple[ServerConnection, WSConnection]:
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
    client = WSConnection(ConnectionType.CLIENT)
    conn.receive_data(client.send(Request(host="localhost", target=f"/ws?token={token}")), 0, WALL)
    (event,) = conn.events_received()
    assert isinstance(event, AuthRequested)
    conn.complete_auth(DevAuthenticator().authenticate(event.token, WALL), 0.0, WALL)
    return conn, client


def _read(conn: ServerConnection, client: WSConnection) -> list[dict[str, object]]:
    client.receive_data(conn.data_to_send())
    out = []
    for event in client.events():
        if isinstance(event, TextMessage):
            out.append(json.loads(event.data))
        else:
            assert isinstance(event, AcceptConnection)
    return out


def _settings(**kw: object) -> Settings:
    return Settings(conflation_threshold=4_000, max_send_buffer=40_000, **kw)  # type: ignore[arg-type]


def test_slow_reader_gets_latest_status_of_every_agent_and_every_chat_message() -> None:
    hub = Hub(_settings())
    slow, slow_client = _open(hub, "slow")
    fast, fast_client = _open(hub, "fast")
    _read(slow, slow_client)
    _read(fast, fast_client)
    chats = 0
    for i in range(3_000):
        hub.broadcast_agent_status(f"agent-{i % 5}", "working", progress=i % 101, now=1, wall=WALL)
        if i % 100 == 0:
            hub.broadcast_chat_message("c", f"m{chats}", "hello", "bot", now=1, wall=WALL)
            chats += 1
        if i % 10 == 0:
            _read(fast, fast_client)  # the fast one keeps up
    assert not slow.closed
    got = _read(slow, slow_client)
    statuses = [m for m in got if m["type"] == "agent_status"]
    chat_ids = [m["data"]["messageId"] for m in got if m["type"] == "chat_message"]  # type: ignore[index]
    assert chat_ids == [f"m{n}" for n in range(chats)]
    # Conflated: far fewer statuses than published, and the last one per agent is the newest.
    assert len(statuses) < 1_000
    latest = {}
    for m in statuses:
        latest[m["data"]["agentName"]] = m["data"]["progress"]  # type: ignore[index]
    assert latest == {f"agent-{k}": (2_995 + k) % 101 for k in range(5)}
    # What remains is in publish order.
    ids = [m["id"] for m in got if "id" in m]
    assert ids == sorted(ids)


def test_fast_reader_sees_every_status() -> None:
    hub = Hub(_settings())
    conn, client = _open(hub, "fast")
    _read(conn, client)
    seen = 0
    for i in range(500):
        hub.broadcast_agent_status("a", "working", progress=i % 101, now=1, wall=WALL)
        seen += sum(m["type"] == "agent_status" for m in _read(conn, client))
    assert seen == 500


def test_reader_at_ten_percent_survives_pure_status_load() -> None:
    hub = Hub(_settings())
    conn, client = _open(hub, "slow")
    _read(conn, client)
    received = 0
    for i in range(20_000):
        hub.broadcast_agent_status(f"agent-{i % 20}", "working", now=1, wall=WALL)
        if i % 10 == 0:
            received += len(_read(conn, client))
    assert not conn.closed
    assert received > 0


def test_chat_backlog_still_closes_1013() -> None:
    hub = Hub(_settings())
    conn, client = _open(hub, "slow")
    _read(conn, client)
    for i in range(2_000):
        hub.broadcast_chat_message("c", f"m{i}", "x" * 100, "bot", now=1, wall=WALL)
    assert hub.stats.slow_client_drops == 1
    assert conn.session is not None
    assert conn.session.closed


def test_many_distinct_agents_hit_the_hard_limit() -> None:
    hub = Hub(_settings())
    conn, _client = _open(hub, "slow")
    for i in range(5_000):
        hub.broadcast_agent_status(f"agent-{i}", "idle", now=1, wall=WALL)
    assert hub.stats.slow_client_drops == 1
    assert conn.transport.backlog <= 80_000
