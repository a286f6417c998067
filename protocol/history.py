"""Broadcast ids and the history a reconnecting client resumes from (PROTOCOL.md 3 and 7).

**Ids** are ``<epoch>-<sequence>``, both zero-padded decimal of fixed width
(``1764441600000-000000000042``), so they increase when compared as strings. The epoch is
given by the adapter when the process starts (the wall clock in milliseconds): a process
restarted without a shared history issues ids that sort after every id it issued before,
and an id of an earlier epoch is answered ``complete: false``, never with messages the
client did not miss. The shape is that of a Redis stream id (``<ms>-<seq>``) padded to a
fixed width, so a cluster-wide history can use the same form.

**History** is anything with the small :class:`History` interface: issue the next id,
append a published message, read what followed an id. :class:`MemoryHistory` is the
bounded in-memory ring of one process (default 1,000 messages or 5 minutes, whichever
is smaller). Each entry is the prepared message, which carries its scope (who may receive
it), so a replay applies the delivery rule exactly as the live fan-out does.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from .messages import PreparedMessage

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_HISTORY_TTL",
    "MAX_ID_LENGTH",
    "BoundedEntries",
    "History",
    "HistoryEntry",
    "MemoryHistory",
    "format_id",
    "parse_id",
]

DEFAULT_HISTORY_SIZE: Final = 1000
DEFAULT_HISTORY_TTL: Final = 300.0
#: No id is longer (they are a few dozen characters): a longer resume point (``since``)
#: is answered ``complete: false`` without asking the history.
MAX_ID_LENGTH: Final = 128
_EPOCH_DIGITS = 13  # milliseconds since 1970, until the year 2286
_SEQ_DIGITS = 12
_MAX_EPOCH = 10**_EPOCH_DIGITS - 1
_MAX_SEQ = 10**_SEQ_DIGITS - 1
_ID = re.compile(rf"(\d{{{_EPOCH_DIGITS}}})-(\d{{{_SEQ_DIGITS}}})", re.ASCII)


def format_id(epoch: int, seq: int) -> str:
    return f"{epoch:0{_EPOCH_DIGITS}d}-{seq:0{_SEQ_DIGITS}d}"


def parse_id(text: str) -> tuple[int, int] | None:
    """``(epoch, sequence)`` of a well-formed id, or ``None``."""
    match = _ID.fullmatch(text)
    if match is None:
        return None
    return int(match[1]), int(match[2])


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One published broadcast as history keeps it."""

    id: str
    #: The message as it was sent, its scope included (``message.scope``).
    message: PreparedMessage
    #: When it was published (monotonic), for the age bound.
    at: float


class History(Protocol):
    """What the hub needs from a history (in memory here; a Redis stream in a cluster)."""

    def next_id(self) -> str:
        """The id of the next message (every broadcast, ``user_presence`` included)."""
        ...

    def append(self, entry: HistoryEntry) -> None:
        """Keep a published message for replay (called in publish order)."""
        ...

    def since(self, message_id: str, now: float) -> list[HistoryEntry] | None:
        """Every kept message after *message_id*, oldest first, or ``None`` when the
        history cannot say what followed it (unknown or malformed id, or messages after it
        no longer kept). An empty list: nothing was missed."""
        ...


class BoundedEntries:
    """The bounds every history applies: at most ``size`` entries, none older than
    ``ttl`` seconds. A subclass learns of each entry dropped (:meth:`_dropped`)."""

    __slots__ = ("_entries", "size", "ttl")

    def __init__(self, size: int, ttl: float) -> None:
        if size < 0:
            raise ValueError("history size must not be negative")
        if not ttl >= 0:
            raise ValueError("history ttl must not be negative")
        self.size = size
        self.ttl = ttl
        self._entries: deque[HistoryEntry] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def _keep(self, entry: HistoryEntry) -> None:
        self._entries.append(entry)
        self._expire(entry.at)
        while len(self._entries) > self.size:
            self._dropped(self._entries.popleft())

    def _expire(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.ttl
        while entries and entries[0].at <= horizon:
            self._dropped(entries.popleft())

    def _dropped(self, entry: HistoryEntry) -> None:
        raise NotImplementedError  # pragma: no cover (abstract: each history defines it)


class MemoryHistory(BoundedEntries):
    """The last ``size`` messages of the last ``ttl`` seconds of one process, in memory."""

    __slots__ = ("_epoch", "_floor", "_seq")

    def __init__(
        self,
        size: int = DEFAULT_HISTORY_SIZE,
        ttl: float = DEFAULT_HISTORY_TTL,
        *,
        epoch: int = 0,
    ) -> None:
        super().__init__(size, ttl)
        if not 0 <= epoch <= _MAX_EPOCH:
            raise ValueError(f"epoch must be from 0 to {_MAX_EPOCH}")
        self._epoch = epoch
        self._seq = 0
        # The sequence number up to which messages may have been dropped: a client that
        # saw this one or a later one misses nothing that is not kept.
        self._floor = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def next_id(self) -> str:
        if self._seq >= _MAX_SEQ:  # a trillion messages: start a new epoch, never wrap
            self._epoch += 1
            self._seq = 0
            self._floor = 0
            self._entries.clear()
        self._seq += 1
        return format_id(self._epoch, self._seq)

    def append(self, entry: HistoryEntry) -> None:
        parsed = parse_id(entry.id)
        last = self._entries[-1].id if self._entries else ""
        if parsed is None or parsed[0] != self._epoch or parsed[1] > self._seq or entry.id <= last:
            raise ValueError(f"not the next id this history issued: {entry.id[:40]!r}")
        self._keep(entry)

    def since(self, message_id: str, now: float) -> list[HistoryEntry] | None:
        parsed = parse_id(message_id)
        if parsed is None:
            return None
        epoch, seq = parsed
        if epoch != self._epoch or seq > self._seq:
            return None  # another process's (or a future) id: we cannot know
        self._expire(now)
        if seq < self._floor:
            return None  # messages after it are gone
        entries = self._entries
        # Ids increase along the deque: skip from the left until past the client's id.
        # (A binary search would be O(log n); a resume is rare next to broadcasts.)
        return [entry for entry in entries if entry.id > message_id]

    def _dropped(self, entry: HistoryEntry) -> None:
        self._floor = int(entry.id[-_SEQ_DIGITS:])  # append checked its form
