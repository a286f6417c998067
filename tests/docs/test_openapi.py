"""The OpenAPI document (``agentcast.protocol.openapi``) against a running server.

Real requests go to ``agentcast serve`` over TCP; every answer's status must be one the
document lists for that path and method, with the documented content type, and a JSON
body must match the documented schema. Request bodies are checked the other way round:
what the schema accepts the server publishes (``202``), what it refuses the server
answers ``400``.

The schema check is a small validator of the JSON Schema keywords the document uses
(:func:`errors`); a keyword it does not know fails the test, so the document cannot use
one that goes unchecked.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest

from agentcast.protocol import HttpRequest, Hub, Settings
from agentcast.protocol.http import PUBLISH_PATHS, answer
from agentcast.protocol.openapi import openapi_document, openapi_json

DOCUMENT = openapi_document()
API_KEY = "k" * 32

_KNOWN = {
    "type", "properties", "required", "additionalProperties", "enum", "const", "minimum",
    "maximum", "minLength", "maxLength", "items", "minItems", "maxItems", "oneOf", "$ref",
    "pattern", "format", "description", "examples",
}  # fmt: skip
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _is(value: object, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def errors(value: object, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Where *value* breaks *schema* (an empty list: it matches)."""
    unknown = set(schema) - _KNOWN
    assert not unknown, f"the validator does not know {unknown}"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return errors(value, DOCUMENT["components"]["schemas"][name], where)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not errors(value, s, where)]
        return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
    found = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, k) for k in kinds):
            return [f"{where}: {value!r} is not {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: {value!r} != {schema['const']!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            found.append(f"{where}: shorter than {schema['minLength']}")
        if len(value) > schema.get("maxLength", len(value)):
            found.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            found.append(f"{where}: fewer than {schema['minItems']} items")
        if len(value) > schema.get("maxItems", len(value)):
            found.append(f"{where}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            found += errors(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{where}: {key} is missing")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                found += errors(item, properties[key], f"{where}.{key}")
            elif schema.get("additionalProperties", True) is False:
                found.append(f"{where}: unknown field {key}")
    return found


# -- HTTP over a real socket ---------------------------------------------------------------


def http(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """One request; ``(status, content type, body)``. The server closes after answering."""
    head = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, content = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    fields = {k.lower(): v for k, v in fields.items()}
    return int(lines[0].split()[1]), fields.get("content-type", ""), content


def check(path: str, method: str, status: int, content_type: str, body: bytes) -> None:
    """The answer is one the document lists, with its content type and body schema."""
    operation = DOCUMENT["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path}: {status} is not documented"
    content = responses[str(status)]["content"]
    [(media, spec)] = [(m, s) for m, s in content.items() if content_type.startswith(m)]
    if media == "application/json":
        problems = errors(json.loads(body), spec["schema"])
        assert not problems, (method, path, status, body, problems)
    else:
        assert errors(body.decode(), spec["schema"]) == []


@pytest.fixture
def server(serve):
    _, port = serve(env={"AGENTCAST_API_KEY": API_KEY})
    return port


AUTH = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

VALID = {
    "/api/agent-status": [
        {"agentName": "planner", "state": "working", "currentTask": "indexing", "progress": 40},
        {"agentName": "planner", "state": "idle"},
        {"agentName": "planner", "state": "stopped", "currentTask": None, "progress": 100},
        {"agentName": "planner", "state": "idle", "userIds": ["user_a"], "channel": "agent:p"},
    ],
    "/api/chat-messages": [
        {"conversationId": "c", "messageId": "m", "content": "", "sender": "bot"},
        {
            "conversationId": "c",
            "messageId": "m2",
            "content": "done",
            "sender": "bot",
            "timestamp": "2025-12-26T13:00:00.000Z",
        },
    ],
    "/api/notifications": [
        {"level": "info", "message": "hello"},
        {"level": "error", "message": "failed", "userId": "user_abc123"},
        {"level": "info", "message": "team", "channel": "conversation:team-1"},
        {"level": "info", "message": "two", "userIds": ["user_a", "user_b"]},
    ],
}
INVALID = {
    "/api/agent-status": [
        {"agentName": "planner", "state": "sleeping"},
        {"agentName": "", "state": "idle"},
        {"agentName": "planner", "state": "idle", "progress": 101},
        {"agentName": "planner", "state": "idle", "progress": True},
        {"agentName": "planner", "state": "idle", "progres": 5},
        {"state": "idle"},
        "planner",
    ],
    "/api/chat-messages": [
        {"conversationId": "c", "messageId": "m", "content": "x"},
        {"conversationId": "c", "messageId": "m", "content": "x", "sender": "b", "timestamp": "x"},
        {"conversationId": "c", "messageId": "m", "content": 5, "sender": "b"},
    ],
    "/api/notifications": [
        {"level": "debug", "message": "x"},
        {"level": "info", "message": ""},
        {"level": "info", "message": "x", "userId": ""},
        {"level": "info", "message": "x", "userIds": []},
        {"level": "info", "message": "x", "userIds": [""]},
        {"level": "info", "message": "x", "channel": "no spaces"},
        {"level": "info", "message": "x", "channel": None},
    ],
}


def test_the_document_covers_every_publish_path_and_field():
    assert DOCUMENT["openapi"] == "3.1.0"
    for path, kind in PUBLISH_PATHS.items():
        item = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        [single, _batch] = item["schema"]["oneOf"]
        name = single["$ref"].rsplit("/", 1)[1]
        scope = {"userIds", "channel"}  # any item may name its audience and channel
        assert set(DOCUMENT["components"]["schemas"][name]["properties"]) == kind._FIELDS | scope
    assert json.loads(openapi_json()) == DOCUMENT


@pytest.mark.parametrize("path", sorted(PUBLISH_PATHS))
def test_what_the_schema_accepts_is_published_and_what_it_refuses_is_400(server, path):
    schema = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    for item in VALID[path]:
        assert errors(item, schema["schema"]) == [], item
        status, ctype, body = http(server, "POST", path, json.dumps(item).encode(), AUTH)
        assert status == 202, (item, body)
        check(path, "POST", status, ctype, body)
    batch = json.dumps(VALID[path]).encode()
    assert errors(VALID[path], schema["schema"]) == []
    status, ctype, body = http(server, "POST", path, batch, AUTH)
    assert status == 202
    check(path, "POST", status, ctype, body)
    assert len(json.loads(body)["ids"]) == len(VALID[path])
    for item in INVALID[path]:
        assert errors(item, schema["schema"]), f"the schema accepts {item}"
        status, ctype, body = http(server, "POST", path, json.dumps(item).encode(), AUTH)
        assert status == 400, (item, body)
        check(path, "POST", status, ctype, body)


@pytest.mark.parametrize(
    ("body", "why"),
    [(b"{", "not JSON"), (b"[]", "an empty batch"), (b"[" + b"{}," * 1000 + b"{}]", "1,001")],
)
def test_bad_bodies_get_a_documented_400(server, body, why):
    status, ctype, reply = http(server, "POST", "/api/notifications", body, AUTH)
    assert status == 400, why
    check("/api/notifications", "POST", status, ctype, reply)
    assert errors(json.loads(body) if why != "not JSON" else None, _request_schema()), why


def _request_schema() -> dict[str, Any]:
    post = DOCUMENT["paths"]["/api/notifications"]["post"]
    schema: dict[str, Any] = post["requestBody"]["content"]["application/json"]["schema"]
    return schema


def test_every_other_documented_answer_of_a_running_server(server):
    item = json.dumps({"level": "info", "message": "x"}).encode()
    answers = [
        ("/healthz", "GET", http(server, "GET", "/healthz")),
        ("/healthz", "POST", http(server, "POST", "/healthz")),
        ("/metrics", "GET", http(server, "GET", "/metrics")),
        ("/metrics", "DELETE", http(server, "DELETE", "/metrics")),
        ("/openapi.json", "GET", http(server, "GET", "/openapi.json")),
        ("/openapi.json", "POST", http(server, "POST", "/openapi.json")),
        ("/api/notifications", "GET", http(server, "GET", "/api/notifications")),
        ("/api/notifications", "POST", http(server, "POST", "/api/notifications", item)),
        (
            "/api/notifications",
            "POST",
            http(server, "POST", "/api/notifications", item, {"authorization": "Bearer nope"}),
        ),
    ]
    statuses = [(path, method, a[0]) for path, method, a in answers]
    assert statuses == [
        ("/healthz", "GET", 200),
        ("/healthz", "POST", 405),
        ("/metrics", "GET", 200),
        ("/metrics", "DELETE", 405),
        ("/openapi.json", "GET", 200),
        ("/openapi.json", "POST", 405),
        ("/api/notifications", "GET", 405),
        ("/api/notifications", "POST", 401),
        ("/api/notifications", "POST", 401),
    ]
    for path, method, (status, ctype, body) in answers:
        # A wrong method is checked against the document's one operation of the path.
        documented = next(iter(DOCUMENT["paths"][path]))
        check(path, documented if status == 405 else method, status, ctype, body)
    assert b"agentcast_connections_open" in answers[2][2][2]
    # The server answers the document this test checks it against.
    assert json.loads(answers[4][2][2]) == DOCUMENT


def test_a_degraded_healthz_is_documented():
    # Out of file descriptors (protocol/accepting.py): the core's own answer.
    hub = Hub(Settings())
    hub.accepting.failed("emfile", 0.0)
    request = HttpRequest(
        method="GET", path="/healthz", query="", headers=(), body=b"", client="127.0.0.1"
    )
    reply = answer(request, hub, now=0.0, wall=0.0)
    assert json.loads(reply.body)["status"] == "degraded"
    check("/healthz", "GET", reply.status, reply.content_type, reply.body)


def test_an_oversized_body_is_413(server):
    limit = Settings().max_body_size
    status, ctype, body = http(
        server, "POST", "/api/notifications", b"[" + b" " * limit + b"]", AUTH
    )
    assert status == 413
    check("/api/notifications", "POST", status, ctype, body)


def test_without_a_key_a_remote_client_gets_the_documented_403():
    # A non-loopback client cannot be made on this machine's loopback: this is the core's
    # own answer, which every adapter writes as it is.
    hub = Hub(Settings())
    request = HttpRequest(
        method="POST",
        path="/api/notifications",
        query="",
        headers=(("content-type", "application/json"),),
        body=b'{"level":"info","message":"x"}',
        client="203.0.113.9",
    )
    reply = answer(request, hub, now=0.0, wall=0.0)
    assert reply.status == 403
    check("/api/notifications", "POST", reply.status, reply.content_type, reply.body)
