"""Resuming and ``agent_state`` in a cluster (PROTOCOL.md 4, 7 and 10): real
``agentcast serve`` processes, one real Redis.

What a user must see: a client that reconnects, to the same process restarted or to
another one, gets every message it missed exactly once and in order (``complete: true``)
as far back as the Redis stream reaches, even when every process was killed; and a
process started after the agents reported greets its clients with their latest states.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from agentcast.adapters.client import ChatMessage, Resume, connect
from agentcast.protocol.client import Backoff

from .conftest import REPO, TIMEOUT, RedisServer, free_port
from .test_processes import Client, Proc, server_command, servers, wait_listening

pytestmark = pytest.mark.anyio

BATCH = 500
TOTAL = 10_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the clients' loop; each server runs the backend it is given


async def start(redis: RedisServer, stream: str, port: int, *extra: str) -> Proc:
    process = subprocess.Popen(
        server_command(port, redis, stream, *extra), cwd=REPO, stdout=subprocess.DEVNULL
    )
    proc = Proc(process, port)
    await wait_listening(process, port)
    return proc


def kill(proc: Proc) -> None:
    proc.process.send_signal(signal.SIGKILL)
    proc.process.wait(TIMEOUT)


@asynccontextmanager
async def stopping(procs: list[Proc]) -> AsyncIterator[list[Proc]]:
    """Terminate whatever of *procs* still runs at the end (the list may change)."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.terminate()
                try:
                    proc.process.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.process.kill()
                    proc.process.wait()


