"""The Redis backplane against a real Redis, several processes' links in one event loop.

Each ``RedisBackplane`` here is what one server process holds; a :class:`Recorder` stands
in for that process's hub and records what the backplane hands it. Runs on asyncio and
trio (coredis is anyio-based).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import coredis
import pytest

from agentcast.adapters.backplane import BackplaneUnavailable, RedisBackplane
from agentcast.protocol import AgentStatus, Notification, Published
from agentcast.protocol.cluster import (
    ClusterId,
    MessageEntry,
    message_entry,
)
from agentcast.protocol.cluster_agents import read_rows
from agentcast.protocol.cluster_history import ClusterHistory, HistoryLoader
from agentcast.protocol.cluster_state import (
    ClusterMessage,
    PresenceChange,
)
from agentcast.protocol.messages import PresenceStatus

from .conftest import TIMEOUT, RedisServer, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Recorder:
    """Stands in for a process's hub: records deliveries, holds local presence."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, Any]]] = []  # (id, type, data)
        self.entries: list[MessageEntry] = []
        self.local: list[tuple[str, str, dict[str, Any]]] = []
        self.presence: list[tuple[str, str, PresenceStatus]] = []
        self.statuses: dict[str, PresenceStatus] = {}
        self.counts = (0, 0)
        self.history = ClusterHistory()
        self.gaps = 0
        self.agent_rows_read: dict[str, str] = {}
        #: What each call brought: a message's type, or the users of presence changes.
        self.calls: list[str] = []

    def cluster_message(self, message: ClusterMessage) -> int:
        entry = message.entry
        self.entries.append(entry)
        self.messages.append((str(message.id), entry.type, json.loads(entry.data)))
        self.calls.append(entry.type)
        return 1

    def cluster_presence_changes(self, changes: list[PresenceChange]) -> None:
        self.presence += [(str(c.id), c.user_id, c.status) for c in changes]
        self.calls.append(" ".join(c.user_id for c in changes))

    def deliver_locally(self, entry: MessageEntry, message_id: str) -> int:
        self.local.append((message_id, entry.type, json.loads(entry.data)))
        return 1

    def local_counts(self) -> tuple[int, int]:
        return self.counts

    def local_presence(self) -> dict[str, PresenceStatus]:
        return dict(self.statuses)

    def history_gap(self) -> None:
        self.gaps += 1

    def history_loader(self) -> HistoryLoader:
        return self.history.loader(0.0, time.time())

    def agent_rows(self, rows: Mapping[str, str]) -> list[str]:
        self.agent_rows_read = dict(rows)
        return self.stale_agent_rows(rows)

    def stale_agent_rows(self, rows: Mapping[str, str]) -> list[str]:
        return read_rows(rows, wall=time.time(), ttl=3600.0, max_entries=2).stale

    def texts(self) -> list[str]:
        return [data.get("message", data.get("agentName", "")) for _, _, data in self.messages]


