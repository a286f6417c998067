"""What only the ASGI adapter has: mounting in FastAPI and Starlette (with and without
lifespan events), refusals as a denial response or a close, the split of the message
size limit and of liveness between the ASGI server and the session, ``uvicorn
agentcast.adapters.asgi:app`` configured from the environment. Under real uvicorn
(asyncio) and hypercorn (trio); the behaviour both adapters share is in the suites marked
``servers(...)`` (see conftest.py)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import subprocess
import sys

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from websockets.exceptions import InvalidStatus

from agentcast.adapters import Server, Service
from agentcast.adapters.asgi import create_app, route_path
from agentcast.protocol import Settings

ASGI = pytest.mark.servers("uvicorn", "hypercorn")
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "fastapi_app.py")


def load_example():
    """examples/fastapi_app.py as a fresh module (its objects are new each time)."""
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the annotations there
    spec.loader.exec_module(module)
    return module


def base(address):
    host, port = address
    return f"{host}:{port}"


async def greeted(clients, url):
    peer = await clients.connect(url)
    auth = await peer.recv()
    assert auth["type"] == "auth"
    return peer, auth["data"]


def test_route_path_is_relative_to_the_mount_point():
    assert route_path({"path": "/realtime/ws", "root_path": "/realtime"}) == "/ws"
    assert route_path({"path": "/realtime", "root_path": "/realtime/"}) == "/"
    assert route_path({"path": "/ws", "root_path": "/realtime"}) == "/ws"  # stripped already
    assert route_path({"path": "/realtimes/ws", "root_path": "/realtime"}) == "/realtimes/ws"
    assert route_path({"path": "/healthz"}) == "/healthz"


@pytest.mark.anyio
@ASGI
async def test_fastapi_example_publishes_from_its_route_to_the_mounted_endpoint(
    serve_asgi, clients, http_request, wait_for
):
    example = load_example()
    settings = Settings(presence_grace=0.2)
    realtime = create_app(settings=settings)
    address = base(await serve_asgi(example.create_api(realtime), settings))
    dashboard, auth = await greeted(clients, f"ws://{address}/realtime/ws?token=dash")
    assert auth == {"success": True, "userId": "user_dash"}
    await dashboard.recv_until("user_presence")

    report = {"state": "working", "currentTask": "indexing", "progress": 40}
    status, _, raw = await http_request(
        f"http://{address}/agents/planner/status",
        "POST",
        json.dumps(report).encode(),
        **{"Content-Type": "application/json"},
    )
    assert status == 202
    published = json.loads(raw)
    assert published["delivered"] == 1
    message = await dashboard.recv()
    assert message["type"] == "agent_status"
    assert message["id"] == published["id"]
    assert message["data"] == {"agentName": "planner", **report}

    bad = json.dumps({"state": "sleeping"}).encode()
    status, _, _ = await http_request(
        f"http://{address}/agents/planner/status", "POST", bad, **{"Content-Type": "x/json"}
    )
    assert status == 422  # FastAPI's validation: nothing published
    status, _, raw = await http_request(f"http://{address}/realtime/healthz")
    assert (status, json.loads(raw)) == (
        200,
        {"status": "ok", "clients": 1, "authenticated": 1, "unauthenticated": 0},
    )

    # The presence timer runs through FastAPI's lifespan: a user who left turns offline.
    other, _ = await greeted(clients, f"ws://{address}/realtime/ws?token=other")
    assert (await dashboard.recv())["data"] == {"userId": "user_other", "status": "online"}
    await other.close()
    assert (await dashboard.recv())["data"] == {"userId": "user_other", "status": "offline"}
    assert await dashboard.nothing_pending()


@pytest.mark.anyio
@ASGI
async def test_mounted_without_lifespan_and_as_a_websocket_route(serve_asgi, clients):
    """Starlette runs no lifespan of a mounted application: the presence timer then starts
    with the first request. The route form serves the endpoint at the router's path."""
    settings = Settings(presence_grace=0.2)
    realtime = create_app(settings=settings)
    host = Starlette(
        routes=[
            WebSocketRoute("/live", realtime.websocket_endpoint),
            Mount("/rt", app=realtime),
        ]
    )
    address = base(await serve_asgi(host, settings))
    watcher, _ = await greeted(clients, f"ws://{address}/rt/ws?token=watcher")
    await watcher.recv_until("user_presence")
    leaver, auth = await greeted(clients, f"ws://{address}/live?token=leaver")
    assert auth == {"success": True, "userId": "user_leaver"}
    assert (await watcher.recv())["data"] == {"userId": "user_leaver", "status": "online"}
    await leaver.close()
    assert (await watcher.recv())["data"] == {"userId": "user_leaver", "status": "offline"}
    with pytest.raises(InvalidStatus) as refused:
        await clients.connect(f"ws://{address}/rt/elsewhere")
    assert refused.value.response.status_code == 404


