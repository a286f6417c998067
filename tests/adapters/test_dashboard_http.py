"""``GET /`` (PROTOCOL.md section 1): the dashboard's files over HTTP, on every server,
with urllib as the client: content types, ETag and 304, HEAD, the page's policy, the
packaged bytes, and ``--no-dashboard``."""

from __future__ import annotations

import pytest

from agentcast.adapters.cli import build_parser
from agentcast.adapters.config import build_config
from agentcast.adapters.dashboard import read_static
from agentcast.protocol import Settings
from agentcast.protocol.routing import STATIC_PATHS

TYPES = {
    "/": "text/html; charset=utf-8",
    "/dashboard.css": "text/css; charset=utf-8",
    "/dashboard.js": "text/javascript; charset=utf-8",
    "/agentcast.js": "text/javascript; charset=utf-8",
    "/agentcast.d.ts": "text/plain; charset=utf-8",
}


def endpoint(server, path):
    host, port = server.addresses[0]
    return f"http://{host}:{port}{path}"


async def fetch(http_request, server, path, method="GET", **headers):
    status, raw_headers, body = await http_request(endpoint(server, path), method, None, **headers)
    return status, {k.lower(): v for k, v in raw_headers.items()}, body


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_each_file_with_its_type_and_validator(start_server, http_request):
    server = await start_server(Settings())
    assert set(TYPES) == set(STATIC_PATHS)
    for path, content_type in TYPES.items():
        status, headers, body = await fetch(http_request, server, path)
        assert status == 200, path
        assert headers["content-type"] == content_type
        assert headers["cache-control"] == "no-cache"
        assert headers["etag"].startswith('"')
        assert int(headers["content-length"]) == len(body)
        if path != "/":
            assert body == read_static(STATIC_PATHS[path])


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_the_page_with_a_strict_policy_and_no_inline_code(start_server, http_request):
    server = await start_server(Settings())
    status, headers, body = await fetch(http_request, server, "/?token=abc123")
    assert status == 200
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert headers["referrer-policy"] == "no-referrer"
    page = body.decode()
    assert '<script type="module" src="dashboard.js"></script>' in page
    assert "<script>" not in page
    assert "style=" not in page
    assert "<style" not in page
    assert '<meta name="agentcast-endpoint" content="ws">' in page


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_an_unchanged_file_is_304(start_server, http_request):
    server = await start_server(Settings())
    _, headers, _ = await fetch(http_request, server, "/agentcast.js")
    etag = headers["etag"]
    status, headers, body = await fetch(
        http_request, server, "/agentcast.js", **{"If-None-Match": etag}
    )
    assert status == 304
    assert body == b""
    assert headers["etag"] == etag
    status, _, body = await fetch(
        http_request, server, "/agentcast.js", **{"If-None-Match": '"old"'}
    )
    assert status == 200
    assert body == read_static("agentcast.js")


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_head_gives_the_headers_only(start_server, http_request):
    server = await start_server(Settings())
    status, headers, body = await fetch(http_request, server, "/dashboard.css", "HEAD")
    assert status == 200
    assert body == b""
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert int(headers["content-length"]) == len(read_static("dashboard.css"))


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_post_to_the_page_is_405(start_server, http_request):
    server = await start_server(Settings())
    status, headers, _ = await http_request(endpoint(server, "/"), "POST", b"{}")
    assert status == 405
    assert {k.lower(): v for k, v in headers.items()}["allow"] == "GET, HEAD"


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_the_page_follows_the_endpoint_path(start_server, http_request):
    server = await start_server(Settings(path="/live"))
    _, _, body = await fetch(http_request, server, "/")
    assert b'<meta name="agentcast-endpoint" content="live">' in body


@pytest.mark.anyio
@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_without_the_dashboard_every_file_is_404(start_server, http_request):
    server = await start_server(Settings(dashboard=False))
    for path in STATIC_PATHS:
        status, _, _ = await fetch(http_request, server, path)
        assert status == 404, path
    status, _, _ = await fetch(http_request, server, "/healthz")
    assert status == 200


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, True),
        (["--no-dashboard"], {}, False),
        ([], {"AGENTCAST_DASHBOARD": "0"}, False),
        (["--dashboard"], {"AGENTCAST_DASHBOARD": "off"}, True),
    ],
)
def test_the_dashboard_flag(argv, environ, expected, monkeypatch):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve", *argv])
    assert build_config(args).settings.dashboard is expected
