"""HTTP on the WebSocket port (PROTOCOL.md sections 1 and 8), with urllib as the client:
health, metrics, and the publish API with each endpoint, bad key, bad body, oversized body."""

from __future__ import annotations

import json

import pytest

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def endpoint(server, path):
    host, port = server.addresses[0]
    return f"http://{host}:{port}{path}"


async def post(http_request, server, path, body, headers=AUTH):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, raw = await http_request(endpoint(server, path), "POST", data, **headers)
    return status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw


async def listener(clients, server, token):
    peer = await clients.connect(f"{server.urls[0]}?token={token}")
    await peer.recv_until("user_presence")
    return peer


async def test_each_publish_endpoint_delivers(start_server, clients, http_request):
    server = await start_server(Settings(api_key=KEY))
    alice = await listener(clients, server, "alice")
    bob = await listener(clients, server, "bob")
    await alice.recv()  # bob online

    status, body = await post(
        http_request, server, "/api/agent-status", {"agentName": "coder", "state": "idle"}
    )
    assert status == 202
    assert body["delivered"] == 2
    for peer in (alice, bob):
        message = await peer.recv()
        assert (message["type"], message["id"]) == ("agent_status", body["id"])
        assert message["data"] == {"agentName": "coder", "state": "idle"}

    chat = {"conversationId": "c1", "messageId": "m1", "content": "hi", "sender": "bot"}
    status, body = await post(http_request, server, "/api/chat-messages", chat)
    assert (status, body["delivered"]) == (202, 2)
    for peer in (alice, bob):
        message = await peer.recv()
        assert message["type"] == "chat_message"
        assert message["data"]["content"] == "hi"

    note = {"level": "error", "message": "disk full", "userId": "user_bob"}
    status, body = await post(http_request, server, "/api/notifications", note)
    assert (status, body["delivered"]) == (202, 1)
    assert (await bob.recv())["data"] == {"level": "error", "message": "disk full"}
    assert await alice.nothing_pending()


async def test_a_batch_is_published_in_order(start_server, clients, http_request):
    server = await start_server(Settings(api_key=KEY))
    peer = await listener(clients, server, "p")
    batch = [{"agentName": "a", "state": "working", "progress": p} for p in (10, 20, 30)]
    status, body = await post(http_request, server, "/api/agent-status", batch)
    assert status == 202
    assert body["delivered"] == 3
    got = await peer.recv_many(3)
    assert [m["id"] for m in got] == body["ids"]
    assert [m["data"]["progress"] for m in got] == [10, 20, 30]


async def test_bad_or_missing_key_is_401(start_server, clients, http_request):
    server = await start_server(Settings(api_key=KEY))
    peer = await listener(clients, server, "p")
    note = {"level": "info", "message": "x"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, body = await post(http_request, server, "/api/notifications", note, headers)
        assert status == 401
        assert "error" in body
    assert await peer.nothing_pending()


async def test_bad_body_is_400_and_publishes_nothing(start_server, clients, http_request):
    server = await start_server(Settings(api_key=KEY))
    peer = await listener(clients, server, "p")
    status, body = await post(http_request, server, "/api/notifications", b"{not json")
    assert (status, body) == (400, {"error": "body is not valid JSON"})
    good = {"level": "info", "message": "fine"}
    bad = {"level": "loud", "message": "nope"}
    status, body = await post(http_request, server, "/api/notifications", [good, bad])
    assert status == 400
    assert body["error"].startswith("item 1: level")
    assert await peer.nothing_pending()  # not even the valid first item


async def test_oversized_body_is_413(start_server, http_request):
    server = await start_server(Settings(api_key=KEY, max_body_size=16 * 1024))
    note = {"level": "info", "message": "x" * 64 * 1024}
    status, body = await post(http_request, server, "/api/notifications", note)
    assert status == 413
    assert body == {"error": "the body is larger than the limit of 16384 bytes"}  # JSON


async def test_without_a_key_loopback_may_publish(start_server, http_request):
    server = await start_server()
    status, body = await post(
        http_request, server, "/api/notifications", {"level": "info", "message": "local"}, {}
    )
    assert (status, body["delivered"]) == (202, 0)


async def test_healthz_counts_and_other_answers(start_server, clients, http_request):
    server = await start_server()
    await listener(clients, server, "a")
    await clients.connect(server.urls[0])  # unauthenticated
    status, headers, raw = await http_request(endpoint(server, "/healthz"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(raw) == {
        "status": "ok",
        "clients": 2,
        "authenticated": 1,
        "unauthenticated": 1,
    }
    assert (await http_request(endpoint(server, "/nowhere")))[0] == 404
    assert (await http_request(endpoint(server, "/ws")))[0] == 426
    assert (await http_request(endpoint(server, "/api/notifications")))[0] == 405
    assert (await http_request(endpoint(server, "/healthz"), "POST", b""))[0] == 405


# hypercorn (0.18) tells the application 1006 for every close the client starts, whatever
# its code, so the closes-by-code counter cannot be checked there.
@pytest.mark.servers("reference", "uvicorn")
async def test_metrics_in_prometheus_text(start_server, clients, http_request, wait_for):
    server = await start_server(Settings(api_key=KEY))
    peer = await listener(clients, server, "m")
    await peer.send({"type": "ping"})
    await peer.recv()
    await peer.send("garbage")
    await peer.recv()
    server.broadcast_agent_status("a", "idle")
    await post(http_request, server, "/api/notifications", {"level": "info", "message": "x"})
    await peer.close()
    await wait_for(lambda: server.clients_count() == 0)

    status, headers, raw = await http_request(endpoint(server, "/metrics"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    expected = {
        "agentcast_connections_open": 0,
        "agentcast_connections_authenticated": 0,
        "agentcast_connections_opened_total": 1,
        'agentcast_connections_closed_total{code="1000"}': 1,
        'agentcast_messages_received_total{type="ping"}': 1,
        'agentcast_messages_sent_total{type="agent_status"}': 1,
        'agentcast_messages_sent_total{type="notification"}': 1,
        'agentcast_errors_total{kind="invalid_format"}': 1,
        "agentcast_heartbeat_timeouts_total": 0,
        "agentcast_slow_client_drops_total": 0,
        "agentcast_rate_limit_closes_total": 0,
        "agentcast_broadcast_fanout_seconds_count": 2,
    }
    for name, value in expected.items():
        assert samples[name] == value, name
    assert samples["agentcast_tcp_connections"] == 1  # this scrape
