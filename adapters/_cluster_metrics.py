"""``/metrics`` of a process in a cluster: the backplane's counters and gauges and the
cluster's connection figures."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["BackplaneCollector"]


class BackplaneCollector(Collector):
    """Reads the backplane's stats (a ``RedisBackplane``) and the cluster's counts
    (``(clients, authenticated, processes)``) when Prometheus scrapes."""

    def __init__(self, backplane: Any, counts: Callable[[], tuple[int, int, int]]) -> None:
        self._backplane = backplane
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        backplane = self._backplane
        stats = backplane.stats
        p = "agentcast_backplane_"
        yield GaugeMetricFamily(
            p + "connected", "1 while Redis is reachable.", value=int(backplane.connected)
        )
        yield GaugeMetricFamily(
            p + "buffered", "Entries waiting to be written to Redis.", value=backplane.buffered
        )
        yield GaugeMetricFamily(
            p + "lag_seconds",
            "Time between the last entry read and its writing.",
            value=stats.lag,
        )
        yield CounterMetricFamily(
            p + "published", "Entries written to the stream.", value=stats.published
        )
        yield CounterMetricFamily(
            p + "received", "Entries read from the stream.", value=stats.received
        )
        yield CounterMetricFamily(
            p + "dropped",
            "Entries dropped from a full buffer while Redis was unreachable.",
            value=stats.dropped,
        )
        yield CounterMetricFamily(
            p + "reconnects", "Connections to Redis lost and made again.", value=stats.reconnects
        )
        bad = CounterMetricFamily(
            p + "bad_entries", "Stream entries skipped as unusable, by problem.", labels=["kind"]
        )
        for kind, count in sorted(stats.bad.items()):
            bad.add_metric([kind], count)
        yield bad
        clients, authenticated, processes = self._counts()
        c = "agentcast_cluster_"
        yield GaugeMetricFamily(c + "connections_open", "Open connections, cluster-wide.", clients)
        yield GaugeMetricFamily(
            c + "connections_authenticated",
            "Authenticated connections, cluster-wide.",
            authenticated,
        )
        yield GaugeMetricFamily(c + "processes", "Processes in the cluster.", processes)