@pytest.mark.anyio
@ASGI
async def test_without_lifespan_the_presence_timer_outlives_the_connection_it_ran_in(
    serve_asgi, clients, http_request, wait_for
):
    """With no lifespan the presence timer runs inside an open WebSocket: when that one
    closes, another takes it over; with none open, a request catches up first."""
    # No presence window: each offline goes out as soon as the timer runs.
    settings = Settings(presence_grace=0.2, presence_window=0)
    realtime = create_app(settings=settings)
    hub = realtime.service.hub
    address = base(await serve_asgi(Starlette(routes=[Mount("/rt", app=realtime)]), settings))
    first, _ = await greeted(clients, f"ws://{address}/rt/ws?token=first")  # runs the timer
    second, _ = await greeted(clients, f"ws://{address}/rt/ws?token=second")
    await first.recv_until("user_presence")  # first online
    await first.recv_until("user_presence")  # second online
    assert (await second.recv_until("user_presence"))["data"]["userId"] == "user_second"
    await first.close()
    assert (await second.recv_until("user_presence"))["data"] == {
        "userId": "user_first",
        "status": "offline",
    }
    await second.close()  # no WebSocket left: nothing runs until the next request
    await wait_for(lambda: hub.next_deadline() is not None)
    await wait_for(lambda: hub.next_deadline() < anyio.current_time())
    assert "user_second" in hub.presence()  # its grace period is over, but nobody looked
    status, _, raw = await http_request(f"http://{address}/rt/healthz")
    assert (status, json.loads(raw)) == (
        200,
        {"status": "ok", "clients": 0, "authenticated": 0, "unauthenticated": 0},
    )
    assert hub.presence() == {}  # the request turned it offline before answering
    third, _ = await greeted(clients, f"ws://{address}/rt/ws?token=third")
    assert (await third.recv())["data"] == {"users": []}  # presence_state


@pytest.mark.anyio
@ASGI
async def test_refused_upgrades_keep_their_status_and_count_nothing(start_server, clients, held):
    server = await start_server(
        Settings(
            require_auth=True,
            allowed_origins=("https://app.example.com",),
            max_connections_per_user=1,
        )
    )
    url = server.urls[0]
    first, _ = await greeted(clients, f"{url}?token=alice")
    await first.recv_until("user_presence")

    async def status_of(target, **options):
        with pytest.raises(InvalidStatus) as refused:
            await clients.connect(target, **options)
        return refused.value.response

    response = await status_of(f"{url}?token=bob", origin="https://evil.example.com")
    assert response.status_code == 403
    response = await status_of(url)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"Unauthorized: missing token\n"
    response = await status_of(f"{url}?token=alice")  # alice's second connection
    assert response.status_code == 503
    assert (await status_of(url.replace("/ws", "/other"))).status_code == 404
    assert server.hub.admission.connections == 1
    assert held(server) == 1
    assert server.clients_count() == 1
    assert await first.nothing_pending()


@pytest.mark.anyio
@pytest.mark.servers("uvicorn")
async def test_without_the_denial_response_extension_a_refusal_is_a_close(serve_asgi, clients):
    """An ASGI server without ``websocket.http.response`` is told to close before
    accepting, which it answers with 403."""
    settings = Settings(require_auth=True)
    realtime = create_app(settings=settings)

    async def without_extension(scope, receive, send):
        scope = {**scope, "extensions": {}}
        await realtime(scope, receive, send)

    address = base(await serve_asgi(without_extension, settings))
    with pytest.raises(InvalidStatus) as refused:
        await clients.connect(f"ws://{address}/ws")
    assert refused.value.response.status_code == 403
    assert realtime.service.hub.admission.connections == 0
    assert realtime.service.hub.admission.refused["auth"] == 1


@pytest.mark.anyio
@pytest.mark.servers("uvicorn")
async def test_max_message_size_is_the_servers_and_else_the_sessions(serve_asgi, clients):
    settings = Settings(max_message_size=1024)
    # Configured as documented: uvicorn refuses the frame itself.
    strict = create_app(settings=settings)
    address = base(await serve_asgi(strict, settings))
    peer, _ = await greeted(clients, f"ws://{address}/ws?token=big")
    await peer.send("x" * 2000)
    code, _ = await peer.closed_by_server()
    assert code == 1009
    # Not configured (uvicorn's own 16 MiB): the message arrives, and the session closes.
    lax = create_app(settings=settings)
    address = base(await serve_asgi(lax, settings, ws_max_size=16 * 1024 * 1024))
    peer, _ = await greeted(clients, f"ws://{address}/ws?token=big")
    await peer.recv_many(2)  # presence_state, user_presence
    await peer.send(json.dumps({"type": "ping", "data": "é" * 600}))  # 1,200+ bytes
    assert await peer.closed_by_server() == (1009, "message too big")
    assert lax.service.clients_count() == 0


