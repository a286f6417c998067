"""The cluster's ``agent_state``: the latest status of every agent, kept beside the log.

Every process records each ``agent_status`` it applies from the log (in log order, so all
agree), but a process that starts later has not seen the statuses published before it
started, and an idle agent may not report again for hours. So the log's storage keeps one
row per agent and scope (PROTOCOL.md 4 and 4a: statuses are kept per agent *and* scope),
written with the broadcast itself, and a process that joins reads the rows first.

A row is a field and a value, both text: the field names the agent and the scope
(:func:`row_field`), the value is ``"<log position> <JSON>"`` (the storage writes the
position, :func:`row_value` the JSON). :func:`read_rows` turns the rows read back into
what to record, oldest update first, and names the rows to delete: expired
(``agent_state_ttl``), beyond the bound (``agent_state_max``, the oldest first) or
unreadable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .cluster import BadEntry, ClusterId, MessageEntry
from .messages import AgentStatus
from .scope import Scope

__all__ = ["AgentRow", "RowsRead", "read_rows", "row_field", "row_value"]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def row_field(entry: MessageEntry) -> str:
    """The row of the agent of *entry* (an ``agent_status``) under its scope."""
    assert entry.key is not None, "an agent_status entry names its agent"
    users = None if entry.user_ids is None else sorted(entry.user_ids)
    return _dumps([entry.key, entry.channel, users])


def row_value(entry: MessageEntry) -> str:
    """The JSON part of the row's value: the status and its scope."""
    return (
        '{"d":'
        + entry.data
        + ',"u":'
        + _dumps(entry.user_ids)
        + ',"c":'
        + _dumps(entry.channel)
        + "}"
    )


class AgentRow(NamedTuple):
    status: AgentStatus
    scope: Scope
    #: Seconds since it was published (by the log's clock, the wall clock).
    age: float


@dataclass(frozen=True, slots=True)
class RowsRead:
    #: What to record, oldest update first.
    rows: list[AgentRow]
    #: Fields to delete from storage: expired, over the bound, or unreadable.
    stale: list[str]


def read_rows(rows: Mapping[str, str], *, wall: float, ttl: float, max_entries: int) -> RowsRead:
    """The rows read from storage at *wall* (seconds since the epoch)."""
    good: list[tuple[ClusterId, str, AgentRow]] = []
    stale: list[str] = []
    for field, value in rows.items():
        row = _row(value, wall)
        if row is None or row[1].age >= ttl:
            stale.append(field)
        else:
            good.append((row[0], field, row[1]))
    good.sort(key=lambda item: item[0])
    excess = max(0, len(good) - max_entries)
    stale.extend(field for _, field, _ in good[:excess])
    return RowsRead([row for _, _, row in good[excess:]], stale)


def _row(value: str, wall: float) -> tuple[ClusterId, AgentRow] | None:
    position, _, text = value.partition(" ")
    try:
        at = ClusterId.from_position(position)
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            return None
        status = AgentStatus.from_data(parsed.get("d"))
        users = parsed.get("u")
        if users is not None and not (
            isinstance(users, list) and all(isinstance(u, str) for u in users)
        ):
            return None
        channel = parsed.get("c")
        if channel is not None and not isinstance(channel, str):
            return None
        scope = Scope.of(user_ids=users, channel=channel)
    except (BadEntry, ValueError):
        return None
    return at, AgentRow(status, scope, max(0.0, wall - at.ms / 1000))
