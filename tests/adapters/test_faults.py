"""Faults the server survives, on the command line's server (a subprocess) on asyncio,
uvloop and trio: running out of file descriptors, and a pause of the whole process longer
than the heartbeat timeout.

* **File descriptors.** The server runs with a low ``RLIMIT_NOFILE`` and more clients
  connect than it can hold. It must go on serving the clients it has (JSON ping, publish
  API, broadcasts), pause accepting and retry with back-off (one log line when it starts
  and one when it is over, never one per attempt), count the failed attempts in
  ``/metrics``, say so in ``/healthz`` while it lasts, accept again once descriptors are
  free, and shut down cleanly (1001, exit 0) at any moment.
  While no descriptor is free the server can accept no new HTTP request either, so the
  requests made during the shortage go over connections it accepted before it (the
  kernel queues connections and the server accepts them in order, so a WebSocket client
  accepted after them proves they were accepted).
* **A long pause** (SIGSTOP: a GC pause, a VM stall, a debugger): clients that kept
  sending while the server was stopped are not silent, even if the server wakes up long
  after their heartbeat deadline with their data still unread in the socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from contextlib import ExitStack, suppress
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TIMEOUT = 10.0  # as in conftest: generous, tests finish long before

#: How the command line selects each event loop (the test body's own loop does not matter:
#: the server runs in a subprocess).
LOOPS = {
    "asyncio": ("--backend", "asyncio", "--no-uvloop"),
    "uvloop": ("--backend", "asyncio", "--uvloop"),
    "trio": ("--backend", "trio"),
}

#: Runs ``python -m agentcast.adapters ARGS`` with RLIMIT_NOFILE lowered to argv[1].
_LIMITED = (
    "import resource, runpy, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
    "sys.argv = ['agentcast', *sys.argv[2:]]\n"
    "runpy.run_module('agentcast.adapters', run_name='__main__', alter_sys=True)\n"
)

#: The server's descriptor limit in the shortage test: a few dozen connections.
NOFILE = 64
#: The one line that starts a shortage episode, and the one that ends it.
SHORTAGE_STARTS = re.compile(r"accept\(\) failed: out of file descriptors")
SHORTAGE_ENDS = re.compile(r"accepting connections again")


def command(loop: str, *flags: str, nofile: int | None = None) -> list[str]:
    argv = ["serve", "--port", "0", *LOOPS[loop], *flags]
    if nofile is None:
        return [sys.executable, "-m", "agentcast.adapters", *argv]
    return [sys.executable, "-c", _LIMITED, str(nofile), *argv]


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


async def request_over(stream: anyio.abc.ByteStream, method: str, path: str, body: bytes = b""):
    """``(status, body)`` of one HTTP/1.1 request over an open connection (the server
    answers, then closes it)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    await stream.send(head.encode() + b"\r\n" + body)
    answer = b""
    with anyio.fail_after(TIMEOUT):
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                answer += await stream.receive()
    await stream.aclose()
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, content


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    )
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return None


def flood(host: str, port: int, count: int, stack: ExitStack) -> None:
    """Open *count* TCP connections that send nothing (the kernel completes them and
    queues them for accept() whether or not the server can take them)."""
    for _ in range(count):
        stack.enter_context(socket.create_connection((host, port), timeout=TIMEOUT))


def count(pattern: re.Pattern[str], lines: list[str]) -> int:
    return sum(1 for line in lines if pattern.search(line))


