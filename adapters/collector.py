"""``agentcast serve``'s garbage-collection policy: Python's, held back during a storm.

CPython finds reference cycles by generations. A young collection (generations 0 and 1)
looks at the objects made since the last ones, and takes a millisecond or two. A full
collection (generation 2) looks at every object the collector tracks, and the event loop
stands still meanwhile: ~70-700 ns per object on one core (more when the heap is large or
the machine busy), i.e. tens to hundreds of milliseconds with thousands of connections
(about 25-30 tracked objects each on asyncio and uvloop, ~110 on trio:
``benchmarks/gc_census.py``). CPython starts one whenever the objects that survived the
young collections have grown by a quarter since the last full one: exactly what a
reconnect storm does, several times over, while every client waits on the loop.

What :class:`Collector` changes, for the whole process (``agentcast serve`` only: an
application that embeds :class:`~agentcast.adapters.Server` keeps its own policy):

* :func:`gc.freeze` once the server listens: what start-up made (modules, settings, the
  server) is never looked at again;
* while sessions are opening (one opened within the last :data:`CALM` second), Python's
  full collections are held back: the oldest generation's threshold is set out of reach.
  Once no session has opened for :data:`CALM` seconds, Python's threshold is back, and
  Python runs the full collection it has been owing (if it owes one) at its next young
  collection. A storm is served first and collected after. A storm that lasts longer
  than ``postpone`` seconds (``--gc-postpone``, 60) gets Python's threshold back until
  Python has run its full collection, and is held back again after it.

Everything else is Python's own: the young collections, when a full collection is due,
and what it collects. Reference cycles are collected as Python collects them, at most
``postpone`` seconds later. ``--gc-postpone 0`` leaves Python's collector as it is
(nothing frozen either).
"""

from __future__ import annotations

import gc
import logging

import anyio

from agentcast.protocol import Hub

from .service import clock

__all__ = ["CALM", "DEFAULT_GC_POSTPONE", "Collector", "Hold"]

log = logging.getLogger("agentcast.server")

#: How long full collections may be held back while sessions keep opening (seconds).
DEFAULT_GC_POSTPONE = 60.0
#: Sessions have stopped opening once none has for this many seconds.
CALM = 1.0
#: How often the server looks.
_LOOK_EVERY = CALM / 4
#: A threshold the oldest generation's count never reaches: no automatic full collection.
_NEVER = 2**31 - 1


class Hold:
    """Whether to hold full collections back now; time and counts are given (no clock,
    no gc). Held while a session opened within :data:`CALM` seconds, for at most
    *postpone* seconds in a row; after that, not until a full collection has run."""

    __slots__ = ("_held_since", "_last_opening", "_opened", "_owed_at", "postpone")

    def __init__(self, postpone: float, now: float, opened: int = 0) -> None:
        self.postpone = postpone
        self._opened = opened
        self._last_opening = now - CALM  # calm from the start
        self._held_since: float | None = None
        #: The count of full collections when holding last gave up, or None.
        self._owed_at: int | None = None

    def held(self, now: float, opened: int, full_collections: int) -> bool:
        """Hold at *now*? *opened*: sessions opened so far; *full_collections*: full
        collections run so far (both counters)."""
        if opened != self._opened:
            self._opened = opened
            self._last_opening = now
        if now - self._last_opening >= CALM:
            self._held_since = self._owed_at = None
            return False
        if self._owed_at is not None:
            if full_collections == self._owed_at:
                return False  # Python's turn, until it has collected
            self._owed_at = None
        if self._held_since is None:
            self._held_since = now
        elif now - self._held_since >= self.postpone:
            self._held_since = None
            self._owed_at = full_collections
            return False
        return True


class Collector:
    """The policy of the module doc for the process, over *hub*'s count of sessions
    opened: :meth:`start` once the server listens, :meth:`run` as a task, :meth:`stop`
    to give Python its own policy back."""

    def __init__(self, hub: Hub, postpone: float = DEFAULT_GC_POSTPONE) -> None:
        self._hub = hub
        self._hold = Hold(postpone, clock(), hub.stats.opened_total)
        self._threshold: int | None = None  # Python's, for the oldest generation
        self._holding = False

    @property
    def holding(self) -> bool:
        """Whether full collections are held back now."""
        return self._holding

    def start(self) -> None:
        """Freeze what exists; from now on :meth:`look` decides."""
        gc.freeze()
        self._threshold = gc.get_threshold()[2]

    def stop(self) -> None:
        """Python's thresholds back, and nothing frozen."""
        if self._threshold is not None:
            self._set(holding=False)
            self._threshold = None
            gc.unfreeze()

    async def run(self) -> None:
        """Look every :data:`_LOOK_EVERY` seconds. Until cancelled."""
        while True:
            await anyio.sleep(_LOOK_EVERY)
            self.look(clock())

    def look(self, now: float) -> None:
        """Hold full collections back, or let Python have them, as of *now*."""
        full = gc.get_stats()[2]["collections"]
        self._set(self._hold.held(now, self._hub.stats.opened_total, full))

    def _set(self, holding: bool) -> None:
        if holding == self._holding or self._threshold is None:
            return
        self._holding = holding
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, _NEVER if holding else self._threshold)
        log.debug("full garbage collections %s", "held back" if holding else "Python's again")
