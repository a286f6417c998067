"""Real ``agentcast serve`` processes on their own ports, one Redis, `websockets` clients.

Each test starts its servers as subprocesses (``python -m agentcast.adapters serve``)
with a stream of its own, short leases and grace periods, and talks to them as users
would: WebSocket clients, the publish API, ``/healthz``, signals. Nothing waits by
sleeping: a condition is re-checked until it holds (failing after a timeout), and "this
did not arrive" is checked against a marker message published afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .conftest import REPO, TIMEOUT, RedisServer, free_port

pytestmark = pytest.mark.anyio

LEASE = 2.0
GRACE = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the clients' loop; each server runs the backend it is given


class Proc:
    """One server process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    async def publish(self, body: object, path: str = "/api/notifications") -> Any:
        status, answer = await http(self.port, "POST", path, body)
        assert status == 202, answer
        return answer

    async def health(self) -> dict[str, Any]:
        status, answer = await http(self.port, "GET", "/healthz")
        assert status == 200
        return answer  # type: ignore[no-any-return]

    async def client(self, token: str, channels: str = "") -> Client:
        return await Client.open(self.port, token, channels)


def server_command(port: int, redis: RedisServer, stream: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agentcast.adapters",
        "serve",
        "--port",
        str(port),
        "--redis-url",
        redis.url,
        "--redis-stream",
        stream,
        "--presence-lease",
        str(LEASE),
        "--presence-grace",
        str(GRACE),
        "--log-level",
        "warning",
        *extra,
    ]


async def wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)  # not listening yet: poll the port
            continue
        writer.close()
        return
    raise AssertionError(f"no server on port {port}")


