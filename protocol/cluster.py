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

The state every process derives from the log (presence, leases, counts, the ids of
what it delivers) is :class:`~.cluster_state.ClusterState`.
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
    "Entry",
    "LeaveEntry",
    "MessageEntry",
    "PresenceEntry",
    "SnapshotEntry",
    "decode_entry",
    "encode_entry",
    "message_entry",
    "prepare",
]

#: The wire format's version; an entry with another version is skipped as bad data.
ENTRY_VERSION: Final = b"1"

_STATUSES: Final = frozenset({"offline", "away", "online", "busy"})
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
