"""PROTOCOL.md section 1: the endpoint and the HTTP surface on the same port."""

from __future__ import annotations

import json

import pytest
from wsproto.events import AcceptConnection, Request, TextMessage

from agentcast.protocol import (
    HttpAnswer,
    HttpRequest,
    Hub,
    Identity,
    LocalProtocolError,
    ServerConnection,
    Settings,
    TransportState,
    WebSocketTransport,
)


def raw(hub: Hub, data: bytes, now: float = 0.0) -> ServerConnection:
    conn = ServerConnection(hub, now=now, client="127.0.0.1")
    conn.receive_data(data, now, now)
    return conn


def test_valid_upgrade_gets_101_and_a_websocket(h, hub):
    p = h.Pair(hub)
    p.handshake("/ws?token=abc123")
    assert isinstance(p.accept, AcceptConnection)
    assert p.server.transport.state is TransportState.OPEN
    assert p.server.session is not None


def test_101_response_bytes(h, hub):
    conn = raw(hub, h.http_request("/ws", headers=h.UPGRADE_HEADERS))
    assert conn.events_received() == []  # no token: no AuthRequested, accepted at once
    status, headers, _ = h.parse_response(conn.data_to_send())
    assert status == 101
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"
    # RFC 6455 1.3's worked example.
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert "sec-websocket-protocol" not in headers


def test_get_ws_without_upgrade_is_426(h, hub):
    conn = raw(hub, h.http_request("/ws?token=abc"))
    status, headers, body = h.parse_response(conn.data_to_send())
    assert status == 426
    assert headers["upgrade"] == "websocket"
    assert body == b"Upgrade Required: this endpoint speaks WebSocket\n"
    assert conn.closed
    assert conn.events_received() == []


UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


def _without(name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in UPGRADE if k != name]


@pytest.mark.parametrize(
    ("method", "headers", "reason"),
    [
        (
            "GET",
            [*_without("Sec-WebSocket-Version"), ("Sec-WebSocket-Version", "8")],
            "Bad Request: unsupported Sec-WebSocket-Version (13 expected)",
        ),
        (
            "GET",
            _without("Sec-WebSocket-Version"),
            "Bad Request: unsupported Sec-WebSocket-Version (13 expected)",
        ),
        ("GET", _without("Sec-WebSocket-Key"), "Bad Request: missing or invalid Sec-WebSocket-Key"),
        (
            "GET",
            [*_without("Sec-WebSocket-Key"), ("Sec-WebSocket-Key", "short")],
            "Bad Request: missing or invalid Sec-WebSocket-Key",
        ),
        (
            "GET",
            [*_without("Sec-WebSocket-Key"), ("Sec-WebSocket-Key", "ééééééééééééééééééééééé=")],
            "Bad Request: missing or invalid Sec-WebSocket-Key",
        ),
        (
            "GET",
            [*_without("Connection"), ("Connection", "keep-alive")],
            "Bad Request: missing Connection: Upgrade",
        ),
        ("POST", UPGRADE, "Bad Request: WebSocket upgrade must use GET"),
        ("POST", [], "Bad Request: WebSocket upgrade must use GET"),
    ],
)
def test_bad_upgrade_is_400_with_one_line_reason(h, hub, method, headers, reason):
    conn = raw(hub, h.http_request("/ws", method=method, headers=headers))
    status, resp_headers, body = h.parse_response(conn.data_to_send())
    assert status == 400
    assert resp_headers["content-type"] == "text/plain; charset=utf-8"
    assert body == reason.encode() + b"\n"
    assert body.count(b"\n") == 1
    assert conn.closed
    assert conn.events_received() == []


def test_wrong_version_answer_names_the_supported_version(h, hub):
    headers = [*_without("Sec-WebSocket-Version"), ("Sec-WebSocket-Version", "8")]
    conn = raw(hub, h.http_request("/ws", headers=headers))
    _, resp_headers, _ = h.parse_response(conn.data_to_send())
    assert resp_headers["sec-websocket-version"] == "13"


def test_upgrade_on_another_path_is_404(h, hub):
    conn = raw(hub, h.http_request("/other?token=abc", headers=h.UPGRADE_HEADERS))
    status, _, body = h.parse_response(conn.data_to_send())
    assert status == 404
    assert body == b"Not Found: the WebSocket endpoint is /ws\n"
    assert conn.closed


