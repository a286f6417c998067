"""Prometheus metrics of the reference server (``GET /metrics``).

Each :class:`Metrics` has its own ``CollectorRegistry`` (not prometheus-client's global
one), so two servers in one process, or a test and the server it runs, never mix
numbers. The counters live in the protocol core (:class:`~agentcast.protocol.Stats`, plain
integers the hub updates); a collector reads them at scrape time, so the hot path costs
nothing extra. Only the fan-out duration is observed as it happens, by the server's
publish path (in-process and HTTP alike).

Exported (``agentcast_`` prefix):

=========================================  ======  ==============================================
``connections_open``                       gauge   open WebSocket connections
``connections_authenticated``              gauge   open and authenticated
``tcp_connections``                        gauge   TCP connections held (incl. plain HTTP)
``send_backlog_bytes``                     gauge   output pending over all connections
``channel_subscriptions``                  gauge   channel subscriptions over all connections
``channels_subscribed``                    gauge   channels with at least one subscriber
``agent_states``                           gauge   agent statuses kept for the ``agent_state``
                                                   snapshot (one per agent and scope)
``agent_states_dropped_total{reason}``     counter statuses dropped from it: ``limit``
                                                   (``agent_state_max``, oldest first) or
                                                   ``ttl`` (``agent_state_ttl``)
``connections_opened_total``               counter WebSocket connections opened
``connections_closed_total{code}``         counter closed, by close code (1006: no close frame)
``messages_received_total{type}``          counter client messages accepted, by type
``messages_sent_total{type}``              counter server messages queued, by type
``errors_total{kind}``                     counter ``error`` answers and auth failures, by code
``heartbeat_timeouts_total``               counter closes with 4000
``slow_client_drops_total``                counter closes with 1013 (backlog over the limit)
``rate_limit_closes_total``                counter closes with 1008 (rate-limit abuse)
``upgrades_refused_total{reason}``         counter upgrades answered 401/403/503, by reason:
                                                   ``auth``, ``origin``, ``max_connections``,
                                                   ``max_connections_per_ip``,
                                                   ``max_connections_per_user``,
                                                   ``max_unauthenticated_connections``,
                                                   ``connection_rate``,
                                                   ``max_pending_body_bytes`` (a
                                                   request refused 503 at its head)
``accept_errors_total{reason}``            counter failed accept() calls, by reason: ``emfile``,
                                                   ``enfile`` (out of file descriptors),
                                                   ``enobufs``, ``enomem``, or the errno name
``accepting``                              gauge   0 while accept() is failing (a shortage), else 1
``broadcast_fanout_seconds``               histo.  time to queue one publish on every recipient
=========================================  ======  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentcast.protocol import Hub

__all__ = ["FANOUT_BUCKETS", "REFUSAL_REASONS", "Metrics"]

#: The reasons an upgrade is refused (:attr:`agentcast.protocol.admission.Admission.refused`,
#: and ``auth`` for a 401), each exported from the start, at 0, so that alerts on their
#: rate work before the first refusal.
REFUSAL_REASONS = (
    "auth",
    "origin",
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_user",
    "max_unauthenticated_connections",
    "connection_rate",
    "max_pending_body_bytes",
)

#: Fan-out is in-memory queueing: microseconds for a few clients, milliseconds for
#: thousands. Buckets from 10 µs to 1 s.
FANOUT_BUCKETS = (
    0.00001,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


def _labelled(
    name: str, documentation: str, label: str, values: Mapping[str, int] | Mapping[int, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(key)], value)
    return family


class _HubCollector(Collector):
    """Reads the hub's counters when Prometheus scrapes."""

    def __init__(self, hub: Hub, tcp: Callable[[], int], backlog: Callable[[], int]) -> None:
        self._hub = hub
        self._tcp = tcp
        self._backlog = backlog

    def collect(self) -> Iterable[Metric]:
        hub = self._hub
        stats = hub.stats
        p = "agentcast_"
        yield GaugeMetricFamily(
            p + "connections_open", "Open WebSocket connections.", value=hub.clients_count()
        )
        yield GaugeMetricFamily(
            p + "connections_authenticated",
            "Open, authenticated WebSocket connections.",
            value=hub.authenticated_clients_count(),
        )
        yield GaugeMetricFamily(
            p + "tcp_connections", "TCP connections held, plain HTTP included.", value=self._tcp()
        )
        yield GaugeMetricFamily(
            p + "send_backlog_bytes",
            "Bytes queued for clients and not yet written, over all connections.",
            value=self._backlog(),
        )
        yield GaugeMetricFamily(
            p + "channel_subscriptions",
            "Channel subscriptions over all connections.",
            value=hub.subscriptions_count(),
        )
        yield GaugeMetricFamily(
            p + "channels_subscribed",
            "Channels with at least one subscribed connection.",
            value=hub.channels_count(),
        )
        agent_states = hub.agent_states
        yield GaugeMetricFamily(
            p + "agent_states",
            "Agent statuses kept for the agent_state snapshot (one per agent and scope).",
            value=len(agent_states),
        )
        yield _labelled(
            p + "agent_states_dropped",
            "Agent statuses dropped from the snapshot state: over agent_state_max (oldest "
            "first) or after agent_state_ttl.",
            "reason",
            {"limit": agent_states.evicted, "ttl": agent_states.expired},
        )
        yield CounterMetricFamily(
            p + "connections_opened", "WebSocket connections opened.", value=stats.opened_total
        )
        yield _labelled(
            p + "connections_closed",
            "WebSocket connections closed, by close code (1006: no close frame).",
            "code",
            stats.closes,
        )
        yield _labelled(
            p + "messages_received", "Client messages accepted, by type.", "type", stats.messages_in
        )
        yield _labelled(
            p + "messages_sent", "Server messages queued, by type.", "type", stats.messages_out
        )
        yield _labelled(
            p + "errors",
            "Error answers to clients and failed authentications, by code.",
            "kind",
            stats.errors,
        )
        yield CounterMetricFamily(
            p + "heartbeat_timeouts",
            "Connections closed for silence (4000).",
            value=stats.heartbeat_timeouts,
        )
        yield CounterMetricFamily(
            p + "slow_client_drops",
            "Connections closed because their backlog passed max_send_buffer (1013).",
            value=stats.slow_client_drops,
        )
        yield CounterMetricFamily(
            p + "rate_limit_closes",
            "Connections closed for rate-limit abuse (1008).",
            value=stats.rate_limit_closes,
        )
        yield _labelled(
            p + "upgrades_refused",
            "WebSocket upgrades refused (401, 403, 503), by reason.",
            "reason",
            {**dict.fromkeys(REFUSAL_REASONS, 0), **hub.admission.refused},
        )
        yield _labelled(
            p + "accept_errors",
            "Failed accept() calls (out of file descriptors or memory), by reason.",
            "reason",
            hub.accepting.errors,
        )
        yield GaugeMetricFamily(
            p + "accepting",
            "0 while accept() is failing (a shortage of file descriptors), else 1.",
            value=1 if hub.accepting.accepting else 0,
        )


class Metrics:
    """The server's metrics: a private registry, the hub collector and the fan-out histogram.

    *tcp* and *backlog* are called at scrape time for the adapter's own gauges.
    """

    #: The classic text format, which every Prometheus version scrapes (our names and
    #: labels are plain ASCII, so generate_latest's output is exactly that format).
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(
        self,
        hub: Hub,
        *,
        tcp: Callable[[], int] = lambda: 0,
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HubCollector(hub, tcp, backlog))
        self.fanout = Histogram(
            "agentcast_broadcast_fanout_seconds",
            "Time to queue one published message on every recipient.",
            buckets=FANOUT_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
