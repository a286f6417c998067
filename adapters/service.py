"""The transport-neutral service: what every adapter serves, whatever moves the bytes.

A :class:`Service` is the seed's ``wsManager``. It owns the
:class:`~agentcast.protocol.Hub` (connections, users, presence, delivery), the
authenticator (and the JWT key file it may be reloaded from), the Prometheus metrics, the
in-process publishing API (PROTOCOL.md section 8), the hub's timer (users turn offline
when their presence grace period ends) and the registry of live connections. It listens
on nothing: the reference :class:`~agentcast.adapters.server.Server` and the ASGI
application (:mod:`agentcast.adapters.asgi`) each hold one and feed it connections::

    service = Service(Settings(heartbeat_interval=30.0))
    server = Server(service=service, port=3000)         # or create_app(service)
    service.send_notification("success", "Build finished")

The publishing methods are synchronous and never wait for a socket: they append the same
prepared bytes to every recipient's pending output, wake the writers and return the
:class:`~agentcast.protocol.Published` result. Call them from the event loop's thread
(from another thread, go through ``anyio.from_thread.run_sync``).

What a transport does with it:

* :meth:`Service.run` (in a task group, ``await tg.start(service.run)``) runs the
  background work: the hub timer and, when configured, the JWT key-file watch;
* each connection is :meth:`~Service.register`-ed while its socket lives (the connection
  gauges, the backlog gauge and :meth:`~Service.drain` see it) and
  :meth:`~Service.unregister`-ed when it is gone;
* when a session closes, :meth:`~Service.wake_hub_timer` lets the hub timer act earlier
  if the user has entered its grace period.

**In a cluster** (``cluster=ClusterOptions(redis_url)``), the hub is a
:class:`~agentcast.protocol.cluster_hub.ClusterHub` and :attr:`Service.cluster` the link to the
Redis backplane (:mod:`agentcast.adapters.cluster`): every publish goes out to the stream,
what the stream brings back is delivered to the local connections, :meth:`run` also runs
the backplane, and the publish API answers once Redis has given the ids. No adapter
changes. Without options nothing of it is imported.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from agentcast.protocol import (
    AgentStatus,
    Authenticator,
    ChatMessage,
    CloseCode,
    DevAuthenticator,
    HttpAnswer,
    HttpRequest,
    Hub,
    Notification,
    Published,
    Settings,
)
from agentcast.protocol.auth import ChannelAuthorizer
from agentcast.protocol.http import publish_request, published
from agentcast.protocol.messages import AgentState, NotificationLevel
from agentcast.protocol.scope import EVERYONE, PendingVerdict, Scope

from .dashboard import StaticFiles
from .metrics import Metrics

if TYPE_CHECKING:  # imported for real only when configured (PyJWT, coredis)
    from .backplane import Pending
    from .cluster import ClusterLink
    from .cluster_options import ClusterOptions
    from .jwt_keyfile import JwtKeyFile

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "Served", "Service", "clock"]

log = logging.getLogger("agentcast.server")

#: At shutdown, wait this long for the clients to finish the closing handshake: long
#: enough for a client on a slow network, short enough for a rolling deploy.
DEFAULT_DRAIN_TIMEOUT = 10.0
#: After the drain timeout, how long to wait for the dropped connections to be gone.
_ABORT_WAIT = 1.0


def _connections(count: int) -> str:
    """``1 connection``, ``2 connections``: for log lines people read."""
    return f"{count} connection" if count == 1 else f"{count} connections"


def clock() -> float:
    """The monotonic ``now`` given to the core: the event loop's clock (so deadlines and
    cancel scopes agree, also under trio's MockClock), or ``time.monotonic()`` when no
    loop runs in this thread."""
    try:
        return anyio.current_time()
    except RuntimeError:
        return time.monotonic()


class Served(Protocol):
    """A live connection as the service sees it, whichever adapter serves it."""

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet written."""
        ...

    def start_close(self, code: int, reason: str) -> None:
        """Start closing from the server side (``1001`` at shutdown)."""
        ...

    def abort(self) -> None:
        """Drop the connection now (it did not close in time)."""
        ...


