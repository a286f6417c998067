"""Server-Sent Events end to end (PROTOCOL.md 11): real sockets, a real SSE client
(``httpx`` + ``httpx-sse``, or a raw socket where the bytes themselves matter), on every
way of starting the server."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent

from agentcast.protocol import Settings
from agentcast.protocol.openapi import openapi_document

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

TIMEOUT = 10.0
CLOSE_1001 = {"type": "close", "data": {"code": 1001, "reason": "server shutting down"}}


def events_url(server: Any, query: str = "") -> str:
    host, port = server.addresses[0]
    path = server.service.settings.events_path
    return f"http://{host}:{port}{path}" + (f"?{query}" if query else "")


class Stream:
    """One open event stream, read with httpx-sse."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._events = EventSource(response).aiter_sse()

    async def next(self) -> ServerSentEvent:
        """The next event a browser would dispatch: httpx-sse also reports a block
        without ``data`` (our ``retry:``), which ``EventSource`` does not."""
        with anyio.fail_after(TIMEOUT):
            while not (event := await self._events.__anext__()).data:
                pass
            return event

    async def message(self) -> dict[str, Any]:
        """The next event's JSON envelope (its ``event:`` checked against the type)."""
        event = await self.next()
        message = json.loads(event.data)
        assert event.event == message["type"]
        return message

    async def until(self, kind: str) -> dict[str, Any]:
        while (message := await self.message())["type"] != kind:
            pass
        return message

    async def ended(self) -> bool:
        """Whether the server ends the body now (no event before the end)."""
        with anyio.fail_after(TIMEOUT):
            async for event in self._events:
                if event.data:
                    return False
        return True


@asynccontextmanager
async def open_stream(url: str, **headers: str) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as client,
        client.stream("GET", url, headers={"accept": "text/event-stream", **headers}) as r,
    ):
        yield Stream(r)


async def raw_stream(server: Any, target: str, **headers: str) -> anyio.abc.SocketStream:
    """A TCP connection that asked for *target* (the bytes are the test's to read)."""
    host, port = server.addresses[0]
    sock = await anyio.connect_tcp(host, port)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    await sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


async def read_until(sock: anyio.abc.SocketStream, done: Any) -> bytes:
    """Read until ``done(everything read)`` is true (fails after the timeout)."""
    data = b""
    with anyio.fail_after(TIMEOUT):
        while not done(data):
            data += await sock.receive()
    return data


async def test_the_stream_carries_the_session_as_a_websocket_does(start_server, clients):
    server = await start_server(Settings())
    ws = await clients.connect(f"{server.urls[0]}?token=ws")
    async with open_stream(events_url(server, "token=abc123")) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream"
        auth = await stream.message()
        assert auth["data"] == {"success": True, "userId": "user_abc123"}
        presence = await stream.message()
        assert presence["type"] == "presence_state"
        assert presence["data"]["users"] == [{"userId": "user_ws", "status": "online"}]
        snapshot = await stream.message()  # every agent's latest status, as on a WebSocket
        assert (snapshot["type"], snapshot["data"]) == ("agent_state", {"agents": []})
        await ws.recv_until("user_presence")  # its own
        await ws.recv_until("user_presence")  # the stream's user
        status = server.broadcast_agent_status("A", "working", "build", 40)
        chat = server.broadcast_chat_message("c1", "m1", "two\nlines", "bot")
        note = server.send_notification("success", "done")
        first = await stream.next()
        while first.event != "agent_status":
            first = await stream.next()
        events = [first, await stream.next(), await stream.next()]
        assert [e.id for e in events] == [status.id, chat.id, note.id]
        assert [e.event for e in events] == ["agent_status", "chat_message", "notification"]
        got = [json.loads(e.data) for e in events]
        assert json.loads(events[1].data)["data"]["content"] == "two\nlines"
        seen_by_ws = [await ws.recv_until("agent_status"), *(await ws.recv_many(2))]
        assert got == seen_by_ws  # the same JSON on both wires
        assert server.clients_count() == 2


