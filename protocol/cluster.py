"""The rules of a cluster of agentcast processes that share one ordered log (PROTOCOL.md 10).

Every process appends what it has to say to a shared, ordered log (a Redis stream, but
nothing here knows that) and applies everything in the log, its own entries included, in
log order. Because each process applies the same entries in the same order with the same
rules, they all reach the same presence table, emit the same ``user_presence`` changes
and give every message the same id, without talking to each other. This module holds
those rules and the wire format of an entry; the adapter moves the bytes and reads the
clock.

**Entries** (:func:`encode_entry`, :func:`decode_entry`): a flat map of short ASCII field
names to bytes, versioned (``v``), with the kind (``k``), the origin process (``o``) and
the origin's sequence number (``r``, strictly increasing per origin, so an entry that a
retried write added twice is applied once):

* :class:`MessageEntry`: a broadcast (``agent_status``, ``chat_message``,
  ``notification``) as its type, its ``data`` as JSON text, the publisher's timestamp and
  its scope (``userIds``, ``channel``);
* :class:`PresenceEntry`: the origin's own status for one user (the strongest over the
  origin's connections of that user; ``offline`` when it has none left after its grace);
* :class:`SnapshotEntry`: every status the origin holds, replacing what the cluster knew
  of it (sent when a process joins or rejoins);
* :class:`BeatEntry`: the origin is alive, with its connection counts;
* :class:`LeaveEntry`: the origin is shutting down; its users go offline after the
  presence grace unless they reconnect elsewhere.

**Ids** (:class:`ClusterId`): a log position is ``<ms>-<seq>`` (Redis's stream entry id);
each message applied at a position gets ``<ms>-<seq>-<n>``, every field zero-padded to a
fixed width so ids increase when compared as strings. ``n`` counts the messages derived
from one entry (an entry whose arrival expires a dead process turns several users
offline), and the messages a process delivers locally while the log is unreachable.

**Leases**: a process that has not appeared in the log for ``expire_after`` seconds of
*log time* (the milliseconds of entry ids, the same for everyone) is forgotten: its users'
rows are dropped and whoever is left without a connection goes offline. Every live process
writes a beat at least every ``beat_interval``, so log time advances while anyone lives,
and a process killed without a word is forgotten within ``expire_after + beat_interval``
(the lease).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeAlias

from .messages import (
    AgentStatus,
    ChatMessage,
    Notification,
    PreparedMessage,
    PresenceStatus,
)
from .scope import EVERYONE, Scope
from .timestamps import format_timestamp, is_iso_timestamp

__all__ = [
    "ENTRY_VERSION",
    "BadEntry",
    "BeatEntry",
    "ClusterId",
    "ClusterMessage",
    "ClusterState",
    "Entry",
    "Expired",
    "LeaveEntry",
    "MessageEntry",
    "Outcome",
    "PresenceChange",
    "PresenceEntry",
    "ProcessRecord",
    "Rejoin",
    "SnapshotEntry",
    "decode_entry",
    "encode_entry",
    "message_entry",
    "prepare",
]

#: The wire format's version; an entry with another version is skipped as bad data.
ENTRY_VERSION: Final = b"1"

_RANK: Final[dict[str, int]] = {"offline": 0, "away": 1, "online": 2, "busy": 3}
_STATUSES: Final = frozenset(_RANK)
_MESSAGE_TYPES: Final = frozenset({"agent_status", "chat_message", "notification"})
_MS_DIGITS: Final = 13
_SEQ_DIGITS: Final = 6
_N_DIGITS: Final = 6
_MAX_MS: Final = 10**_MS_DIGITS - 1
_MAX_SEQ: Final = 10**_SEQ_DIGITS - 1
_MAX_N: Final = 10**_N_DIGITS - 1


class BadEntry(ValueError):
    """An entry this version cannot use. ``kind`` names the problem (for counting and
    logging once per kind); the message says more."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# -- ids ----------------------------------------------------------------------------------


class ClusterId(NamedTuple):
    """A message id: the log position (``ms``, ``seq``) and the index ``n`` of the message
    among those applied at that position."""

    ms: int
    seq: int
    n: int = 0

    @classmethod
    def from_position(cls, position: str | bytes) -> ClusterId:
        """The first id at a log position such as ``1764445000123-4`` (``BadEntry`` when
        it is not one, or does not fit the fixed width)."""
        text = position.decode("ascii", "replace") if isinstance(position, bytes) else position
        ms_text, sep, seq_text = text.partition("-")
        if not (sep and ms_text.isdigit() and seq_text.isdigit()):
            raise BadEntry("bad_position", f"not a stream position: {text[:40]!r}")
        ms, seq = int(ms_text), int(seq_text)
        if ms > _MAX_MS or seq > _MAX_SEQ:
            raise BadEntry("bad_position", f"position out of range: {text[:40]!r}")
        return cls(ms, seq, 0)

    @classmethod
    def parse(cls, text: str) -> ClusterId | None:
        """The id a client sent back (``since``), or ``None`` when it is not one of ours."""
        parts = text.split("-")
        widths = (_MS_DIGITS, _SEQ_DIGITS, _N_DIGITS)
        if len(parts) != 3:
            return None
        for part, width in zip(parts, widths, strict=True):
            if len(part) != width or not (part.isdigit() and part.isascii()):
                return None
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))

    def __str__(self) -> str:
        return f"{self.ms:0{_MS_DIGITS}d}-{self.seq:0{_SEQ_DIGITS}d}-{self.n:0{_N_DIGITS}d}"

    def following(self) -> ClusterId:
        """The next id at the same position (``BadEntry`` past the fixed width)."""
        if self.n >= _MAX_N:
            raise BadEntry("too_many_messages", f"more than {_MAX_N} messages at {self}")
        return ClusterId(self.ms, self.seq, self.n + 1)


