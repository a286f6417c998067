"""``GET /openapi.json``: the core answers the OpenAPI document of the HTTP API, built
from the hub's settings (a running server's answers are checked against it in
``tests/docs/test_openapi.py``)."""

from __future__ import annotations

import json

from agentcast.protocol import HttpRequest, Hub, Route, Settings, route
from agentcast.protocol.http import answer
from agentcast.protocol.openapi import openapi_document, openapi_json


def get(hub: Hub, method: str = "GET"):
    request = HttpRequest(
        method=method, path="/openapi.json", query="", headers=(), body=b"", client="10.0.0.1"
    )
    return answer(request, hub, now=0.0, wall=0.0)


def test_openapi_json_is_answered_with_the_settings_limits():
    settings = Settings(max_batch=5, max_body_size=2048)
    reply = get(Hub(settings))
    assert reply.status == 200
    assert reply.content_type == "application/json"
    document = json.loads(reply.body)
    assert document == openapi_document(settings)
    post = document["paths"]["/api/agent-status"]["post"]
    batch = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"][1]
    assert batch["maxItems"] == 5
    assert "2048 bytes" in post["responses"]["413"]["description"]


def test_the_default_document_is_that_of_the_default_settings():
    assert openapi_document() == openapi_document(Settings())
    assert json.loads(openapi_json()) == openapi_document()
    states = openapi_document()["components"]["schemas"]["AgentStatus"]["properties"]["state"]
    assert states["enum"] == ["idle", "working", "stopped"]  # in the protocol's order


def test_only_get_is_routed_and_any_client_may_read_it():
    assert route("GET", "/openapi.json", Settings()) is Route.OPENAPI
    reply = get(Hub(Settings()), "POST")
    assert (reply.status, reply.header("allow")) == (405, "GET")
    # Not the publish API: no key, no loopback rule (the client above is remote).
    assert get(Hub(Settings(api_key="k" * 32))).status == 200
