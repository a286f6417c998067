"""Cheap attacks over real sockets, and the bound each must respect, on asyncio, uvloop and
trio: control-frame floods, fragmented messages, request bodies, connection pools,
publish batches and presence storms.

The hostile clients are plain blocking sockets in worker threads that speak bytes built
by hand (masked frames, partial bodies), so nothing in a client library smooths the
attack; the calm client beside them is a `websockets` client from its own address
(127.0.0.2), which must be answered within a second throughout. Limits are set low
through :class:`~agentcast.protocol.Settings` so that each attack is cheap.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import threading
import time
import tracemalloc
from contextlib import suppress

import anyio
import pytest
from websockets.exceptions import InvalidStatus

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference")]

CALM_ADDRESS = "127.0.0.2"
TIMEOUT = 10.0
#: The longest any attack below is kept up (each is bounded in bytes too).
ATTACK = 4.0

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- bytes by hand ----------------------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One client frame (RFC 6455 5.2), masked as a client must."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def upgrade_request(server, query: str = "") -> bytes:
    host, port = server.addresses[0]
    return (
        f"GET {server.settings.path}{'?' + query if query else ''} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Raw:
    """A blocking client socket that speaks raw bytes (used from a worker thread)."""

    def __init__(self, server, *, source: str | None = None, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(server.addresses[0])
        self.buffer = b""
        self.eof = False

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()

    def head(self, timeout: float = TIMEOUT) -> bytes:
        """The server's status line and headers (b"" if it closed first)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                return b""
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def upgrade(self, server, query: str = "") -> None:
        self.sock.sendall(upgrade_request(server, query))
        head = self.head()
        assert head.startswith(b"HTTP/1.1 101 "), head

    def _fill(self, deadline: float, block: bool = True) -> bool:
        """Read what is there (or wait until *deadline*); False at EOF or timeout."""
        if self.eof:
            return False
        try:
            # Non-blocking: a timeout of 0 (a socket with a timeout waits for input first,
            # whatever the flags of recv() say).
            self.sock.settimeout(max(0.001, deadline - time.monotonic()) if block else 0.0)
            data = self.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return False
        except OSError:
            data = b""
        finally:
            self.sock.settimeout(TIMEOUT)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def frames(self) -> list[tuple[int, bytes]]:
        """The complete server frames in the buffer, taken out of it."""
        out = []
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            n = buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if len(buf) - start < n:
                break
            out.append((buf[pos] & 0x0F, buf[start : start + n]))
            pos = start + n
        self.buffer = buf[pos:]
        return out

    def poll(self) -> list[tuple[int, bytes]]:
        """The frames that have arrived, without waiting."""
        while self._fill(0.0, block=False):
            pass
        return self.frames()

    def next_frames(self, deadline: float) -> list[tuple[int, bytes]]:
        """At least one frame, or [] at EOF or *deadline*."""
        while True:
            frames = self.frames()
            if frames or not self._fill(deadline):
                return frames

    def flood(self, chunk: bytes, limit: int, stop) -> list[tuple[int, bytes]]:
        """Send *chunk* again and again (at most *limit* times, for at most ATTACK
        seconds) until the server closes, stops reading, or *stop()* is true; then wait
        a little for its close frame. Every frame received meanwhile."""
        seen: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + ATTACK
        try:
            for _ in range(limit):
                seen.extend(self.poll())
                if any(op == CLOSE for op, _ in seen) or stop() or time.monotonic() > deadline:
                    break
                self.sock.settimeout(1.0)
                self.sock.sendall(chunk)
        except OSError:
            pass  # the server stopped reading (a timeout), or closed
        deadline = time.monotonic() + 2.0
        while not any(op == CLOSE for op, _ in seen) and not stop():
            frames = self.next_frames(min(deadline, time.monotonic() + 0.1))
            seen.extend(frames)
            if self.eof or time.monotonic() > deadline:
                break
        return seen


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


# -- the calm client ------------------------------------------------------------------------


async def connect_calm(clients, server, name="calm"):
    """A well-behaved client from its own address, past its greeting."""
    peer = await clients.connect(
        f"{server.urls[0]}?token={name}", local_addr=(CALM_ADDRESS, 0), max_queue=None
    )
    assert (await peer.recv())["data"]["success"] is True
    return peer


