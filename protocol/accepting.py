"""Accepting connections when the process runs short of file descriptors or memory.

``accept()`` fails with ``EMFILE`` when the process has used every file descriptor its
limit allows (``ulimit -n``), ``ENFILE`` when the whole system has, and ``ENOBUFS`` /
``ENOMEM`` when the kernel is short of memory for sockets. The connection stays in the
kernel's queue, so the listening socket stays readable: an accept loop that simply tries
again spins, and one that logs each failure fills the disk. :class:`AcceptGuard` is the
rule the adapter follows instead; the adapter tells it what each ``accept()`` did and it
answers:

* after a failure, how long to pause before trying again (a back-off that grows from
  :data:`FIRST_DELAY` to :data:`MAX_DELAY`; the adapter may also try again as soon as one
  of its connections closes, since that frees a descriptor);
* when a **shortage** starts (the first failure) and ends (the kernel's queue is empty
  again: every waiting client was accepted), so that the adapter logs one line at each
  end of it, never one per attempt; shortages that follow each other within
  :data:`REPORT_INTERVAL` are logged as one;
* how many attempts failed, by reason (``emfile``, ``enfile``, ``enobufs``, ``enomem``,
  or the error's name), for ``/metrics``, and whether a shortage is going on, for
  ``/healthz``.

Pure, like the rest of the core: time comes in as ``now``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

__all__ = [
    "FIRST_DELAY",
    "MAX_DELAY",
    "REPORT_INTERVAL",
    "RESOURCE_REASONS",
    "AcceptGuard",
    "Shortage",
    "accept_error_reason",
    "describe",
]

#: The first pause after a failed accept (seconds); each failure in a row doubles it...
FIRST_DELAY = 0.05
#: ...up to this.
MAX_DELAY = 1.0
#: A shortage starting this soon after the last reported one ended is reported with it:
#: at most two log lines per this many seconds, however often the process hits its limit.
REPORT_INTERVAL = 10.0

#: The errors that mean "short of a resource", by metric label.
RESOURCE_REASONS = {
    errno.EMFILE: "emfile",
    errno.ENFILE: "enfile",
    errno.ENOBUFS: "enobufs",
    errno.ENOMEM: "enomem",
}
#: What an accept() may fail with that says nothing about the server: the client gave up
#: before we accepted it, or nothing is waiting. The adapter just goes on.
_HARMLESS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED, errno.EPROTO}

_DESCRIPTIONS = {
    "emfile": "out of file descriptors (EMFILE: the process limit, ulimit -n)",
    "enfile": "out of file descriptors (ENFILE: the system-wide limit)",
    "enobufs": "out of socket buffer memory (ENOBUFS)",
    "enomem": "out of memory (ENOMEM)",
}


def accept_error_reason(exc: BaseException) -> str | None:
    """The metric label of an accept() failure, or ``None`` for one to ignore (the
    client went away first). Looks through wrappers: anyio reports a failed accept as
    ``BrokenResourceError`` caused by the ``OSError``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno in _HARMLESS:
                return None
            return (
                RESOURCE_REASONS.get(seen.errno)
                or errno.errorcode.get(seen.errno, str(seen.errno)).lower()
            )
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__.lower()


def describe(reason: str) -> str:
    """A reason in words, for the log."""
    return _DESCRIPTIONS.get(reason, f"accept() error {reason.upper()}")


@dataclass(slots=True)
class Shortage:
    """One episode of failing accepts."""

    reason: str  #: of its first failure
    started: float
    failures: int = 0
    #: Whether its start was logged (else it is folded into the report of its neighbours).
    reported: bool = True
    #: Shortages folded into this one's report (they came too soon after the last).
    folded: int = 0


class AcceptGuard:
    """The accept back-off and shortage bookkeeping of one server (see the module doc)."""

    __slots__ = ("_delay", "_folded", "_quiet_until", "errors", "shortage")

    def __init__(self) -> None:
        #: Failed accept() calls by reason, since the start (every resource reason is
        #: there from the start, at 0, so that alerts on its rate work before it happens).
        self.errors: dict[str, int] = dict.fromkeys(RESOURCE_REASONS.values(), 0)
        #: The shortage going on, or ``None``.
        self.shortage: Shortage | None = None
        self._delay = FIRST_DELAY
        self._quiet_until = float("-inf")
        self._folded = 0

    @property
    def accepting(self) -> bool:
        """False while accept() is failing (``/healthz`` says so)."""
        return self.shortage is None

    def failed(self, reason: str, now: float) -> tuple[float, Shortage | None]:
        """An accept() failed with *reason*: ``(seconds to pause, the new shortage to
        report)``; the second is ``None`` when a shortage was already going on, or when
        this one is folded into the last report."""
        self.errors[reason] = self.errors.get(reason, 0) + 1
        started = None
        shortage = self.shortage
        if shortage is None:
            report = now >= self._quiet_until
            shortage = self.shortage = Shortage(reason, now, reported=report)
            self._delay = FIRST_DELAY
            if report:
                shortage.folded, self._folded = self._folded, 0
                started = shortage
            else:
                self._folded += 1
        shortage.failures += 1
        delay = self._delay
        self._delay = min(self._delay * 2, MAX_DELAY)
        return delay, started

    def accepted(self, now: float) -> None:
        """An accept() succeeded: the next failure pauses briefly again."""
        self._delay = FIRST_DELAY

    def drained(self, now: float) -> Shortage | None:
        """The kernel's queue is empty (accept() would block): a shortage, if there was
        one, is over. Returns it if its end is to be reported."""
        shortage = self.shortage
        if shortage is None:
            return None
        self.shortage = None
        self._delay = FIRST_DELAY
        if not shortage.reported:
            return None
        self._quiet_until = now + REPORT_INTERVAL
        return shortage