def test_configured_path_is_the_endpoint(h):
    hub = Hub(Settings(path="/live"))
    conn = raw(hub, h.http_request("/ws", headers=h.UPGRADE_HEADERS))
    assert h.parse_response(conn.data_to_send())[0] == 404
    conn = raw(hub, h.http_request("/live", headers=h.UPGRADE_HEADERS))
    assert h.parse_response(conn.data_to_send())[0] == 101


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/index.html"), ("GET", "/nope"), ("POST", "/x")]
)
def test_unknown_http_path_is_404(h, hub, method, path):
    conn = raw(hub, h.http_request(path, method=method))
    status, headers, body = h.parse_response(conn.data_to_send())
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "not found"}
    assert conn.events_received() == []
    assert conn.closed


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_wrong_method_on_a_get_route_is_405(h, hub, path):
    conn = raw(hub, h.http_request(path, method="POST", headers=[("Content-Length", "0")]))
    status, headers, body = h.parse_response(conn.data_to_send())
    assert status == 405
    assert headers["allow"] == "GET"
    assert json.loads(body) == {"error": "method not allowed"}
    assert conn.events_received() == []


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_get_routes_become_http_request_events(h, hub, path):
    conn = raw(hub, h.http_request(f"{path}?x=1", headers=[("X-Thing", "yes")]))
    assert conn.data_to_send() == b""  # the adapter answers
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert (event.method, event.path, event.query, event.body) == ("GET", path, "x=1", b"")
    assert event.client == "127.0.0.1"
    assert event.header("X-THING") == "yes"
    assert event.header("absent") is None
    conn.respond(
        HttpAnswer(200, (("content-type", "application/json"), ("x-a", "b")), b'{"status":"ok"}')
    )
    status, headers, body = h.parse_response(conn.data_to_send())
    assert (status, body, headers["x-a"]) == (200, b'{"status":"ok"}', "b")
    assert headers["connection"] == "close"
    assert headers["content-length"] == "15"
    assert conn.closed


def test_post_api_carries_its_body(h, hub):
    body = b'{"level":"info","message":"hi"}'
    conn = raw(
        hub,
        h.http_request(
            "/api/notifications",
            method="POST",
            headers=[("Content-Length", str(len(body))), ("Authorization", "Bearer k")],
            body=body,
        ),
    )
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert (event.method, event.path, event.body) == ("POST", "/api/notifications", body)
    assert event.header("authorization") == "Bearer k"


def test_body_split_over_many_reads(h, hub):
    body = b'{"level":"info","message":"hi"}'
    data = h.http_request(
        "/api/notifications",
        method="POST",
        headers=[("Content-Length", str(len(body)))],
        body=body,
    )
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")  # loopback: may publish
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1], 0.0, 0.0)
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert event.body == body


def test_body_past_the_header_limit_in_the_same_read_as_the_head(h):
    # The head is cut off at the header limit first; the body after the cut still
    # belongs to the request.
    hub = Hub(Settings(max_header_size=1024, api_key="k"))
    body = b'{"level":"info","message":"' + b"x" * 3000 + b'"}'
    conn = raw(
        hub,
        h.http_request(
            "/api/notifications",
            method="POST",
            headers=[("Content-Length", str(len(body))), ("Authorization", "Bearer k")],
            body=body,
        ),
    )
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert event.body == body


def test_expect_100_continue_is_answered(h, hub):
    head = h.http_request(
        "/api/notifications",
        method="POST",
        headers=[("Content-Length", "2"), ("Expect", "100-continue")],
    )
    conn = raw(hub, head)
    assert conn.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.receive_data(b"{}", 0.0, 0.0)
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert event.body == b"{}"


def test_headers_over_the_limit_are_431_when_fed_slowly(h):
    hub = Hub(Settings(max_header_size=1024))
    data = h.http_request("/ws", headers=[("X-Big", "a" * 2000)])
    conn = ServerConnection(hub, now=0.0)
    for i in range(0, len(data), 100):
        conn.receive_data(data[i : i + 100], 0.0, 0.0)
    status, _, body = h.parse_response(conn.data_to_send())
    assert (status, body) == (431, b"Request Header Fields Too Large\n")
    assert conn.closed


def test_headers_over_the_limit_are_431_when_fed_at_once(h):
    # The limit must not depend on how the request is split (h11 only checks an
    # incomplete head; a complete oversized head in one read must be refused too).
    hub = Hub(Settings(max_header_size=1024))
    conn = raw(hub, h.http_request("/ws", headers=[*h.UPGRADE_HEADERS, ("X-Big", "a" * 2000)]))
    status, _, _ = h.parse_response(conn.data_to_send())
    assert status == 431
    assert conn.events_received() == []