# -- entries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """A broadcast, as every process needs it to encode the message once for its clients."""

    origin: str
    ref: int
    type: str
    data: str  # the ``data`` object as JSON text
    timestamp: str  # the publisher's, so every process sends the same text
    user_ids: tuple[str, ...] | None = None
    channel: str | None = None
    #: The origin delivered it to its own clients already (it was published while the
    #: log was unreachable), so the origin skips it when it reads it back.
    local: bool = False
    #: Conflation key (``agent_status``: the agent's name); not on the wire.
    key: str | None = field(default=None, compare=False)

    @property
    def scope(self) -> Scope:
        """To whom it goes (PROTOCOL.md 4a): ``userIds`` and ``channel``."""
        if self.user_ids is None and self.channel is None:
            return EVERYONE
        users = None if self.user_ids is None else frozenset(self.user_ids)
        return Scope(users, self.channel)


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """The origin's own status for *user_id* (``offline``: it holds no connection of theirs)."""

    origin: str
    ref: int
    user_id: str
    status: PresenceStatus


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """Every user the origin holds and their status there; replaces what was known of it."""

    origin: str
    ref: int
    statuses: Mapping[str, PresenceStatus] = field(default_factory=dict)
    clients: int = 0
    authenticated: int = 0


@dataclass(frozen=True, slots=True)
class BeatEntry:
    """The origin is alive; its open and authenticated connections."""

    origin: str
    ref: int
    clients: int
    authenticated: int


@dataclass(frozen=True, slots=True)
class LeaveEntry:
    """The origin is shutting down."""

    origin: str
    ref: int


Entry: TypeAlias = MessageEntry | PresenceEntry | SnapshotEntry | BeatEntry | LeaveEntry

_KIND_OF: Final[dict[type, bytes]] = {
    MessageEntry: b"m",
    PresenceEntry: b"p",
    SnapshotEntry: b"s",
    BeatEntry: b"b",
    LeaveEntry: b"x",
}


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_VALIDATORS: Final = {
    "agent_status": AgentStatus.from_data,
    "chat_message": ChatMessage.from_data,
    "notification": Notification.from_data,
}


def _json(value: object) -> bytes:
    return _dumps(value).encode()


def message_entry(
    item: AgentStatus | ChatMessage | Notification,
    *,
    origin: str,
    wall: float,
    scope: Scope = EVERYONE,
) -> MessageEntry:
    """The entry that publishes a validated payload to *scope* (its ``ref`` is given when
    written). A notification's ``user_id`` is its one-user audience, as for the hub;
    with an audience in *scope* as well it is a ``ValueError``."""
    if isinstance(item, Notification) and item.user_id is not None:
        if scope.user_ids is not None:
            raise ValueError("give userId or userIds, not both")
        scope = Scope.of(user_id=item.user_id, channel=scope.channel)
    if isinstance(item, AgentStatus):
        kind, data, key = "agent_status", item.to_data(), item.agent_name
    elif isinstance(item, ChatMessage):
        kind, data, key = "chat_message", item.to_data(wall), None
    else:
        kind, data, key = "notification", item.to_data(), None
    users = None if scope.user_ids is None else tuple(sorted(scope.user_ids))
    return MessageEntry(
        origin, -1, kind, _dumps(data), format_timestamp(wall), users, scope.channel, key=key
    )


def prepare(entry: MessageEntry, message_id: str) -> PreparedMessage:
    """The message a process sends its clients for *entry*: encoded here, once."""
    text = (
        f'{{"type":"{entry.type}","data":{entry.data},'
        f'"timestamp":"{entry.timestamp}","id":"{message_id}"}}'
    )
    return PreparedMessage(entry.type, text, entry.key, entry.scope, message_id)


