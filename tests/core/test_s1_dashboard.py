"""PROTOCOL.md section 1, ``GET /``: the dashboard's files, routed and answered by the core.

The adapter reads a file's bytes; which paths exist, with which methods, and every
header of the answer (content type, ETag, Cache-Control, the page's
Content-Security-Policy, ``304``, ``HEAD``) are decided here.
"""

from __future__ import annotations

import pytest

from agentcast.protocol import (
    HttpAnswer,
    HttpRequest,
    Hub,
    Route,
    ServerConnection,
    Settings,
    route,
)
from agentcast.protocol.http import answer
from agentcast.protocol.routing import STATIC_PATHS, refusal
from agentcast.protocol.static import (
    CONTENT_SECURITY_POLICY,
    ENDPOINT_META,
    StaticFile,
    content_type_of,
    dashboard_page,
    etag_matches,
    static_answer,
)

PAGE = StaticFile.of("index.html", b"<!doctype html><title>agentcast</title>")
SCRIPT = StaticFile.of("agentcast.js", b"export const SUBPROTOCOL = 'agentcast.v1';\n")


def raw(hub: Hub, data: bytes) -> ServerConnection:
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
    conn.receive_data(data, 0.0, 0.0)
    return conn


# -- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(STATIC_PATHS))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_dashboards_files_are_routed_for_get_and_head(path, method):
    assert route(method, path, Settings()) is Route.STATIC


def test_the_page_and_the_client_module_are_among_them():
    assert STATIC_PATHS["/"] == "index.html"
    assert STATIC_PATHS["/agentcast.js"] == "agentcast.js"
    assert STATIC_PATHS["/agentcast.d.ts"] == "agentcast.d.ts"


@pytest.mark.parametrize("path", sorted(STATIC_PATHS))
def test_without_the_dashboard_its_files_are_404(path):
    settings = Settings(dashboard=False)
    assert route("GET", path, settings) is Route.NOT_FOUND
    assert route("POST", path, settings) is Route.NOT_FOUND


def test_another_method_is_405_naming_get_and_head():
    target = route("POST", "/", Settings())
    assert target is Route.METHOD_NOT_ALLOWED
    refused = refusal(target, "/")
    assert refused is not None
    assert refused.status == 405
    assert refused.header("allow") == "GET, HEAD"


def test_the_websocket_endpoint_wins_over_the_page_when_mounted_at_the_root():
    assert route("GET", "/", Settings(path="/")) is Route.WEBSOCKET


def test_other_fixed_paths_keep_their_one_method():
    assert route("HEAD", "/healthz", Settings()) is Route.METHOD_NOT_ALLOWED
    assert route("GET", "/api/notifications", Settings()) is Route.METHOD_NOT_ALLOWED


def test_the_core_hands_a_get_of_the_page_to_the_adapter(h, hub):
    conn = raw(hub, h.http_request("/?token=abc123"))
    [event] = conn.events_received()
    assert isinstance(event, HttpRequest)
    assert (event.method, event.path) == ("GET", "/")
    assert conn.data_to_send() == b""  # the adapter answers, with the file's bytes


def test_without_the_dashboard_the_core_answers_404_itself(h):
    conn = raw(Hub(Settings(dashboard=False)), h.http_request("/"))
    assert conn.events_received() == []
    status, _, _ = h.parse_response(conn.data_to_send())
    assert status == 404


def test_the_http_answer_leaves_static_files_to_the_adapter(hub):
    request = HttpRequest(method="GET", path="/", query="", headers=(), body=b"")
    assert answer(request, hub, now=0.0, wall=0.0).status == 404


# -- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("agentcast.js", "text/javascript; charset=utf-8"),
        ("agentcast.d.ts", "text/plain; charset=utf-8"),
        ("logo.bin", "application/octet-stream"),
    ],
)
def test_content_types_by_suffix(name, content_type):
    assert content_type_of(name) == content_type


def test_get_of_the_page_has_the_bytes_an_etag_and_a_strict_policy(h):
    reply = static_answer("GET", None, PAGE)
    status, headers, body = h.parse_response(reply.to_bytes())
    assert status == 200
    assert body == PAGE.body
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-length"] == str(len(PAGE.body))
    assert headers["etag"] == PAGE.etag
    assert headers["cache-control"] == "no-cache"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


def test_a_script_has_no_page_policy():
    reply = static_answer("GET", None, SCRIPT)
    assert reply.content_type == "text/javascript; charset=utf-8"
    assert reply.header("content-security-policy") is None
    assert reply.header("etag") == SCRIPT.etag


def test_the_etag_changes_with_the_bytes_and_only_with_them():
    assert StaticFile.of("a.js", b"x").etag == StaticFile.of("b.js", b"x").etag
    assert StaticFile.of("a.js", b"x").etag != StaticFile.of("a.js", b"y").etag
    assert PAGE.etag.startswith('"')
    assert PAGE.etag.endswith('"')


def test_head_has_the_headers_of_get_and_no_body(h):
    get = static_answer("GET", None, SCRIPT)
    head = static_answer("HEAD", None, SCRIPT)
    assert head.body_omitted
    assert head.wire_body == b""
    status, headers, body = h.parse_response(head.to_bytes())
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len(SCRIPT.body))  # what GET would send
    assert head.header_fields() == get.header_fields()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_matching_if_none_match_is_304_without_a_body(h, method):
    reply = static_answer(method, SCRIPT.etag, SCRIPT)
    status, headers, body = h.parse_response(reply.to_bytes())
    assert status == 304
    assert body == b""
    assert headers["etag"] == SCRIPT.etag
    assert headers["cache-control"] == "no-cache"
    assert "content-type" not in headers
    assert headers["content-length"] == str(len(SCRIPT.body))  # the 200's, or none


def test_a_stale_etag_gets_the_file():
    assert static_answer("GET", '"stale"', SCRIPT).status == 200


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"other"', False),
        ("{etag}", True),
        ("W/{etag}", True),  # If-None-Match compares weakly
        ('"a", {etag} ,"b"', True),
        ("*", True),
    ],
)
def test_if_none_match_forms(header, matches):
    value = None if header is None else header.replace("{etag}", SCRIPT.etag)
    assert etag_matches(value, SCRIPT.etag) is matches


def test_an_answer_without_body_keeps_its_length_for_asgi():
    answer = HttpAnswer.plain(200, "hello").without_body()
    assert (b"content-length", b"6") in answer.header_fields()
    assert answer.wire_body == b""
    assert answer.body == b"hello\n"


# -- the page --------------------------------------------------------------------------


def test_the_page_connects_to_the_endpoint_relative_to_itself():
    template = b"<head>" + ENDPOINT_META + b"</head>"
    assert dashboard_page(template, Settings()) == template  # /ws -> ws
    page = dashboard_page(template, Settings(path="/live/socket"))
    assert page == b'<head><meta name="agentcast-endpoint" content="live/socket"></head>'


def test_the_endpoint_is_escaped_in_the_page():
    page = dashboard_page(ENDPOINT_META, Settings(path='/a"b<c'))
    assert page == b'<meta name="agentcast-endpoint" content="a&quot;b&lt;c">'
