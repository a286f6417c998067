"""Counters of the protocol core, for metrics: plain numbers, no clock, no I/O.

The :class:`~agentcast.protocol.Hub` owns one :class:`Stats`; sessions count into it and
the adapter exports it (Prometheus in the reference server).
"""

from __future__ import annotations

from collections import Counter

__all__ = ["Stats"]


class Stats:
    """Counters for metrics; plain numbers the adapter exports (no clock, no I/O)."""

    __slots__ = (
        "closes",
        "errors",
        "heartbeat_timeouts",
        "messages_in",
        "messages_out",
        "opened_total",
        "rate_limit_closes",
        "slow_client_drops",
    )

    def __init__(self) -> None:
        self.opened_total = 0
        self.closes: Counter[int] = Counter()
        self.messages_in: Counter[str] = Counter()
        self.messages_out: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.heartbeat_timeouts = 0
        self.slow_client_drops = 0
        self.rate_limit_closes = 0
