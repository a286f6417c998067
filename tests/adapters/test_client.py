"""The Python client (``agentcast.adapters.client``) against real servers, on asyncio and trio.

The client under test runs in the test's event loop (either backend). Its peer is our
reference server, or, where a test needs a server that does something ours never does
(close ``4503``, close ``4001`` on demand), a `websockets` server in the client thread,
scripted by the test.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trustme
from anyio.from_thread import BlockingPortal
from websockets.asyncio.server import ServerConnection, serve

from agentcast.adapters import Server
from agentcast.adapters.cli import build_ssl_context
from agentcast.adapters.client import (
    AuthResult,
    ChatMessage,
    Client,
    Connected,
    ConnectionStopped,
    Disconnected,
    Notification,
    PresenceState,
    ServerPing,
    UserPresence,
    connect,
)
from agentcast.protocol import Settings
from agentcast.protocol.client import Backoff, Stop

from .conftest import TIMEOUT, StartServer, ws_url

pytestmark = pytest.mark.anyio


async def next_of(client: Client, kind: type[Any], timeout: float = TIMEOUT) -> Any:
    """The next item of *kind* the client yields, skipping others."""
    with anyio.fail_after(timeout):
        async for item in client:
            if isinstance(item, kind):
                return item
    raise AssertionError(f"the client ended before a {kind.__name__}")


@pytest.mark.parametrize("token_in", ["query", "header", "subprotocol"])
async def test_typed_messages_presence_and_ping(start_server: StartServer, token_in: str):
    server = await start_server(Settings(presence_grace=0))
    seen: list[str] = []
    async with connect(ws_url(server), token="abc123", token_in=token_in) as client:  # type: ignore[arg-type]
        assert client.user_id == "user_abc123"
        client.on("user_presence", lambda m: seen.append(m.status))
        assert isinstance(await next_of(client, Connected), Connected)
        auth = await next_of(client, AuthResult)
        assert auth.success
        assert auth.user_id == "user_abc123"
        assert isinstance(await next_of(client, PresenceState), PresenceState)
        online = await next_of(client, UserPresence)
        assert (online.user_id, online.status) == ("user_abc123", "online")
        server.broadcast_chat_message("conv-1", "msg-1", "hello", "bot")
        chat = await next_of(client, ChatMessage)
        assert (chat.conversation_id, chat.content, chat.sender) == ("conv-1", "hello", "bot")
        assert chat.id is not None
        assert client.last_id == chat.id
        await client.set_presence("away")
        away = await next_of(client, UserPresence)
        assert away.status == "away"
        assert server.hub.presence() == {"user_abc123": "away"}
        rtt = await client.ping()
        assert 0 <= rtt < TIMEOUT
        assert seen == ["online", "away"]


async def test_async_callbacks_and_the_star(start_server: StartServer):
    server = await start_server()
    got: list[str] = []
    done = anyio.Event()

    async def on_note(message: Notification) -> None:
        await anyio.sleep(0)
        got.append(message.message)
        done.set()

    async with connect(ws_url(server), token="abc", iterate=False) as client:
        client.on("notification", on_note)
        client.on("*", lambda item: got.append(item.type))
        server.send_notification("info", "deployed", user_id="user_abc")
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        with pytest.raises(RuntimeError, match="iterate=False"):
            await client.__aiter__().__anext__()
    assert got[-2:] == ["deployed", "notification"]


async def test_json_heartbeat_is_answered(start_server: StartServer):
    # The server pings every 0.2 s and closes a client silent for 0.5 s (4000); the
    # client sends nothing of its own, so only its pong answers keep it open.
    server = await start_server(Settings(heartbeat_interval=0.2, heartbeat_timeout=0.5))
    async with connect(ws_url(server), token="abc") as client:
        client.on("disconnected", lambda d: pytest.fail(f"disconnected: {d}"))
        for _ in range(5):
            await next_of(client, ServerPing)
        assert client.connected


async def test_custom_path(start_server: StartServer):
    server = await start_server(Settings(path="/realtime/socket"))
    assert ws_url(server).endswith("/realtime/socket")
    async with connect(ws_url(server), token="abc") as client:
        assert client.user_id == "user_abc"


async def test_tls(start_server: StartServer, tmp_path: Any):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(chain, append=True)
    cert.private_key_pem.write_to_path(key)
    server = await start_server(ssl_context=build_ssl_context(str(chain), str(key)))
    url = ws_url(server)
    assert url.startswith("wss://")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with connect(url, token="secure", ssl_context=context) as client:
        assert client.user_id == "user_secure"
        server.broadcast_agent_status("planner", "working", "tls", progress=5)
        assert (await client.ping()) >= 0
    # An untrusted certificate is never accepted: the client keeps failing until its
    # open_timeout.
    with pytest.raises(TimeoutError):
        async with connect(url, token="secure", open_timeout=1.0):
            pass


async def test_refused_handshake_stops(start_server: StartServer):
    server = await start_server(Settings(require_auth=True))
    with pytest.raises(ConnectionStopped) as info:
        async with connect(ws_url(server), token="bad token!"):
            pass
    assert info.value.status == 401
    assert "Unauthorized" in info.value.reason


async def test_policy_close_stops_with_the_reason(start_server: StartServer):
    server = await start_server(Settings(rate_limit=1, rate_burst=1, rate_limit_strikes=2))
    async with connect(ws_url(server), token="abc") as client:
        for _ in range(10):
            await client.send({"type": "ping"})
        gone = await next_of(client, Disconnected)
        assert (gone.code, gone.reconnect_in) == (1008, None)
        with pytest.raises(ConnectionStopped) as info:
            await next_of(client, ChatMessage)  # the iterator ends with the reason
        assert (info.value.code, info.value.reason) == (1008, "rate limit exceeded")
        assert client.stopped is not None
        assert client.stopped.code == 1008


async def test_first_connection_retried_until_open_timeout():
    with pytest.raises(TimeoutError):
        async with connect("ws://127.0.0.1:9/ws", token="abc", open_timeout=0.5):
            pass


async def test_reconnects_after_server_restart(start_server: StartServer):
    server = await start_server()
    port = server.addresses[0][1]
    async with connect(ws_url(server), token="abc") as client, anyio.create_task_group() as tg:
        await next_of(client, PresenceState)
        server.shutdown()
        gone = await next_of(client, Disconnected)
        assert (gone.code, gone.reason) == (1001, "server shutting down")
        assert gone.reconnect_in is not None
        assert 0 <= gone.reconnect_in <= 0.5
        again = Server(host="127.0.0.1", port=port)
        await tg.start(again.serve)
        back = await next_of(client, Connected)
        assert back.attempt >= 1
        assert back.since is not None  # the last id seen before the restart
        await next_of(client, AuthResult)
        again.broadcast_chat_message("c", "m", "after", "bot")
        assert (await next_of(client, ChatMessage)).content == "after"
        again.shutdown()


async def test_close_while_waiting_to_reconnect_is_immediate(start_server: StartServer):
    server = await start_server()
    slow = Backoff(base=60.0, cap=60.0)
    async with connect(ws_url(server), token="abc", backoff=slow, rng=lambda: 0.5) as client:
        server.shutdown()
        gone = await next_of(client, Disconnected)
        assert gone.reconnect_in == 30.0
        with anyio.fail_after(3):  # not the 30 s back-off, nor the 5 s close timeout
            await client.close()
        assert client.stopped == Stop(1000, "closed by the client")
        assert await client.wait_closed() == client.stopped


# -- a scripted `websockets` server --------------------------------------------------------

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def scripted(portal: BlockingPortal, handler: Handler) -> AsyncIterator[str]:
    """A `websockets` server in the client thread running *handler* per connection."""
    stop = asyncio.Event()
    started: list[str] = []

    async def run() -> None:
        async with serve(handler, "127.0.0.1", 0) as ws_server:
            port = next(iter(ws_server.sockets)).getsockname()[1]
            started.append(f"ws://127.0.0.1:{port}/ws")
            await stop.wait()

    future = portal.start_task_soon(run)
    try:
        with anyio.fail_after(TIMEOUT):
            while not started:
                await anyio.sleep(0.01)
        yield started[0]
    finally:
        portal.call(stop.set)
        await anyio.to_thread.run_sync(future.result, TIMEOUT)


def auth(user: str) -> str:
    return json.dumps({"type": "auth", "data": {"success": True, "userId": user}})


async def test_do_not_reconnect_range_stops(client_portal: BlockingPortal):
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.send(auth("user_a"))
        await ws.close(4503, "user revoked")

    async with scripted(client_portal, handler) as url, connect(url, token="a") as client:
        with pytest.raises(ConnectionStopped) as info:
            async for _ in client:
                pass
        assert (info.value.code, info.value.reason) == (4503, "user revoked")
    assert connections == 1


async def test_token_expired_close_gets_a_fresh_token(client_portal: BlockingPortal):
    tokens: list[str] = []
    issued = iter(["first", "second", "third"])

    async def handler(ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        tokens.append(request.headers["Authorization"])
        await ws.send(auth("user_a"))
        if len(tokens) == 1:
            await ws.close(4001, "token expired")
        else:
            await ws.wait_closed()

    async def provider() -> str:
        await anyio.sleep(0)
        return next(issued)

    async with (
        scripted(client_portal, handler) as url,
        connect(url, token_provider=provider, token_in="header") as client,
    ):
        gone = await next_of(client, Disconnected)
        assert gone.code == 4001
        await next_of(client, Connected)
        await next_of(client, AuthResult)
    assert tokens == ["Bearer first", "Bearer second"]


async def test_token_refreshed_in_band_before_exp(start_server: StartServer):
    from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet, make_dev_token

    secret = "s" * 32
    authenticator = JwtAuthenticator(JwtKeySet.from_secret(secret), leeway=0)
    server = await start_server(authenticator=authenticator)
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        import time

        return make_dev_token(secret, "user_1", 60, time.time())

    # exp 60 s ahead, refreshed 59.5 s before it: the first refresh is due in ~0.5 s.
    async with connect(ws_url(server), token_provider=provider, refresh_margin=59.5) as client:
        await next_of(client, AuthResult)
        refreshed = await next_of(client, AuthResult)
        assert refreshed.success
        assert refreshed.user_id == "user_1"
        assert calls >= 2
        assert client.connected
