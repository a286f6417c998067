"""Tests that play the attacker, on real sockets, on asyncio and trio: a server exposed to
the internet must survive hostile clients and keep serving the others.

Well-behaved clients are `websockets` clients; the hostile ones that `websockets` cannot
be (a slowloris, a megabyte of headers, a thousand raw upgrade attempts) are raw anyio
sockets in the server's own loop, which only makes them harder on the server. Throughout
each attack a well-behaved client, from another address (127.0.0.2), must receive a
broadcast within a second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
import tracemalloc
from collections import Counter
from contextlib import suppress

import anyio
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.protocol import Settings, StaticAuthenticator
from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet, make_dev_token

pytestmark = pytest.mark.anyio

SECRET = "test-secret-for-hs256-0123456789abcdef"
GOOD_ADDRESS = "127.0.0.2"  # the well-behaved client's own address, outside the attack


# -- helpers -------------------------------------------------------------------------------


def upgrade_request(server, query="", extra=""):
    host, port = server.addresses[0]
    return (
        f"GET {server.settings.path}{'?' + query if query else ''} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


async def raw_connect(server):
    host, port = server.addresses[0]
    return await anyio.connect_tcp(host, port)


async def read_until_eof(stream, limit=1 << 20):
    """Everything the server sends until it closes (a reset counts as the end)."""
    received = b""
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        while len(received) < limit:
            received += await stream.receive()
    return received


async def read_head(stream):
    """The status line and headers of the server's answer."""
    received = b""
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        while b"\r\n\r\n" not in received:
            received += await stream.receive()
    return received


def status_of(head):
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None


async def connect_good(clients, server, name="good"):
    """A well-behaved client from its own address, past its greeting messages."""
    peer = await clients.connect(f"{server.urls[0]}?token={name}", local_addr=(GOOD_ADDRESS, 0))
    kinds = [m["type"] for m in await peer.recv_many(4)]
    assert kinds == ["auth", "presence_state", "agent_state", "user_presence"]
    return peer


async def receives_broadcast_within_a_second(server, peer, label):
    """Publish an agent status; *peer* must receive it within one second."""

    async def go():
        async with asyncio.timeout(1.0):
            while True:
                message = json.loads(await peer.ws.recv())
                if message["type"] == "agent_status":
                    return message

    server.broadcast_agent_status("watchdog", "working", label)
    message = await peer._clients.call(go)
    assert message["data"]["currentTask"] == label


def refused(server, reason):
    value = server.metrics.registry.get_sample_value(
        "agentcast_upgrades_refused_total", {"reason": reason}
    )
    assert value is not None
    return int(value)


# -- JWT end to end -----------------------------------------------------------------------


def hs256(sub, ttl=3600.0, secret=SECRET, wall=None):
    return make_dev_token(secret, sub, ttl, time.time() if wall is None else wall)


async def test_jwt_tokens_from_query_header_and_subprotocol(start_server, clients):
    server = await start_server(authenticator=JwtAuthenticator(JwtKeySet.from_secret(SECRET)))
    url = server.urls[0]

    peer = await clients.connect(f"{url}?token={hs256('alice')}")
    assert (await peer.recv())["data"] == {"success": True, "userId": "alice"}

    peer = await clients.connect(url, additional_headers={"Authorization": f"Bearer {hs256('bo')}"})
    assert (await peer.recv())["data"] == {"success": True, "userId": "bo"}

    token = hs256("carol")
    peer = await clients.connect(url, subprotocols=["agentcast.v1", f"bearer.{token}"])
    assert peer.ws.subprotocol == "agentcast.v1"
    assert (await peer.recv())["data"] == {"success": True, "userId": "carol"}

    bad = {
        hs256("dave", wall=time.time() - 7200): "token expired",
        hs256("eve", secret="another-secret-of-at-least-32-bytes!"): "invalid signature",
        "garbage": "malformed token",
        jwt.encode({"sub": "mallory", "exp": time.time() + 60}, None, algorithm="none"): (
            "algorithm not allowed"
        ),
    }
    for token, reason in bad.items():
        peer = await clients.connect(f"{url}?token={token}")
        message = await peer.recv()
        assert message["data"] == {"success": False, "error": reason}
        # Unauthenticated: no broadcast reaches it.
        server.broadcast_agent_status("planner", "idle")
        assert await peer.nothing_pending()