@pytest.mark.parametrize("loop", LOOPS)
async def test_running_out_of_file_descriptors_is_survived(
    loop, spawn_server, clients, wait_for, http_request
):
    drain = 3.0
    server = await spawn_server(
        command=command(
            loop,
            "--handshake-timeout",
            "60",  # the silent sockets below stay until we close them
            "--drain-timeout",
            str(drain),
            "--presence-grace",
            "0",
            nofile=NOFILE,
        )
    )
    host, port = address(server.url)
    first = await clients.connect(f"{server.url}?token=first")
    second = await clients.connect(f"{server.url}?token=second")
    for peer in (first, second):
        assert (await peer.recv())["data"]["success"] is True
    # Connections for HTTP requests during the shortage, accepted before it.
    spare = [await anyio.connect_tcp(host, port) for _ in range(3)]
    witness = await clients.connect(f"{server.url}?token=witness")
    assert (await witness.recv())["type"] == "auth"  # accepted: so are the spare ones

    with ExitStack() as hogs:
        flood(host, port, 2 * NOFILE, hogs)
        await wait_for(lambda: count(SHORTAGE_STARTS, server.lines) == 1)

        # The clients it has are served as before.
        await first.send({"type": "ping"})
        assert (await first.recv_until("pong"))["type"] == "pong"
        status, body = await request_over(
            spare[0], "POST", "/api/notifications", b'{"level":"info","message":"short"}'
        )
        assert status == 202
        for peer in (first, second, witness):
            notification = await peer.recv_until("notification")
            assert notification["data"]["message"] == "short"
        # It says so while it lasts.
        status, body = await request_over(spare[1], "GET", "/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "degraded"
        assert health["accepting"] is False
        assert (health["clients"], health["authenticated"]) == (3, 3)
        status, body = await request_over(spare[2], "GET", "/metrics")
        assert status == 200
        failed = metric(body.decode(), "agentcast_accept_errors_total", reason="emfile")
        assert failed is not None
        assert failed >= 1
        # Retried with back-off, not in a busy loop (asyncio's own accept loop retries up
        # to the listen backlog, 65,535 times, per wake-up).
        assert failed < 200
        assert metric(body.decode(), "agentcast_accepting") == 0.0
        assert count(SHORTAGE_STARTS, server.lines) == 1
    # The silent sockets are gone: descriptors are free again.

    late = await clients.connect(f"{server.url}?token=late")
    assert (await late.recv())["data"]["userId"] == "user_late"
    await wait_for(lambda: count(SHORTAGE_ENDS, server.lines) == 1)
    status, _, body = await http_request(server.http_base + "/healthz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ok",
        "clients": 4,
        "authenticated": 4,
        "unauthenticated": 0,
    }
    await first.send({"type": "ping"})
    assert (await first.recv_until("pong"))["type"] == "pong"

    server.process.send_signal(signal.SIGTERM)
    for peer in (first, second, witness, late):
        assert await peer.closed_by_server() == (1001, "server shutting down")
    with anyio.fail_after(drain + 5):
        assert await server.process.wait() == 0
    assert count(SHORTAGE_STARTS, server.lines) == 1
    assert count(SHORTAGE_ENDS, server.lines) == 1
    assert "Traceback" not in server.output, server.output[-5000:]
    assert len(server.output) < 20_000  # a few lines per connection, nothing per attempt


@pytest.mark.parametrize("loop", LOOPS)
async def test_sigterm_while_out_of_file_descriptors_closes_clients_with_1001_and_exits_0(
    loop, spawn_server, clients, wait_for
):
    drain = 3.0
    server = await spawn_server(
        command=command(
            loop, "--handshake-timeout", "60", "--drain-timeout", str(drain), nofile=NOFILE
        )
    )
    host, port = address(server.url)
    peer = await clients.connect(f"{server.url}?token=peer")
    assert (await peer.recv())["type"] == "auth"
    with ExitStack() as hogs:
        flood(host, port, 2 * NOFILE, hogs)
        await wait_for(lambda: count(SHORTAGE_STARTS, server.lines) == 1)
        server.process.send_signal(signal.SIGTERM)
        assert await peer.closed_by_server() == (1001, "server shutting down")
        with anyio.fail_after(drain + 5):
            assert await server.process.wait() == 0
    assert "Traceback" not in server.output, server.output[-5000:]
    assert len(server.output) < 20_000


# -- a long pause -------------------------------------------------------------------------

HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 1.5
#: Longer than the heartbeat timeout by a margin.
PAUSE = HEARTBEAT_TIMEOUT + 1.0
#: Every client sends at least this often (protocol Pings from the `websockets` keepalive,
#: and, for half of them, JSON pings too).
SEND_EVERY = 0.25
TALKERS = 12


async def _talk(ws: ClientConnection, json_pings: bool, resumed: asyncio.Event) -> int:
    """Keep sending; after *resumed*, read until the server has sent four heartbeat pings
    (two heartbeat intervals past a full timeout after the pause). Returns how many
    server pings arrived after the pause; raises ConnectionClosed if closed."""

    async def send() -> None:
        while True:
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(SEND_EVERY)

    async def read() -> int:
        pings_after = 0
        while pings_after < 4:
            message = json.loads(await ws.recv())
            if message["type"] == "ping" and resumed.is_set():
                pings_after += 1
        return pings_after

    if not json_pings:
        return await read()
    async with asyncio.TaskGroup() as tg:
        sender = tg.create_task(send())
        pings_after = await read()
        sender.cancel()
    return pings_after


async def _outcome(ws: ClientConnection, json_pings: bool, resumed: asyncio.Event) -> object:
    try:
        return await _talk(ws, json_pings, resumed)
    except* ConnectionClosed as group:
        exc = group.exceptions[0]
        assert isinstance(exc, ConnectionClosed)
        rcvd = exc.rcvd
        closed = "closed" if rcvd is None else f"closed {rcvd.code} {rcvd.reason}"
    return closed


async def _pause_scenario(url: str, pid: int) -> dict[str, Any]:
    """In the client thread: connect talkers and one silent client, stop the server for
    PAUSE seconds while the talkers keep sending, resume it, and report."""
    options: dict[str, Any] = {"proxy": None, "open_timeout": TIMEOUT, "ping_timeout": None}
    talkers = [
        await connect(f"{url}?token=talker{i}", ping_interval=SEND_EVERY, **options)
        for i in range(TALKERS)
    ]
    silent = await connect(f"{url}?token=silent", ping_interval=None, **options)
    try:
        for ws in (*talkers, silent):
            assert json.loads(await ws.recv())["type"] == "auth"
        # The silent one answers nothing from now on, not even the server's Pings.
        silent.transport.pause_reading()
        resumed = asyncio.Event()
        async with asyncio.timeout(PAUSE + TIMEOUT), asyncio.TaskGroup() as tg:
            talking = [
                tg.create_task(_outcome(ws, i % 2 == 0, resumed)) for i, ws in enumerate(talkers)
            ]
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(PAUSE)  # the pause itself, not a stand-in for an event
            finally:
                os.kill(pid, signal.SIGCONT)
            resumed.set()
        results = [task.result() for task in talking]
        silent.transport.resume_reading()
        with suppress(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await silent.recv()
        rcvd = silent.protocol.close_rcvd
        return {
            "talkers": results,
            "silent": None if rcvd is None else (rcvd.code, rcvd.reason),
        }
    finally:
        for ws in (*talkers, silent):
            ws.transport.abort()


@pytest.mark.parametrize("loop", LOOPS)
async def test_a_pause_longer_than_the_heartbeat_timeout_spares_clients_that_kept_sending(
    loop, spawn_server, clients, http_request
):
    server = await spawn_server(
        command=command(
            loop,
            "--heartbeat-interval",
            str(HEARTBEAT_INTERVAL),
            "--heartbeat-timeout",
            str(HEARTBEAT_TIMEOUT),
            "--presence-grace",
            "0",
        )
    )
    report = await clients.call(_pause_scenario, server.url, server.process.pid)
    # Every client that kept sending is still connected, a full timeout after the pause.
    assert report["talkers"] == [4] * TALKERS
    # The heartbeat still works: the client that sent nothing is closed.
    assert report["silent"] == (4000, "heartbeat timeout")
    status, _, body = await http_request(server.http_base + "/metrics")
    assert status == 200
    assert metric(body.decode(), "agentcast_heartbeat_timeouts_total") == 1.0
    server.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(TIMEOUT):
        assert await server.process.wait() == 0