@pytest.mark.parametrize("how", ["bearer", "cookie"])
async def test_the_token_from_a_header_or_the_cookie(start_server, how):
    server = await start_server(Settings())
    header = (
        {"authorization": "Bearer hdr"} if how == "bearer" else {"cookie": "agentcast_token=hdr"}
    )
    async with open_stream(events_url(server), **header) as stream:
        assert (await stream.message())["data"] == {"success": True, "userId": "user_hdr"}


async def test_a_notification_for_one_user_is_seen_by_that_user_only(start_server):
    server = await start_server(Settings())
    async with (
        open_stream(events_url(server, "token=a")) as a,
        open_stream(events_url(server, "token=b")) as b,
    ):
        await a.until("presence_state")
        await b.until("presence_state")
        server.send_notification("info", "for a only", "user_a")
        server.send_notification("info", "for everyone")
        assert (await a.until("notification"))["data"]["message"] == "for a only"
        assert (await a.until("notification"))["data"]["message"] == "for everyone"
        assert (await b.until("notification"))["data"]["message"] == "for everyone"


async def test_channels_in_the_url_scope_the_stream(start_server):
    server = await start_server(Settings())
    async with (
        open_stream(events_url(server, "token=a&channels=conversation:c1")) as member,
        open_stream(events_url(server, "token=b")) as outsider,
    ):
        assert (await member.until("subscribed"))["data"] == {"channel": "conversation:c1"}
        await outsider.until("presence_state")
        server.broadcast_chat_message("c1", "m1", "hi", "bot", channel="conversation:c1")
        server.send_notification("info", "for everyone")
        assert (await member.until("chat_message"))["data"]["content"] == "hi"
        assert (await member.until("notification"))["data"]["message"] == "for everyone"
        seen = []
        while (message := await outsider.message())["type"] != "notification":
            seen.append(message["type"])
        assert "chat_message" not in seen


async def test_shutdown_sends_the_close_event_and_ends_the_stream(start_server, shut_down):
    server = await start_server(Settings())
    async with open_stream(events_url(server, "token=abc123")) as stream:
        await stream.until("presence_state")
        await shut_down(server)
        event = await stream.next()
        while event.event != "close":
            event = await stream.next()
        assert json.loads(event.data) == CLOSE_1001
        assert await stream.ended()


async def test_a_refused_token_is_401_with_require_auth(start_server, http_request):
    server = await start_server(Settings(require_auth=True))
    status, headers, _ = await http_request(events_url(server, "token=bad!token"))
    assert status == 401
    assert {name.lower(): value for name, value in headers.items()}["www-authenticate"] == "Bearer"
    assert server.hub.admission.refused["auth"] == 1


async def test_a_refused_token_gets_its_auth_event_then_the_stream_ends(start_server):
    server = await start_server(Settings())
    async with open_stream(events_url(server, "token=bad!token")) as stream:
        auth = await stream.message()
        assert auth["data"]["success"] is False
        close = await stream.message()
        assert close["data"] == {"code": 1008, "reason": "authentication required"}
        assert await stream.ended()
    assert server.clients_count() == 0


async def test_limits_apply_to_streams(start_server, http_request, wait_for):
    server = await start_server(Settings(max_connections_per_user=1))
    async with open_stream(events_url(server, "token=abc123")) as stream:
        await stream.until("presence_state")
        status, _, body = await http_request(events_url(server, "token=abc123"))
        assert status == 503
        assert b"too many connections for this user" in body
    # The client left: its place is free again.
    await wait_for(lambda: server.hub.admission.connections == 0)
    async with open_stream(events_url(server, "token=abc123")) as again:
        assert (await again.message())["data"]["success"] is True


async def test_cors_for_an_allowed_origin_and_403_for_another(start_server, http_request):
    server = await start_server(Settings(allowed_origins=("https://app.example",)))
    async with open_stream(
        events_url(server, "token=abc123"), origin="https://app.example"
    ) as stream:
        headers = stream.response.headers
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["access-control-allow-credentials"] == "true"
        assert (await stream.message())["type"] == "auth"
    status, _, _ = await http_request(
        events_url(server, "token=abc123"), Origin="https://evil.example"
    )
    assert status == 403