def test_header_limit_boundary_is_exact_and_split_independent(h):
    # A head of exactly max_header_size bytes passes; one byte more is refused, whole
    # or byte by byte.
    base = h.http_request("/healthz", headers=[("X-Pad", "")])
    for extra, expected in ((0, None), (1, 431)):
        pad = "p" * (1024 - len(base) + extra)
        data = h.http_request("/healthz", headers=[("X-Pad", pad)])
        assert len(data) == 1024 + extra
        for step in (len(data), 1):
            conn = ServerConnection(Hub(Settings(max_header_size=1024)), now=0.0)
            for i in range(0, len(data), step):
                conn.receive_data(data[i : i + step], 0.0, 0.0)
            out = conn.data_to_send()
            if expected is None:
                assert out == b""
                assert [type(e) for e in conn.events_received()] == [HttpRequest]
            else:
                assert h.parse_response(out)[0] == expected


@pytest.mark.parametrize(
    "garbage",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, b"HELLO\r\n\r\n"],
)
def test_non_http_is_400(h, hub, garbage):
    conn = raw(hub, garbage)
    status, _, body = h.parse_response(conn.data_to_send())
    assert (status, body) == (400, b"Bad Request: malformed HTTP request\n")
    assert conn.closed


def test_body_over_the_limit_by_content_length_is_413_before_the_body(h):
    hub = Hub(Settings(max_body_size=100))
    conn = raw(
        hub,
        h.http_request("/api/notifications", method="POST", headers=[("Content-Length", "101")]),
    )
    status, _, body = h.parse_response(conn.data_to_send())
    assert (status, json.loads(body)) == (
        413,
        {"error": "the body is larger than the limit of 100 bytes"},
    )
    assert conn.events_received() == []
    assert conn.closed


def test_body_at_the_limit_is_accepted(h):
    hub = Hub(Settings(max_body_size=100))
    conn = raw(
        hub,
        h.http_request(
            "/api/notifications",
            method="POST",
            headers=[("Content-Length", "100")],
            body=b"x" * 100,
        ),
    )
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert len(event.body) == 100


def test_chunked_body_over_the_limit_is_413(h):
    hub = Hub(Settings(max_body_size=100))
    conn = raw(
        hub,
        h.http_request(
            "/api/notifications", method="POST", headers=[("Transfer-Encoding", "chunked")]
        ),
    )
    assert conn.data_to_send() == b""
    conn.receive_data(b"40\r\n" + b"x" * 64 + b"\r\n", 0.0, 0.0)
    assert conn.data_to_send() == b""
    conn.receive_data(b"40\r\n" + b"x" * 64 + b"\r\n", 0.0, 0.0)
    status, _, _ = h.parse_response(conn.data_to_send())
    assert status == 413
    conn.receive_data(b"0\r\n\r\n", 0.0, 0.0)
    assert conn.events_received() == []
    assert conn.data_to_send() == b""


def test_handshake_timeout_is_408_exactly_at_the_deadline(h):
    hub = Hub(Settings(handshake_timeout=10.0))
    conn = ServerConnection(hub, now=100.0)
    # Armed at creation: a client that sends nothing at all is cut off too.
    assert conn.next_deadline() == 110.0
    conn.handle_timer(109.999, 0.0)
    assert conn.data_to_send() == b""
    assert not conn.closed
    conn.handle_timer(110.0, 0.0)
    status, _, body = h.parse_response(conn.data_to_send())
    assert (status, body) == (408, b"Request Timeout: the request took too long\n")
    assert conn.closed
    assert conn.next_deadline() is None


def test_slowloris_does_not_move_the_deadline(h):
    hub = Hub(Settings(handshake_timeout=10.0))
    conn = ServerConnection(hub, now=0.0)
    data = h.http_request("/ws", headers=h.UPGRADE_HEADERS)
    for i in range(9):
        conn.receive_data(data[i : i + 1], float(i), 0.0)
        conn.handle_timer(float(i), 0.0)
    assert conn.next_deadline() == 10.0
    conn.handle_timer(10.0, 0.0)
    assert h.parse_response(conn.data_to_send())[0] == 408


def test_upgrade_waiting_for_auth_times_out_with_408(h, hub):
    conn = raw(hub, h.http_request("/ws?token=abc", headers=h.UPGRADE_HEADERS))
    assert conn.data_to_send() == b""  # waiting for the adapter's verdict
    conn.handle_timer(10.0, 0.0)
    status, _, body = h.parse_response(conn.data_to_send())
    assert (status, body) == (408, b"Request Timeout: the upgrade was not completed\n")
    # A late verdict is ignored: the connection is gone.
    conn.complete_auth(Identity(user_id="u"), 11.0, 0.0)
    assert conn.data_to_send() == b""
    assert hub.clients_count() == 0


