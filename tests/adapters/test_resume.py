"""Resuming end to end (PROTOCOL.md 7): the Python client against the real server, on
asyncio and trio, through network cuts, server crashes (SIGKILL) and restarts.

What a user must see: every message exactly once and in order, or a ``resume`` with
``complete: false`` exactly where messages were lost (the server restarted without a
shared history, so a new epoch of ids began).
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream, TaskGroup

from agentcast.adapters.client import (
    ChatMessage,
    Client,
    Connected,
    Disconnected,
    Notification,
    Resume,
    Subscribed,
    connect,
)
from agentcast.protocol import Settings
from agentcast.protocol.client import Backoff
from agentcast.protocol.history import parse_id

from .conftest import TIMEOUT, ServerProcess, StartServer, http

pytestmark = pytest.mark.anyio


class Proxy:
    """A TCP relay in front of a server whose connections the test can cut, as a network
    blip would (the client sees its connection end without a close frame)."""

    def __init__(self, tg: TaskGroup, upstream: tuple[str, int]) -> None:
        self.tg = tg
        self.upstream = upstream
        self.streams: list[SocketStream] = []
        self.port = 0

    async def start(self) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.tg.start_soon(listener.serve, self._relay)

    async def _relay(self, client: SocketStream) -> None:
        server = await anyio.connect_tcp(*self.upstream)
        self.streams += [client, server]
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, server)
            tg.start_soon(self._pump, server, client)

    @staticmethod
    async def _pump(source: SocketStream, sink: SocketStream) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await sink.aclose()

    async def cut(self) -> None:
        for stream in self.streams:
            await stream.aclose()
        self.streams.clear()


class Recorder:
    """Everything the client yields, in order, collected by a task."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.items: list[Any] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for item in self.client:
            self.items.append(item)
            self._changed.set()
            self._changed = anyio.Event()

    async def until(self, predicate: Callable[[list[Any]], bool], timeout: float = TIMEOUT) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self.items):
                await self._changed.wait()

    def resumes(self) -> list[Resume]:
        return [i for i in self.items if isinstance(i, Resume)]

    def chats(self) -> list[ChatMessage]:
        return [i for i in self.items if isinstance(i, ChatMessage)]


@asynccontextmanager
async def recording(url: str, **options: Any) -> AsyncIterator[Recorder]:
    async with connect(url, token="watcher", **options) as client:
        recorder = Recorder(client)
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.run)
            yield recorder
            tg.cancel_scope.cancel()


@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_network_cut_resumes_without_loss(start_server: StartServer):
    server = await start_server(Settings(presence_grace=0))
    async with anyio.create_task_group() as tg:
        proxy = Proxy(tg, server.addresses[0])
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        async with recording(url) as rec:
            published = [server.broadcast_chat_message("c", "m", "0", "bot").id]
            await rec.until(lambda items: len(rec.chats()) == 1)
            await proxy.cut()
            await rec.until(lambda items: any(isinstance(i, Disconnected) for i in items))
            # Published while the client is away, and (some) while it replays.
            published += [
                server.broadcast_chat_message("c", "m", str(n), "bot").id for n in range(1, 200)
            ]
            await rec.until(lambda items: any(isinstance(i, Resume) for i in items))
            published += [
                server.broadcast_chat_message("c", "m", str(n), "bot").id for n in range(200, 300)
            ]
            await rec.until(lambda items: len(rec.chats()) == 300)
            [resume] = [i for i in rec.items if isinstance(i, Resume)]
            assert resume.complete
            assert resume.replayed == 199
            assert [m.id for m in rec.chats()] == published
            assert [m.content for m in rec.chats()] == [str(n) for n in range(300)]
            connects = [i for i in rec.items if isinstance(i, Connected)]
            assert connects[1].since == published[0]
        tg.cancel_scope.cancel()


async def test_replay_keeps_the_delivery_rules(start_server: StartServer):
    """What a client missed is replayed only if it would have received it live: a
    notification for another user is not."""
    server = await start_server()
    async with anyio.create_task_group() as tg:
        proxy = Proxy(tg, server.addresses[0])
        await proxy.start()
        async with recording(f"ws://127.0.0.1:{proxy.port}/ws") as rec:
            first = server.broadcast_chat_message("c", "m", "first", "bot").id
            await rec.until(lambda items: len(rec.chats()) == 1)
            await proxy.cut()
            await rec.until(lambda items: any(isinstance(i, Disconnected) for i in items))
            server.send_notification("info", "for someone else", user_id="user_other")
            mine = server.send_notification("info", "for the watcher", user_id="user_watcher").id
            second = server.broadcast_chat_message("c", "m", "second", "bot").id
            await rec.until(lambda items: bool(rec.resumes()))
            [resume] = rec.resumes()
            assert (resume.complete, resume.replayed) == (True, 2)
            missed = [i for i in rec.items if isinstance(i, ChatMessage | Notification)]
            assert [m.id for m in missed] == [first, mine, second]
        tg.cancel_scope.cancel()


async def test_channel_subscriptions_hold_across_a_reconnect(start_server: StartServer):
    """A channel subscribed while connected is asked for again in the URL on reconnect, so
    the replay brings that channel's missed messages (and no other channel's)."""
    server = await start_server()
    async with anyio.create_task_group() as tg:
        proxy = Proxy(tg, server.addresses[0])
        await proxy.start()
        async with recording(f"ws://127.0.0.1:{proxy.port}/ws") as rec:
            await rec.client.subscribe("room:1")
            await rec.until(lambda items: any(isinstance(i, Subscribed) for i in items))
            first = server.broadcast_chat_message("c", "m", "in", "bot", channel="room:1").id
            await rec.until(lambda items: len(rec.chats()) == 1)
            await proxy.cut()
            await rec.until(lambda items: any(isinstance(i, Disconnected) for i in items))
            server.broadcast_chat_message("c", "m", "elsewhere", "bot", channel="room:2")
            missed = server.broadcast_chat_message("c", "m", "missed", "bot", channel="room:1").id
            await rec.until(lambda items: bool(rec.resumes()))
            [resume] = rec.resumes()
            assert (resume.complete, resume.replayed) == (True, 1)
            assert [m.id for m in rec.chats()] == [first, missed]
        tg.cancel_scope.cancel()


