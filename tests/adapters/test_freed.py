"""A closed connection is freed by reference counting, never left to the garbage collector.

What the server holds per connection (the driver, the core's connection, its transport
and session, the socket's transport or stream) refers to each other while the connection
lives; when it ends, nothing of it may be left in a reference cycle. Otherwise closed
connections pile up until the collector's next full pass (memory grows with the churn)
and that pass has them to scan too. Each test runs with the automatic collector off:
an object in a cycle would then never be freed, and the test fails.

The reference server on asyncio, uvloop and trio, and the ASGI adapter under hypercorn.
Not under uvicorn: there anyio's task group keeps each cancelled task's
``CancelledError`` in a cycle with its own frame, and the ASGI driver's writer and timer
tasks are cancelled when the connection ends, so their frames (and what they refer to)
wait for the collector; the driver's own references are let go all the same.
"""

from __future__ import annotations

import gc
import socket
import ssl
import weakref
from collections.abc import Iterator
from contextlib import suppress

import anyio
import pytest
import trustme

from agentcast.adapters.cli import build_ssl_context
from agentcast.protocol import Settings

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The automatic garbage collector off for the test (and what it left collected)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


class Held:
    """What the server holds for each of its connections: weak references to the
    driver, the core's connection and session and the socket's transport or stream
    (where they take weak references; the core's transport does not, uvloop's TLS
    transport neither), and their types, for :func:`cyclic_garbage`."""

    def __init__(self, server) -> None:
        self.refs: list[weakref.ref[object]] = []
        self.kinds: set[type] = set()
        for driver in server.service.connections:
            conn = getattr(driver, "conn", None)  # under ASGI: the driver is the sink
            core = (conn, conn.transport, conn.session) if conn else (driver.session,)
            socket_side = (  # the asyncio transport, the trio socket or TLS stream
                getattr(driver, "_transport", None)
                or getattr(driver, "_sock", None)
                or getattr(driver, "_stream", None)
            )
            for obj in (driver, *core, socket_side):
                if obj is None:
                    continue
                self.kinds.add(type(obj))
                with suppress(TypeError):
                    self.refs.append(weakref.ref(obj))


def cyclic_garbage(kinds: set[type]) -> list[str]:
    """What the garbage collector finds unreachable of agentcast's objects and of
    *kinds*: objects that only it could free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = sorted(
            type(obj).__name__
            for obj in gc.garbage
            if type(obj).__module__.startswith("agentcast.") or type(obj) in kinds
        )
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    return found


def alive(refs: list[weakref.ref[object]]) -> list[str]:
    """The types of the objects of *refs* still alive (no reference kept here)."""
    return sorted(type(obj).__name__ for obj in (ref() for ref in refs) if obj is not None)


async def freed(server, held: Held) -> list[str]:
    """Wait until the server has let go of every connection and what it *held* is dead,
    then what is left: the objects still alive after the timeout (with the collector
    off: held in a cycle), and what only the collector could free."""
    with suppress(TimeoutError), anyio.fail_after(TIMEOUT):
        while server.service.connections or alive(held.refs):
            await anyio.sleep(0.01)
    return alive(held.refs) + cyclic_garbage(held.kinds)


def settings() -> Settings:
    return Settings(presence_grace=0, max_message_size=1000)


@pytest.mark.servers("reference", "hypercorn")
async def test_connections_closed_by_their_clients(no_collector, start_server, clients):
    server = await start_server(settings())
    url = server.urls[0]
    alice = await clients.connect(f"{url}?token=alice")
    bob = await clients.connect(f"{url}?token=bob")
    anonymous = await clients.connect(url)
    for peer in (alice, bob):
        await peer.recv_until("presence_state")
    assert (await anonymous.recv())["data"]["success"] is False
    held = Held(server)
    await alice.close()  # a closing handshake
    await bob.reset()  # a dropped TCP connection
    await anonymous.close()
    assert await freed(server, held) == []


@pytest.mark.servers("reference", "hypercorn")
async def test_connections_closed_by_the_server(no_collector, start_server, clients):
    server = await start_server(settings())
    url = server.urls[0]
    big = await clients.connect(f"{url}?token=big")
    await big.recv_until("presence_state")
    held = Held(server)
    await big.send("x" * 2000)  # over max_message_size: the server closes with 1009
    assert (await big.closed_by_server())[0] == 1009
    assert await freed(server, held) == []


@pytest.mark.servers("reference")
async def test_a_plain_http_exchange(no_collector, start_server):
    server = await start_server(settings())
    with socket.create_connection(server.addresses[0]) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await anyio.to_thread.run_sync(sock.recv, 65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        held = Held(server)
        assert held.refs
    assert await freed(server, held) == []


@pytest.mark.servers("reference")
async def test_a_tls_connection(no_collector, start_server, clients, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(chain, append=True)
    cert.private_key_pem.write_to_path(key)
    server = await start_server(settings(), ssl_context=build_ssl_context(str(chain), str(key)))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"{server.urls[0]}?token="
    closing = await clients.connect(f"{url}closing", ssl=context)
    dropped = await clients.connect(f"{url}dropped", ssl=context)
    for peer in (closing, dropped):
        await peer.recv_until("presence_state")
    held = Held(server)
    await closing.close()
    await dropped.reset()
    assert await freed(server, held) == []


@pytest.mark.servers("reference")
async def test_an_event_stream(no_collector, start_server):
    server = await start_server(settings())
    path = server.settings.events_path
    with socket.create_connection(server.addresses[0]) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(f"GET {path}?token=reader HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        seen = b""
        while b"presence_state" not in seen:
            seen += await anyio.to_thread.run_sync(sock.recv, 65536)
        held = Held(server)
        assert held.refs
    assert await freed(server, held) == []
