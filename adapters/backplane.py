"""The Redis backplane: many agentcast processes as one server (PROTOCOL.md section 10).

This module does the I/O; the rules live in :mod:`agentcast.protocol.cluster` and
:mod:`~agentcast.protocol.cluster_state`. It is imported only when a Redis URL is
configured, and it is the only module that imports ``coredis`` (anyio-based, so it runs
under asyncio and trio alike).

What is in Redis, for a stream named ``S`` (``--redis-stream``, default ``agentcast``):

* ``S``: the stream. Every entry of :mod:`~agentcast.protocol.cluster` (broadcasts,
  presence changes, snapshots, beats, leaves) is ``XADD``\\ ed to it with ``MAXLEN ~``;
  every process reads it with ``XREAD BLOCK`` from the last id it applied, its own
  entries included, so all processes apply the same entries in the same order.
* ``S:procs``: a hash, process id -> ``"<position> <ref> <clients> <authenticated>
  <leaving>"``: where the process last wrote, its sequence number and counts.
* ``S:presence:<process>``: a hash, user id -> that process's status for the user.
* ``S:agents``: a hash, one row per agent and scope -> ``"<position> <status>"``: the
  latest ``agent_status`` of each (:mod:`agentcast.protocol.cluster_agents`), written with
  the broadcast, read by a process that joins; rows past ``agent_state_ttl`` or beyond
  ``agent_state_max`` are deleted then and every ``prune_interval`` (10 minutes).

Each write is one Lua script (:mod:`._backplane_scripts`) that appends the entry and
updates the hashes, so the hashes always describe the stream up to its last entry: a
process that joins reads the hashes and the last position in one script and reads the
stream from there. Before it serves, it also reads the stream backwards from that
position to fill its history (the broadcasts a reconnecting client may have missed,
:mod:`agentcast.protocol.cluster_history`), so a resume works on every process and
survives the restart of all of them. A batch of writes is one pipeline, one round trip.

When Redis is unreachable, entries wait in a bounded buffer (the oldest dropped beyond
``buffer``, counted); broadcasts published meanwhile are delivered to this process's own
clients at once (with ids after the last one seen) and marked so, and sent to the stream
when Redis returns. The process reconnects with jittered exponential back-off, announces
everything it holds again (a snapshot) and reads on from its last position.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.lowlevel
import coredis
from anyio.abc import TaskStatus
from coredis.retry import NoRetryPolicy

from agentcast.protocol.cluster import (
    BadEntry,
    BeatEntry,
    ClusterId,
    Entry,
    LeaveEntry,
    MessageEntry,
    PresenceEntry,
    SnapshotEntry,
    decode_entry,
    encode_entry,
)
from agentcast.protocol.cluster_agents import row_field, row_value
from agentcast.protocol.cluster_history import HistoryLoader
from agentcast.protocol.cluster_state import (
    ClusterMessage,
    ClusterState,
    Expired,
    PresenceChange,
    ProcessRecord,
    Rejoin,
)
from agentcast.protocol.messages import PresenceStatus

from ._backplane_scripts import FORGET, OP, PRUNE, SNAPSHOT, WRITE
from .cluster_options import DEFAULT_BUFFER, DEFAULT_LEASE, DEFAULT_STREAM, BackplaneUnavailable

if TYPE_CHECKING:
    from coredis.response.types import StreamEntry

__all__ = [
    "DEFAULT_MAXLEN",
    "BackplaneStats",
    "BackplaneUnavailable",
    "ClusterHandler",
    "RedisBackplane",
]

log = logging.getLogger("agentcast.backplane")

#: ``MAXLEN ~`` of the stream: how far back a process cut off for a while can catch up.
DEFAULT_MAXLEN: Final = 10_000
#: Entries per pipeline (one round trip) and per ``XREAD``.
_BATCH: Final = 500
_READ_BLOCK_MS: Final = 2_000


class ClusterHandler(Protocol):
    """What the backplane needs from the process it serves (the service holding the hub)."""

    def cluster_message(self, message: ClusterMessage) -> int:
        """Deliver *message* to the local recipients; how many got it."""
        ...

    def cluster_presence_changes(self, changes: list[PresenceChange]) -> None:
        """Users' cluster-wide statuses changed (consecutive in the log, in log order):
        tell the local connections."""
        ...

    def deliver_locally(self, entry: MessageEntry, message_id: str) -> int:
        """Redis is unreachable: deliver *entry* to the local recipients now."""
        ...

    def local_counts(self) -> tuple[int, int]:
        """This process's open and authenticated connections."""
        ...

    def local_presence(self) -> dict[str, PresenceStatus]:
        """This process's status of every user it holds (its own connections only)."""
        ...

    def history_gap(self) -> None:
        """Entries after the last one applied may be lost (trimmed, Redis restarted)."""
        ...

    def history_loader(self) -> HistoryLoader:
        """Where the entries read backwards at the first join go (the history)."""
        ...

    def agent_rows(self, rows: Mapping[str, str]) -> list[str]:
        """The agent states kept in Redis, read at the first join, to record; the fields
        of those to delete (expired, over the bound, unreadable)."""
        ...

    def stale_agent_rows(self, rows: Mapping[str, str]) -> list[str]:
        """Of the agent states kept in Redis, the fields of those to delete."""
        ...


