"""How a process joins a cluster (``--redis-url`` and friends), without loading any of it.

The options, their defaults and the start-up error live here, apart from the cluster code
(:mod:`agentcast.adapters.cluster`, :mod:`agentcast.adapters.backplane`), so that the
command line, the configuration and the ASGI application can name them without importing
the cluster or ``coredis``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_LEASE",
    "DEFAULT_STREAM",
    "BackplaneUnavailable",
    "ClusterOptions",
]

DEFAULT_STREAM = "agentcast"
DEFAULT_LEASE = 15.0
DEFAULT_BUFFER = 10_000


class BackplaneUnavailable(Exception):
    """Redis could not be reached at start (and it is not optional). One line, naming the
    URL without its password."""


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """How a process joins its cluster."""

    redis_url: str
    stream: str = DEFAULT_STREAM
    #: A process that stops writing is forgotten (its users offline) within this.
    lease: float = DEFAULT_LEASE
    #: Entries kept while Redis is unreachable; beyond it the oldest are dropped.
    buffer: int = DEFAULT_BUFFER
    #: Start even when Redis is unreachable (local only until it is reachable).
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the Redis URL must start with redis://, rediss:// or unix://")
        if not self.stream or any(c.isspace() for c in self.stream):
            raise ValueError("the Redis stream name must be non-empty, without spaces")
        if not self.lease >= 0.3:
            raise ValueError("the presence lease must be at least 0.3 seconds")
        if self.buffer < 1:
            raise ValueError("the Redis buffer must hold at least one message")
