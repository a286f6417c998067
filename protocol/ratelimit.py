"""Rate limits, driven by ``now``: one token bucket, and the per-connection limiter.

:class:`TokenBucket` serves both limits of the contract: messages per second per
connection (PROTOCOL.md section 6, :class:`RateLimiter`) and new connections per second
per process (``connection_rate``, :class:`~agentcast.protocol.admission.Admission`).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """*capacity* tokens, refilled at *rate* per second; full when first used.

    Time only moves forward here: an earlier *now* than one already seen adds nothing.
    """

    __slots__ = ("_capacity", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, capacity: float, now: float | None = None) -> None:
        self._rate = rate
        self._capacity = capacity
        self._tokens = capacity
        # None: not used yet; the bucket is full at whatever time it is first used.
        self._last = now

    def take(self, now: float) -> bool:
        """Take one token at *now*; ``False`` if there is none."""
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds (at least 1) until the next token, as of the last :meth:`take`."""
        return max(1, math.ceil((1.0 - self._tokens) / self._rate))


class RateLimiter(TokenBucket):
    """A token bucket plus a strike count.

    :meth:`allow` takes one token; when the bucket is empty the message is dropped and
    counts as a strike. :meth:`allow` tells the caller, through :attr:`exhausted`, when
    ``strikes`` drops have happened within ``window`` seconds: the connection is then
    closed with 1008. (One object per connection, and the strikes' list only once there
    is one: every connection has a limiter, and few ever strike.)
    """

    __slots__ = ("_strike_times", "_strikes", "_window")

    def __init__(self, rate: float, burst: int, strikes: int, window: float, now: float) -> None:
        super().__init__(rate, float(burst), now)
        self._strikes = strikes
        self._window = window
        self._strike_times: deque[float] | None = None

    def allow(self, now: float) -> bool:
        """Take a token for one message at *now*; ``False`` means drop it (a strike)."""
        if self.take(now):
            return True
        times = self._strike_times
        if times is None:
            times = self._strike_times = deque()
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        return False

    @property
    def exhausted(self) -> bool:
        """Whether the strikes within the window reached the limit."""
        times = self._strike_times
        return times is not None and len(times) >= self._strikes
