"""What a client that reconnects to any process of a cluster resumes from (PROTOCOL.md 7, 10).

In a cluster every process applies the same log in the same order and gives every message
the same id (:mod:`.cluster`). So each process keeps the broadcasts it applied, under their
cluster ids, in a :class:`ClusterHistory`, and answers a ``since`` from any process: a
client cut off from one process resumes on another without loss. A process that starts,
or restarts, first fills its history from the log itself (:meth:`ClusterHistory.loader`:
the adapter reads the log backwards, newest first, and feeds it), so a resume survives the
restart of every process as far back as the log reaches.

The same bounds as in one process hold (``history_size`` messages, ``history_ttl``
seconds, whichever is smaller). Two ids say what the history can answer:

* the **floor**: a client that saw this id or a later one misses nothing that is not kept.
  Older ids are answered ``None`` (``complete: false``). It moves up as messages are
  dropped; it is unknown (every ``since`` answered ``None``) until the process has read
  the log once, and again after a gap in the log (entries trimmed or lost while this
  process was cut off), until the next id it applies.
* the **last id known**: the newest id this process has delivered (a message or a
  ``user_presence``; at start, the log's newest position). A later id, one this process has not
  reached yet, is answered ``None`` too: it cannot know what came between.

Messages a process delivered under local ids while the log was unreachable are kept under
those ids; such ids are meaningful to that process only, so a resume across processes is
exact for what went through the log, and best effort for what was published during an
outage.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from .cluster import BadEntry, ClusterId, Entry, MessageEntry, prepare
from .history import DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL, BoundedEntries, HistoryEntry

__all__ = ["ClusterHistory", "HistoryLoader"]

_START: Final = str(ClusterId(0, 0, 0))


class ClusterHistory(BoundedEntries):
    """The broadcasts one process applied from the cluster's log, by their cluster ids."""

    __slots__ = ("_floor", "_last")

    def __init__(self, size: int = DEFAULT_HISTORY_SIZE, ttl: float = DEFAULT_HISTORY_TTL) -> None:
        super().__init__(size, ttl)
        self._floor: str | None = None  # None: not known yet (see the module doc)
        self._last = _START

    @property
    def floor(self) -> str | None:
        """The oldest id a resume can start from (see the module doc), or ``None``."""
        return self._floor

    @property
    def last(self) -> str:
        """The newest id this process knows of."""
        return self._last

    def next_id(self) -> str:
        """Ids come from the log (:class:`~agentcast.protocol.cluster.ClusterState`)."""
        raise RuntimeError("in a cluster, message ids are given by the log")

    def append(self, entry: HistoryEntry) -> None:
        """Keep a broadcast delivered under *entry.id* (ids increasing)."""
        if ClusterId.parse(entry.id) is None or entry.id <= self._last:
            raise ValueError(f"not an id after the last one kept: {entry.id[:40]!r}")
        self._known(entry.id)
        self._keep(entry)

    def seen(self, message_id: str) -> None:
        """This process delivered *message_id* (a ``user_presence``) with no broadcast to
        keep: a client may resume from it."""
        if message_id > self._last:
            self._known(message_id)

    def gap(self) -> None:
        """Entries of the log after the last one applied may be lost: nothing older than
        the next id applied can be answered."""
        self._entries.clear()
        self._floor = None

    def since(self, message_id: str, now: float) -> list[HistoryEntry] | None:
        """Every kept broadcast after *message_id*, oldest first, or ``None`` when the
        history cannot say what followed it (see the module doc)."""
        floor = self._floor
        if floor is None or ClusterId.parse(message_id) is None or message_id > self._last:
            return None
        self._expire(now)
        floor = self._floor
        assert floor is not None  # dropping a message moves it, never clears it
        if message_id < floor:
            return None
        return [entry for entry in self._entries if entry.id > message_id]

    def loader(self, now: float, wall: float) -> HistoryLoader:
        """Fill this history from the log, read backwards from its last position at *now*
        (monotonic) and *wall* (seconds since the epoch, the clock of the log's ids)."""
        return HistoryLoader(self, now, wall)

    def _known(self, message_id: str) -> None:
        self._last = message_id
        if self._floor is None:
            self._floor = message_id

    def _dropped(self, entry: HistoryEntry) -> None:
        self._floor = entry.id


class HistoryLoader:
    """Fills a :class:`ClusterHistory` from the log, newest entry first.

    :meth:`start` with the log position the process starts from (the newest entry), then
    :meth:`feed` each entry read backwards from there until it answers ``False`` (the
    history is full, or the entries are too old), then :meth:`finish`. Messages get the
    id of their position, as :class:`~agentcast.protocol.cluster.ClusterState` gives them.
    """

    __slots__ = ("_history", "_kept", "_now", "_oldest", "_stop", "_through", "_wall")

    def __init__(self, history: ClusterHistory, now: float, wall: float) -> None:
        self._history = history
        self._now = now
        self._wall = wall
        self._kept: list[HistoryEntry] = []  # newest first
        self._oldest: str | None = None  # the oldest position read
        self._stop: str | None = None  # where reading stopped: the floor
        self._through = _START

    def start(self, position: str) -> None:
        """The log's newest position (``0-0``: the log is empty)."""
        if position != "0-0":
            self._through = str(ClusterId.from_position(position))

    def feed(self, position: str, entry: Entry | None) -> bool:
        """The entry at *position* (``None``: one that could not be decoded); whether to
        read on."""
        if self._stop is not None:
            return False
        try:
            at = ClusterId.from_position(position)
        except BadEntry:
            return True  # not a position of ours: it holds nothing to keep
        message_id = str(at)
        self._oldest = message_id
        history = self._history
        age = max(0.0, self._wall - at.ms / 1000)
        if age >= history.ttl or (
            isinstance(entry, MessageEntry) and len(self._kept) >= history.size
        ):
            self._stop = message_id
            return False
        if isinstance(entry, MessageEntry):
            message = prepare(entry, message_id)
            self._kept.append(HistoryEntry(message_id, message, self._now - age))
        return True

    def finish(self) -> None:
        """Replace the history's content with what was read."""
        history = self._history
        history._entries = deque(reversed(self._kept))
        history._last = max(self._through, history._last)
        # Read up to a bound: nothing older can be answered. Read to the log's start:
        # the oldest entry read (what was trimmed before it is unknown). An empty log:
        # from the first id applied.
        history._floor = self._stop if self._stop is not None else self._oldest
