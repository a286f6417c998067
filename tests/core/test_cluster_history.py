"""A cluster's history and agent states (PROTOCOL.md 4, 7 and 10), with log positions and
times given by hand: what a client resumes from on any process, and what a process that
starts late reads from the log and from the rows kept beside it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol import AgentStatus, ChatMessage, Settings
from agentcast.protocol.cluster import (
    BeatEntry,
    ClusterId,
    MessageEntry,
    PresenceEntry,
    message_entry,
    prepare,
)
from agentcast.protocol.cluster_agents import read_rows, row_field, row_value
from agentcast.protocol.cluster_history import ClusterHistory
from agentcast.protocol.cluster_hub import ClusterHub
from agentcast.protocol.cluster_state import (
    ClusterState,
    PresenceChange,
)
from agentcast.protocol.history import HistoryEntry
from agentcast.protocol.scope import Scope

from .test_cluster import Link, Member

WALL = 1_766_754_000.0  # 2025-12-26T13:00:00Z, also the log's clock
MS = int(WALL * 1000)


def chat(text: str, *, origin: str = "p", scope: Scope | None = None) -> MessageEntry:
    item = ChatMessage(conversation_id="c", message_id=text, content=text, sender="s")
    entry = message_entry(item, origin=origin, wall=WALL, scope=scope or Scope.of())
    return replace(entry, ref=1)


def online(origin: str, user: str) -> PresenceEntry:
    return PresenceEntry(origin, 1, user, "online")


def position(offset_ms: int, seq: int = 0) -> str:
    return f"{MS + offset_ms}-{seq}"


def cid(offset_ms: int, seq: int = 0, n: int = 0) -> str:
    return str(ClusterId(MS + offset_ms, seq, n))


def keep(history: ClusterHistory, offset_ms: int, at: float, text: str = "m") -> str:
    message_id = cid(offset_ms)
    history.append(HistoryEntry(message_id, prepare(chat(text), message_id), at))
    return message_id


def ids(entries: list[HistoryEntry] | None) -> list[str] | None:
    return None if entries is None else [e.id for e in entries]


# -- the history of a running process -------------------------------------------------------


def test_nothing_can_be_answered_before_the_first_id():
    history = ClusterHistory()
    assert history.floor is None
    assert history.since(cid(0), now=0.0) is None


def test_a_process_answers_every_id_from_its_first_on():
    history = ClusterHistory()
    first = keep(history, 1, 0.0)
    history.seen(cid(2))  # a user_presence
    second = keep(history, 3, 1.0)
    third = keep(history, 4, 2.0)
    assert ids(history.since(first, now=2.0)) == [second, third]
    assert ids(history.since(cid(2), now=2.0)) == [second, third]
    assert ids(history.since(third, now=2.0)) == []
    assert history.since(cid(0), now=2.0) is None  # before the first: unknown
    assert history.since(cid(5), now=2.0) is None  # not reached yet: cannot know


def test_seen_never_moves_back():
    history = ClusterHistory()
    keep(history, 5, 0.0)
    history.seen(cid(1))
    assert history.last == cid(5)


@pytest.mark.parametrize(
    "since", ["", "abc", "0000000000001-000001", "1766754000001-0-0", cid(1)[:-1] + "x"]
)
def test_malformed_ids_cannot_resume(since: str):
    history = ClusterHistory()
    keep(history, 1, 0.0)
    assert history.since(since, now=0.0) is None


def test_ids_must_increase():
    history = ClusterHistory()
    keep(history, 5, 0.0)
    with pytest.raises(ValueError, match="not an id after"):
        keep(history, 5, 0.0)
    with pytest.raises(ValueError, match="not an id after"):
        history.append(HistoryEntry("1-2", prepare(chat("x"), "1-2"), 0.0))
    with pytest.raises(RuntimeError, match="given by the log"):
        history.next_id()


def test_bounds_by_count_and_age():
    history = ClusterHistory(size=2, ttl=10.0)
    a, b, c = keep(history, 1, 0.0), keep(history, 2, 5.0), keep(history, 3, 6.0)
    assert len(history) == 2
    assert history.since(cid(0), now=6.0) is None
    assert ids(history.since(a, now=6.0)) == [b, c]  # a was dropped: who saw it misses nothing
    assert history.since(a, now=15.0) is None  # b is 10 s old: dropped
    assert ids(history.since(b, now=15.0)) == [c]


def test_a_gap_forgets_until_the_next_id():
    history = ClusterHistory()
    a = keep(history, 1, 0.0)
    history.gap()
    assert history.since(a, now=0.0) is None
    b = keep(history, 9, 1.0)
    c = keep(history, 10, 1.0)
    assert history.since(a, now=1.0) is None
    assert ids(history.since(b, now=1.0)) == [c]


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="size"):
        ClusterHistory(size=-1)
    with pytest.raises(ValueError, match="ttl"):
        ClusterHistory(ttl=float("nan"))


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5000)), max_size=40), st.data())
def test_replay_is_exact_or_refused(ops, data):
    """Whatever was delivered (messages kept, presence ids seen), a resume from any id
    delivered is exactly the kept messages after it, or refused when one is gone."""
    history = ClusterHistory(size=5, ttl=30.0)
    offset, now = 0, 0.0
    delivered: list[tuple[str, bool, float]] = []
    for is_presence, step in ops:
        offset += step
        now += step / 1000
        if is_presence:
            history.seen(cid(offset))
            delivered.append((cid(offset), False, now))
        else:
            delivered.append((keep(history, offset, now), True, now))
    if not delivered:
        return
    index = data.draw(st.integers(0, len(delivered) - 1))
    since = delivered[index][0]
    messages = [d for d in delivered if d[1]]
    kept = [d for d in messages[-5:] if d[2] > now - 30.0]
    later = [d for d in delivered[index + 1 :] if d[1]]
    replay = history.since(since, now)
    if any(d not in kept for d in later):
        assert replay is None
    else:
        assert ids(replay) == [d[0] for d in later]


# -- filling it from the log --------------------------------------------------------------


def test_a_process_that_starts_reads_the_log_backwards_to_its_bound():
    history = ClusterHistory(size=2, ttl=300.0)
    loader = history.loader(now=100.0, wall=WALL + 10)
    loader.start(position(5000))
    assert loader.feed(position(5000), BeatEntry("p", 9, 0, 0))
    assert loader.feed(position(4000), chat("d"))
    assert loader.feed(position(3000, 1), None)  # undecodable: skipped
    assert loader.feed(position(3000), chat("c"))
    assert not loader.feed(position(2000), chat("b"))  # full: stops here
    assert not loader.feed(position(1000), chat("a"))
    loader.finish()
    assert len(history) == 2
    # Whoever saw b (or anything after it) misses nothing; before it, unknown.
    replay = history.since(cid(2000), now=100.0)
    assert ids(replay) == [cid(3000), cid(4000)]
    assert replay is not None
    assert json.loads(replay[0].message.text)["data"]["content"] == "c"
    assert history.since(cid(1000), now=100.0) is None
    # The log's newest position (and any id at it) can be resumed from.
    assert ids(history.since(cid(5000), now=100.0)) == []
    assert ids(history.since(cid(4000), now=100.0)) == []
    # Kept as old as they are: c was published 7 s before the start, so it is dropped
    # 293 s later.
    assert ids(history.since(cid(2000), now=100.0 + 292.9)) == [cid(3000), cid(4000)]
    assert history.since(cid(2000), now=100.0 + 293.0) is None


def test_reading_stops_at_the_age_bound_and_at_the_start_of_the_log():
    history = ClusterHistory(size=10, ttl=60.0)
    loader = history.loader(now=0.0, wall=WALL + 100)
    loader.start(position(90_000))
    assert loader.feed("not-a-position", None)
    assert loader.feed(position(90_000), chat("new"))
    assert not loader.feed(position(30_000), chat("old"))  # 70 s old
    loader.finish()
    assert history.floor == cid(30_000)
    assert ids(history.since(cid(30_000), now=0.0)) == [cid(90_000)]

    history = ClusterHistory()
    loader = history.loader(now=0.0, wall=WALL)
    loader.start(position(2))
    loader.feed(position(2), chat("b"))
    loader.feed(position(1), chat("a"))
    loader.finish()  # the log has nothing older: what was trimmed before a is unknown
    assert history.floor == cid(1)
    assert ids(history.since(cid(1), now=0.0)) == [cid(2)]
    assert history.since(cid(0), now=0.0) is None


def test_an_empty_log_answers_from_the_first_id_on():
    history = ClusterHistory()
    loader = history.loader(now=0.0, wall=WALL)
    loader.start("0-0")
    loader.finish()
    assert history.since(cid(0), now=0.0) is None
    first = keep(history, 1, 0.0)
    assert ids(history.since(first, now=0.0)) == []


def test_a_restarted_process_replays_as_the_one_that_delivered_them():
    """Two processes apply the same log; one restarts and reads it back: a client of the
    first resumes on the second with the same messages under the same ids."""
    settings = Settings(presence_grace=1.0)
    running = ClusterHub(settings, Link())  # type: ignore[arg-type]
    state = ClusterState("p", expire_after=60.0, grace=1.0)
    log: list[tuple[str, MessageEntry]] = []
    for i, text in enumerate(["a", "b", "c"]):
        entry = replace(chat(text), ref=i + 1)
        pos = position(i * 10)
        (message,) = state.apply(pos, entry)
        log.append((pos, entry))
        running.deliver_entry(entry, str(message.id), 1.0, WALL)  # type: ignore[union-attr]
    restarted = ClusterHub(settings, Link())  # type: ignore[arg-type]
    loader = restarted.cluster_history.loader(now=5.0, wall=WALL + 1)
    loader.start(log[-1][0])
    for pos, entry in reversed(log):
        assert loader.feed(pos, entry)
    loader.finish()
    since = cid(0)
    mine = running.history.since(since, 2.0)
    theirs = restarted.history.since(since, 6.0)
    assert mine is not None
    assert theirs is not None
    assert [(e.id, e.message.text) for e in mine] == [(e.id, e.message.text) for e in theirs]


# -- the cluster hub ----------------------------------------------------------------------


def test_the_cluster_hub_keeps_what_it_delivers_and_resumes_a_client():
    hub = ClusterHub(Settings(presence_grace=1.0), Link())  # type: ignore[arg-type]
    alice = Member("alice")
    hub.open_session(alice, 0.0, WALL)  # type: ignore[arg-type]
    first = cid(1)
    hub.deliver_entry(chat("one"), first, 1.0, WALL)
    hub.deliver_entry(chat("two"), cid(2), 1.0, WALL)
    hub.deliver_entry(chat("bob only", scope=Scope.of(user_ids=["bob"])), cid(3), 1.0, WALL)
    hub.deliver_presence_changes(
        [PresenceChange(ClusterId(MS + 4, 0, 0), "bob", "online")], 1.0, WALL
    )
    back = Member("alice")
    hub.open_session(back, 2.0, WALL, resuming=True)  # type: ignore[arg-type]
    hub.resume(back, first, 2.0, WALL)  # type: ignore[arg-type]
    assert [m["type"] for m in back.got] == [
        "presence_state",
        "agent_state",
        "chat_message",
        "resume",
    ]
    assert back.got[2]["id"] == cid(2)
    assert back.got[-1]["data"] == {"complete": True, "replayed": 1}
    # The presence id is a resume point; an id not reached yet is not.
    resumed = Member("alice")
    hub.open_session(resumed, 2.0, WALL, resuming=True)  # type: ignore[arg-type]
    hub.resume(resumed, cid(4), 2.0, WALL)  # type: ignore[arg-type]
    assert resumed.got[-1]["data"] == {"complete": True, "replayed": 0}
    ahead = Member("alice")
    hub.open_session(ahead, 2.0, WALL, resuming=True)  # type: ignore[arg-type]
    hub.resume(ahead, cid(9), 2.0, WALL)  # type: ignore[arg-type]
    assert ahead.got[-1]["data"] == {"complete": False}


def test_the_cluster_hub_records_agent_states_from_the_log_and_from_storage():
    hub = ClusterHub(Settings(), Link())  # type: ignore[arg-type]
    stored = {}
    for i, (name, state, scope) in enumerate(
        [
            ("planner", "idle", Scope.of()),
            ("coder", "working", Scope.of(channel="team")),
            ("planner", "working", Scope.of()),
        ]
    ):
        entry = message_entry(
            AgentStatus(agent_name=name, state=state), origin="p", wall=WALL, scope=scope
        )
        stored[row_field(entry)] = f"{position(i)} {row_value(entry)}"
    assert len(stored) == 2  # one row per agent and scope: the latest
    hub.load_agent_states(read_rows(stored, wall=WALL + 1, ttl=3600.0, max_entries=10), 50.0)
    live = message_entry(AgentStatus(agent_name="tester", state="stopped"), origin="q", wall=WALL)
    hub.deliver_entry(live, cid(10), 51.0, WALL)
    outside, inside = Member("alice"), Member("bob")
    inside.subscriptions = frozenset({"team"})
    for member in (outside, inside):
        hub.open_session(member, 52.0, WALL)  # type: ignore[arg-type]
    assert outside.got[1]["data"] == {
        "agents": [
            {"agentName": "planner", "state": "working"},
            {"agentName": "tester", "state": "stopped"},
        ]
    }
    names = [a["agentName"] for a in inside.got[1]["data"]["agents"]]  # type: ignore[index]
    assert names == ["coder", "planner", "tester"]


def test_stored_agent_rows_past_their_age_or_bound_or_unreadable_are_stale():
    def row(name: str, offset_ms: int, **scope: object) -> tuple[str, str]:
        entry = message_entry(
            AgentStatus(agent_name=name, state="idle"),
            origin="p",
            wall=WALL,
            scope=Scope.of(**scope),  # type: ignore[arg-type]
        )
        return row_field(entry), f"{position(offset_ms)} {row_value(entry)}"

    rows = dict(
        [
            row("old", 0),
            row("a", 50_000, user_ids=["u2", "u1"]),
            row("b", 60_000),
            row("c", 70_000, channel="x"),
        ]
    )
    rows["bad position"] = "nope {}"
    rows["not an object"] = f"{position(1)} []"
    rows["bad data"] = f'{position(1)} {{"d":{{"agentName":""}}}}'
    rows["bad users"] = f'{position(1)} {{"d":{{"agentName":"x","state":"idle"}},"u":"u1"}}'
    rows["bad channel"] = f'{position(1)} {{"d":{{"agentName":"x","state":"idle"}},"c":5}}'
    rows["bad json"] = f"{position(1)} {{"
    read = read_rows(rows, wall=WALL + 100, ttl=60.0, max_entries=2)
    assert [(r.status.agent_name, r.scope, r.age) for r in read.rows] == [
        ("b", Scope.of(), 40.0),
        ("c", Scope.of(channel="x"), 30.0),
    ]
    expected_stale = {
        json.dumps(["old", None, None]).replace(" ", ""),
        json.dumps(["a", None, ["u1", "u2"]]).replace(" ", ""),
        "bad position",
        "not an object",
        "bad data",
        "bad users",
        "bad channel",
        "bad json",
    }
    assert set(read.stale) == expected_stale


def test_a_broadcast_takes_its_positions_id_even_when_a_lease_ends_there():
    """What the log says at a position may turn users offline first (a dead process's
    lease ran out); the broadcast still gets the position's own id, the one a process
    that reads the log back gives it, and goes out before those changes."""
    state = ClusterState("me", expire_after=1.0, grace=1.0)
    state.apply(position(0), online("dead", "carol"))
    out = state.apply(position(5000), replace(chat("late"), origin="alive", ref=1))
    assert [type(o).__name__ for o in out] == ["ClusterMessage", "PresenceChange", "Expired"]
    message, change = out[0], out[1]
    assert str(message.id) == cid(5000)  # type: ignore[union-attr]
    assert str(change.id) == cid(5000, n=1)  # type: ignore[union-attr]