class Watch:
    """The calm client sends a JSON ping every 50 ms and times each pong, in the client
    thread, until :meth:`stop`; the slowest answer must come within a second."""

    def __init__(self, clients, peer):
        self._stop = threading.Event()
        #: Set when an answer took over a second: attackers stop then (the test fails).
        self.failed = threading.Event()
        self.rtts: list[float] = []

        async def go():
            try:
                while not self._stop.is_set():
                    start = time.monotonic()
                    await peer.ws.send('{"type":"ping"}')
                    async with asyncio.timeout(1.0):
                        while json.loads(await peer.ws.recv())["type"] != "pong":
                            pass
                    self.rtts.append(time.monotonic() - start)
                    await asyncio.sleep(0.05)
            except BaseException:
                self.failed.set()
                raise

        self._future = clients.portal.start_task_soon(go)

    async def stop(self) -> float:
        """Stop watching; the slowest round trip (fails if a pong took over a second)."""
        self._stop.set()
        await anyio.to_thread.run_sync(self._future.result, TIMEOUT)
        assert self.rtts, "the calm client was never answered"
        return max(self.rtts)


async def in_thread(fn, *args):
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


# -- 1. control-frame floods ----------------------------------------------------------------


@pytest.mark.parametrize("opcode", [PING, PONG], ids=["ping", "pong"])
async def test_a_control_frame_flood_is_closed_1008_and_the_calm_client_is_answered(
    start_server, clients, opcode
):
    server = await start_server(Settings(close_timeout=1.0))
    calm = await connect_calm(clients, server)
    settings = server.settings
    budget = settings.rate_burst + settings.rate_limit_strikes
    chunk = ws_frame(opcode, b"x" * 4) * 5_000  # 50 KB of control frames at a time
    flooders = 4

    def flood(n, watch):
        raw = Raw(server)
        raw.upgrade(server, f"token=flooder{n}")
        start = time.monotonic()
        # At most 2 MB each: on a server without a budget, seconds of work per flooder.
        seen = raw.flood(chunk, 40, watch.failed.is_set)
        elapsed = time.monotonic() - start
        raw.close()
        return seen, elapsed

    results = []
    watch = Watch(clients, calm)
    try:
        async with anyio.create_task_group() as tg:
            for n in range(flooders):

                async def one(n=n):
                    results.append(await in_thread(flood, n, watch))

                tg.start_soon(one)
    finally:
        worst = await watch.stop()
    assert worst < 1.0, worst
    for seen, elapsed in results:
        closes = [payload for op, payload in seen if op == CLOSE]
        assert closes, "the flooder was never closed"
        assert close_code(closes[0]) == 1008, closes[0]
        # Answered only within its budget (a Pong flood gets no answers at all).
        pongs = sum(1 for op, _ in seen if op == PONG)
        assert pongs <= (budget + 5 if opcode == PING else 0), pongs
        assert elapsed < ATTACK, elapsed
    assert server.hub.stats.rate_limit_closes == flooders
    await calm.nothing_pending()


# -- 2. Pong replies and the send buffer ----------------------------------------------------


async def test_pings_from_a_client_that_never_reads_stay_within_the_send_buffer(
    start_server, clients, wait_for
):
    limit = 64 * 1024
    # No rate limit: this is about the bytes queued, not about the number of frames.
    server = await start_server(
        Settings(max_send_buffer=limit, rate_limit=1e9, rate_burst=10**9),
        socket_send_buffer=4096,
    )
    calm = await connect_calm(clients, server)
    pings = [ws_frame(PING, b"%0125d" % i) for i in range(32_000)]  # 4 MB, 125-byte payloads
    chunk = 500
    raw = Raw(server, rcvbuf=4096)
    await in_thread(raw.upgrade, server, "token=deaf")
    # Its arrival may be held for the presence window: sent before the flood, or it would
    # land in a backlog the flood has filled (and rightly close it 1013).
    while (await calm.recv_until("user_presence"))["data"]["userId"] != "user_deaf":
        pass
    peak = 0
    done = anyio.Event()

    def flood():
        sent = 0
        raw.sock.settimeout(0.5)  # the server stops reading: stop too
        with suppress(TimeoutError, OSError):
            for start in range(0, len(pings), chunk):
                raw.sock.sendall(b"".join(pings[start : start + chunk]))
                sent = start + chunk
        return sent

    async def watch_backlog():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.backlog())
            await anyio.sleep(0.005)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_backlog)
            sent = await in_thread(flood)
            done.set()
        # Every byte queued counts, Pongs included: the backlog never passed the limit by
        # more than one Pong, whatever the client sent.
        assert peak <= limit + 200, peak
        assert sent >= chunk  # the flood got going
        # The client starts reading: the last Ping it got through is answered, with its
        # own payload (only the latest pending Ping is answered, RFC 6455 5.5.3).
        last = b"%0125d" % (sent - 1)

        def read_to_last_pong():
            deadline = time.monotonic() + TIMEOUT
            while frames := raw.next_frames(deadline):
                for op, payload in frames:
                    if op == PONG and payload == last:
                        return True
                    assert op != CLOSE, close_code(payload)
            return False

        assert await in_thread(read_to_last_pong)
    finally:
        raw.close()
    await calm.nothing_pending()