@pytest.mark.anyio
@ASGI
async def test_close_silent_clients_restores_4000(serve_asgi, clients, wait_for, server_kind):
    """For clients that all send JSON pings: silence closes with 4000 as on the reference
    server (here with no keepalive from the ASGI server, which could otherwise close
    first)."""
    settings = Settings(heartbeat_interval=0.1, heartbeat_timeout=0.5)
    realtime = create_app(settings=settings, close_silent_clients=True)
    options = {"ws_ping_interval": None} if server_kind == "uvicorn" else {}
    address = base(await serve_asgi(realtime, settings, **options))
    peer, _ = await greeted(clients, f"ws://{address}/ws?token=quiet")
    await peer.pause_reading()
    await wait_for(lambda: realtime.service.hub.stats.heartbeat_timeouts == 1)
    assert realtime.service.clients_count() == 0
    await peer.resume_reading()
    assert await peer.closed_by_server() == (4000, "heartbeat timeout")


@pytest.mark.anyio
@ASGI
async def test_a_chunked_body_over_the_limit_is_413_without_reading_it(start_server):
    server = await start_server(Settings(api_key="k", max_body_size=4096))
    host, port = server.addresses[0]

    def post() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            chunks = (b"[" + b" " * 1023 for _ in range(16))  # 16 KiB, no content-length
            connection.request(
                "POST",
                "/api/notifications",
                body=chunks,
                headers={"Authorization": "Bearer k"},
                encode_chunked=True,
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = await anyio.to_thread.run_sync(post)
    assert status == 413
    assert json.loads(body) == {"error": "the body is larger than the limit of 4096 bytes"}


_RUNNING = re.compile(r"Uvicorn running on http://([\d.]+:\d+)")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_uvicorn_runs_the_module_app_configured_from_the_environment(clients, http_request):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
    env.update(
        AGENTCAST_PATH="/live",
        AGENTCAST_AUTH="static",
        AGENTCAST_TOKEN="t1=alice",
        AGENTCAST_API_KEY="publish-key",
        PYTHONUNBUFFERED="1",
    )
    argv = [sys.executable, "-m", "uvicorn", "agentcast.adapters.asgi:app"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--ws-per-message-deflate", "false"]
    output: list[str] = []
    async with await anyio.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    ) as process:
        try:
            assert process.stdout is not None
            address = None
            with anyio.fail_after(30):
                async for chunk in process.stdout:
                    output.append(chunk.decode(errors="replace"))
                    match = _RUNNING.search("".join(output))
                    if match:
                        address = match.group(1)
                        break
            assert address, "".join(output)
            alice, auth = await greeted(clients, f"ws://{address}/live?token=t1")
            assert auth == {"success": True, "userId": "alice"}
            note = json.dumps({"level": "info", "message": "deployed", "userId": "alice"})
            status, _, raw = await http_request(
                f"http://{address}/api/notifications",
                "POST",
                note.encode(),
                Authorization="Bearer publish-key",
            )
            assert (status, json.loads(raw)["delivered"]) == (202, 1)
            message = await alice.recv_until("notification")
            assert message["data"] == {"level": "info", "message": "deployed"}
            with pytest.raises(InvalidStatus) as refused:
                await clients.connect(f"ws://{address}/ws")
            assert refused.value.response.status_code == 404
        finally:
            process.terminate()
            with anyio.fail_after(10), anyio.CancelScope(shield=True):
                await process.wait()


@pytest.mark.anyio
@ASGI
async def test_one_service_under_the_reference_server_and_an_asgi_server_at_once(
    serve_asgi, clients, wait_for
):
    """A service is the same to every transport: served by the reference server and an
    ASGI server together, one publish reaches the clients of both, the counts cover both,
    and shutting the reference server down closes every connection of the service (1001)."""
    service = Service(Settings())
    host, port = await serve_asgi(create_app(service), service.settings)
    async with anyio.create_task_group() as tg:
        server = Server(service=service, host="127.0.0.1", port=0)
        await tg.start(server.serve)
        via_asgi, _ = await greeted(clients, f"ws://{host}:{port}/ws?token=asgi")
        via_server, _ = await greeted(clients, f"{server.urls[0]}?token=server")
        assert service.authenticated_clients_count() == 2
        assert service.send_notification("info", "both").delivered == 2
        for peer in (via_asgi, via_server):
            message = await peer.recv_until("notification")
            assert message["data"] == {"level": "info", "message": "both"}
        server.shutdown()
        for peer in (via_asgi, via_server):
            assert (await peer.closed_by_server())[0] == 1001
    await wait_for(lambda: service.clients_count() == 0)