class _MeteredHub(Hub):
    """A hub that times every publish (the fan-out histogram) and tells the service."""

    def __init__(
        self,
        settings: Settings,
        on_publish: Callable[[float, bool], None],
        authorizer: ChannelAuthorizer | None = None,
    ) -> None:
        # Ids of this process start a new epoch (the wall clock at start, in ms): they sort
        # after every id an earlier run issued, so a resume from before a restart is
        # answered complete:false, never with messages the client did not miss.
        super().__init__(settings, authorizer=authorizer, epoch=int(time.time() * 1000))
        self._on_publish = on_publish

    def publish(
        self,
        item: AgentStatus | ChatMessage | Notification,
        *,
        now: float,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Published:
        drops = self.stats.slow_client_drops
        start = time.perf_counter()
        try:
            return super().publish(item, now=now, wall=wall, scope=scope)
        finally:
            self._on_publish(time.perf_counter() - start, self.stats.slow_client_drops != drops)


class Service:
    """Hub, authenticator, metrics, publishing API, hub timer and live connections. See
    the module doc."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        authenticator: Authenticator | None = None,
        jwt_key_file: JwtKeyFile | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        authorizer: ChannelAuthorizer | None = None,
        cluster: ClusterOptions | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        #: The link to the other processes (``None``: this process is the whole server).
        self.cluster: ClusterLink | None = None
        if cluster is None:
            self.hub: Hub = _MeteredHub(self.settings, self._published, authorizer)
        else:
            # Imported here: without a cluster nothing of it (nor coredis) is loaded.
            from agentcast.protocol.cluster_hub import ClusterHub  # noqa: PLC0415

            from .cluster import ClusterLink  # noqa: PLC0415

            self.cluster = ClusterLink(
                cluster,
                clock=clock,
                on_fanout=self._observe_fanout,
                grace=self.settings.presence_grace,
            )
            self.hub = self.cluster.hub = ClusterHub(
                self.settings, self.cluster, authorizer=authorizer
            )
        # A held presence change (one message a second per user) is a new hub deadline.
        self.hub.on_deadline = self._hub_deadline_at
        if jwt_key_file is not None:
            if authenticator is not None and authenticator is not jwt_key_file.authenticator:
                raise ValueError("jwt_key_file brings its own authenticator: pass one of them")
            authenticator = jwt_key_file.authenticator
        #: Verifies tokens; the embedded default is the development authenticator.
        self.authenticator: Authenticator = (
            authenticator if authenticator is not None else DevAuthenticator()
        )
        #: The JWT key file, re-read when it changes (polled by :meth:`run`) and on
        #: :meth:`reload_keys` (the reference server calls it on SIGHUP).
        self.jwt_key_file = jwt_key_file
        #: At shutdown (:meth:`drain`), how long to wait for the closing handshakes.
        self.drain_timeout = drain_timeout
        self._connections: dict[Served, None] = {}
        self.metrics = Metrics(self.hub, tcp=self._connections.__len__, backlog=self.backlog)
        #: The dashboard's files (``GET /``, ``/agentcast.js``...), read on first request.
        self.static = StaticFiles(self.settings)
        if self.cluster is not None:
            self.metrics.registry.register(self.cluster.collector())
        self._tasks: TaskGroup | None = None
        self._drained: anyio.Event | None = None
        self._released: anyio.Event | None = None  # see wait_for_release()
        self._running = False
        self._hub_wakeup: anyio.Event | None = None
        self._hub_deadline = math.inf  # what the hub timer waits for

    # -- the in-process API (PROTOCOL.md 8) ---------------------------------------------

    def broadcast_agent_status(
        self,
        agent_name: str,
        state: AgentState,
        current_task: str | None = None,
        progress: float | None = None,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """Send ``agent_status`` to every authenticated connection, or only to the
        connections of *user_ids* and/or those subscribed to *channel*. Invalid arguments
        raise ``ValueError``."""
        return self.hub.broadcast_agent_status(
            agent_name,
            state,
            current_task,
            progress,
            now=clock(),
            wall=time.time(),
            user_ids=user_ids,
            channel=channel,
        )

    def broadcast_chat_message(
        self,
        conversation_id: str,
        message_id: str,
        content: str,
        sender: str,
        timestamp: str | None = None,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """Send ``chat_message`` to every authenticated connection (``timestamp``, ISO 8601,
        defaults to now), or only to *user_ids* and/or the subscribers of *channel*."""
        return self.hub.broadcast_chat_message(
            conversation_id,
            message_id,
            content,
            sender,
            timestamp,
            now=clock(),
            wall=time.time(),
            user_ids=user_ids,
            channel=channel,
        )

    def send_notification(
        self,
        level: NotificationLevel,
        message: str,
        user_id: str | None = None,
        *,
        user_ids: Iterable[str] | None = None,
        channel: str | None = None,
    ) -> Published:
        """Send ``notification`` to every authenticated connection, or only to every
        connection of *user_id* (or of *user_ids*), and/or to the subscribers of
        *channel*."""
        return self.hub.send_notification(
            level,
            message,
            user_id,
            now=clock(),
            wall=time.time(),
            user_ids=user_ids,
            channel=channel,
        )

    def publish(
        self, item: AgentStatus | ChatMessage | Notification, *, scope: Scope = EVERYONE
    ) -> Published:
        """Publish an already validated payload to *scope* (default: everyone)."""
        return self.hub.publish(item, now=clock(), wall=time.time(), scope=scope)

    @contextmanager
    def publishing_batch(self) -> Iterator[None]:
        """Publishes within this block are one batch, as an array sent to the publish API
        is: a client is judged too slow (``1013``) by what it had not drained when the
        batch began, not by what the batch itself queued (up to the hard stop at twice
        ``max_send_buffer``). Use it around a burst published from one task without
        yielding (a catch-up, many items at once): without it, a burst larger than
        ``max_send_buffer`` closes every client before any of it is written."""
        with self.hub.publishing_batch():
            yield

    def complete_verdict(self, verdict: PendingVerdict, allowed: bool) -> None:
        """Answer a subscription the authorizer left pending (PROTOCOL.md 4a): the
        client gets ``subscribed`` or ``forbidden_channel``. Call it from the event
        loop's thread, e.g. at the end of the task that looked the answer up."""
        verdict.complete(allowed, now=clock(), wall=time.time())

    async def publish_and_wait(
        self, item: AgentStatus | ChatMessage | Notification, *, scope: Scope = EVERYONE
    ) -> Published:
        """Publish and return once the message has its id and reached this process's
        connections. In a cluster the synchronous methods return before Redis has given
        the id (their result is ``Published("", 0)``): await this one when you need it.
        Alone, it is :meth:`publish`."""
        if self.cluster is None:
            return self.publish(item, scope=scope)
        message_id, delivered = await self.cluster.send(item, time.time(), scope).wait()
        return Published(message_id, delivered)

    def clients_count(self) -> int:
        """Open WebSocket connections of this process, authenticated or not."""
        return self.hub.clients_count()

    def authenticated_clients_count(self) -> int:
        """Authenticated WebSocket connections of this process."""
        return self.hub.authenticated_clients_count()

    def cluster_clients_count(self) -> int:
        """Open WebSocket connections over the cluster (this process's alone)."""
        if self.cluster is None:
            return self.clients_count()
        return self.cluster.counts()[0]

    def cluster_authenticated_clients_count(self) -> int:
        """Authenticated WebSocket connections over the cluster (this process's alone)."""
        if self.cluster is None:
            return self.authenticated_clients_count()
        return self.cluster.counts()[1]

    # -- HTTP ---------------------------------------------------------------------------

    def answer(
        self,
        request: HttpRequest,
        now: float,
        wall: float,
        respond: Callable[[HttpAnswer], None],
    ) -> None:
        """Answer ``/healthz`` or the publish API through *respond*: at once, or, in a
        cluster, once Redis has given the published messages their ids (a batch is one
        round trip)."""
        parsed = publish_request(request, self.hub)
        if isinstance(parsed, HttpAnswer):
            respond(parsed)
        elif self.cluster is None:
            # One batch: a client is judged by what it had not drained when it began.
            with self.hub.publishing_batch():
                results = [
                    self.hub.publish(item, now=now, wall=wall, scope=scope)
                    for item, scope in parsed.items
                ]
            respond(published(results, batch=parsed.batch))
        else:
            pending = [self.cluster.send(item, wall, scope) for item, scope in parsed.items]
            if all(p.done for p in pending) or self._tasks is None:
                respond(_published_answer(pending, parsed.batch))
            else:
                self._tasks.start_soon(_respond_later, pending, parsed.batch, respond)

    async def answer_async(self, request: HttpRequest, now: float, wall: float) -> HttpAnswer:
        """:meth:`answer`, awaited."""
        parsed = publish_request(request, self.hub)
        if isinstance(parsed, HttpAnswer):
            return parsed
        if self.cluster is None:
            # One batch: a client is judged by what it had not drained when it began.
            with self.hub.publishing_batch():
                results = [
                    self.hub.publish(item, now=now, wall=wall, scope=scope)
                    for item, scope in parsed.items
                ]
            return published(results, batch=parsed.batch)
        pending = [self.cluster.send(item, wall, scope) for item, scope in parsed.items]
        for p in pending:
            await p.wait()
        return _published_answer(pending, parsed.batch)

    # -- live connections ---------------------------------------------------------------

    @property
    def connections(self) -> Collection[Served]:
        """The live connections (WebSockets and plain HTTP exchanges), a read-only view."""
        return self._connections.keys()

    def register(self, connection: Served) -> None:
        """*connection* has a socket: count it until :meth:`unregister`."""
        self._connections[connection] = None

    def unregister(self, connection: Served) -> None:
        """*connection*'s socket is gone (a second call does nothing)."""
        known = self._connections.pop(connection, self) is not self
        if known and self._drained is not None and not self._connections:
            self._drained.set()
        if known and self._released is not None:
            self._released.set()

    async def wait_for_release(self, timeout: float) -> None:
        """Wait until a live connection goes away (its socket, so a file descriptor, is
        free), at most *timeout* seconds."""
        released = self._released
        if released is None or released.is_set():
            released = self._released = anyio.Event()
        with anyio.move_on_after(timeout):
            await released.wait()

    def backlog(self) -> int:
        """Bytes queued for clients and not yet written, over all connections."""
        return sum(connection.backlog for connection in self._connections)

    async def drain(self, *, abort: bool = True) -> None:
        """Close every live connection with 1001 and wait until they are gone, up to
        :attr:`drain_timeout`; then (with *abort*) drop the ones left and wait a moment
        for them to go. :meth:`stop_draining` ends the wait early. Only one drain at a
        time."""
        if not self._connections:
            return
        log.info("shutting down: closing %s", _connections(len(self._connections)))
        self._drained = drained = anyio.Event()
        try:
            for connection in list(self._connections):
                connection.start_close(CloseCode.GOING_AWAY, "server shutting down")
            with anyio.move_on_after(self.drain_timeout):
                await drained.wait()
            if not self._connections:
                return
            log.warning(
                "drain timeout: dropping %s still closing", _connections(len(self._connections))
            )
            if not abort:  # the caller drops them (by cancelling their tasks)
                return
            self._drained = drained = anyio.Event()
            for connection in list(self._connections):
                connection.abort()
            if self._connections:
                with anyio.move_on_after(_ABORT_WAIT):
                    await drained.wait()
        finally:
            self._drained = None

    def stop_draining(self) -> None:
        """Stop waiting for the closing handshakes (a second SIGINT): :meth:`drain` goes
        on to drop what is left."""
        if self._drained is not None:
            self._drained.set()

    @property
    def draining(self) -> bool:
        """:meth:`drain` is waiting."""
        return self._drained is not None

    # -- background work ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """:meth:`run` is running (the hub timer is on)."""
        return self._running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The service's background work, until cancelled: the hub timer, and the JWT
        key-file watch when one is configured. One :meth:`run` at a time."""
        if self._running:
            raise RuntimeError("this service is already running")
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                self._hub_wakeup = anyio.Event()
                tg.start_soon(self._hub_timer)
                if self.jwt_key_file is not None:
                    tg.start_soon(self.jwt_key_file.watch)
                if self.cluster is not None:
                    # Redis unreachable at start raises BackplaneUnavailable (unless the
                    # options say it is optional).
                    await tg.start(self._run_cluster, self.cluster)
                self._tasks = tg
                task_status.started()
        finally:
            self._running = False
            self._hub_wakeup = None
            self._tasks = None

    def wake_hub_timer(self) -> None:
        """A user may have entered its presence grace period (a session closed): wake the
        hub timer if it now has to act earlier than it is waiting for. The common case,
        nothing earlier, costs no task switch."""
        wakeup = self._hub_wakeup
        if wakeup is not None and not wakeup.is_set():
            deadline = self.hub.next_deadline()
            if deadline is not None and deadline < self._hub_deadline:
                wakeup.set()

    def _hub_deadline_at(self, at: float) -> None:
        """The hub needs waking at *at* (a presence change was held): wake the hub timer
        only if it waits for something later."""
        wakeup = self._hub_wakeup
        if wakeup is not None and not wakeup.is_set() and at < self._hub_deadline:
            wakeup.set()

    def catch_up(self) -> None:
        """Without :meth:`run`, nothing turns users offline between requests: do it now
        for those whose grace period has ended."""
        if not self._running:
            hub = self.hub
            try:
                now = clock()
                hub.handle_timer(now, time.time())
                while (deadline := hub.next_deadline()) is not None and deadline <= now:
                    hub.handle_timer(now, time.time())  # a presence group's next steps
            except Exception:  # pragma: no cover - the hub does not raise
                log.exception("error in the hub timer")

    async def reload_keys(self) -> None:
        """Re-read the JWT key file now, when one is configured."""
        if self.jwt_key_file is not None:
            await self.jwt_key_file.reload()

    def warn_about_defaults(self) -> None:
        """Log a warning for each development default still in place."""
        if isinstance(self.authenticator, DevAuthenticator):
            log.warning(
                "DEVELOPMENT authentication: any token of 1-128 characters [A-Za-z0-9_.-] "
                "is accepted as user_<token>. Configure a real authenticator for production."
            )
        if self.settings.api_key is None:
            log.warning(
                "no API key configured: the publish API (/api/...) answers loopback clients only"
            )
        if self.settings.allowed_origins is None:
            log.warning(
                "no allowed origins configured: a page from ANY Origin may open a WebSocket "
                "or an event stream (development); list your sites' origins in production"
            )

    # -- internals ----------------------------------------------------------------------

    def _observe_fanout(self, seconds: float) -> None:
        self.metrics.fanout.observe(seconds)

    @staticmethod
    async def _run_cluster(cluster: ClusterLink, *, task_status: TaskStatus[None]) -> None:
        try:
            await cluster.backplane.run(task_status=task_status)
        finally:
            # Stopping (the server has drained): tell the others, so that our users go
            # offline after the grace unless they reconnected elsewhere.
            with anyio.CancelScope(shield=True):
                await cluster.backplane.leave()

    def _published(self, seconds: float, dropped: bool) -> None:
        self.metrics.fanout.observe(seconds)
        if dropped:  # dropping a slow client may start a user's presence grace period
            self.wake_hub_timer()

    async def _hub_timer(self) -> None:
        """Turn users offline when their presence grace period ends, and send the presence
        changes held for the presence interval."""
        hub = self.hub
        while True:
            self._hub_wakeup = wakeup = anyio.Event()
            deadline = hub.next_deadline()
            self._hub_deadline = math.inf if deadline is None else deadline
            with anyio.CancelScope(deadline=self._hub_deadline) as scope:
                await wakeup.wait()
            now = clock()
            if deadline is not None and now < deadline and scope.cancelled_caught:
                now = deadline  # the loop woke a hair early: never before the deadline
            try:
                hub.handle_timer(now, time.time())
            except Exception:  # pragma: no cover - the hub does not raise
                log.exception("error in the hub timer")


def _published_answer(pending: list[Pending], batch: bool) -> HttpAnswer:
    return published([Published(p.id, p.delivered) for p in pending], batch=batch)


async def _respond_later(
    pending: list[Pending], batch: bool, respond: Callable[[HttpAnswer], None]
) -> None:
    for p in pending:
        await p.wait()
    respond(_published_answer(pending, batch))
