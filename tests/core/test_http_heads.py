"""A request is answered from its head whenever its head decides (PROTOCOL.md 1 and 8):
a client cannot make the server hold a body it would refuse anyway, and request bodies
being received share one budget per process (``max_pending_body_bytes``)."""

from __future__ import annotations

import pytest

from agentcast.protocol import HttpRequest, Hub, ServerConnection, Settings, WebSocketTransport

LOOPBACK = "127.0.0.1"
ELSEWHERE = "203.0.113.9"


def head(h, target: str, method: str = "POST", length: int | None = 1 << 20, extra=()):
    headers = [("Content-Type", "application/json"), *extra]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    return h.http_request(target, method=method, headers=headers)


def status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:60]
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "case",
    [
        ({}, LOOPBACK, "POST", "/nowhere", (), 404),
        ({}, LOOPBACK, "POST", "/healthz", (), 405),
        ({}, LOOPBACK, "PUT", "/api/notifications", (), 405),
        ({"api_key": "k" * 32}, LOOPBACK, "POST", "/api/notifications", (), 401),
        (
            {"api_key": "k" * 32},
            LOOPBACK,
            "POST",
            "/api/notifications",
            (("Authorization", "Bearer wrong"),),
            401,
        ),
        ({}, ELSEWHERE, "POST", "/api/notifications", (), 403),
        ({}, LOOPBACK, "GET", "/ws", (), 426),
        ({}, LOOPBACK, "POST", "/ws", (), 400),
        ({}, LOOPBACK, "GET", "/other", (("Upgrade", "websocket"),), 404),
    ],
)
def test_a_refused_request_is_answered_from_its_head(h, case):
    settings, client, method, target, extra, expected = case
    hub = Hub(Settings(**settings))
    conn = ServerConnection(hub, now=0.0, client=client)
    conn.receive_data(head(h, target, method, extra=extra) + b" " * 1000, 0.0, 0.0)
    assert conn.closed  # answered without waiting for the other 1,047,576 bytes
    assert status(conn.data_to_send()) == expected
    assert conn.events_received() == []
    assert hub.admission.pending_bodies == 0


def test_an_authorized_publish_reads_its_body_then_is_handed_out(h):
    hub = Hub(Settings(api_key="k" * 32))
    conn = ServerConnection(hub, now=0.0, client=ELSEWHERE)
    body = b'{"level":"info","message":"hi"}'
    key = (("Authorization", "Bearer " + "k" * 32),)
    conn.receive_data(head(h, "/api/notifications", length=len(body), extra=key), 0.0, 0.0)
    assert not conn.closed
    assert hub.admission.pending_bodies == len(body)
    conn.receive_data(body, 0.0, 0.0)
    [request] = conn.events_received()
    assert isinstance(request, HttpRequest)
    assert request.body == body
    assert hub.admission.pending_bodies == 0


def test_request_bodies_share_a_budget_per_process(h):
    hub = Hub(Settings(max_pending_body_bytes=1000, max_body_size=800))
    first = ServerConnection(hub, now=0.0, client=LOOPBACK)
    first.receive_data(head(h, "/api/notifications", length=600) + b" " * 100, 0.0, 0.0)
    assert hub.admission.pending_bodies == 600
    second = ServerConnection(hub, now=0.0, client=LOOPBACK)
    second.receive_data(head(h, "/api/notifications", length=600), 0.0, 0.0)
    answer = second.data_to_send()
    assert status(answer) == 503
    assert b"retry-after: 1" in answer
    assert b"too many request bodies in progress" in answer
    assert hub.admission.refused["max_pending_body_bytes"] == 1
    # A request without a body needs no share of it.
    health = ServerConnection(hub, now=0.0, client=LOOPBACK)
    health.receive_data(h.http_request("/healthz"), 0.0, 0.0)
    assert [type(e).__name__ for e in health.events_received()] == ["HttpRequest"]
    # A chunked body may be as long as max_body_size: that is what it reserves.
    third = ServerConnection(hub, now=0.0, client=LOOPBACK)
    chunked = (("Transfer-Encoding", "chunked"),)
    third.receive_data(head(h, "/api/notifications", length=None, extra=chunked), 0.0, 0.0)
    assert status(third.data_to_send()) == 503  # 600 + 800 > 1000
    # The first one's client goes away mid-body: its share is free again.
    first.receive_eof(1.0, 1.0)
    assert hub.admission.pending_bodies == 0
    third = ServerConnection(hub, now=1.0, client=LOOPBACK)
    third.receive_data(head(h, "/api/notifications", length=None, extra=chunked), 1.0, 1.0)
    assert hub.admission.pending_bodies == 800
    # A declared length over max_body_size is 413, and reserves nothing for long.
    big = ServerConnection(hub, now=1.0, client=LOOPBACK)
    big.receive_data(head(h, "/api/notifications", length=10_000), 1.0, 1.0)
    assert status(big.data_to_send()) == 503  # the budget is spent first
    third.receive_eof(2.0, 2.0)
    big = ServerConnection(hub, now=2.0, client=LOOPBACK)
    big.receive_data(head(h, "/api/notifications", length=10_000), 2.0, 2.0)
    assert status(big.data_to_send()) == 413
    assert hub.admission.pending_bodies == 0


def test_a_request_that_times_out_mid_body_gives_its_share_back(h):
    hub = Hub(Settings(handshake_timeout=1.0))
    conn = ServerConnection(hub, now=0.0, client=LOOPBACK)
    conn.receive_data(head(h, "/api/notifications", length=100), 0.0, 0.0)
    assert hub.admission.pending_bodies == 100
    conn.handle_timer(1.0, 1.0)
    assert status(conn.data_to_send()) == 408
    assert hub.admission.pending_bodies == 0


def test_a_transport_alone_reads_the_whole_request():
    # Without an owner deciding from the head (the RFC 6455 echo), the body is read.
    transport = WebSocketTransport(now=0.0)
    transport.receive_data(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n", 0.0)
    assert transport.events_received() == []
    transport.receive_data(b"{}", 0.0)
    [request] = transport.events_received()
    assert isinstance(request, HttpRequest)
    assert request.body == b"{}"


def test_what_follows_a_complete_request_is_not_parsed(h):
    hub = Hub()
    conn = ServerConnection(hub, now=0.0, client=LOOPBACK)
    body = b'{"level":"info","message":"hi"}'
    conn.receive_data(head(h, "/api/notifications", length=len(body)) + body, 0.0, 0.0)
    [request] = conn.events_received()
    assert isinstance(request, HttpRequest)
    conn.receive_data(b"GET /healthz HTTP/1.1\r\n\r\n", 0.0, 0.0)  # a second request
    assert conn.events_received() == []
    assert not conn.closed  # the first one still awaits its answer