async def test_heartbeat_comments_and_silence_never_closes(start_server):
    server = await start_server(Settings(heartbeat_interval=0.1, heartbeat_timeout=0.2))
    sock = await raw_stream(server, "/events?token=abc123")
    async with sock:
        # Well past the heartbeat timeout: a client that cannot send is never "silent".
        data = await read_until(sock, lambda d: d.count(b": ping\n\n") >= 6)
        assert data.startswith(b"HTTP/1.1 200")
        assert b"retry: 3000\n\n" in data
        assert b"event: ping\n" in data
        assert server.clients_count() == 1
        assert server.hub.stats.heartbeat_timeouts == 0


async def test_the_client_leaving_ends_its_session_and_metrics_count_it(start_server, wait_for):
    server = await start_server(Settings(presence_grace=0))
    metric = server.metrics.registry.get_sample_value
    async with open_stream(events_url(server, "token=abc123")) as stream:
        await stream.until("presence_state")
        assert metric("agentcast_connections_open") == 1
        assert metric("agentcast_connections_authenticated") == 1
    await wait_for(lambda: server.clients_count() == 0)
    await wait_for(lambda: metric("agentcast_connections_closed_total", {"code": "1001"}) == 1)
    assert metric("agentcast_connections_opened_total") == 1


BROADCASTS = 1_000
LIMIT = 256 * 1024  # max_send_buffer: a quarter of what goes out
# Every STEP messages the publisher waits until the fast reader is at most WINDOW behind:
# its backlog stays under 2 * (WINDOW + STEP) messages, well below LIMIT.
STEP = 25
WINDOW = 50


async def test_a_slow_reader_is_dropped_while_others_get_everything(start_server, wait_for):
    server = await start_server(
        Settings(max_send_buffer=LIMIT, presence_grace=0.1), socket_send_buffer=16384
    )
    # A client that asks for the stream and never reads, with a small receive buffer.
    host, port = server.addresses[0]
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    slow.connect((host, port))
    slow.sendall(f"GET /events?token=slow HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    try:
        await wait_for(lambda: "user_slow" in server.hub.presence())
        async with open_stream(events_url(server, "token=fast")) as fast:
            await fast.until("presence_state")
            ids = []
            got: list[str] = []
            padding = "x" * 1000
            for n in range(BROADCASTS):
                ids.append(server.send_notification("info", f"{n:05d}{padding}").id)
                if n % STEP == STEP - 1:  # the fast reader keeps up
                    while len(got) < n + 1 - WINDOW:
                        got.append((await fast.until("notification"))["id"])
            while len(got) < BROADCASTS:
                got.append((await fast.until("notification"))["id"])
            assert got == ids
            assert server.hub.stats.slow_client_drops == 1
            await wait_for(lambda: "user_slow" not in server.hub.presence())
            assert server.clients_count() == 1
    finally:
        slow.close()


async def test_the_answers_are_the_ones_the_openapi_document_lists(start_server, http_request):
    settings = Settings(require_auth=True, allowed_origins=("https://app.example",))
    server = await start_server(settings)
    responses = openapi_document(settings)["paths"]["/events"]["get"]["responses"]
    url = events_url(server)
    post = await http_request(url, "POST", b"{}")
    no_token = await http_request(url)
    bad_origin = await http_request(url + "?token=abc123", Origin="https://evil.example")
    assert [post[0], no_token[0], bad_origin[0]] == [405, 401, 403]
    assert {name.lower(): value for name, value in post[1].items()}["allow"] == "GET"
    for status, _, _ in (post, no_token, bad_origin):
        assert str(status) in responses
    async with open_stream(url + "?token=abc123") as stream:
        assert stream.response.headers["content-type"] in responses["200"]["content"]
