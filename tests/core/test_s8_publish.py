"""PROTOCOL.md section 8: the publish API (``protocol/http.py``'s ``answer()``) and
``GET /healthz``; the in-process API is covered in test_s3_s4_messages.py."""

from __future__ import annotations

import json

import pytest

from agentcast.protocol import HttpRequest, Hub, ServerConnection, Settings
from agentcast.protocol.history import parse_id
from agentcast.protocol.http import answer, is_loopback

KEY = "k-123"


def seq(message_id: str) -> int:
    """The sequence number of a broadcast id (the part after the epoch)."""
    parsed = parse_id(message_id)
    assert parsed is not None, message_id
    return parsed[1]


def request(
    path: str,
    body: object = None,
    *,
    method: str = "POST",
    key: str | None = None,
    client: str | None = "127.0.0.1",
    raw: bytes | None = None,
) -> HttpRequest:
    headers = [] if key is None else [("authorization", f"Bearer {key}")]
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return HttpRequest(
        method=method, path=path, query="", headers=tuple(headers), body=data, client=client
    )


def call(hub: Hub, req: HttpRequest, now: float = 0.0, wall: float = 0.0):
    result = answer(req, hub, now=now, wall=wall)
    assert result.content_type == "application/json"
    headers = {name: value for name, value in result.headers if name != "content-type"}
    return result.status, json.loads(result.body), headers


@pytest.fixture
def keyed(h):
    """A hub with an API key and one authenticated listener."""
    hub = Hub(Settings(api_key=KEY))
    listener, _ = h.connect(hub, "bob")
    listener.messages()
    return hub, listener


# -- healthz -------------------------------------------------------------------------------


def test_healthz_counts(h, hub):
    h.connect(hub, "a")
    h.connect(hub, None)
    result = answer(request("/healthz", method="GET"), hub, now=0.0, wall=0.0)
    assert (result.status, result.content_type) == (200, "application/json")
    assert result.body == b'{"status":"ok","clients":2,"authenticated":1,"unauthenticated":1}'


def test_healthz_end_to_end_through_the_connection(h, hub):
    conn = ServerConnection(hub, now=0.0, client="10.0.0.1")
    conn.receive_data(h.http_request("/healthz"), 0.0, 0.0)
    [event] = conn.events_received()
    result = answer(event, hub, now=0.0, wall=0.0)
    conn.respond(result)
    status, headers, body = h.parse_response(conn.data_to_send())
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == {
        "status": "ok",
        "clients": 0,
        "authenticated": 0,
        "unauthenticated": 0,
    }


# -- each endpoint -------------------------------------------------------------------------


def test_agent_status_endpoint(h, keyed):
    hub, listener = keyed
    data = {"agentName": "planner", "state": "working", "currentTask": "t", "progress": 10}
    status, body, _ = call(hub, request("/api/agent-status", data, key=KEY), wall=h.WALL0)
    assert status == 202
    assert body == {"id": body["id"], "delivered": 1}
    assert listener.messages() == [
        {"type": "agent_status", "data": data, "timestamp": h.TS0, "id": body["id"]}
    ]


def test_chat_messages_endpoint(h, keyed):
    hub, listener = keyed
    data = {"conversationId": "c", "messageId": "m", "content": "hi", "sender": "s"}
    status, body, _ = call(hub, request("/api/chat-messages", data, key=KEY), wall=h.WALL0)
    assert status == 202
    [msg] = listener.messages()
    assert msg == {
        "type": "chat_message",
        "data": {**data, "timestamp": h.TS0},
        "timestamp": h.TS0,
        "id": body["id"],
    }


