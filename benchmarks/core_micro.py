"""The core's per-request paths without sockets, for deterministic measurement.

    .venv/bin/python benchmarks/core_micro.py                  # µs per operation (timeit)
    benchmarks/core_micro.sh                                   # instructions (callgrind)

What the reference server does per request, on the Sans-IO core alone (no event loop, no
kernel), the same bytes as the load generator sends:

* ``ping``: one masked ``{"type":"ping"}`` frame into an open
  :class:`~agentcast.protocol.ServerConnection`, then ``data_to_send()`` (the ``pong``):
  the core's part of ``rtt-1000``;
* ``handshake``: a new connection, the upgrade request (as loadgen writes it), the dev
  authenticator's verdict, ``data_to_send()`` (``101``, ``auth``, ``presence_state``),
  then the socket lost (``send_failed``): the core's part of an accepted connection, for
  a user already online on another connection (so no presence change either way);
* ``connect``: ``handshake`` for a new user, then the client's close frame and EOF (the
  close handshake, presence online and offline): the core's part of ``connect``;
* ``driver-ping``: ``ping`` through the asyncio driver (``AsyncioDriver.data_received``
  on a stand-in transport that takes every write): the core plus the adapter's work per
  ping, without the event loop and the kernel;
* ``driver-fanout``: 10 notifications published in-process to 200 connections of one
  user (asyncio driver, stand-in transports), then the flusher's pass that writes each
  connection's backlog once: 2,000 deliveries per operation.

``--mode M --count N`` runs N operations of one kind after a warm-up, for callgrind:
instructions per operation = (Ir at N2 - Ir at N1) / (N2 - N1), which cancels the
interpreter's start-up (``core_micro.sh`` does that).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import sys
import timeit
from collections.abc import Callable

from agentcast.protocol import AuthRequested, DevAuthenticator, Hub, ServerConnection, Settings

WALL0 = 1_800_000_000.0
_KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(token: str) -> bytes:
    return (
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked(payload: bytes, opcode: int = 0x1, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    """A client frame (payload < 126 bytes)."""
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


PING = masked(b'{"type":"ping"}')
CLOSE = masked(b"\x03\xe8", opcode=0x8)


class Bench:
    def __init__(self) -> None:
        # The benchmark server's settings: limits lifted, heartbeat out of the way.
        self.hub = Hub(
            Settings(
                heartbeat_interval=3600,
                heartbeat_timeout=7200,
                presence_grace=0,
                max_connections=None,
                max_connections_per_ip=None,
                max_connections_per_user=None,
                connection_rate=None,
            )
        )
        self.auth = DevAuthenticator()
        self.now = 1.0
        self.users = 0
        self.kept: list[ServerConnection] = []

    def open(self, token: str) -> ServerConnection:
        now, wall = self.now, WALL0 + self.now
        conn = ServerConnection(self.hub, now=now, client="127.0.0.1")
        conn.receive_data(upgrade_request(token), now, wall)
        for event in conn.events_received():
            if isinstance(event, AuthRequested):
                result = self.auth.authenticate(event.token, wall)
                conn.complete_auth(result, now, wall)
        conn.events_received()
        data = conn.data_to_send()
        assert data.startswith(b"HTTP/1.1 101"), data[:200]
        conn.transport.outbox.sent()
        return conn

    def handshake(self) -> None:
        if not self.kept:
            self.kept.append(self.open("lg"))  # the user stays online through this one
        conn = self.open("lg")
        conn.send_failed(self.now, WALL0 + self.now)
        conn.events_received()
        assert conn.closed

    def connect(self) -> None:
        self.users += 1
        self.now += 0.001
        conn = self.open(f"lg{self.users}")
        now, wall = self.now, WALL0 + self.now
        conn.receive_data(CLOSE, now, wall)
        conn.events_received()
        conn.data_to_send()
        conn.receive_eof(now, wall)
        conn.events_received()
        assert conn.closed

    def pinger(self) -> Callable[[], None]:
        conn = self.open("pinger")
        outbox = conn.transport.outbox

        def ping() -> None:
            self.now += 1.0  # one a second: under the rate limit
            conn.receive_data(PING, self.now, WALL0 + self.now)
            data = conn.data_to_send()
            outbox.sent()
            assert data[:2] == b"\x81\x2a" or b'"pong"' in data, data

        return ping


class _Transport:
    """What AsyncioDriver uses of an asyncio transport; writes are taken at once."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def driver_pinger() -> Callable[[], None]:
    import asyncio  # noqa: PLC0415

    from agentcast.adapters._asyncio_driver import AsyncioDriver, Flusher  # noqa: PLC0415
    from agentcast.adapters.service import Service  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    # Pings as fast as the loop goes (the loop's clock): the rate limit out of the way.
    settings = dataclasses.replace(Bench().hub.settings, rate_limit=1e9, rate_burst=10**9)
    service = Service(settings)
    driver = AsyncioDriver(service, Flusher(loop), loop)
    transport = _Transport()
    driver.connection_made(transport)  # type: ignore[arg-type]
    driver.data_received(upgrade_request("pinger"))
    loop.call_soon(loop.stop)
    loop.run_forever()  # the flusher's pass after the 101
    assert transport.written
    assert transport.written[0].startswith(b"HTTP/1.1 101")

    def ping() -> None:
        transport.written.clear()
        driver.data_received(PING)
        assert transport.written, "no pong"

    return ping


def driver_fanout(connections: int = 200, burst: int = 10) -> Callable[[], None]:
    import asyncio  # noqa: PLC0415

    from agentcast.adapters._asyncio_driver import AsyncioDriver, Flusher  # noqa: PLC0415
    from agentcast.adapters.service import Service  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    service = Service(Bench().hub.settings)
    flusher = Flusher(loop)
    transports = []
    for _ in range(connections):
        driver = AsyncioDriver(service, flusher, loop)
        transport = _Transport()
        driver.connection_made(transport)  # type: ignore[arg-type]
        driver.data_received(upgrade_request("fan"))
        transports.append(transport)

    def one_pass() -> None:
        loop.call_soon(loop.stop)
        loop.run_forever()

    while not all(transport.written for transport in transports):
        one_pass()  # the upgrades (16 a pass) and their 101
    text = "seq=00000000 " + "x" * 72  # a ~200-byte frame, as in the fan-out scenarios

    def fanout() -> None:
        for transport in transports:
            transport.written.clear()
        for _ in range(burst):
            service.send_notification("info", text)
        one_pass()
        assert all(transport.written for transport in transports)

    return fanout


def operation(mode: str) -> Callable[[], None]:
    if mode == "driver-ping":
        return driver_pinger()
    if mode == "driver-fanout":
        return driver_fanout()
    bench = Bench()
    if mode == "ping":
        return bench.pinger()
    return bench.handshake if mode == "handshake" else bench.connect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = ("ping", "handshake", "connect", "driver-ping", "driver-fanout")
    parser.add_argument("--mode", choices=modes)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    if args.mode and args.count:
        op = operation(args.mode)
        for _ in range(args.warmup):  # warm-up: caches, interned strings, the first snapshot
            op()
        for _ in range(args.count):
            op()
        return 0
    for mode in modes:
        op = operation(mode)
        for _ in range(200):
            op()
        n = 50 if mode == "driver-fanout" else 2000
        best = min(timeit.repeat(op, number=n, repeat=5)) / n
        print(f"{mode:13s} {best * 1e6:8.2f} µs per operation (best of 5 x {n})")
    print(f"(Python {sys.version.split()[0]}, pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