@asynccontextmanager
async def servers(
    redis: RedisServer, stream: str, count: int, *extra: str
) -> AsyncIterator[list[Proc]]:
    procs = []
    try:
        for _ in range(count):
            port = free_port()
            process = subprocess.Popen(
                server_command(port, redis, stream, *extra),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            procs.append(Proc(process, port))
        for proc in procs:
            await wait_listening(proc.process, proc.port)
        yield procs
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.terminate()
        for proc in procs:
            try:
                proc.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()


async def http(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b"" if body is None else json.dumps(body).encode()
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload) if payload else None


class Client:
    """A `websockets` client that keeps what it received."""

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.received: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, port: int, token: str, channels: str = "") -> Client:
        query = f"token={token}" + (f"&channels={channels}" if channels else "")
        return await cls.open_url(f"ws://127.0.0.1:{port}/ws?{query}")

    @classmethod
    async def open_url(cls, url: str) -> Client:
        """Connect to *url* (its ``token`` names the user) and wait for ``auth``."""
        ws = await connect(url, open_timeout=TIMEOUT)
        token = url.partition("token=")[2].partition("&")[0]
        client = cls(ws, f"user_{token}")
        auth = await client.next("auth")
        assert auth["data"]["success"]
        return client

    async def next(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message of type *kind* (others are kept in :attr:`received`)."""
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                self.received.append(message)
                if message["type"] == kind:
                    return message  # type: ignore[no-any-return]

    async def until(self, text: str) -> list[dict[str, Any]]:
        """Every message up to the notification *text* (included)."""
        start = len(self.received)
        while True:
            message = await self.next("notification")
            if message["data"]["message"] == text:
                return self.received[start:]

    def notes(self) -> list[str]:
        return [m["data"]["message"] for m in self.received if m["type"] == "notification"]

    def presence(self, user: str) -> list[str]:
        return [
            m["data"]["status"]
            for m in self.received
            if m["type"] == "user_presence" and m["data"]["userId"] == user
        ]

    async def close(self) -> None:
        await self.ws.close()


async def eventually(check: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def holders(redis: RedisServer, stream: str, user: str) -> int:
    """How many processes hold *user* in Redis's presence rows."""
    keys = [k for k in redis.cli("keys", f"{stream}:presence:*").split() if k]
    return sum(1 for key in keys if redis.cli("hexists", key, user).strip() == "1")


async def test_three_processes_are_one_server(redis_server: RedisServer, stream: str) -> None:
    async with servers(redis_server, stream, 3) as procs:
        # Even clients are subscribed to room:1 (from their URL).
        clients = [
            await procs[i % 3].client(f"u{i}", "room:1" if i % 2 == 0 else "") for i in range(6)
        ]
        # Every publish, on any process, reaches every client once, in publish order,
        # with the same id everywhere; the 202 gives that id.
        answers = []
        for i in range(12):
            answers.append(await procs[i % 3].publish({"level": "info", "message": f"n{i}"}))
        batch = await procs[1].publish(
            [{"level": "info", "message": "b0"}, {"level": "success", "message": "b1"}]
        )
        expected = [f"n{i}" for i in range(12)] + ["b0", "b1"]
        for client in clients:
            got = await client.until("b1")
            notes = [m for m in got if m["type"] == "notification"]
            assert [m["data"]["message"] for m in notes] == expected
            ids = [m["id"] for m in notes]
            assert ids == [a["id"] for a in answers] + batch["ids"]
            assert ids == sorted(ids)
            assert len(set(ids)) == len(ids)
        # A notification for one user reaches that user, on another process, only.
        await procs[0].publish({"level": "warning", "message": "for u4", "userId": "user_u4"})
        await procs[2].publish({"level": "info", "message": "marker"})
        for client in clients:
            got = [m["data"]["message"] for m in await client.until("marker")]
            assert got == (["for u4", "marker"] if client.user == "user_u4" else ["marker"])
        # A channel's message reaches its subscribers on every process, and only them;
        # with an audience too, only those users' subscribed connections.
        await procs[1].publish({"level": "info", "message": "room", "channel": "room:1"})
        await procs[2].publish(
            {"level": "info", "message": "room u2", "channel": "room:1", "userIds": ["user_u2"]}
        )
        await procs[0].publish({"level": "info", "message": "marker2"})
        for i, client in enumerate(clients):
            got = [m["data"]["message"] for m in await client.until("marker2")]
            expected = (["room"] if i % 2 == 0 else []) + (["room u2"] if i == 2 else [])
            assert got == [*expected, "marker2"], client.user
        # Counts: local and cluster-wide, on every process.

        async def counted() -> bool:
            healths = [await proc.health() for proc in procs]
            return all(
                h["cluster"] == {"clients": 6, "authenticated": 6, "processes": 3}
                and h["status"] == "ok"
                and h["clients"] == 2
                for h in healths
            )

        await eventually(counted)
        status, metrics = await http_text(procs[0].port, "/metrics")
        assert status == 200
        assert "agentcast_backplane_published_total" in metrics
        assert "agentcast_cluster_processes 3.0" in metrics
        for client in clients:
            await client.close()


async def http_text(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode()


async def test_presence_across_processes(redis_server: RedisServer, stream: str) -> None:
    async with servers(redis_server, stream, 3) as (p1, p2, p3):
        watcher = await p3.client("watcher")
        # Two tabs on two processes: online until both are gone.
        tab1 = await p1.client("alice")
        tab2 = await p2.client("alice")
        await watcher.next("user_presence")  # alice online (the watcher's own came first)
        await tab1.close()
        await eventually(lambda: _true(holders(redis_server, stream, "user_alice") == 1))
        await p1.publish({"level": "info", "message": "m1"})
        await watcher.until("m1")
        assert watcher.presence("user_alice") == ["online"]
        closed = time.monotonic()
        await tab2.close()
        while watcher.presence("user_alice")[-1:] != ["offline"]:
            await watcher.next("user_presence")
        assert time.monotonic() - closed >= GRACE  # the grace held
        # A reload that lands on another process does not flap.
        bob = await p1.client("bob")
        while watcher.presence("user_bob") != ["online"]:
            await watcher.next("user_presence")
        await bob.close()
        bob = await p2.client("bob")
        await eventually(lambda: _true(holders(redis_server, stream, "user_bob") == 1))
        await p2.publish({"level": "info", "message": "m2"})
        await watcher.until("m2")
        assert watcher.presence("user_bob") == ["online"]
        # presence_state is the cluster's: a newcomer on p3 sees bob (on p2).
        newcomer = await p3.client("newcomer")
        state = newcomer.received[-1]
        state = (
            await newcomer.next("presence_state") if state["type"] != "presence_state" else state
        )
        assert {"userId": "user_bob", "status": "online"} in state["data"]["users"]
        # kill -9: the dead process's users go offline on the others within the lease.
        carol = await p1.client("carol")
        while watcher.presence("user_carol") != ["online"]:
            await watcher.next("user_presence")
        killed = time.monotonic()
        p1.process.send_signal(signal.SIGKILL)
        while watcher.presence("user_carol")[-1:] != ["offline"]:
            await watcher.next("user_presence", timeout=LEASE + 3.0)
        # Within the lease, give or take the scheduling of a loaded machine.
        assert time.monotonic() - killed <= LEASE + 2.0
        assert watcher.presence("user_bob") == ["online"]  # the living keep theirs
        await p2.publish({"level": "info", "message": "still serving"})
        await watcher.until("still serving")
        await bob.until("still serving")
        for client in (watcher, bob, newcomer):
            await client.close()
        with suppress(ConnectionClosed):
            await carol.close()


async def _true(value: bool) -> bool:
    return value


async def test_redis_restart_while_publishing_loses_nothing(
    own_redis: Callable[..., RedisServer], stream: str
) -> None:
    redis = own_redis()
    async with servers(redis, stream, 2) as (p1, p2):
        clients = [await p1.client("a1"), await p2.client("a2"), await p2.client("a3")]
        sent: list[str] = []
        for i in range(10):
            sent.append(f"before{i}")
            await (p1, p2)[i % 2].publish({"level": "info", "message": sent[-1]})
        redis.cli("shutdown", "nosave")
        assert redis.process is not None
        redis.process.wait(TIMEOUT)

        async def degraded() -> bool:
            return [(await p.health())["status"] for p in (p1, p2)] == ["degraded"] * 2

        await eventually(degraded)
        for i in range(30):  # published while Redis is down: each process buffers
            sent.append(f"during{i}")
            await (p1, p2)[i % 2].publish({"level": "info", "message": sent[-1]})
        own_redis(redis.port)

        async def ok() -> bool:
            return [(await p.health())["status"] for p in (p1, p2)] == ["ok"] * 2

        await eventually(ok)
        for i in range(10):
            sent.append(f"after{i}")
            await (p1, p2)[i % 2].publish({"level": "info", "message": sent[-1]})
        await p1.publish({"level": "info", "message": "end"})
        for client in clients:
            await client.until("end")
            got = client.notes()[:-1]
            assert sorted(got) == sorted(sent)  # every message, none twice
            for origin in (0, 1):  # in publish order per publisher
                mine = [m for m in sent if int(re.sub(r"\D", "", m)) % 2 == origin]
                assert [m for m in got if m in mine] == mine
        for client in clients:
            await client.close()


async def test_workers_share_one_port(redis_server: RedisServer, stream: str) -> None:
    port = free_port()
    parent = subprocess.Popen(
        [*server_command(port, redis_server, stream), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_listening(parent, port)

        async def both_workers() -> bool:
            fields = redis_server.cli("hvals", f"{stream}:procs").split("\n")
            return len([f for f in fields if f.strip()]) == 2

        await eventually(both_workers)
        clients = await asyncio.gather(*(Client.open(port, f"w{i}") for i in range(200)))

        async def spread() -> bool:
            values = [v for v in redis_server.cli("hvals", f"{stream}:procs").split("\n") if v]
            counts = [int(v.split()[2]) for v in values]
            return len(counts) == 2 and sum(counts) == 200 and min(counts) > 0

        await eventually(spread)  # the counts each worker reports: both hold clients
        proc = Proc(parent, port)
        answer = await proc.publish({"level": "info", "message": "to all"})
        got = await asyncio.gather(*(c.until("to all") for c in clients))
        assert all(g[-1]["id"] == answer["id"] for g in got)
        # SIGTERM to the parent: every worker closes its clients with 1001, exit 0.
        parent.send_signal(signal.SIGTERM)
        codes = []
        for client in clients:
            with suppress(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await client.ws.recv()
            codes.append(client.ws.close_code)
        assert set(codes) == {1001}
        assert parent.wait(TIMEOUT) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_a_pair_on_trio(redis_server: RedisServer, stream: str) -> None:
    async with servers(redis_server, stream, 2, "--backend", "trio") as (p1, p2):
        watcher = await p2.client("watcher")
        user = await p1.client("t1")
        while watcher.presence("user_t1") != ["online"]:
            await watcher.next("user_presence")
        answer = await p1.publish({"level": "info", "message": "via trio"})
        got = await watcher.until("via trio")
        assert got[-1]["id"] == answer["id"]
        await user.close()
        while watcher.presence("user_t1")[-1:] != ["offline"]:
            await watcher.next("user_presence")
        await watcher.close()


async def test_redis_unreachable_at_start(stream: str) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}"
    command = server_command(free_port(), RedisServer(url, 0, None), stream)
    result = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert "cannot reach Redis at redis://***@127.0.0.1:" in errors[0]
    assert "hunter2" not in result.stderr


async def test_optional_redis_starts_alone_and_joins(
    own_redis: Callable[..., RedisServer], stream: str
) -> None:
    redis_port = free_port()
    absent = RedisServer(f"redis://127.0.0.1:{redis_port}", redis_port, None)
    async with servers(absent, stream, 1, "--redis-optional") as (proc,):
        client = await proc.client("solo")
        assert (await proc.health())["status"] == "degraded"
        answer = await proc.publish({"level": "info", "message": "alone"})
        assert answer["delivered"] == 1
        assert (await client.next("notification"))["id"] == answer["id"]
        own_redis(redis_port)

        async def joined() -> bool:
            return (await proc.health())["status"] == "ok"

        await eventually(joined)
        answer = await proc.publish({"level": "info", "message": "joined"})
        assert (await client.until("joined"))[-1]["id"] == answer["id"]
        await client.close()


def test_without_redis_nothing_of_the_cluster_is_imported() -> None:
    code = (
        "import sys\n"
        "from agentcast.adapters.config import config_from_environment\n"
        "from agentcast.adapters.asgi import from_environment\n"
        "config_from_environment({}).server()\n"
        "from_environment({})\n"
        "names = ('agentcast.adapters.backplane', 'agentcast.adapters.cluster',\n"
        "         'agentcast.adapters._cluster_metrics', 'agentcast.protocol.cluster')\n"
        "loaded = [m for m in sys.modules if m.startswith('coredis') or m in names]\n"
        "assert not loaded, loaded\n"
        "from_environment({'AGENTCAST_REDIS_URL': 'redis://127.0.0.1:1'})\n"
        "assert 'coredis' in sys.modules  # the check above can see it\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "2"], "--workers 2 needs --redis-url"),
        (["--redis-optional"], "--redis-optional is for --redis-url"),
        (["--redis-url", "http://x"], "must start with redis://"),
    ],
)
def test_cluster_flags_are_checked(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentcast.adapters", "serve", *flags],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_the_asgi_app_reads_the_same_variables(redis_server: RedisServer, stream: str) -> None:
    from agentcast.adapters.asgi import from_environment

    app = from_environment(
        {
            "AGENTCAST_REDIS_URL": redis_server.url,
            "AGENTCAST_REDIS_STREAM": stream,
            "AGENTCAST_PRESENCE_LEASE": "3",
            "AGENTCAST_REDIS_BUFFER": "50",
        }
    )
    cluster = app.service.cluster
    assert cluster is not None
    assert (cluster.backplane.stream, cluster.backplane.lease) == (stream, 3.0)
    assert cluster.backplane.buffer == 50


async def test_a_worker_that_dies_is_started_again(redis_server: RedisServer, stream: str) -> None:
    port = free_port()
    parent = subprocess.Popen(
        [*server_command(port, redis_server, stream), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )

    def workers() -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]

    try:
        await wait_listening(parent, port)
        await eventually(lambda: _true(len(workers()) == 2))
        first = workers()
        os.kill(first[0], signal.SIGKILL)
        await eventually(lambda: _true(len(set(workers()) - set(first)) == 1))
        await eventually(lambda: _true(len(workers()) == 2))
        client = await Client.open(port, "again")  # the port is served throughout
        await client.close()
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(TIMEOUT) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_workers_that_cannot_start_stop_the_group(stream: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    command = [*server_command(free_port(), RedisServer(url, 0, None), stream), "--workers", "2"]
    result = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT * 2
    )
    assert result.returncode == 1
    assert f"cannot reach Redis at {url}" in result.stderr


async def test_an_asgi_app_under_uvicorn_joins_the_cluster(
    redis_server: RedisServer, stream: str
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")},
        "AGENTCAST_REDIS_URL": redis_server.url,
        "AGENTCAST_REDIS_STREAM": stream,
        "AGENTCAST_LOG_LEVEL": "warning",
    }
    uvicorn = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "agentcast.adapters.asgi:app", "--port", str(port),
         "--log-level", "warning"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with servers(redis_server, stream, 1) as (proc,):
            await wait_listening(uvicorn, port)
            under_asgi = await Client.open(port, "asgi")
            on_serve = await proc.client("serve")
            answer = await proc.publish({"level": "info", "message": "to both"})
            assert (await under_asgi.until("to both"))[-1]["id"] == answer["id"]
            status, back = await http(port, "POST", "/api/notifications",
                                      {"level": "info", "message": "from asgi"})  # fmt: skip
            assert status == 202
            assert (await on_serve.until("from asgi"))[-1]["id"] == back["id"]
            await under_asgi.close()
            await on_serve.close()
    finally:
        uvicorn.terminate()
        uvicorn.wait(TIMEOUT)


async def test_an_event_stream_on_another_process_gets_the_cluster_ids(
    redis_server: RedisServer, stream: str
) -> None:
    async with servers(redis_server, stream, 2) as (p1, p2):
        reader, writer = await asyncio.open_connection("127.0.0.1", p2.port)
        writer.write(b"GET /events?token=sse HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        events: list[dict[str, str]] = []

        async def next_event() -> dict[str, str]:
            event: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode().rstrip("\r\n")
                if not line:
                    if event:
                        return event
                    continue
                name, _, value = line.partition(": ")
                event[name] = value

        async with asyncio.timeout(TIMEOUT):
            await reader.readuntil(b"\r\n\r\n")  # the response head
            while (await next_event()).get("event") != "auth":
                pass
            answer = await p1.publish({"level": "info", "message": "to the stream"})
            while not events or events[-1].get("event") != "notification":
                events.append(await next_event())
        assert events[-1]["id"] == answer["id"]
        assert json.loads(events[-1]["data"])["id"] == answer["id"]
        writer.close()