class Recorder:
    """Everything the Python client yields, in order."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.changed = anyio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, predicate: Callable[[], bool], timeout: float = 3 * TIMEOUT) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    def chats(self) -> list[ChatMessage]:
        return [i for i in self.items if isinstance(i, ChatMessage)]

    def resumes(self) -> list[Resume]:
        return [i for i in self.items if isinstance(i, Resume)]


async def publish_batch(proc: Proc, start: int) -> list[str]:
    body = [
        {"conversationId": "c", "messageId": str(n), "content": str(n), "sender": "bot"}
        for n in range(start, start + BATCH)
    ]
    answer = await proc.publish(body, "/api/chat-messages")
    ids: list[str] = answer["ids"]
    return ids


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_killed_processes_lose_nothing_the_stream_holds(
    redis_server: RedisServer, stream: str, backend: str
) -> None:
    """10,000 broadcasts published through one process while the client's process is
    killed (SIGKILL) and restarted, then every process is killed and restarted: the
    client resumes by itself each time, and receives every message exactly once, in
    order, every resume complete."""
    port = free_port()
    # Room for everything published while the client is away (default: 1,000 messages).
    flags = ("--backend", backend, "--history-size", str(TOTAL))
    served = await start(redis_server, stream, port, *flags)
    publisher = await start(redis_server, stream, free_port(), *flags)
    procs = [served, publisher]
    published: list[str] = []
    async with stopping(procs):
        recorder = Recorder()
        url = f"ws://127.0.0.1:{port}/ws"
        async with (
            connect(url, token="watcher", backoff=Backoff(cap=1.0)) as client,
            anyio.create_task_group() as tg,
        ):

            async def record() -> None:
                async for item in client:
                    recorder.add(item)

            tg.start_soon(record)
            for batch in range(TOTAL // BATCH):
                published += await publish_batch(publisher, batch * BATCH)
                if batch == 6:
                    # The client's process dies; the cluster goes on publishing.
                    kill(served)
                elif batch == 9:
                    procs.append(served := await start(redis_server, stream, port, *flags))
                    await recorder.until(lambda: len(recorder.resumes()) == 1)
                elif batch == 13:
                    # Every process dies; they come back and publishing resumes before
                    # the client has reconnected.
                    kill(served)
                    kill(publisher)
                    publisher = await start(redis_server, stream, free_port(), *flags)
                    procs.append(publisher)
                elif batch == 15:
                    procs.append(served := await start(redis_server, stream, port, *flags))
            last = published[-1]
            await recorder.until(
                lambda: len(recorder.resumes()) == 2 and any(m.id == last for m in recorder.chats())
            )
            tg.cancel_scope.cancel()

    assert [r.complete for r in recorder.resumes()] == [True, True]
    assert all(r.replayed for r in recorder.resumes())  # there was something to replay
    got = recorder.chats()
    assert [m.id for m in got] == published  # exactly once, in order, nothing missing
    assert [m.content for m in got] == [str(n) for n in range(TOTAL)]


async def test_a_client_resumes_on_another_process(redis_server: RedisServer, stream: str) -> None:
    """Cut off from one process, a client resumes on another with exactly what it missed
    that it may receive (its own notifications, its channels), then live traffic."""
    async with servers(redis_server, stream, 2) as (p1, p2):
        alice = await p1.client("alice", "room")
        await p2.publish({"level": "info", "message": "seen"})
        seen = (await alice.until("seen"))[-1]["id"]
        await alice.close()
        await p1.publish({"level": "info", "message": "missed 1"})
        await p2.publish({"level": "info", "message": "for bob", "userId": "user_bob"})
        await p1.publish({"level": "info", "message": "for alice", "userId": "user_alice"})
        await p2.publish({"level": "info", "message": "in room", "channel": "room"})
        await p2.publish({"level": "info", "message": "elsewhere", "channel": "other"})
        last = await p1.publish({"level": "info", "message": "missed 2"})
        back = await Client.open_url(
            f"ws://127.0.0.1:{p2.port}/ws?token=alice&channels=room&since={seen}"
        )
        resume = await back.next("resume")
        replay = [m for m in back.received if m["type"] == "notification"]
        assert [m["data"]["message"] for m in replay] == [
            "missed 1",
            "for alice",
            "in room",
            "missed 2",
        ]
        assert replay[-1]["id"] == last["id"]
        assert resume["data"] == {"complete": True, "replayed": 4}
        await p1.publish({"level": "info", "message": "live"})
        assert [m["data"]["message"] for m in await back.until("live")] == ["live"]
        # An id the cluster never issued, or one from before the stream: reload.
        for since in ("9999999999999-000000-000000", "0000000000001-000000-000000", "junk"):
            other = await Client.open_url(f"ws://127.0.0.1:{p1.port}/ws?token=x&since={since}")
            assert (await other.next("resume"))["data"] == {"complete": False}
            await other.close()
        await back.close()


async def test_a_process_started_later_knows_every_agent(
    redis_server: RedisServer, stream: str
) -> None:
    """Agents report through one process; a process started afterwards greets its
    clients with each agent's latest status, scopes applied."""
    async with servers(redis_server, stream, 1) as (p1,):
        for name, state in [("planner", "idle"), ("coder", "working"), ("planner", "working")]:
            await p1.publish({"agentName": name, "state": state}, "/api/agent-status")
        await p1.publish(
            {"agentName": "secret", "state": "idle", "userIds": ["user_bob"]}, "/api/agent-status"
        )
        await p1.publish({"level": "info", "message": "done"})
        async with servers(redis_server, stream, 1) as (late,):
            alice = await late.client("alice")
            bob = await late.client("bob")
            for client, expected in (
                (alice, ["coder", "planner"]),
                (bob, ["coder", "planner", "secret"]),
            ):
                agents = (await client.next("agent_state"))["data"]["agents"]
                assert [a["agentName"] for a in agents] == expected
                assert agents[1] == {"agentName": "planner", "state": "working"}
            # Statuses published after it started come through the log as usual.
            await p1.publish({"agentName": "coder", "state": "stopped"}, "/api/agent-status")
            await alice.next("agent_status")
            carol = await late.client("carol")
            agents = (await carol.next("agent_state"))["data"]["agents"]
            assert [a["agentName"] for a in agents] == ["planner", "coder"]
            for client in (alice, bob, carol):
                await client.close()