class BackplaneStats:
    """Counters and gauges for ``/metrics``."""

    __slots__ = (
        "bad",
        "dropped",
        "duplicates",
        "gaps",
        "lag",
        "published",
        "received",
        "reconnects",
    )

    def __init__(self) -> None:
        self.published = 0  # entries written to the stream
        self.received = 0  # entries read from the stream
        self.dropped = 0  # entries dropped from a full buffer
        self.reconnects = 0
        self.duplicates = 0
        self.gaps = 0  # reconnections that found entries after our position gone
        self.bad: Counter[str] = Counter()  # entries skipped, by kind of problem
        self.lag = 0.0  # seconds between the last entry's write and its reading


class Pending:
    """A broadcast on its way through the stream; :meth:`wait` returns its cluster id and
    how many local connections got it."""

    __slots__ = ("_done", "delivered", "id")

    def __init__(self) -> None:
        self.id = ""
        self.delivered = 0
        self._done = anyio.Event()

    def resolve(self, message_id: str, delivered: int) -> None:
        self.id, self.delivered = message_id, delivered
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> tuple[str, int]:
        await self._done.wait()
        return self.id, self.delivered


class _Item:
    __slots__ = ("attempted", "entry", "forget", "pending")

    def __init__(
        self,
        entry: Entry | None,
        pending: Pending | None = None,
        forget: Expired | None = None,
    ) -> None:
        self.entry = entry
        self.pending = pending
        self.forget = forget
        self.attempted = False