def test_notifications_endpoint_to_everyone_and_to_one_user(h, keyed):
    hub, listener = keyed
    other, _ = h.connect(hub, "carol")
    other.messages()
    listener.messages()
    status, body, _ = call(
        hub, request("/api/notifications", {"level": "info", "message": "all"}, key=KEY)
    )
    assert (status, body["delivered"]) == (202, 2)
    status, body, _ = call(
        hub,
        request(
            "/api/notifications",
            {"level": "error", "message": "you", "userId": "user_carol"},
            key=KEY,
        ),
    )
    assert (status, body["delivered"]) == (202, 1)
    assert [m["data"]["message"] for m in listener.messages()] == ["all"]
    assert [m["data"] for m in other.messages()] == [
        {"level": "info", "message": "all"},
        {"level": "error", "message": "you"},
    ]


# -- batches -------------------------------------------------------------------------------


def test_batch_publishes_in_array_order(h, keyed):
    hub, listener = keyed
    items = [{"agentName": "a", "state": "working", "progress": p} for p in (10, 50, 90)]
    status, body, _ = call(hub, request("/api/agent-status", items, key=KEY))
    assert status == 202
    assert set(body) == {"ids", "delivered"}
    assert body["delivered"] == 3
    msgs = listener.messages()
    assert [m["data"]["progress"] for m in msgs] == [10, 50, 90]
    assert [m["id"] for m in msgs] == body["ids"]
    assert body["ids"] == sorted(body["ids"])


def test_batch_delivered_is_the_total(h, keyed):
    hub, _ = keyed
    h.connect(hub, "carol")
    items = [{"level": "info", "message": str(i)} for i in range(4)]
    status, body, _ = call(hub, request("/api/notifications", items, key=KEY))
    assert (status, body["delivered"], len(body["ids"])) == (202, 8, 4)


def test_invalid_batch_publishes_nothing_and_names_the_first_bad_item(h, keyed):
    hub, listener = keyed
    before = call(hub, request("/api/notifications", {"level": "info", "message": "0"}, key=KEY))
    listener.messages()
    items = [
        {"level": "info", "message": "ok"},
        {"level": "loud", "message": "bad"},
        {"level": "info"},
    ]
    status, body, _ = call(hub, request("/api/notifications", items, key=KEY))
    assert status == 400
    assert body == {"error": "item 1: level must be one of info, success, warning, error"}
    assert listener.messages() == []
    # No id was used up either: the next publish gets the next id.
    after = call(hub, request("/api/notifications", items[0], key=KEY))[1]
    assert seq(after["id"]) == seq(before[1]["id"]) + 1
    assert [m["id"] for m in listener.messages()] == [after["id"]]


def test_batch_limit(h, keyed):
    hub, listener = keyed
    items = [{"level": "info", "message": "m"}] * 1001
    status, body, _ = call(hub, request("/api/notifications", items, key=KEY))
    assert (status, body) == (400, {"error": "a batch holds at most 1000 items"})
    assert listener.messages() == []
    status, body, _ = call(hub, request("/api/notifications", items[:1000], key=KEY))
    assert (status, len(body["ids"])) == (202, 1000)


