"""Per-connection rate limiting (PROTOCOL.md section 6), driven by ``now``."""

from __future__ import annotations

from collections import deque

__all__ = ["RateLimiter"]


class RateLimiter:
    """A token bucket plus a strike count.

    :meth:`allow` takes one token; when the bucket is empty the message is dropped and
    counts as a strike. :meth:`allow` tells the caller, through :attr:`exhausted`, when
    ``strikes`` drops have happened within ``window`` seconds: the connection is then
    closed with 1008.
    """

    __slots__ = ("_burst", "_last", "_rate", "_strike_times", "_strikes", "_tokens", "_window")

    def __init__(self, rate: float, burst: int, strikes: int, window: float, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._strikes = strikes
        self._window = window
        self._tokens = float(burst)
        self._last = now
        self._strike_times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Take a token for one message at *now*; ``False`` means drop it (a strike)."""
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        times = self._strike_times
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        return False

    @property
    def exhausted(self) -> bool:
        """Whether the strikes within the window reached the limit."""
        return len(self._strike_times) >= self._strikes