async def test_require_auth_answers_401_and_opens_no_websocket(start_server, clients, wait_for):
    server = await start_server(
        Settings(require_auth=True),
        authenticator=JwtAuthenticator(JwtKeySet.from_secret(SECRET)),
    )
    url = server.urls[0]
    for query in ("", "token=garbage", f"token={hs256('old', wall=time.time() - 7200)}"):
        with pytest.raises(InvalidStatus) as refusal:
            await clients.connect(f"{url}?{query}")
        assert refusal.value.response.status_code == 401
        assert refusal.value.response.headers["WWW-Authenticate"] == "Bearer"
    assert server.clients_count() == 0
    assert refused(server, "auth") == 3

    peer = await clients.connect(f"{url}?token={hs256('alice')}")
    assert (await peer.recv())["data"] == {"success": True, "userId": "alice"}
    await wait_for(lambda: server.clients_count() == 1)


# -- hostile clients ----------------------------------------------------------------------


async def test_slowloris_is_cut_off_while_others_are_served(start_server, clients, held):
    server = await start_server(Settings(handshake_timeout=1.0))
    good = await connect_good(clients, server)
    request = upgrade_request(server, "token=slow")
    results = []

    async def slowloris():
        # Timed from before the connect: the server may accept (and start the handshake
        # timer) before this task runs again after its connect returns.
        start = anyio.current_time()
        async with await raw_connect(server) as stream:

            async def drip():
                for byte in request:  # one byte every 0.2 s: the request needs ~40 s
                    try:
                        await stream.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    await anyio.sleep(0.2)

            async with anyio.create_task_group() as tg:
                tg.start_soon(drip)
                received = await read_until_eof(stream)
                tg.cancel_scope.cancel()
            results.append((received, anyio.current_time() - start))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(slowloris)
            while held(server) < 21:  # every slowloris is connected and dripping
                await anyio.sleep(0.01)
            await receives_broadcast_within_a_second(server, good, "during the slowloris")
    assert len(results) == 20
    for received, elapsed in results:
        assert received.startswith(b"HTTP/1.1 408 ")
        # Cut off at the handshake timeout, not at the end of its 40-second request.
        assert 0.95 <= elapsed < 3.0
    await receives_broadcast_within_a_second(server, good, "after the slowloris")


async def test_a_megabyte_of_headers_gets_431_while_others_are_served(start_server, clients):
    server = await start_server()
    good = await connect_good(clients, server)
    padding = b"".join(b"X-Padding-%04d: %s\r\n" % (i, b"a" * 1000) for i in range(1040))
    request = upgrade_request(server, "token=big").replace(b"\r\n\r\n", b"\r\n" + padding, 1)
    assert len(request) > 1 << 20

    async def flood():
        async with await raw_connect(server) as stream:

            async def send():
                with suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(request + b"\r\n")

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                received = await read_until_eof(stream)
                tg.cancel_scope.cancel()
            return received

    answers = []

    async def one():
        answers.append(await flood())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await receives_broadcast_within_a_second(server, good, "during the header flood")
    assert len(answers) == 3
    for received in answers:
        assert received.startswith(b"HTTP/1.1 431 ")
    await receives_broadcast_within_a_second(server, good, "after the header flood")
    newcomer = await clients.connect(f"{server.urls[0]}?token=newcomer")
    assert (await newcomer.recv())["data"]["success"] is True


async def test_a_thousand_connections_from_one_address(start_server, clients, wait_for):
    server = await start_server(Settings(max_connections_per_ip=100))
    good = await connect_good(clients, server)
    statuses = Counter()
    opened = []  # the admitted connections, held open until the end
    limiter = anyio.Semaphore(200)  # attempts in flight at once

    async def attempt():
        async with limiter:
            stream = await raw_connect(server)
            await stream.send(upgrade_request(server))  # no token: no presence noise
            head = await read_head(stream)
            statuses[status_of(head)] += 1
            if status_of(head) == 101:
                opened.append(stream)
            else:
                answer = head + await read_until_eof(stream)
                assert b"too many connections from this address" in answer
                await stream.aclose()

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(attempt)
                await wait_for(lambda: refused(server, "max_connections_per_ip") >= 300)
                await receives_broadcast_within_a_second(server, good, "during the flood")
        assert statuses == {101: 100, 503: 900}
        assert server.clients_count() == 101  # the 100 and the good client
        assert refused(server, "max_connections_per_ip") == 900
        await receives_broadcast_within_a_second(server, good, "after the flood")
    finally:
        for stream in opened:
            await stream.aclose()
    # Their places are given back: the address may connect again.
    await wait_for(lambda: server.clients_count() == 1)
    again = await clients.connect(f"{server.urls[0]}?token=again")
    assert (await again.recv())["data"]["success"] is True