def test_empty_batch_is_400(keyed):
    hub, _ = keyed
    assert call(hub, request("/api/notifications", [], key=KEY))[:2] == (
        400,
        {"error": "empty batch"},
    )


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/api/agent-status", {"agentName": "a"}, "state must be one of idle, working, stopped"),
        ("/api/agent-status", {"agentName": "a", "state": ["idle"]}, "state must be one of"),
        ("/api/agent-status", {"agentName": "a", "state": "idle", "x": 1}, "unknown field 'x'"),
        ("/api/agent-status", "status", "agent status must be an object"),
        ("/api/agent-status", None, "agent status must be an object"),
        ("/api/chat-messages", {"conversationId": "c"}, "messageId must be a string"),
        ("/api/notifications", {"level": "info", "message": 5}, "message must be a string"),
        ("/api/notifications", {"level": {}, "message": "m"}, "level must be one of"),
    ],
)
def test_invalid_single_body_is_400(keyed, path, body, error):
    hub, listener = keyed
    raw = b"null" if body is None else None
    status, answer_body, _ = call(hub, request(path, body, key=KEY, raw=raw))
    assert status == 400
    assert answer_body["error"].startswith(error)
    assert listener.messages() == []


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[" * 100000])
def test_body_not_json_is_400(keyed, raw):
    hub, _ = keyed
    status, body, _ = call(hub, request("/api/notifications", raw=raw, key=KEY))
    assert (status, body) == (400, {"error": "body is not valid JSON"})


# -- routing and access --------------------------------------------------------------------


def test_unknown_api_path_is_404(keyed):
    hub, _ = keyed
    assert call(hub, request("/api/nope", {}, key=KEY))[:2] == (404, {"error": "not found"})


def test_wrong_method_is_405(keyed):
    hub, _ = keyed
    status, body, headers = call(hub, request("/api/notifications", method="GET", key=KEY))
    assert (status, body, headers) == (405, {"error": "method not allowed"}, {"allow": "POST"})


@pytest.mark.parametrize("key", [None, "wrong", "k-12", "k-1234", ""])
def test_bad_or_missing_key_is_401(keyed, key):
    hub, listener = keyed
    req = request("/api/notifications", {"level": "info", "message": "m"}, key=key)
    status, body, headers = call(hub, req)
    assert (status, body) == (401, {"error": "missing or invalid API key"})
    assert headers == {"www-authenticate": "Bearer"}
    assert listener.messages() == []


def test_key_needs_the_bearer_scheme(keyed):
    hub, _ = keyed
    req = HttpRequest(
        method="POST",
        path="/api/notifications",
        query="",
        headers=(("authorization", f"Basic {KEY}"),),
        body=b'{"level":"info","message":"m"}',
        client="127.0.0.1",
    )
    assert call(hub, req)[0] == 401


def test_api_key_applies_to_loopback_too(keyed):
    hub, _ = keyed
    req = request("/api/notifications", {"level": "info", "message": "m"}, client="127.0.0.1")
    assert call(hub, req)[0] == 401


def test_valid_key_from_anywhere(keyed):
    hub, _ = keyed
    req = request(
        "/api/notifications", {"level": "info", "message": "m"}, key=KEY, client="8.8.8.8"
    )
    assert call(hub, req)[0] == 202


@pytest.mark.parametrize("client", ["10.0.0.5", "8.8.8.8", "2001:db8::1", None, "localhost", ""])
def test_without_a_key_non_loopback_is_403(hub, client):
    req = request("/api/notifications", {"level": "info", "message": "m"}, client=client)
    status, body, _ = call(hub, req)
    assert (status, body) == (
        403,
        {"error": "without an API key the publish API accepts loopback only"},
    )


@pytest.mark.parametrize("client", ["127.0.0.1", "127.8.9.10", "::1", "::1%lo"])
def test_without_a_key_loopback_is_accepted(hub, client):
    req = request("/api/notifications", {"level": "info", "message": "m"}, client=client)
    assert call(hub, req)[:2] == (202, {"id": "0000000000000-000000000001", "delivered": 0})


def test_is_loopback():
    assert is_loopback("127.0.0.1")
    assert not is_loopback("192.168.0.1")
    assert not is_loopback(None)
    assert not is_loopback("not an address")


def test_body_over_the_size_limit_is_413_by_the_transport(h):
    hub = Hub(Settings(max_body_size=1024 * 1024))
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
    body = json.dumps({"level": "info", "message": "x" * (1024 * 1024)}).encode()
    conn.receive_data(
        h.http_request(
            "/api/notifications",
            method="POST",
            headers=[("Content-Length", str(len(body)))],
            body=body,
        ),
        0.0,
        0.0,
    )
    status, headers, text = h.parse_response(conn.data_to_send())
    assert headers["content-type"] == "application/json"
    # JSON like every other answer of the publish API.
    assert (status, json.loads(text)) == (
        413,
        {"error": "the body is larger than the limit of 1048576 bytes"},
    )
    assert conn.events_received() == []