def test_frames_pipelined_with_the_upgrade_request_are_processed(h, hub):
    p = h.Pair(hub)
    request = p.client.send(Request(host="localhost", target="/ws"))
    ping = h.masked_frame(0x1, b'{"type":"ping"}')
    p.feed(request + ping)
    assert [m["type"] for m in p.messages()] == ["auth", "pong"]


def test_frames_pipelined_past_the_header_limit_in_one_read_are_kept(h, hub):
    # One read holds the upgrade request and more than max_header_size bytes of frames:
    # the request head is measured on its own, and the frames after it are not lost.
    p = h.Pair(hub)
    request = p.client.send(Request(host="localhost", target="/ws"))
    pings = h.masked_frame(0x1, b'{"type":"ping"}') * 2
    pad = b"p" * hub.settings.max_header_size
    padding = h.masked_frame(0x1, b'{"type":"ping","pad":"' + pad + b'"}')
    p.feed(request + padding + pings)
    assert [m["type"] for m in p.messages()] == ["auth", "pong", "pong", "pong"]


def test_frames_arriving_while_auth_is_pending_are_processed_after_it(h, hub):
    p = h.Pair(hub)
    p.feed(p.client.send(Request(host="localhost", target="/ws?token=abc123")))
    p.feed(h.masked_frame(0x1, b'{"type":"ping"}'))
    assert p.server.data_to_send() == b""
    p.answer_auth()
    msgs = p.messages()
    assert [m["type"] for m in msgs] == [
        "auth",
        "presence_state",
        "agent_state",
        "user_presence",
        "pong",
    ]
    assert msgs[0]["data"] == {"success": True, "userId": "user_abc123"}


def test_eof_before_a_request_closes_quietly(hub):
    conn = ServerConnection(hub, now=0.0)
    conn.receive_eof(0.0, 0.0)
    assert conn.closed
    assert conn.data_to_send() == b""
    assert conn.events_received() == []
    assert conn.next_deadline() is None


def test_input_after_an_http_answer_is_ignored(h, hub):
    conn = raw(hub, h.http_request("/nope"))
    assert h.parse_response(conn.data_to_send())[0] == 404
    conn.receive_data(b"GET / HTTP/1.1\r\n\r\n", 0.0, 0.0)  # closed: ignored
    assert conn.data_to_send() == b""


def test_empty_read_is_not_eof(h, hub):
    # b"" at our API is "nothing arrived"; EOF is receive_eof (one convention).
    conn = ServerConnection(hub, now=0.0)
    data = h.http_request("/healthz")
    conn.receive_data(data[:10], 0.0, 0.0)
    conn.receive_data(b"", 0.0, 0.0)
    conn.receive_data(data[10:], 0.0, 0.0)
    assert [type(e) for e in conn.events_received()] == [HttpRequest]


def test_close_before_upgrade_just_closes(h, hub):
    conn = raw(hub, h.http_request("/ws", headers=h.UPGRADE_HEADERS)[:20])
    conn.close(1001, "going away", 0.0, 0.0)
    assert conn.closed
    assert conn.data_to_send() == b""
    assert conn.next_deadline() is None


def test_api_misuse_raises_local_protocol_error(h, hub):
    conn = ServerConnection(hub, now=0.0)
    with pytest.raises(LocalProtocolError, match="without a pending request"):
        conn.respond(HttpAnswer.json(200, {}))
    with pytest.raises(LocalProtocolError, match="complete_auth"):
        conn.complete_auth(None, 0.0, 0.0)
    ws = WebSocketTransport(now=0.0)
    with pytest.raises(LocalProtocolError, match=r"accept\(\) in state HTTP"):
        ws.accept(0.0)
    with pytest.raises(LocalProtocolError, match=r"respond\(\) without a pending request \(HTTP\)"):
        ws.respond(HttpAnswer.plain(400, "no"))


def test_response_headers_must_not_inject_lines(h, hub):
    conn = raw(hub, h.http_request("/healthz"))
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        conn.respond(HttpAnswer.plain(200, "", [("x", "a\r\nset-cookie: y")]))


def test_subprotocol_echoed_in_101(h, hub):
    p = h.Pair(hub)
    p.handshake("/ws?token=abc123", subprotocols=["agentcast.v1"])
    assert p.accept is not None
    assert p.accept.subprotocol == "agentcast.v1"
    assert isinstance(p.received[1], TextMessage)


def test_bytes_after_a_complete_request_are_not_parsed(h, hub):
    """One request per connection: a second one sent before the first is answered is
    never read (the answer closes the connection)."""
    conn = raw(hub, h.http_request("/healthz"))
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    conn.receive_data(h.http_request("/metrics"), 0.0, 0.0)
    assert conn.events_received() == []
    assert conn.data_to_send() == b""
