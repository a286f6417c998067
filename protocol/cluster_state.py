"""The state every process of a cluster derives from the shared log (PROTOCOL.md 10).

:class:`ClusterState` applies the log's entries (:mod:`.cluster`) in log order and says
what each one means for this process (:data:`Outcome`): a broadcast to deliver under its
id, a user's cluster-wide presence changing, a process forgotten. Every process applies
the same entries with the same rules, so all reach the same presence table and give every
message the same id.

**Leases**: a process that has not appeared in the log for ``expire_after`` seconds of
*log time* (the milliseconds of entry ids, the same for everyone) is forgotten: its users'
rows are dropped and whoever is left without a connection goes offline. Every live process
writes a beat at least every ``beat_interval``, so log time advances while anyone lives,
and a process killed without a word is forgotten within ``expire_after + beat_interval``
(the lease).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from .cluster import (
    BeatEntry,
    ClusterId,
    Entry,
    LeaveEntry,
    MessageEntry,
    PresenceEntry,
    SnapshotEntry,
)
from .messages import PresenceStatus

#: A user's status over several processes is the strongest.
_RANK: Final[dict[str, int]] = {"offline": 0, "away": 1, "online": 2, "busy": 3}

__all__ = [
    "ClusterMessage",
    "ClusterState",
    "Expired",
    "Outcome",
    "PresenceChange",
    "ProcessRecord",
    "Rejoin",
]


# -- what applying an entry produces ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterMessage:
    """Deliver this broadcast to the local recipients its scope names, with ``id``."""

    id: ClusterId
    entry: MessageEntry
    #: This process published it while the log was unreachable and delivered it to its
    #: own clients then: only the bookkeeping is left (``id`` is not used).
    delivered_locally: bool = False


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """The cluster-wide status of a user changed: send ``user_presence`` with ``id``."""

    id: ClusterId
    user_id: str
    status: PresenceStatus


@dataclass(frozen=True, slots=True)
class Expired:
    """*process*, last seen at log *position*, was forgotten (its lease ran out, or it
    left): the adapter may delete what shared storage keeps about it, unless it wrote
    since."""

    process: str
    position: str


@dataclass(frozen=True, slots=True)
class Rejoin:
    """This process itself was forgotten (it was cut off longer than its lease): it must
    announce everything it holds again (a :class:`SnapshotEntry`)."""


Outcome: TypeAlias = ClusterMessage | PresenceChange | Expired | Rejoin


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """What shared storage keeps about a process next to its presence rows: the log
    position and sequence number of its last entry, its counts, whether it left."""

    position: str
    ref: int
    clients: int = 0
    authenticated: int = 0
    leaving: bool = False


class ClusterState:
    """The replicated state: who holds which users in which status, leases, counts, ids.

    Feed it every log entry in log order with :meth:`apply` (:meth:`skip` for an entry
    that could not be decoded); act on what it returns. ``expire_after`` and ``grace``
    are seconds of log time (see the module doc).
    """

    def __init__(self, process_id: str, *, expire_after: float, grace: float) -> None:
        self.process_id = process_id
        self._expire_ms = max(1, round(expire_after * 1000))
        self._grace_ms = max(0, round(grace * 1000))
        #: user -> process -> that process's status for the user (never ``offline``).
        self._rows: dict[str, dict[str, PresenceStatus]] = {}
        #: process -> log time (ms) after which it is forgotten.
        self._deadline: dict[str, int] = {}
        self._counts: dict[str, tuple[int, int]] = {}
        self._max_ref: dict[str, int] = {}
        #: process -> the log position of its last entry.
        self._seen: dict[str, str] = {}
        #: The last id given to a message (cluster or local), or ``None``.
        self.last: ClusterId | None = None
        #: The last log position applied (``0-0`` before any).
        self.position = "0-0"
        #: Entries applied twice by the log (a retried write) and skipped.
        self.duplicates = 0

    # -- reading ------------------------------------------------------------------------

    def status(self, user_id: str) -> PresenceStatus:
        rows = self._rows.get(user_id)
        if not rows:
            return "offline"
        return max(rows.values(), key=_RANK.__getitem__)

    def holders(self, user_id: str) -> dict[str, PresenceStatus]:
        """The processes holding *user_id*, and the status there."""
        return dict(self._rows.get(user_id, {}))

    def presence(self) -> dict[str, PresenceStatus]:
        """Every user online somewhere in the cluster and their aggregated status."""
        return {user: self.status(user) for user in self._rows}

    def processes(self) -> list[str]:
        """The processes holding a lease (this one included once it appeared)."""
        return sorted(self._deadline)

    def counts(self, *, excluding: str | None = None) -> tuple[int, int]:
        """Open and authenticated connections over the cluster, as last reported (without
        the process *excluding*, whose live figures the caller has)."""
        reported = [n for p, n in self._counts.items() if p != excluding]
        return sum(c for c, _ in reported), sum(a for _, a in reported)

    # -- starting -----------------------------------------------------------------------

    def load(
        self,
        position: str,
        processes: Mapping[str, ProcessRecord],
        rows: Mapping[str, Mapping[str, PresenceStatus]],
    ) -> list[Outcome]:
        """Start (or start over) from shared storage read at log *position*: a record per
        process and its rows (process -> user -> status). Returns the presence changes
        from what was known before (nothing, the first time)."""
        base = ClusterId.from_position(position) if position != "0-0" else ClusterId(0, 0)
        before = self.presence()
        self.position = position
        self._rows = {}
        self._deadline = {}
        self._counts = {}
        for process, record in processes.items():
            at = ClusterId.from_position(record.position).ms
            self._deadline[process] = at + (self._grace_ms if record.leaving else self._expire_ms)
            self._max_ref[process] = max(self._max_ref.get(process, -1), record.ref)
            self._seen[process] = record.position
            if not record.leaving:
                self._counts[process] = (record.clients, record.authenticated)
            for user, status in rows.get(process, {}).items():
                if status != "offline":
                    self._rows.setdefault(user, {})[process] = status
        if self.last is None or base > self.last:
            self.last = base
        ids = _Ids(self, base)
        out: list[Outcome] = []
        for user in sorted(before.keys() | self._rows.keys()):
            status = self.status(user)
            if before.get(user, "offline") != status:
                out.append(PresenceChange(ids.next(), user, status))
        return out

    def local_id(self) -> ClusterId:
        """An id for a message delivered locally while the log is unreachable: after
        every id issued so far, at the last known position."""
        last = self.last if self.last is not None else ClusterId(0, 0, 0)
        self.last = last.following()
        return self.last

    # -- applying -----------------------------------------------------------------------

    def skip(self, position: str) -> list[Outcome]:
        """An entry at *position* that could not be decoded: time still passes."""
        base = ClusterId.from_position(position)
        self.position = position
        out: list[Outcome] = []
        self._expire(base.ms, _Ids(self, base), out)
        return out

    def apply(self, position: str, entry: Entry) -> list[Outcome]:
        """Apply the entry at log *position*. Raises ``BadEntry`` (and changes nothing)
        when the position is unusable."""
        base = ClusterId.from_position(position)
        out: list[Outcome] = []
        ids = _Ids(self, base)
        self.position = position
        origin = entry.origin
        duplicate = entry.ref <= self._max_ref.get(origin, -1)
        if isinstance(entry, MessageEntry) and not duplicate:
            # A broadcast takes its position's own id, before whatever else happens at
            # that position (a lease running out): a process that fills its history by
            # reading the log back gives it the same id.
            if entry.local and origin == self.process_id:
                out.append(ClusterMessage(base, entry, delivered_locally=True))
            else:
                out.append(ClusterMessage(ids.next(), entry))
        self._expire(base.ms, ids, out)
        if duplicate:
            self.duplicates += 1
            return out
        self._max_ref[origin] = entry.ref
        self._seen[origin] = position
        self._deadline[origin] = base.ms + self._expire_ms
        if isinstance(entry, PresenceEntry):
            self._set_row(entry.user_id, origin, entry.status, ids, out)
        elif isinstance(entry, SnapshotEntry):
            self._counts[origin] = (entry.clients, entry.authenticated)
            held = [user for user, rows in self._rows.items() if origin in rows]
            for user in held:
                if user not in entry.statuses:
                    self._set_row(user, origin, "offline", ids, out)
            for user, status in entry.statuses.items():
                self._set_row(user, origin, status, ids, out)
        elif isinstance(entry, BeatEntry):
            self._counts[origin] = (entry.clients, entry.authenticated)
        elif isinstance(entry, LeaveEntry):  # forgotten once the presence grace has passed
            self._counts.pop(origin, None)
            self._deadline[origin] = base.ms + self._grace_ms
        return out

    def _set_row(
        self, user: str, process: str, status: PresenceStatus, ids: _Ids, out: list[Outcome]
    ) -> None:
        before = self.status(user)
        rows = self._rows.get(user)
        if status == "offline":
            if rows is None or rows.pop(process, None) is None:
                return
            if not rows:
                del self._rows[user]
        else:
            if rows is None:
                rows = self._rows[user] = {}
            rows[process] = status
        after = self.status(user)
        if after != before:
            out.append(PresenceChange(ids.next(), user, after))

    def _expire(self, now_ms: int, ids: _Ids, out: list[Outcome]) -> None:
        gone = [p for p, deadline in self._deadline.items() if deadline < now_ms]
        for process in sorted(gone):
            del self._deadline[process]
            self._counts.pop(process, None)
            for user in [u for u, rows in self._rows.items() if process in rows]:
                self._set_row(user, process, "offline", ids, out)
            out.append(Expired(process, self._seen.pop(process, "0-0")))
            if process == self.process_id:
                out.append(Rejoin())


class _Ids:
    """Hands out the ids of the messages one entry produces, in order."""

    __slots__ = ("_base", "_state")

    def __init__(self, state: ClusterState, base: ClusterId) -> None:
        self._state = state
        self._base = base

    def next(self) -> ClusterId:
        last = self._state.last
        # The first message at a position takes the position's own id; any further one,
        # or any when the log went backwards (a restarted Redis whose clock is behind the
        # ids already issued), continues after the last id: ids never repeat or decrease.
        new = self._base if last is None or self._base > last else last.following()
        self._state.last = new
        return new