# -- 3. fragmented messages -----------------------------------------------------------------


async def test_a_message_of_endless_empty_fragments_is_closed_1008(start_server, clients):
    server = await start_server(Settings(close_timeout=1.0))
    calm = await connect_calm(clients, server)
    empty = ws_frame(CONT, fin=False) * 10_000  # 60 KB of empty fragments

    def attack(watch):
        raw = Raw(server)
        raw.upgrade(server, "token=fragments")
        raw.sock.sendall(ws_frame(TEXT, b"{", fin=False))
        # At most 500 k fragments: on a server that never refuses them, seconds of work.
        seen = raw.flood(empty, 50, watch.failed.is_set)
        raw.close()
        return [payload for op, payload in seen if op == CLOSE]

    watch = Watch(clients, calm)
    try:
        closes = await in_thread(attack, watch)
    finally:
        worst = await watch.stop()
    assert worst < 1.0, worst
    assert closes, "the fragment flood was never closed"
    assert close_code(closes[0]) == 1008, closes[0]
    await calm.nothing_pending()


async def test_empty_fragments_are_not_proof_of_life(start_server, clients):
    server = await start_server(Settings(heartbeat_interval=0.3, heartbeat_timeout=0.6))

    def attack():
        raw = Raw(server)
        raw.upgrade(server, "token=zombie")
        raw.sock.sendall(ws_frame(TEXT, b"{", fin=False))
        start = time.monotonic()
        # An empty fragment every 50 ms, never an answer to the server's Pings.
        while time.monotonic() - start < 3.0:
            try:
                raw.sock.sendall(ws_frame(CONT, fin=False))
            except OSError:
                break
            for op, payload in raw.poll():
                if op == CLOSE:
                    raw.close()
                    return close_code(payload), time.monotonic() - start
            time.sleep(0.05)
        raw.close()
        return None, time.monotonic() - start

    code, elapsed = await in_thread(attack)
    assert code == 4000, (code, elapsed)
    assert elapsed < 2.0


async def test_an_unfinished_message_in_tiny_fragments_costs_about_its_size(start_server):
    server = await start_server(Settings(max_message_frames=10_000))
    # 8 KB of message each, eight bytes per frame: kept as a string each, a fragment
    # would cost eight times its size.
    connections, fragments = 10, 1_000
    body = ws_frame(TEXT, b"[1234567", fin=False) + b"".join(
        ws_frame(CONT, b",1234567", fin=False) for _ in range(fragments - 1)
    )

    def open_all():
        raws = []
        for n in range(connections):
            raw = Raw(server)
            raw.upgrade(server, f"token=frag{n}")
            raws.append(raw)
        return raws

    def send_all(raws):
        for raw in raws:
            raw.sock.sendall(body + ws_frame(PING, b"sync"))
        # Each Pong comes after the fragments before it were taken in.
        for raw in raws:
            deadline = time.monotonic() + TIMEOUT
            while not any(op == PONG for op, _ in raw.next_frames(deadline)):
                assert time.monotonic() < deadline

    raws = await in_thread(open_all)
    # What the Python heap holds once the fragments are in (the clients are raw sockets
    # and allocate nothing on it meanwhile).
    tracemalloc.start()
    try:
        await in_thread(send_all, raws)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        for raw in raws:
            raw.close()
    # A small multiple of the bytes held (10 x 8 KB).
    assert held < 4 * connections * 8 * fragments, held


# -- 4. request bodies and the connection pool ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/nowhere", 404), ("POST", "/api/notifications", 401), ("POST", "/healthz", 405)],
)
async def test_a_refused_request_is_answered_before_its_body(start_server, method, path, status):
    server = await start_server(Settings(api_key="k" * 32, handshake_timeout=3.0))
    length = server.settings.max_body_size

    def attack():
        raw = Raw(server)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        raw.sock.sendall(head + b" " * 65536)  # and never the rest
        start = time.monotonic()
        answer = raw.head(timeout=2.0)
        raw.close()
        return answer, time.monotonic() - start

    answer, elapsed = await in_thread(attack)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert elapsed < 1.0