async def eventually(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Re-check *check* until it holds (fail after *timeout*)."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.005)


def note(text: str, user: str | None = None, origin: str = "?") -> MessageEntry:
    return message_entry(
        Notification(level="info", message=text, user_id=user), origin=origin, wall=1.0e9
    )


class Node:
    """One process's backplane, its recorder, and a way to kill it without a word."""

    def __init__(self, backplane: RedisBackplane, recorder: Recorder) -> None:
        self.backplane = backplane
        self.recorder = recorder
        self.scope = anyio.CancelScope()

    def publish(self, text: str, user: str | None = None) -> Any:
        return self.backplane.publish(note(text, user, self.backplane.process_id))

    def set_presence(self, user: str, status: PresenceStatus) -> None:
        if status == "offline":
            self.recorder.statuses.pop(user, None)
        else:
            self.recorder.statuses[user] = status
        self.backplane.presence_changed(user, status)

    def kill(self) -> None:
        self.scope.cancel()


@asynccontextmanager
async def cluster() -> AsyncIterator[Callable[..., Any]]:
    async with anyio.create_task_group() as tg:

        async def start(url: str, stream: str, **options: Any) -> Node:
            options.setdefault("lease", 3.0)
            options.setdefault("grace", 0.3)
            recorder = Recorder()
            node = Node(RedisBackplane(url, recorder, stream=stream, **options), recorder)
            await tg.start(_run, node)
            return node

        yield start
        tg.cancel_scope.cancel()


async def _run(node: Node, *, task_status: Any) -> None:
    with node.scope:
        await node.backplane.run(task_status=task_status)


async def test_a_broadcast_reaches_every_process_once_in_order_with_equal_ids(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        nodes = [await start(redis_server.url, stream) for _ in range(3)]
        for i in range(30):
            nodes[i % 3].publish(f"m{i}")
        for node in nodes:
            await eventually(lambda node=node: len(node.recorder.messages) >= 30)
        expected = [f"m{i}" for i in range(30)]
        # Publish order per publisher; here the three publish in turn from one task, and
        # each one's entries are written in its order: check each publisher's subsequence.
        first = nodes[0].recorder.messages
        for node in nodes:
            assert node.recorder.messages == first  # same messages, same order, same ids
            assert len(node.recorder.texts()) == 30
        for k in range(3):
            mine = [t for t in nodes[0].recorder.texts() if int(t[1:]) % 3 == k]
            assert mine == [t for t in expected if int(t[1:]) % 3 == k]
        ids = [message_id for message_id, _, _ in first]
        assert ids == sorted(ids)
        assert len(set(ids)) == 30
        assert len({len(i) for i in ids}) == 1  # fixed width
        assert all(ClusterId.parse(i) is not None for i in ids)


async def test_publish_waits_for_the_cluster_id(redis_server: RedisServer, stream: str) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        b = await start(redis_server.url, stream)
        pending = a.publish("hello")
        message_id, delivered = await pending.wait()
        assert delivered == 1
        await eventually(lambda: len(b.recorder.messages) == 1)
        assert b.recorder.messages[0][0] == message_id == a.recorder.messages[0][0]


async def test_a_batch_is_one_round_trip(redis_server: RedisServer, stream: str) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        before = _commands(redis_server, "evalsha")
        pendings = [a.publish(f"b{i}") for i in range(200)]
        for p in pendings:
            await p.wait()
        calls = _commands(redis_server, "evalsha") - before
        # 200 scripts ran; how many round trips is what the pipeline saves: Redis counts
        # calls, so check the writes were batched by the number of pipeline flushes.
        assert calls >= 200
        assert a.recorder.texts() == [f"b{i}" for i in range(200)]


def _commands(redis: RedisServer, name: str) -> int:
    for line in redis.cli("info", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{name}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_presence_is_the_strongest_over_processes_with_two_tabs(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        b = await start(redis_server.url, stream)
        b_id = b.backplane.process_id
        a.set_presence("user_x", "online")
        await eventually(lambda: len(b.recorder.presence) == 1)
        b.set_presence("user_x", "busy")  # second tab, on the other process
        await eventually(lambda: len(a.recorder.presence) == 2)
        a.set_presence("user_x", "offline")  # first tab gone: still busy on b
        await eventually(lambda: b.backplane.state.holders("user_x") == {b_id: "busy"})
        b.set_presence("user_x", "away")
        await eventually(lambda: len(a.recorder.presence) == 3)
        b.set_presence("user_x", "offline")
        await eventually(lambda: len(a.recorder.presence) == 4)
        assert [(u, s) for _, u, s in a.recorder.presence] == [
            ("user_x", "online"),
            ("user_x", "busy"),
            ("user_x", "away"),
            ("user_x", "offline"),
        ]
        assert a.recorder.presence == b.recorder.presence  # same changes, same ids
        assert a.backplane.state.presence() == {}


async def test_a_process_that_joins_late_knows_who_is_online(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        a.set_presence("user_a", "away")
        await eventually(lambda: len(a.recorder.presence) == 1)
        b = await start(redis_server.url, stream)
        assert b.backplane.state.presence() == {"user_a": "away"}
        assert b.recorder.presence[0][1:] == ("user_a", "away")  # from the snapshot


async def test_the_presence_changes_of_one_read_go_out_together_in_their_place(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        for user in ("user_1", "user_2"):
            a.set_presence(user, "online")
        a.publish("between")
        a.set_presence("user_3", "away")
        await eventually(lambda: len(a.recorder.presence) == 3)
        # A process that reads all of it at once (here: one read of the whole stream)
        # hands its hub the changes in a row as one call, in log order, each with its id.
        reader = Recorder()
        late = RedisBackplane(redis_server.url, reader, stream=stream)
        async with coredis.Redis.from_url(redis_server.url, decode_responses=False) as client:
            late._apply(await client.xrange(stream, "-", "+"))
        assert reader.calls == ["user_1 user_2", "notification", "user_3"]
        assert reader.presence == a.recorder.presence
        assert reader.messages == a.recorder.messages


async def test_a_killed_process_is_forgotten_within_the_lease(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream, lease=1.5)
        b = await start(redis_server.url, stream, lease=1.5)
        a.recorder.counts = (2, 1)
        a.set_presence("user_gone", "online")
        await eventually(lambda: b.backplane.state.presence() == {"user_gone": "online"})
        await eventually(lambda: b.backplane.state.counts() == (2, 1))
        assert len(b.backplane.state.processes()) == 2
        a.kill()  # no leave entry: as kill -9
        with anyio.fail_after(1.5 + 2.0):  # the lease, and a loaded machine's scheduling
            await eventually(lambda: b.backplane.state.presence() == {})
        assert b.recorder.presence[-1][1:] == ("user_gone", "offline")
        assert b.backplane.state.processes() == [b.backplane.process_id]
        assert b.backplane.state.counts() == (0, 0)
        # What Redis kept about the dead process is removed too.
        await eventually(
            lambda: a.backplane.process_id not in redis_server.cli("hkeys", f"{stream}:procs")
        )


async def test_a_process_that_leaves_keeps_its_users_for_the_grace(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream, lease=30.0, grace=0.5)
        b = await start(redis_server.url, stream, lease=30.0, grace=0.5)
        a.set_presence("user_r", "online")
        await eventually(lambda: b.backplane.state.presence() == {"user_r": "online"})
        a.kill()
        await a.backplane.leave()
        # The user reloads onto b within the grace: never offline.
        b.set_presence("user_r", "online")
        await eventually(lambda: a.backplane.process_id not in b.backplane.state.processes())
        assert b.backplane.state.presence() == {"user_r": "online"}
        assert [s for _, u, s in b.recorder.presence] == ["online"]


async def test_redis_unreachable_at_start_names_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    backplane = RedisBackplane(url, Recorder(), connect_timeout=0.5)
    with pytest.raises(BackplaneUnavailable, match=f"cannot reach Redis at {url}"):
        await backplane.run()


async def test_optional_redis_serves_locally_then_joins(
    own_redis: Callable[..., RedisServer], stream: str
) -> None:
    port = free_port()
    async with cluster() as start:
        a = await start(f"redis://127.0.0.1:{port}", stream, optional=True)
        assert not a.backplane.connected
        a.publish("alone")
        assert [d["message"] for _, _, d in a.recorder.local] == ["alone"]
        redis = own_redis(port)
        await eventually(lambda: a.backplane.connected)
        b = await start(redis.url, stream)
        a.publish("together")
        await eventually(lambda: b.recorder.texts() == ["together"])
        await eventually(lambda: a.recorder.texts() == ["together"])
        # "alone" went to the stream once Redis was there (for the history), and a, which
        # delivered it itself while alone, did not deliver it twice.
        async with coredis.Redis.from_url(redis.url) as client:
            entries = await client.xrange(stream, "-", "+")
        sent = [e.field_values[b"d"] for e in entries if e.field_values.get(b"k") == b"m"]
        assert [json.loads(d)["message"] for d in sent] == ["alone", "together"]


async def test_redis_restart_loses_nothing_within_the_buffer(
    own_redis: Callable[..., RedisServer], stream: str
) -> None:
    redis = own_redis()
    async with cluster() as start:
        a = await start(redis.url, stream)
        b = await start(redis.url, stream)
        a.publish("before")
        await eventually(lambda: b.recorder.texts() == ["before"])
        redis.cli("shutdown", "nosave")
        redis.process.wait(TIMEOUT)  # type: ignore[union-attr]
        await eventually(lambda: not a.backplane.connected)
        for i in range(20):
            a.publish(f"during{i}")
        assert [d["message"] for _, _, d in a.recorder.local] == [f"during{i}" for i in range(20)]
        own_redis(redis.port)
        expected = ["before", *(f"during{i}" for i in range(20))]
        await eventually(lambda: b.recorder.texts() == expected)
        a.publish("after")
        await eventually(lambda: b.recorder.texts()[-1:] == ["after"])
        await eventually(lambda: a.recorder.texts()[-1:] == ["after"])
        assert b.recorder.texts() == [*expected, "after"]
        assert a.recorder.texts() == ["before", "after"]  # the rest it delivered itself
        ids = [i for i, _, _ in a.recorder.messages] + [i for i, _, _ in a.recorder.local]
        assert sorted(ids) == sorted(set(ids))
        assert a.backplane.stats.reconnects >= 1


async def test_the_buffer_drops_the_oldest_and_counts(
    own_redis: Callable[..., RedisServer], stream: str
) -> None:
    redis = own_redis()
    async with cluster() as start:
        a = await start(redis.url, stream, buffer=5)
        b = await start(redis.url, stream)
        redis.cli("shutdown", "nosave")
        redis.process.wait(TIMEOUT)  # type: ignore[union-attr]
        await eventually(lambda: not a.backplane.connected)
        for i in range(8):
            a.publish(f"x{i}")
        assert a.backplane.stats.dropped == 3
        assert a.backplane.buffered == 5
        own_redis(redis.port)
        await eventually(lambda: b.recorder.texts() == [f"x{i}" for i in range(3, 8)])


async def test_a_cut_connection_resumes_from_the_last_id(
    redis_server: RedisServer, stream: str
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        b = await start(redis_server.url, stream)
        for i in range(5):
            a.publish(f"c{i}")
        await eventually(lambda: len(b.recorder.messages) == 5)
        redis_server.cli("client", "kill", "type", "normal", "skipme", "yes")
        for i in range(5, 10):
            a.publish(f"c{i}")
        await eventually(lambda: len(b.recorder.messages) >= 10)
        assert b.recorder.texts() == [f"c{i}" for i in range(10)]


async def test_bad_entries_are_skipped_counted_and_logged_once(
    redis_server: RedisServer, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        async with coredis.Redis.from_url(redis_server.url) as client:
            await client.xadd(stream, {"hello": "world"})
            await client.xadd(stream, {"v": "1", "k": "m", "o": "x", "r": "1", "t": "nope"})
            await client.xadd(stream, {"v": "9"})
            await client.xadd(stream, {"v": "9"})
            payload = {"level": "info", "message": "<b>"}
            await client.xadd(
                stream,
                {
                    "v": "1",
                    "k": "m",
                    "o": "other",
                    "r": "1",
                    "t": "notification",
                    "d": json.dumps(payload),
                    "ts": "2025-01-01T00:00:00.000Z",
                },
            )
        await eventually(lambda: a.recorder.texts() == ["<b>"])
        bad = a.backplane.stats.bad
        assert bad["bad_version"] == 3
        assert bad["bad_field"] == 1
        lines = [r for r in caplog.records if "bad entries" in r.getMessage()]
        assert len(lines) == 2  # once per kind
        assert all(r.levelno == logging.WARNING for r in lines)


async def test_notification_scope_travels(redis_server: RedisServer, stream: str) -> None:
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        b = await start(redis_server.url, stream)
        status = message_entry(
            AgentStatus(agent_name="planner", state="working"),
            origin=a.backplane.process_id,
            wall=1e9,
        )
        a.backplane.publish(status)
        a.publish("only you", user="user_b")
        await eventually(lambda: len(b.recorder.messages) == 2)
        assert b.recorder.messages[0][2] == {"agentName": "planner", "state": "working"}
        assert b.recorder.entries[0].key == "planner"  # conflation key, recomputed
        assert b.recorder.entries[0].user_ids is None
        assert b.recorder.entries[1].user_ids == ("user_b",)


async def test_redis_paused_while_publishing_delivers_each_message_once(
    own_redis: Callable[..., RedisServer], stream: str
) -> None:
    redis = own_redis()
    async with cluster() as start:
        a = await start(redis.url, stream, write_timeout=0.3)
        b = await start(redis.url, stream)
        a.publish("p0")
        await eventually(lambda: b.recorder.texts() == ["p0"])
        # Writes hang for a second: a's writes time out, it reconnects (into the pause)
        # and writes again what may already have been written.
        redis.cli("client", "pause", "1000", "write")
        for i in range(1, 21):
            a.publish(f"p{i}")
        await eventually(lambda: len(b.recorder.texts()) >= 21)
        a.publish("end")
        await eventually(lambda: b.recorder.texts()[-1:] == ["end"])
        assert b.recorder.texts() == [*(f"p{i}" for i in range(21)), "end"]
        delivered_by_a = a.recorder.texts() + [d["message"] for _, _, d in a.recorder.local]
        assert sorted(delivered_by_a) == sorted(b.recorder.texts())  # once each, on a too
        assert a.backplane.stats.reconnects >= 1  # the pause did cut a's writes


async def test_the_in_process_api_of_a_service_in_a_cluster(
    redis_server: RedisServer, stream: str
) -> None:
    from agentcast.adapters.cluster_options import ClusterOptions
    from agentcast.adapters.service import Service

    service = Service(cluster=ClusterOptions(redis_server.url, stream=stream))
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        # The synchronous methods return before Redis gave the id ...
        assert service.send_notification("info", "queued") == Published("", 0)
        # ... publish_and_wait returns it.
        item = Notification(level="info", message="waited")
        published = await service.publish_and_wait(item)
        assert ClusterId.parse(published.id) is not None
        assert published.delivered == 0
        assert service.cluster_clients_count() == 0
        tg.cancel_scope.cancel()


async def test_while_redis_is_unreachable_the_sync_api_gives_the_local_id(stream: str) -> None:
    from agentcast.adapters.cluster_options import ClusterOptions
    from agentcast.adapters.service import Service

    url = f"redis://127.0.0.1:{free_port()}"
    service = Service(cluster=ClusterOptions(url, stream=stream, optional=True))
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        first = service.send_notification("info", "alone")
        second = service.send_notification("info", "alone again")
        assert ClusterId.parse(first.id) is not None
        assert first.id < second.id
        assert service.hub.health()["status"] == "degraded"
        tg.cancel_scope.cancel()


async def test_a_process_that_joins_reads_history_and_agent_rows(
    redis_server: RedisServer, stream: str
) -> None:
    """A process joining late fills its history from the stream (so a client may resume
    from an id another process gave it) and reads the agents' rows; rows beyond its
    bound are deleted from Redis."""
    async with cluster() as start:
        a = await start(redis_server.url, stream)
        for name in ("one", "two", "three"):
            entry = message_entry(
                AgentStatus(agent_name=name, state="working"), origin="a", wall=1.0e9
            )
            a.backplane.publish(entry)
        for i in range(5):
            a.publish(f"m{i}")
        await eventually(lambda: len(a.recorder.messages) == 8)
        b = await start(redis_server.url, stream)
        assert len(b.recorder.agent_rows_read) == 3
        # The recorder keeps two rows: the oldest one is deleted from Redis.
        assert int(redis_server.cli("hlen", f"{stream}:agents")) == 2
        first_id = a.recorder.messages[0][0]
        replay = b.recorder.history.since(first_id, now=0.0)
        assert replay is not None
        assert [e.id for e in replay] == [m[0] for m in a.recorder.messages[1:]]


async def test_agent_rows_past_their_age_are_deleted_now_and_then(
    redis_server: RedisServer, stream: str
) -> None:
    """A cluster whose processes never restart still forgets agents gone for longer than
    the snapshot keeps them: the rows are pruned periodically, a fresh one is kept."""
    async with cluster() as start:
        a = await start(redis_server.url, stream, prune_interval=0.05)
        entry = message_entry(AgentStatus(agent_name="fresh", state="idle"), origin="a", wall=1.0e9)
        a.backplane.publish(entry)
        await eventually(lambda: len(a.recorder.messages) == 1)
        two_hours_ago = int((time.time() - 7200) * 1000)
        old = '{"d":{"agentName":"old","state":"idle"},"u":null,"c":null}'
        key = f"{stream}:agents"
        redis_server.cli("hset", key, '["old",null,null]', f"{two_hours_ago}-0 {old}")
        await eventually(lambda: redis_server.cli("hkeys", key).split() == ['["fresh",null,null]'])
