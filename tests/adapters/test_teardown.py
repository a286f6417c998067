"""The reference server lets go of every socket, also when the client does not cooperate:
a client that never reads again is dropped once its closing handshake has timed out, and
an HTTP client that keeps its end open after the answer is closed after the linger time."""

from __future__ import annotations

import socket

import anyio
import pytest

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference")]

CLOSE_TIMEOUT = 0.5
LINGER = 1.0  # the drivers' LINGER (adapters/_driver.py)


async def test_a_client_that_never_reads_again_is_dropped(start_server, clients, wait_for, held):
    server = await start_server(
        Settings(max_send_buffer=64 * 1024, close_timeout=CLOSE_TIMEOUT, presence_grace=0),
        socket_send_buffer=16384,
    )
    url = f"{server.urls[0]}?token="
    bystander = await clients.connect(f"{url}bystander")
    sock = socket.create_connection(server.addresses[0])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf = await clients.connect(f"{url}deaf", sock=sock)
    assert (await deaf.recv())["type"] == "auth"
    await deaf.pause_reading()  # from now on it reads nothing, not even our close frame
    await bystander.recv_until("user_presence")  # deaf online
    assert held(server) == 2

    padding = "x" * 1000
    with anyio.fail_after(10):
        while server.hub.stats.slow_client_drops == 0:
            server.send_notification("info", padding, user_id="user_deaf")
            await anyio.sleep(0)  # let the writers run: the deaf client's buffers fill
    # Its close frame cannot be written, so no closing handshake: after the close timeout
    # the server stops waiting, and after the linger time it drops the socket.
    await wait_for(lambda: held(server) == 1, timeout=CLOSE_TIMEOUT + LINGER + 3)
    assert server.hub.stats.closes[1013] == 1
    # Nobody else noticed.
    published = server.send_notification("info", "still here")
    assert published.delivered == 1
    assert (await bystander.recv_until("notification"))["id"] == published.id


async def test_an_http_client_that_keeps_its_end_open_is_closed(start_server, wait_for, held):
    server = await start_server()
    host, port = server.addresses[0]
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := await anyio.to_thread.run_sync(sock.recv, 65536):
            answer += chunk  # until the server's half-close
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert held(server) == 1  # it waits for our end (lingering close)...
        # ...but not for ever: we never close, and after the linger time it does.
        await wait_for(lambda: held(server) == 0, timeout=LINGER + 3)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            write_twice(sock)  # the server's socket is gone: it answers with a reset


def write_twice(sock: socket.socket) -> None:
    """The first write to a closed peer draws its reset (on loopback, at once); the
    second fails."""
    sock.sendall(b"x")
    sock.sendall(b"x")