class PeakMemory:
    """How much the process's memory grew at its peak, within the ``with`` block: the
    peak resident set size (Linux: reset through /proc/self/clear_refs, read from
    /proc/self/status), or else tracemalloc's peak (slower, Python allocations only)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset VmHWM to the current RSS
            self._rss = True
            self._before = self._read("VmRSS")
        except OSError:
            self._rss = False
            tracemalloc.start()
            self._before = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc_info):
        if self._rss:
            self.growth = self._read("VmHWM") - self._before
        else:
            self.growth = tracemalloc.get_traced_memory()[1] - self._before
            tracemalloc.stop()

    @staticmethod
    def _read(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {field} in /proc/self/status")


async def test_a_flood_of_messages_is_rate_limited_then_closed(start_server, clients):
    # The flooder reads the answers only once it has sent everything: the server waits
    # for its closing handshake however slow the machine.
    server = await start_server(Settings(close_timeout=30.0))
    good = await connect_good(clients, server)
    # max_queue=None: the flooder keeps every answer (by default websockets stops reading
    # the socket after 16 unread messages).
    flooder = await clients.connect(f"{server.urls[0]}?token=flooder", max_queue=None)
    assert (await flooder.recv())["data"]["success"] is True
    message = json.dumps({"type": "ping", "data": "x" * 2000})

    async def flood():
        sent = 0
        with suppress(ConnectionClosed):
            for _ in range(10_000):
                await flooder.ws.send(message)
                sent += 1
        answers = Counter()
        with suppress(ConnectionClosed):
            while True:
                answer = json.loads(await flooder.ws.recv())
                answers[answer["type"], answer.get("data", {}).get("code")] += 1
        await flooder.ws.wait_closed()
        close = flooder.ws.protocol.close_rcvd
        return sent, answers, (close.code, close.reason) if close else None

    results = []

    async def run_flood():
        results.append(await clients.call(flood))

    with PeakMemory() as memory:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_flood)
            await receives_broadcast_within_a_second(server, good, "during the message flood")
    sent, answers, close = results[0]
    assert close == (1008, "rate limit exceeded"), (sent, answers)
    assert answers["error", "rate_limited"] >= server.settings.rate_limit_strikes
    assert server.hub.stats.rate_limit_closes == 1
    # The flood went well past the limit before the close stopped it (how much of the
    # 10,000 the client got out before it saw the close frame depends on scheduling).
    assert sent > server.settings.rate_burst + server.settings.rate_limit_strikes, sent
    # Memory stays bounded: what the flood sent is read, dropped and forgotten, never held.
    assert memory.growth < 8 * 1024 * 1024, memory.growth
    await receives_broadcast_within_a_second(server, good, "after the message flood")


# -- origin, limits and timeouts ------------------------------------------------------------


async def test_origin_allowed_refused_and_absent(start_server, clients):
    server = await start_server(
        Settings(allowed_origins=("https://app.example.com", "https://*.example.org"))
    )
    url = f"{server.urls[0]}?token=browser"
    for origin in ("https://app.example.com", "https://team.example.org", None):
        peer = await clients.connect(url, origin=origin)
        assert (await peer.recv())["data"]["success"] is True
    for origin in ("https://evil.example.com", "https://example.org", "http://app.example.com"):
        with pytest.raises(InvalidStatus) as refusal:
            await clients.connect(url, origin=origin)
        assert refusal.value.response.status_code == 403
    assert refused(server, "origin") == 3
    assert server.clients_count() == 3


async def test_dev_mode_says_it_allows_any_origin(start_server, caplog):
    caplog.set_level(logging.WARNING, logger="agentcast")
    await start_server()
    assert any("ANY Origin" in r.getMessage() for r in caplog.records)
    caplog.clear()
    await start_server(Settings(allowed_origins=("https://app.example.com",)))
    assert not any("ANY Origin" in r.getMessage() for r in caplog.records)


async def test_per_user_limit_answers_503(start_server, clients):
    server = await start_server(Settings(max_connections_per_user=2))
    url = f"{server.urls[0]}?token=tabby"
    for _ in range(2):
        peer = await clients.connect(url)
        assert (await peer.recv())["data"]["success"] is True
    with pytest.raises(InvalidStatus) as refusal:
        await clients.connect(url)
    assert refusal.value.response.status_code == 503
    assert refused(server, "max_connections_per_user") == 1
    other = await clients.connect(f"{server.urls[0]}?token=other")
    assert (await other.recv())["data"]["success"] is True


async def test_connection_rate_answers_503_with_retry_after(start_server, clients):
    server = await start_server(Settings(connection_rate=1.0))
    first = await clients.connect(f"{server.urls[0]}?token=first")
    assert (await first.recv())["data"]["success"] is True
    with pytest.raises(InvalidStatus) as refusal:
        await clients.connect(f"{server.urls[0]}?token=second")
    assert refusal.value.response.status_code == 503
    assert refusal.value.response.headers["Retry-After"] == "1"
    assert refused(server, "connection_rate") == 1


async def test_unauthenticated_connections_are_closed_after_the_timeout(start_server, clients):
    server = await start_server(Settings(unauthenticated_timeout=0.5))
    stranger = await clients.connect(f"{server.urls[0]}?token=no%20spaces%20allowed")
    assert (await stranger.recv())["data"]["success"] is False
    member = await clients.connect(f"{server.urls[0]}?token=member")
    await member.recv_many(4)  # auth, presence_state, agent_state, user_presence
    assert await stranger.closed_by_server(timeout=5) == (1008, "authentication required")
    assert await member.nothing_pending()  # the authenticated one stays


async def test_compression_is_never_negotiated(start_server, clients):
    server = await start_server()
    peer = await clients.connect(f"{server.urls[0]}?token=zip")  # offers permessage-deflate
    assert "Sec-WebSocket-Extensions" not in peer.ws.response.headers
    assert (await peer.recv())["type"] == "auth"


# -- credential hygiene -----------------------------------------------------------------------


async def test_tokens_never_appear_in_logs_or_answers(
    start_server, clients, http_request, caplog, wait_for
):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="agentcast")
    static = "static-" + base64.urlsafe_b64encode(os.urandom(12)).decode()
    forged = hs256("eve", secret="another-secret-of-at-least-32-bytes!")
    tokens = {
        "good jwt": hs256("alice"),
        "expired jwt": hs256("bob", wall=time.time() - 7200),
        "forged jwt": forged,
        "garbage": "garbage-" + base64.urlsafe_b64encode(os.urandom(12)).decode(),
        "static": static,
    }
    answers = []

    class Both:
        """JWTs, and one static token."""

        jwt = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
        table = StaticAuthenticator({static: "stan"})

        def authenticate(self, token, wall):
            if token == static:
                return self.table.authenticate(token, wall)
            return self.jwt.authenticate(token, wall)

    server = await start_server(authenticator=Both())
    strict = await start_server(Settings(require_auth=True), authenticator=Both())
    url = server.urls[0]
    for token in tokens.values():
        ways = [
            {"uri": f"{url}?token={token}"},
            {"uri": url, "additional_headers": {"Authorization": f"Bearer {token}"}},
            {"uri": url, "subprotocols": ["agentcast.v1", f"bearer.{token}"]},
        ]
        for way in ways:
            peer = await clients.connect(way.pop("uri"), **way)
            answers.append(json.dumps(await peer.recv()))
            # An in-band refresh with another token, good or bad.
            await peer.send({"type": "auth", "data": {"token": forged}})
            answers.append(json.dumps(await peer.recv()))
            await peer.close()
        try:
            await clients.connect(f"{strict.urls[0]}?token={token}")
        except InvalidStatus as refusal:
            answers.append(str(refusal) + refusal.response.body.decode())
        host, port = server.addresses[0]
        for path in ("/healthz", "/metrics", "/nowhere", "/api/notifications"):
            status, headers, body = await http_request(f"http://{host}:{port}{path}?token={token}")
            answers.append(f"{status} {headers} {body!r}")
        # Raw requests the server refuses: a bad version, a malformed header.
        for raw in (
            upgrade_request(server, f"token={token}").replace(b"Version: 13", b"Version: 7"),
            upgrade_request(server, f"token={token}", "Bad Header\r\n"),
            upgrade_request(server, "", f"Authorization: Bearer {token}\r\nX: \x00\r\n"),
        ):
            async with await raw_connect(server) as stream:
                await stream.send(raw)
                answers.append((await read_until_eof(stream)).decode("latin-1"))
    await wait_for(lambda: server.clients_count() == 0)
    assert any("success" in a and "true" in a for a in answers)  # the good ones worked
    # Everything the server's process logged (the clients' own frame logs aside).
    records = [r for r in caplog.records if not r.name.startswith("test.client")]
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in records)
    assert any(r.name == "agentcast.connection" for r in records)  # connections logged...
    for name, token in tokens.items():
        signature = token.rsplit(".", 1)[-1]
        for text in (logged, *answers):
            assert token not in text, name  # ...never a token
            assert signature not in text, name
