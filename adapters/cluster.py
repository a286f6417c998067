"""A service in a cluster: the glue between the hub and the Redis backplane.

:class:`~.cluster_options.ClusterOptions` says how to reach the cluster (``--redis-url``
and friends).
:class:`ClusterLink` is what a :class:`~agentcast.adapters.service.Service` holds when it
has options: it is the :class:`~agentcast.protocol.cluster_hub.ClusterHub`'s way out (a
publish becomes a stream entry, a user's local presence becomes a presence entry) and the
backplane's way in (what comes back from the stream is delivered to the local
connections, encoded once per process). It also gives ``/healthz`` its cluster figures and
``/metrics`` the backplane's. Nothing here imports ``coredis``: the backplane module is
imported only when a service with options is created.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agentcast.protocol import AgentStatus, ChatMessage, Notification, Published
from agentcast.protocol.cluster import (
    MessageEntry,
    message_entry,
)
from agentcast.protocol.cluster_agents import RowsRead, read_rows
from agentcast.protocol.cluster_history import HistoryLoader
from agentcast.protocol.cluster_hub import ClusterHub
from agentcast.protocol.cluster_state import (
    ClusterMessage,
    PresenceChange,
)
from agentcast.protocol.messages import PresenceStatus
from agentcast.protocol.scope import EVERYONE, Scope

from .cluster_options import ClusterOptions

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from .backplane import Pending, RedisBackplane

__all__ = ["ClusterLink", "ClusterOptions"]

log = logging.getLogger("agentcast.cluster")


class ClusterLink:
    """The hub's link to the cluster and the backplane's handler. See the module doc."""

    def __init__(
        self,
        options: ClusterOptions,
        *,
        clock: Callable[[], float],
        on_fanout: Callable[[float], None],
        grace: float,
    ) -> None:
        from .backplane import RedisBackplane  # noqa: PLC0415 (coredis: only when configured)

        self.options = options
        self._clock = clock
        self._on_fanout = on_fanout
        self.hub: ClusterHub | None = None
        self.backplane: RedisBackplane = RedisBackplane(
            options.redis_url,
            self,
            stream=options.stream,
            lease=options.lease,
            grace=grace,
            buffer=options.buffer,
            optional=options.optional,
        )

    @property
    def process_id(self) -> str:
        return self.backplane.process_id

    # -- the hub's way out (agentcast.protocol.cluster_hub.ClusterLink) ------------------

    def publish(
        self,
        item: AgentStatus | ChatMessage | Notification,
        *,
        now: float,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Published:
        pending = self.send(item, wall, scope)
        # Redis gives the id later; while it is unreachable the message was delivered
        # here at once, under a local id.
        return Published(pending.id, pending.delivered) if pending.done else Published("", 0)

    def send(
        self,
        item: AgentStatus | ChatMessage | Notification,
        wall: float,
        scope: Scope = EVERYONE,
    ) -> Pending:
        """Queue *item* for the stream, with its *scope*; the result resolves to its
        cluster id. A notification with both ``user_id`` and an audience in *scope* is a
        ``ValueError``, as for the hub."""
        entry = message_entry(item, origin=self.process_id, wall=wall, scope=scope)
        return self.backplane.publish(entry)

    def local_status_changed(self, user_id: str, status: PresenceStatus) -> None:
        self.backplane.presence_changed(user_id, status)

    def cluster_presence(self) -> dict[str, PresenceStatus]:
        return self.backplane.state.presence()

    def health(self) -> dict[str, object]:
        clients, authenticated, processes = self.counts()
        return {
            "status": "ok" if self.backplane.connected else "degraded",
            "cluster": {
                "clients": clients,
                "authenticated": authenticated,
                "processes": processes,
            },
        }

    def counts(self) -> tuple[int, int, int]:
        """Open and authenticated connections over the cluster (this process's live, the
        others' as they last reported), and the processes."""
        hub = self._hub()
        others = self.backplane.state.counts(excluding=self.process_id)
        processes = set(self.backplane.state.processes()) | {self.process_id}
        return (
            others[0] + hub.clients_count(),
            others[1] + hub.authenticated_clients_count(),
            len(processes),
        )

    # -- the backplane's way in (agentcast.adapters.backplane.ClusterHandler) ------------

    def cluster_message(self, message: ClusterMessage) -> int:
        return self.deliver_locally(message.entry, str(message.id))

    def cluster_presence_changes(self, changes: list[PresenceChange]) -> None:
        self._hub().deliver_presence_changes(changes, self._clock(), time.time())

    def deliver_locally(self, entry: MessageEntry, message_id: str) -> int:
        start = time.perf_counter()
        delivered = self._hub().deliver_entry(entry, message_id, self._clock(), time.time())
        self._on_fanout(time.perf_counter() - start)
        return delivered

    def local_counts(self) -> tuple[int, int]:
        hub = self._hub()
        return hub.clients_count(), hub.authenticated_clients_count()

    def local_presence(self) -> dict[str, PresenceStatus]:
        return self._hub().local_presence()

    def history_gap(self) -> None:
        self._hub().cluster_history.gap()

    def history_loader(self) -> HistoryLoader:
        return self._hub().cluster_history.loader(self._clock(), time.time())

    def agent_rows(self, rows: Mapping[str, str]) -> list[str]:
        read = self._read_rows(rows)
        self._hub().load_agent_states(read, self._clock())
        return read.stale

    def stale_agent_rows(self, rows: Mapping[str, str]) -> list[str]:
        return self._read_rows(rows).stale

    def _read_rows(self, rows: Mapping[str, str]) -> RowsRead:
        states = self._hub().agent_states
        return read_rows(rows, wall=time.time(), ttl=states.ttl, max_entries=states.max_entries)

    def _hub(self) -> ClusterHub:
        assert self.hub is not None, "the link is attached to a hub at once"
        return self.hub

    # -- metrics ------------------------------------------------------------------------

    def collector(self) -> Collector:
        """The backplane's and the cluster's metrics, for the service's registry."""
        from ._cluster_metrics import BackplaneCollector  # noqa: PLC0415

        return BackplaneCollector(self.backplane, self.counts)