# -- crashes and restarts of a server process ---------------------------------------------

BATCH = 500
TOTAL = 10_000


async def publish_batch(base: str, start: int) -> list[str] | None:
    """Publish chat messages ``start``..``start+BATCH-1``; their ids, or ``None`` when
    the server is down."""
    body = json.dumps(
        [
            {"conversationId": "c", "messageId": str(n), "content": str(n), "sender": "bot"}
            for n in range(start, start + BATCH)
        ]
    ).encode()
    try:
        status, _, answer = await http(f"{base}/api/chat-messages", "POST", body)
    except OSError:
        return None
    assert status == 202, answer
    ids: list[str] = json.loads(answer)["ids"]
    return ids


async def test_server_killed_and_restarted(spawn_server: Any):
    """The server process is killed (SIGKILL) twice and restarted once gracefully, while
    10,000 broadcasts are published; the client resumes by itself each time."""
    server: ServerProcess = await spawn_server()
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    base = server.http_base
    published: dict[str, str] = {}  # id -> content
    # What happens after each batch: kill, graceful restart, or nothing.
    events = {5: "kill", 10: "kill", 15: "restart"}
    # Back-off capped at 2 s (the default cap is 20 s): a loaded machine may take seconds
    # to restart the server, and the test waits for the reconnect, not for the back-off.
    quick = Backoff(cap=2.0)
    async with recording(server.url, rng=lambda: 0.5, backoff=quick) as rec:
        for batch in range(TOTAL // BATCH):
            ids = await publish_batch(base, batch * BATCH)
            assert ids is not None
            published.update(zip(ids, (str(n) for n in range(batch * BATCH, 10**9)), strict=False))
            event = events.get(batch)
            if event is None:
                continue
            if event == "kill":
                server.process.send_signal(signal.SIGKILL)
            else:
                # Graceful: wait until the client has what was published, then SIGTERM.
                await rec.until(
                    lambda items, last=ids[-1]: any(m.id == last for m in rec.chats()),
                    timeout=3 * TIMEOUT,
                )
                server.process.send_signal(signal.SIGTERM)
            await server.process.wait()
            resumed = len(rec.resumes())
            server = await spawn_server("--port", port)
            await rec.until(lambda items, n=resumed: len(rec.resumes()) > n, timeout=3 * TIMEOUT)
        last = max(published)
        await rec.until(lambda items: any(m.id == last for m in rec.chats()), timeout=3 * TIMEOUT)

    chats = rec.chats()
    ids = [m.id for m in chats]
    assert len(set(ids)) == len(ids), "a message was delivered twice"
    assert all(published[m.id or ""] == m.content for m in chats)
    # Split the stream at every resume: each part holds one epoch's messages, a
    # contiguous run of what that epoch published, and every epoch change comes with
    # complete:false (history lost), never silently.
    epochs: list[list[str]] = [[]]
    resumes: list[Resume] = []
    for item in rec.items:
        if isinstance(item, Resume):
            resumes.append(item)
            epochs.append([])
        elif isinstance(item, ChatMessage) and item.id is not None:
            epochs[-1].append(item.id)
    assert [r.complete for r in resumes] == [False, False, False]
    for part in epochs:
        assert part, "an epoch delivered nothing"
        assert len({epoch_of(i) for i in part}) == 1
        of_epoch = sorted(i for i in published if epoch_of(i) == epoch_of(part[0]))
        start = of_epoch.index(part[0])
        assert part == of_epoch[start : start + len(part)], "a gap or a reordering"
    assert len({epoch_of(part[0]) for part in epochs}) == 4
    # The last epoch, after the graceful restart, delivered all it published.
    assert epochs[-1] == sorted(i for i in published if epoch_of(i) == epoch_of(epochs[-1][0]))


def epoch_of(message_id: str) -> int:
    parsed = parse_id(message_id)
    assert parsed is not None
    return parsed[0]


@pytest.mark.servers("reference", "uvicorn", "hypercorn")
async def test_an_event_stream_resumes_from_last_event_id(start_server: StartServer):
    """An ``EventSource`` reconnects with ``Last-Event-ID``: the server replays what it
    missed as events, then a ``resume`` event, exactly as for a WebSocket."""
    from .test_sse import events_url, open_stream

    server = await start_server(Settings())
    async with open_stream(events_url(server, "token=reader")) as stream:
        await stream.until("presence_state")
        seen = server.broadcast_chat_message("c", "m", "seen", "bot").id
        assert (await stream.until("chat_message"))["id"] == seen
    missed = server.broadcast_chat_message("c", "m", "missed", "bot").id
    server.send_notification("info", "not for the reader", user_id="user_other")
    note = server.send_notification("info", "for the reader", user_id="user_reader").id
    async with open_stream(events_url(server, "token=reader"), **{"Last-Event-ID": seen}) as again:
        await again.until("presence_state")
        replayed = []
        while (message := await again.message())["type"] != "resume":
            if "id" in message and message["type"] != "user_presence":
                replayed.append(message["id"])
        assert replayed == [missed, note]
        assert message["data"] == {"complete": True, "replayed": 2}