def default_process_id() -> str:
    """``<host>-<pid>-<random>``: unique per start, readable in Redis."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisBackplane:
    """One process's link to the cluster. See the module doc.

    :meth:`run` (with ``task_group.start``) connects before it reports started: Redis
    unreachable then raises :class:`BackplaneUnavailable`, unless ``optional``, which
    starts local-only and joins when Redis appears.
    """

    def __init__(
        self,
        url: str,
        handler: ClusterHandler,
        *,
        stream: str = DEFAULT_STREAM,
        lease: float = DEFAULT_LEASE,
        grace: float = 5.0,
        buffer: int = DEFAULT_BUFFER,
        maxlen: int = DEFAULT_MAXLEN,
        optional: bool = False,
        process_id: str | None = None,
        connect_timeout: float = 2.0,
        write_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        wall: Callable[[], float] = time.time,
        prune_interval: float = 600.0,
    ) -> None:
        if lease <= 0:
            raise ValueError("the presence lease must be positive")
        if buffer < 1:
            raise ValueError("the Redis buffer must hold at least one message")
        self.url = url
        self.stream = stream
        self.process_id = process_id if process_id is not None else default_process_id()
        if not self.process_id or any(c.isspace() for c in self.process_id):
            raise ValueError("a process id must be non-empty and without spaces")
        self.lease = lease
        #: How often this process writes a beat (and how stale cluster counts may be).
        self.beat_interval = min(lease / 3, 1.0)
        self.state = ClusterState(
            self.process_id, expire_after=lease - self.beat_interval, grace=grace
        )
        self.stats = BackplaneStats()
        self.buffer = buffer
        self.maxlen = maxlen
        #: How often the agents' rows past their age or bound are deleted.
        self.prune_interval = prune_interval
        self.optional = optional
        self.connected = False
        self._handler = handler
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._backoff = backoff
        self._wall = wall
        self._queue: deque[_Item] = deque()
        self._wakeup = anyio.Event()
        self._ref = 0
        self._waiting: dict[int, Pending] = {}
        self._loaded = False
        self._logged: set[str] = set()
        self._closing = False
        self._joined = False  # connected once
        self._procs_key = f"{stream}:procs"
        self._agents_key = f"{stream}:agents"
        self._presence_prefix = f"{stream}:presence:"

    # -- what the service calls ---------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Entries waiting to be written."""
        return len(self._queue)

    def publish(self, entry: MessageEntry) -> Pending:
        """Send a broadcast to the cluster. Never waits: while Redis is unreachable it is
        delivered locally at once and kept for the stream."""
        pending = Pending()
        if not self.connected:
            entry = replace(entry, local=True)
            self._deliver_locally(entry, pending)
        self._push(_Item(entry, pending))
        return pending

    def presence_changed(self, user_id: str, status: PresenceStatus) -> None:
        """This process's own status for *user_id* changed (``offline``: none left)."""
        self._push(_Item(PresenceEntry(self.process_id, -1, user_id, status)))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read and write until cancelled, reconnecting as needed."""
        attempt = 0
        started = False
        while True:
            try:
                async with self._client() as client:
                    await self._session(client, None if started else task_status)
            except BaseException as exc:
                # Cancelled while (re)connecting: coredis may report that as a connection
                # error (in a group with the cancellation); leave, do not retry.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if not isinstance(exc, Exception):
                    raise
                started = started or self._joined
                if self.connected:
                    log.warning("Redis connection lost (%s): buffering, reconnecting", _why(exc))
                    self.stats.reconnects += 1
                    attempt = 0
                self._disconnected()
                if not started:
                    if not self.optional:
                        raise BackplaneUnavailable(
                            f"cannot reach Redis at {_redact(self.url)}: {_why(exc)}"
                        ) from None
                    log.warning(
                        "Redis at %s unreachable (%s): serving this process only until it is "
                        "reachable",
                        _redact(self.url),
                        _why(exc),
                    )
                    task_status.started()
                started = True
            low, high = self._backoff
            delay = min(high, low * 2**attempt) * random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay)

    async def leave(self, timeout: float = 1.0) -> None:
        """Shutting down (after :meth:`run` ended): tell the cluster, so that our users go
        offline after the grace unless they reconnect elsewhere, and write what is still
        buffered, on a connection of its own, for up to *timeout* seconds."""
        if self._closing or not self.connected:
            return  # (cut off: what is buffered is lost; the lease forgets us)
        self._closing = True
        self._push(_Item(LeaveEntry(self.process_id, -1)))
        with anyio.move_on_after(timeout):
            try:
                async with self._client() as client:
                    write = await client.script_load(WRITE)
                    forget = await client.script_load(FORGET)
                    while self._queue:
                        await self._write_batch(client, write, forget)
            except Exception as exc:
                log.warning("could not tell the cluster this process leaves: %s", _why(exc))

    # -- internals ----------------------------------------------------------------------

    def _client(self) -> coredis.Redis[bytes]:
        return coredis.Redis.from_url(
            self.url,
            decode_responses=False,
            connect_timeout=self._connect_timeout,
            retry_policy=NoRetryPolicy(),
            client_name=f"agentcast:{self.process_id}",
        )

    def _push(self, item: _Item) -> None:
        queue = self._queue
        while len(queue) >= self.buffer:
            dropped = queue.popleft()
            self.stats.dropped += 1
            if dropped.pending is not None and not dropped.pending.done:
                dropped.pending.resolve("", 0)
        queue.append(item)
        self._wakeup.set()

    def _deliver_locally(self, entry: MessageEntry, pending: Pending | None) -> None:
        message_id = str(self.state.local_id())
        delivered = self._handler.deliver_locally(entry, message_id)
        if pending is not None:
            pending.resolve(message_id, delivered)

    def _disconnected(self) -> None:
        """Redis is gone: what was never sent is delivered to our own clients now."""
        self.connected = False
        for item in self._queue:
            entry = item.entry
            if isinstance(entry, MessageEntry) and not item.attempted and not entry.local:
                item.entry = replace(entry, local=True)
                self._deliver_locally(item.entry, item.pending)

    async def _session(
        self, client: coredis.Redis[bytes], task_status: TaskStatus[None] | None
    ) -> None:
        with anyio.fail_after(self._connect_timeout + self._write_timeout):
            write = await client.script_load(WRITE)
            snapshot = await client.script_load(SNAPSHOT)
            forget = await client.script_load(FORGET)
            if not self._loaded:
                await self._load(client, snapshot)
            elif await self._gap(client):
                # Redis restarted empty, or trimmed past us: what is gone is gone; read on
                # from our position (everything newer is after it). Presence converges as
                # every process that reconnects announces itself again, and the lease
                # forgets those that did not come back.
                self.stats.gaps += 1
                self._handler.history_gap()
                log.warning(
                    "entries after %s may be lost (Redis restarted or trimmed)", self.state.position
                )
        self._loaded = True
        self._requeue()
        self.connected = True
        self._joined = True
        if task_status is not None:
            log.info("joined the cluster on stream %r as %s", self.stream, self.process_id)
            task_status.started()
        else:
            log.info("Redis reachable again: rejoined the cluster")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._write, client, write, forget)
            tasks.start_soon(self._beat)
            tasks.start_soon(self._prune_loop, client)
            await self._read(client)

    async def _gap(self, client: coredis.Redis[bytes]) -> bool:
        """Whether entries after our position may be gone (trimmed, or Redis restarted)."""
        first = await client.xrange(self.stream, "-", "+", count=1)
        if not first:
            return self.state.position != "0-0"
        try:
            return (
                ClusterId.from_position(first[0].identifier)
                > ClusterId.from_position(self.state.position).following()
            )
        except BadEntry:
            return True

    async def _load(self, client: coredis.Redis[bytes], sha: bytes | str) -> None:
        reply = await client.evalsha(
            sha,
            keys=[self.stream, self._procs_key, self._agents_key],
            args=[self._presence_prefix],
        )
        position, flat_procs, flat_rows, flat_agents = _as_list(reply)
        records: dict[str, ProcessRecord] = {}
        rows: dict[str, dict[str, PresenceStatus]] = {}
        names = [_str(x) for x in _as_list(flat_procs)[0::2]]
        values = [_str(x) for x in _as_list(flat_procs)[1::2]]
        for name, value, flat in zip(names, values, _as_list(flat_rows), strict=False):
            parts = value.split(" ")
            try:
                records[name] = ProcessRecord(
                    parts[0], int(parts[1]), int(parts[2]), int(parts[3]), parts[4] == "1"
                )
                ClusterId.from_position(parts[0])
            except (IndexError, ValueError):
                self._bad("bad_record", f"unusable record of process {name!r}")
                continue
            pairs = _as_list(flat)
            statuses: dict[str, PresenceStatus] = {}
            for user, status in zip(pairs[0::2], pairs[1::2], strict=False):
                text = _str(status)
                if text in ("online", "away", "busy"):
                    statuses[_str(user)] = text  # type: ignore[assignment]
            rows[name] = statuses
        outcomes = self.state.load(_str(position), records, rows)
        self._dispatch(outcomes)
        agents = _as_list(flat_agents)
        stored = {_str(k): _str(v) for k, v in zip(agents[0::2], agents[1::2], strict=False)}
        await self._prune(client, stored, self._handler.agent_rows(stored))
        await self._preload(client, _str(position))

    async def _preload(self, client: coredis.Redis[bytes], position: str) -> None:
        """Fill the history from the stream, read backwards from *position* (where this
        process starts reading forwards), until it is full, too old, or at the start."""
        loader = self._handler.history_loader()
        loader.start(position)
        end = position
        budget = self.maxlen + _BATCH  # at most the stream's bound (MAXLEN ~ is a bit more)
        while end != "0-0" and budget > 0:
            chunk = await client.xrevrange(self.stream, end, "-", count=min(_BATCH, budget))
            budget -= _BATCH
            wants = True
            for raw in chunk:
                try:
                    entry: Entry | None = decode_entry(_fields(raw.field_values))
                except BadEntry:
                    entry = None
                wants = loader.feed(_str(raw.identifier), entry)
                if not wants:
                    break
            if not wants or len(chunk) < _BATCH:
                break
            end = "(" + _str(chunk[-1].identifier)
        loader.finish()

    def _requeue(self) -> None:
        """(Re)joining: entries possibly half-written stay first; presence and beats that
        never left are replaced by one snapshot of everything we hold now."""
        attempted = [item for item in self._queue if item.attempted]
        rest = [
            item
            for item in self._queue
            if not item.attempted
            and (isinstance(item.entry, MessageEntry | LeaveEntry) or item.forget is not None)
        ]
        clients, authenticated = self._handler.local_counts()
        snapshot = SnapshotEntry(
            self.process_id, -1, self._handler.local_presence(), clients, authenticated
        )
        self._queue = deque([*attempted, _Item(snapshot), *rest])
        self._wakeup.set()

    async def _write(self, client: coredis.Redis[bytes], write: Any, forget: Any) -> None:
        while True:
            if not self._queue:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            await self._write_batch(client, write, forget)

    async def _write_batch(self, client: coredis.Redis[bytes], write: Any, forget: Any) -> None:
        """Write the oldest entries, up to a batch, in one pipeline (one round trip)."""
        batch = [self._queue[i] for i in range(min(_BATCH, len(self._queue)))]
        with anyio.fail_after(self._write_timeout):
            async with client.pipeline(transaction=False) as pipe:
                for item in batch:
                    if item.forget is not None:
                        gone = item.forget.process
                        pipe.evalsha(
                            forget,
                            keys=[self._procs_key, self._presence_prefix + gone],
                            args=[gone, item.forget.position],
                        )
                    else:
                        self._stage(pipe, write, item)
        written = {id(item) for item in batch}
        while self._queue and id(self._queue[0]) in written:
            self._queue.popleft()
        self.stats.published += sum(1 for item in batch if item.entry is not None)

    def _stage(self, pipe: Any, sha: Any, item: _Item) -> None:
        entry = item.entry
        assert entry is not None
        if not item.attempted:
            self._ref += 1
            entry = item.entry = replace(entry, ref=self._ref)
            item.attempted = True
            if item.pending is not None and not item.pending.done:
                self._waiting[entry.ref] = item.pending
        fields = encode_entry(entry)
        clients, authenticated = 0, 0
        if isinstance(entry, SnapshotEntry | BeatEntry):
            clients, authenticated = entry.clients, entry.authenticated
        args: list[bytes | str | int] = [
            self.maxlen,
            self.process_id,
            OP[type(entry)],
            entry.ref,
            clients,
            authenticated,
            len(fields),
        ]
        for name, value in fields.items():
            args += (name, value)
        if isinstance(entry, PresenceEntry):
            args += (entry.user_id, entry.status)
        elif isinstance(entry, SnapshotEntry):
            for user, status in entry.statuses.items():
                args += (user, status)
        elif isinstance(entry, MessageEntry) and entry.type == "agent_status":
            args += (row_field(entry), row_value(entry))
        pipe.evalsha(
            sha,
            keys=[
                self.stream,
                self._procs_key,
                self._presence_prefix + self.process_id,
                self._agents_key,
            ],
            args=args,
        )

    async def _prune_loop(self, client: coredis.Redis[bytes]) -> None:
        """Delete the agents' rows that are past their age or bound, now and then (a
        cluster whose processes never restart would keep them)."""
        while True:
            await anyio.sleep(self.prune_interval)
            found = await client.hgetall(self._agents_key)
            rows = {_str(k): _str(v) for k, v in found.items()}
            await self._prune(client, rows, self._handler.stale_agent_rows(rows))

    async def _prune(
        self, client: coredis.Redis[bytes], rows: Mapping[str, str], stale: list[str]
    ) -> None:
        if stale:
            args = [part for field in stale for part in (field, rows[field])]
            await client.eval(PRUNE, keys=[self._agents_key], args=args)

    async def _beat(self) -> None:
        while True:
            await anyio.sleep(self.beat_interval)
            if not any(isinstance(item.entry, BeatEntry) for item in self._queue):
                clients, authenticated = self._handler.local_counts()
                self._push(_Item(BeatEntry(self.process_id, -1, clients, authenticated)))

    async def _read(self, client: coredis.Redis[bytes]) -> None:
        key = self.stream.encode()
        while True:
            reply = await client.xread(
                {self.stream: self.state.position}, count=_BATCH, block=_READ_BLOCK_MS
            )
            if not reply:
                continue
            entries = reply.get(key, ())
            self._apply(entries)
            if entries:
                try:
                    last = ClusterId.from_position(entries[-1].identifier)
                    self.stats.lag = max(0.0, self._wall() - last.ms / 1000)
                except BadEntry:
                    pass

    def _apply(self, entries: tuple[StreamEntry, ...]) -> None:
        """Apply what one read brought, then act on it: in log order, the presence
        changes in a row together."""
        state = self.state
        applied: list[Any] = []
        for raw in entries:
            position = _str(raw.identifier)
            self.stats.received += 1
            duplicates = state.duplicates
            try:
                try:
                    entry = decode_entry(_fields(raw.field_values))
                except BadEntry as exc:
                    self._bad(exc.kind, str(exc))
                    outcomes = state.skip(position)
                else:
                    outcomes = state.apply(position, entry)
            except BadEntry as exc:  # the position itself is unusable
                self._bad(exc.kind, str(exc))
                state.position = position
                continue
            self.stats.duplicates += state.duplicates - duplicates
            applied += outcomes
        self._dispatch(applied)

    def _dispatch(self, outcomes: list[Any]) -> None:
        # Presence changes in a row go out together (one write per connection for all of
        # them), in their place between the other outcomes.
        changes: list[PresenceChange] = []
        for outcome in outcomes:
            if isinstance(outcome, PresenceChange):
                changes.append(outcome)
                continue
            if changes:
                self._presence(changes)
                changes = []
            try:
                if isinstance(outcome, ClusterMessage):
                    self._message(outcome)
                elif isinstance(outcome, Expired):
                    if outcome.process != self.process_id:
                        log.info("process %s left the cluster", outcome.process)
                        self._push(_Item(None, forget=outcome))
                elif isinstance(outcome, Rejoin):
                    log.warning("this process was forgotten by the cluster: announcing again")
                    self._requeue()
            except Exception:  # a delivery bug must not stop the stream
                log.exception("error applying %r", outcome)
        if changes:
            self._presence(changes)

    def _presence(self, changes: list[PresenceChange]) -> None:
        try:
            self._handler.cluster_presence_changes(changes)
        except Exception:  # a delivery bug must not stop the stream
            log.exception("error applying %d presence changes", len(changes))

    def _message(self, message: ClusterMessage) -> None:
        entry = message.entry
        pending = self._waiting.pop(entry.ref, None) if entry.origin == self.process_id else None
        if message.delivered_locally:
            return
        delivered = self._handler.cluster_message(message)
        if pending is not None and not pending.done:
            pending.resolve(str(message.id), delivered)

    def _bad(self, kind: str, detail: str) -> None:
        self.stats.bad[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("skipping bad entries on stream %r (%s); logged once", self.stream, detail)


def _fields(values: Mapping[Any, Any]) -> dict[bytes, bytes]:
    return {
        (k if isinstance(k, bytes) else str(k).encode()): (
            v if isinstance(v, bytes) else str(v).encode()
        )
        for k, v in values.items()
    }


def _str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _as_list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _why(exc: BaseException) -> str:
    """One line for a connection failure (unwrapping task-group exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _redact(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"