def encode_entry(entry: Entry) -> dict[bytes, bytes]:
    """The entry's fields, as the log stores them."""
    fields = {
        b"v": ENTRY_VERSION,
        b"k": _KIND_OF[type(entry)],
        b"o": entry.origin.encode(),
        b"r": str(entry.ref).encode(),
    }
    if isinstance(entry, MessageEntry):
        fields[b"t"] = entry.type.encode()
        fields[b"d"] = entry.data.encode()
        fields[b"ts"] = entry.timestamp.encode()
        if entry.user_ids is not None:
            fields[b"u"] = _json(list(entry.user_ids))
        if entry.channel is not None:
            fields[b"c"] = entry.channel.encode()
        if entry.local:
            fields[b"l"] = b"1"
    elif isinstance(entry, PresenceEntry):
        fields[b"u"] = entry.user_id.encode()
        fields[b"s"] = entry.status.encode()
    elif isinstance(entry, SnapshotEntry):
        fields[b"s"] = _json(dict(entry.statuses))
        fields[b"n"] = f"{entry.clients} {entry.authenticated}".encode()
    elif isinstance(entry, BeatEntry):
        fields[b"n"] = f"{entry.clients} {entry.authenticated}".encode()
    return fields


def _text(fields: Mapping[bytes, bytes], name: bytes, *, required: bool = True) -> str | None:
    raw = fields.get(name)
    if raw is None:
        if required:
            raise BadEntry("missing_field", f"no field {name.decode()!r}")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEntry("bad_field", f"field {name.decode()!r} is not UTF-8") from None


def _required(fields: Mapping[bytes, bytes], name: bytes) -> str:
    text = _text(fields, name)
    assert text is not None
    return text


def _status(text: object) -> PresenceStatus:
    if text not in _STATUSES:
        raise BadEntry("bad_field", f"not a presence status: {str(text)[:20]!r}")
    return text  # type: ignore[return-value]


def _counts(fields: Mapping[bytes, bytes]) -> tuple[int, int]:
    parts = _required(fields, b"n").split(" ")
    if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
        raise BadEntry("bad_field", "counts are not two numbers")
    return int(parts[0]), int(parts[1])


def _loads(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise BadEntry("bad_field", f"{what} is not JSON") from None


def decode_entry(fields: Mapping[bytes, bytes]) -> Entry:
    """The entry these fields hold (``BadEntry`` when they hold none this version knows)."""
    version = fields.get(b"v")
    if version != ENTRY_VERSION:
        raise BadEntry("bad_version", f"version {version!r}, not {ENTRY_VERSION!r}")
    kind = fields.get(b"k")
    origin = _required(fields, b"o")
    ref_text = _required(fields, b"r")
    if not (ref_text.isdigit() and ref_text.isascii()) or not origin:
        raise BadEntry("bad_field", "bad origin or sequence number")
    ref = int(ref_text)
    if kind == b"m":
        kind_text = _required(fields, b"t")
        if kind_text not in _MESSAGE_TYPES:
            raise BadEntry("bad_field", f"not a broadcast type: {kind_text[:40]!r}")
        parsed_data = _loads(_required(fields, b"d"), "data")
        try:
            _VALIDATORS[kind_text](parsed_data)
        except ValueError as exc:
            raise BadEntry("invalid_message", f"{kind_text}: {exc}") from None
        assert isinstance(parsed_data, dict)
        key = parsed_data["agentName"] if kind_text == "agent_status" else None
        timestamp = _required(fields, b"ts")
        if not is_iso_timestamp(timestamp) or '"' in timestamp or "\\" in timestamp:
            raise BadEntry("bad_field", "timestamp is not an ISO 8601 date-time")
        users = _text(fields, b"u", required=False)
        user_ids: tuple[str, ...] | None = None
        if users is not None:
            parsed = _loads(users, "userIds")
            if not (
                isinstance(parsed, list) and parsed and all(isinstance(u, str) for u in parsed)
            ):
                raise BadEntry("bad_field", "userIds is not a list of strings")
            user_ids = tuple(parsed)
        channel = _text(fields, b"c", required=False)
        try:
            Scope.of(user_ids=user_ids, channel=channel)
        except ValueError as exc:
            raise BadEntry("bad_field", f"scope: {exc}") from None
        return MessageEntry(
            origin,
            ref,
            kind_text,
            _dumps(parsed_data),  # canonical: what we send is our encoding, never theirs
            timestamp,
            user_ids,
            channel,
            fields.get(b"l") == b"1",
            key,
        )
    if kind == b"p":
        return PresenceEntry(origin, ref, _required(fields, b"u"), _status(_text(fields, b"s")))
    if kind == b"s":
        parsed = _loads(_required(fields, b"s"), "statuses")
        if not isinstance(parsed, dict):
            raise BadEntry("bad_field", "statuses is not a JSON object")
        statuses = {str(user): _status(status) for user, status in parsed.items()}
        return SnapshotEntry(origin, ref, statuses, *_counts(fields))
    if kind == b"b":
        return BeatEntry(origin, ref, *_counts(fields))
    if kind == b"x":
        return LeaveEntry(origin, ref)
    raise BadEntry("bad_kind", f"unknown entry kind {kind!r}")


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