def publish_request(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


async def test_pending_request_bodies_share_a_global_budget(start_server):
    budget = 256 * 1024
    server = await start_server(Settings(max_pending_body_bytes=budget))
    body = b'{"level":"info","message":"hello"}'
    length = 120 * 1024
    full = body + b" " * (length - len(body))

    def attack():
        holders = []
        for _ in range(2):  # 240 KB of the budget, half sent each
            raw = Raw(server)
            # "100 Continue" says the server has read the head.
            raw.sock.sendall(
                publish_request("/api/notifications", length, "Expect: 100-continue\r\n")
            )
            assert raw.head().startswith(b"HTTP/1.1 100 ")
            raw.sock.sendall(full[: length // 2])
            holders.append(raw)
        third = Raw(server)
        third.sock.sendall(publish_request("/api/notifications", length))
        refused = third.head(timeout=2.0)
        third.close()
        # One holder finishes: its body is published, and its share is free again.
        holders[0].sock.sendall(full[length // 2 :])
        published = holders[0].head()
        fourth = Raw(server)
        fourth.sock.sendall(publish_request("/api/notifications", length) + full)
        accepted = fourth.head()
        for raw in (*holders, fourth):
            raw.close()
        return refused, published, accepted

    refused, published, accepted = await in_thread(attack)
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert published.startswith(b"HTTP/1.1 202 "), published
    assert accepted.startswith(b"HTTP/1.1 202 "), accepted


async def test_the_per_address_limit_counts_every_tcp_connection(start_server, clients, held):
    server = await start_server(Settings(max_connections_per_ip=10, handshake_timeout=3.0))
    calm = await connect_calm(clients, server)
    silent = [await in_thread(Raw, server) for _ in range(10)]  # say nothing at all
    try:
        with anyio.fail_after(TIMEOUT):
            while held(server) < 11:
                await anyio.sleep(0.01)

        def one_more():
            raw = Raw(server)
            start = time.monotonic()
            head = raw.head(timeout=2.0)
            raw.close()
            return head, time.monotonic() - start

        head, elapsed = await in_thread(one_more)
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert elapsed < 1.0
        # Another address is served as before.
        await calm.nothing_pending()

        def healthz_from_elsewhere():
            raw = Raw(server, source=CALM_ADDRESS)
            raw.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = raw.head()
            raw.close()
            return head

        assert (await in_thread(healthz_from_elsewhere)).startswith(b"HTTP/1.1 200 ")
    finally:
        for raw in silent:
            raw.close()
    # Their places are given back.
    with anyio.fail_after(TIMEOUT):
        while held(server) > 1:
            await anyio.sleep(0.01)
    again = await clients.connect(f"{server.urls[0]}?token=again")
    assert (await again.recv())["data"]["success"] is True


# -- 5. a large publish batch ---------------------------------------------------------------


async def test_a_valid_batch_reaches_every_reader_that_keeps_up(
    start_server, clients, http_request
):
    server = await start_server()
    readers = [await connect_calm(clients, server, f"reader{n}") for n in range(2)]
    # Both arrivals sent before the batch (one may be held for the presence window; sent
    # after the batch, it would find a full backlog).
    while (await readers[0].recv_until("user_presence"))["data"]["userId"] != "user_reader1":
        pass
    items = [
        {
            "conversationId": "conv",
            "messageId": f"m{n:04d}",
            "content": f"{n:04d}" + "x" * 946,
            "sender": "agent",
        }
        for n in range(1000)
    ]
    body = json.dumps(items).encode()
    assert len(body) < server.settings.max_body_size

    async def collect(peer):
        async def go():
            got = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < len(items):
                    message = json.loads(await peer.ws.recv())
                    if message["type"] == "chat_message":
                        got.append(message["data"]["messageId"])
            return got

        return await clients.call(go)

    results = []
    async with anyio.create_task_group() as tg:
        for peer in readers:

            async def one(peer=peer):
                results.append(await collect(peer))

            tg.start_soon(one)
        host, port = server.addresses[0]
        status, _, answer = await http_request(
            f"http://{host}:{port}/api/chat-messages",
            "POST",
            body,
            **{"Content-Type": "application/json"},
        )
        assert status == 202, answer
    assert json.loads(answer)["delivered"] == 2 * len(items)
    for got in results:
        assert got == [item["messageId"] for item in items]
    assert server.hub.stats.slow_client_drops == 0


# -- 6. presence storms ---------------------------------------------------------------------


async def test_presence_of_one_user_is_broadcast_about_once_a_second(start_server, clients):
    server = await start_server()
    watcher = await connect_calm(clients, server, "watcher")
    tabs = [await clients.connect(f"{server.urls[0]}?token=storm") for _ in range(4)]
    statuses = ["busy", "away", "online", "offline"]

    async def storm():
        # Within the rate limit (burst 40) of every tab; every tab ends on "away".
        for n in range(31):
            for tab in tabs:
                status = statuses[n % 4] if n < 30 else "away"
                await tab.ws.send(json.dumps({"type": "user_presence", "data": status}))

    stormed = threading.Event()

    async def watch():
        seen = []
        start = last = time.monotonic()
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    async with asyncio.timeout(0.1):
                        message = json.loads(await watcher.ws.recv())
                except TimeoutError:
                    # Once the storm is over, 1.5 s without news ends the watch.
                    if stormed.is_set() and time.monotonic() - last > 1.5:
                        return seen
                    continue
                last = time.monotonic()
                if message["type"] == "user_presence" and message["data"]["userId"] == "user_storm":
                    seen.append((last - start, message["data"]["status"], message["id"]))

    future = clients.portal.start_task_soon(watch)
    start = time.monotonic()
    await clients.call(storm)
    elapsed = time.monotonic() - start
    stormed.set()
    seen = await in_thread(future.result, TIMEOUT)
    statuses_seen = [status for _, status, _ in seen]
    assert statuses_seen[0] == "online"
    assert statuses_seen[-1] == "away", seen  # the final status always goes out
    assert len(seen) <= 3 + int(elapsed), seen  # about one a second, not 120
    ids = [message_id for _, _, message_id in seen]
    assert ids == sorted(ids)


# -- 7. the presence snapshot ---------------------------------------------------------------


async def test_a_newcomer_gets_the_whole_presence_snapshot(start_server, clients):
    limit = 8 * 1024
    # Each arrival sent at once (no presence window), so that the snapshot holds them all.
    server = await start_server(
        Settings(max_send_buffer=limit, presence_grace=60.0, presence_window=0)
    )
    users = 100
    for n in range(users):  # each stays online for its grace period after leaving
        peer = await clients.connect(f"{server.urls[0]}?token=u{n:03d}" + "x" * 110)
        assert (await peer.recv())["data"]["success"] is True
        await peer.close()
    newcomer = await clients.connect(f"{server.urls[0]}?token=newcomer", max_queue=None)
    assert (await newcomer.recv())["data"]["success"] is True
    snapshot = await newcomer.recv()
    assert snapshot["type"] == "presence_state"
    assert len(json.dumps(snapshot)) > limit
    assert len(snapshot["data"]["users"]) == users
    server.broadcast_agent_status("watchdog", "working")
    kinds = [(await newcomer.recv())["type"] for _ in range(3)]
    assert kinds == ["agent_state", "user_presence", "agent_status"]
    assert server.hub.stats.slow_client_drops == 0


# -- 8. unauthenticated connections ---------------------------------------------------------


async def test_unauthenticated_connections_have_their_own_smaller_cap(
    start_server, clients, http_request
):
    server = await start_server(Settings(max_unauthenticated_connections=3))
    strangers = [await clients.connect(server.urls[0]) for _ in range(2)]
    strangers.append(await clients.connect(f"{server.urls[0]}?token=bad%20token"))
    for peer in strangers:
        assert (await peer.recv())["data"]["success"] is False
    with pytest.raises(InvalidStatus) as refusal:
        await clients.connect(server.urls[0])
    assert refusal.value.response.status_code == 503
    member = await clients.connect(f"{server.urls[0]}?token=member")
    assert (await member.recv())["data"]["success"] is True
    host, port = server.addresses[0]
    status, _, body = await http_request(f"http://{host}:{port}/healthz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ok",
        "clients": 4,
        "authenticated": 1,
        "unauthenticated": 3,
    }
    # A place given back is free again.
    await strangers[0].close()
    with anyio.fail_after(TIMEOUT):
        while server.clients_count() > 3:
            await anyio.sleep(0.01)
    again = await clients.connect(server.urls[0])
    assert (await again.recv())["data"]["success"] is False
