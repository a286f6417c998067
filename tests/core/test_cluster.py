"""The cluster rules (PROTOCOL.md section 10), with entries and log positions given by hand.

No Redis here: a log position is what Redis would assign (``<ms>-<seq>``), and time is
the milliseconds of those positions.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol import AgentStatus, ChatMessage, Notification, Published, Settings
from agentcast.protocol.cluster import (
    BadEntry,
    BeatEntry,
    ClusterId,
    LeaveEntry,
    MessageEntry,
    PresenceEntry,
    SnapshotEntry,
    decode_entry,
    encode_entry,
    message_entry,
    prepare,
)
from agentcast.protocol.cluster_hub import ClusterHub
from agentcast.protocol.cluster_state import (
    ClusterMessage,
    ClusterState,
    Expired,
    PresenceChange,
    ProcessRecord,
    Rejoin,
)
from agentcast.protocol.messages import PreparedMessage, encode_server_message
from agentcast.protocol.scope import EVERYONE, Scope

WALL = 1_766_754_000.0  # 2025-12-26T13:00:00Z


def state(me: str = "a", expire: float = 10.0, grace: float = 5.0) -> ClusterState:
    return ClusterState(me, expire_after=expire, grace=grace)


def changes(outcomes: list[object]) -> list[tuple[str, str, str]]:
    return [(str(o.id), o.user_id, o.status) for o in outcomes if isinstance(o, PresenceChange)]


# -- ids ----------------------------------------------------------------------------------


def test_ids_are_fixed_width_and_sort_as_strings() -> None:
    assert str(ClusterId.from_position("1766754000000-0")) == "1766754000000-000000-000000"
    assert str(ClusterId.from_position(b"5-7")) == "0000000000005-000007-000000"
    positions = ["9-0", "10-0", "10-1", "10-10", "100-2"]
    ids = [str(ClusterId.from_position(p)) for p in positions]
    assert ids == sorted(ids)
    assert ClusterId.parse(ids[2]) == ClusterId(10, 1, 0)


@given(st.lists(st.tuples(st.integers(0, 10**13 - 1), st.integers(0, 10**6 - 1)), min_size=2))
def test_ids_order_as_strings_as_positions_order(positions: list[tuple[int, int]]) -> None:
    ids = [ClusterId(ms, seq) for ms, seq in positions]
    assert sorted(ids) == sorted(ids, key=str)


@pytest.mark.parametrize(
    "position", ["", "12", "a-1", "1-b", "1-2-3", "99999999999999-0", "1-1234567"]
)
def test_positions_that_do_not_fit_are_bad(position: str) -> None:
    with pytest.raises(BadEntry):
        ClusterId.from_position(position)


@pytest.mark.parametrize("text", ["", "0000000000001", "0000000000001-000001", "x" * 27])
def test_parse_refuses_what_is_not_an_id(text: str) -> None:
    assert ClusterId.parse(text) is None


# -- entries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        MessageEntry(
            "p1",
            3,
            "notification",
            '{"level":"info","message":"hi"}',
            "2025-12-26T13:00:00.000Z",
            ("user_a",),
            "conversation:1",
        ),
        MessageEntry(
            "p1",
            4,
            "agent_status",
            '{"agentName":"x","state":"idle"}',
            "2025-12-26T13:00:00.000Z",
            local=True,
            key="x",
        ),
        PresenceEntry("p1", 5, "user_é", "busy"),
        SnapshotEntry("p1", 6, {"user_a": "online", "user_b": "away"}, 3, 2),
        BeatEntry("p1", 7, 10, 9),
        LeaveEntry("p1", 8),
    ],
)
def test_entries_round_trip(entry: object) -> None:
    fields = encode_entry(entry)  # type: ignore[arg-type]
    assert fields[b"v"] == b"1"
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in fields.items())
    assert decode_entry(fields) == entry


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({b"hello": b"world"}, "bad_version"),
        ({b"v": b"2", b"k": b"m"}, "bad_version"),
        ({b"v": b"1", b"k": b"q", b"o": b"p", b"r": b"1"}, "bad_kind"),
        ({b"v": b"1", b"k": b"b", b"r": b"1"}, "missing_field"),
        ({b"v": b"1", b"k": b"b", b"o": b"p", b"r": b"-1", b"n": b"1 1"}, "bad_field"),
        ({b"v": b"1", b"k": b"b", b"o": b"p", b"r": b"1", b"n": b"1"}, "bad_field"),
        ({b"v": b"1", b"k": b"p", b"o": b"p", b"r": b"1", b"u": b"x", b"s": b"gone"}, "bad_field"),
        ({b"v": b"1", b"k": b"p", b"o": b"\xff", b"r": b"1"}, "bad_field"),
        ({b"v": b"1", b"k": b"m", b"o": b"p", b"r": b"1", b"t": b"error"}, "bad_field"),
        (
            {
                b"v": b"1",
                b"k": b"m",
                b"o": b"p",
                b"r": b"1",
                b"t": b"notification",
                b"d": b"[1]",
                b"ts": b"2025-12-26T13:00:00.000Z",
            },
            "invalid_message",
        ),
        (
            {
                b"v": b"1",
                b"k": b"m",
                b"o": b"p",
                b"r": b"1",
                b"t": b"notification",
                b"d": b'{"level":"loud","message":"x"}',
                b"ts": b"2025-12-26T13:00:00.000Z",
            },
            "invalid_message",
        ),
        (
            {
                b"v": b"1",
                b"k": b"m",
                b"o": b"p",
                b"r": b"1",
                b"t": b"notification",
                b"d": b'{"level":"info","message":"x"}',
                b"ts": b'now","x":"',
            },
            "bad_field",
        ),
        (
            {
                b"v": b"1",
                b"k": b"m",
                b"o": b"p",
                b"r": b"1",
                b"t": b"notification",
                b"d": b"{",
                b"ts": b"2025-12-26T13:00:00.000Z",
            },
            "bad_field",
        ),
        ({b"v": b"1", b"k": b"s", b"o": b"p", b"r": b"1", b"s": b"[]", b"n": b"0 0"}, "bad_field"),
    ],
)
def test_bad_entries_name_their_problem(fields: dict[bytes, bytes], kind: str) -> None:
    with pytest.raises(BadEntry) as caught:
        decode_entry(fields)
    assert caught.value.kind == kind


def test_a_message_is_encoded_as_the_single_process_server_encodes_it() -> None:
    for item in (
        AgentStatus(agent_name="planner", state="working", current_task="ü", progress=40),
        ChatMessage(conversation_id="c", message_id="m", content="<hi>", sender="s"),
        Notification(level="info", message="x", user_id="user_a"),
    ):
        entry = replace(message_entry(item, origin="p", wall=WALL), ref=1)
        entry = decode_entry(encode_entry(entry))
        message = prepare(entry, "0000000000001-000000-000000")
        data = item.to_data(WALL) if isinstance(item, ChatMessage) else item.to_data()
        expected = encode_server_message(entry.type, data, WALL, "0000000000001-000000-000000")
        assert message.text == expected
        assert json.loads(message.text)["id"] == "0000000000001-000000-000000"
        assert message.id == "0000000000001-000000-000000"  # an event stream's `id:`
    assert entry.user_ids == ("user_a",)


def test_foreign_data_is_re_encoded_not_passed_through() -> None:
    fields = encode_entry(
        MessageEntry(
            "p",
            1,
            "notification",
            '{ "level" : "info", "message":"\\u0041"}',
            "2025-12-26T13:00:00.000Z",
        )
    )
    entry = decode_entry(fields)
    assert entry.data == '{"level":"info","message":"A"}'  # type: ignore[union-attr]


# -- presence across processes ------------------------------------------------------------


def test_the_strongest_status_over_processes_wins_and_changes_only_are_emitted() -> None:
    s = state()
    out = s.apply("1000-0", PresenceEntry("a", 1, "u", "online"))
    assert changes(out) == [("0000000001000-000000-000000", "u", "online")]
    assert changes(s.apply("1001-0", PresenceEntry("b", 1, "u", "away"))) == []
    assert changes(s.apply("1002-0", PresenceEntry("b", 2, "u", "busy")))[0][1:] == ("u", "busy")
    assert changes(s.apply("1003-0", PresenceEntry("b", 3, "u", "offline")))[0][2] == "online"
    assert s.holders("u") == {"a": "online"}
    assert changes(s.apply("1004-0", PresenceEntry("a", 2, "u", "offline")))[0][2] == "offline"
    assert s.presence() == {}


def test_two_replicas_given_the_same_log_agree_on_everything() -> None:
    log = [
        ("1000-0", PresenceEntry("a", 1, "u", "online")),
        (
            "1000-1",
            MessageEntry(
                "b", 1, "notification", '{"level":"info","message":"x"}', "2025-12-26T13:00:00.000Z"
            ),
        ),
        ("1500-0", BeatEntry("b", 2, 4, 3)),
        ("10000-0", BeatEntry("a", 2, 1, 1)),
        ("19000-0", BeatEntry("a", 3, 1, 1)),  # b silent for too long: forgotten
    ]
    a, b = state("a"), state("b")
    outs_a = [o for pos, e in log for o in a.apply(pos, e)]
    outs_b = [o for pos, e in log for o in b.apply(pos, e)]
    assert [o for o in outs_a if not isinstance(o, Rejoin)] == [
        o for o in outs_b if not isinstance(o, Rejoin)
    ]
    assert Rejoin() in outs_b  # b learns it was forgotten and must announce itself again
    assert Rejoin() not in outs_a
    assert a.processes() == ["a"]


def test_a_silent_process_is_forgotten_in_log_time_with_its_users() -> None:
    s = state("a", expire=2.0)
    s.apply("1000-0", SnapshotEntry("b", 1, {"u1": "online", "u2": "busy"}, 5, 2))
    s.apply("1000-1", PresenceEntry("a", 1, "u2", "away"))
    assert s.counts() == (5, 2)
    assert s.apply("3000-0", BeatEntry("a", 2, 0, 0)) == []  # exactly the lease: not yet
    out = s.apply("3001-0", BeatEntry("a", 3, 1, 1))
    assert changes(out) == [
        ("0000000003001-000000-000000", "u1", "offline"),
        ("0000000003001-000000-000001", "u2", "away"),
    ]
    assert Expired("b", "1000-0") in out
    assert s.counts() == (1, 1)
    assert s.processes() == ["a"]


def test_a_process_that_leaves_is_forgotten_after_the_grace_unless_its_users_return() -> None:
    s = state("a", expire=60.0, grace=5.0)
    s.apply("1000-0", PresenceEntry("b", 1, "reloader", "online"))
    s.apply("1000-1", PresenceEntry("b", 2, "leaver", "online"))
    s.apply("1001-0", LeaveEntry("b", 3))
    assert s.counts() == (0, 0)
    s.apply("2000-0", PresenceEntry("a", 1, "reloader", "online"))  # reconnected on a
    out = s.apply("6002-0", BeatEntry("a", 2, 1, 1))
    assert changes(out) == [("0000000006002-000000-000000", "leaver", "offline")]
    assert s.presence() == {"reloader": "online"}


def test_a_snapshot_replaces_what_was_known_of_its_origin() -> None:
    s = state()
    s.apply("1-0", PresenceEntry("b", 1, "u1", "online"))
    s.apply("1-1", PresenceEntry("b", 2, "u2", "online"))
    out = s.apply("2-0", SnapshotEntry("b", 3, {"u2": "busy", "u3": "away"}, 2, 2))
    assert changes(out) == [
        ("0000000000002-000000-000000", "u1", "offline"),
        ("0000000000002-000000-000001", "u2", "busy"),
        ("0000000000002-000000-000002", "u3", "away"),
    ]


def test_an_entry_written_twice_is_applied_once() -> None:
    s = state()
    entry = MessageEntry(
        "b", 7, "notification", '{"level":"info","message":"x"}', "2025-12-26T13:00:00.000Z"
    )
    assert len(s.apply("1-0", entry)) == 1
    assert s.apply("1-1", entry) == []
    assert s.duplicates == 1


def test_local_ids_while_cut_off_sort_between_cluster_ids() -> None:
    s = state("a")
    first = s.apply("100-0", PresenceEntry("b", 1, "u", "online"))[0]
    local = [s.local_id(), s.local_id()]
    mine = MessageEntry(
        "a",
        1,
        "notification",
        '{"level":"info","message":"x"}',
        "2025-12-26T13:00:00.000Z",
        local=True,
    )
    again = s.apply("200-0", mine)
    assert again == [ClusterMessage(ClusterId(200, 0), mine, delivered_locally=True)]
    later = s.apply("200-1", PresenceEntry("b", 2, "u", "busy"))[0]
    ids = [str(first.id), *map(str, local), str(later.id)]  # type: ignore[union-attr]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4


def test_ids_never_go_back_when_the_log_does() -> None:
    s = state()
    s.apply("5000-0", PresenceEntry("b", 1, "u", "online"))
    out = s.apply("4000-0", PresenceEntry("b", 2, "u", "busy"))  # a Redis with a late clock
    assert str(out[0].id) > "0000000005000-000000-000000"  # type: ignore[union-attr]


def test_load_starts_from_shared_storage_and_reports_the_difference() -> None:
    s = state("c", expire=10.0)
    s.apply("1000-0", PresenceEntry("a", 1, "gone", "online"))
    out = s.load(
        "5000-0",
        {
            "a": ProcessRecord("4000-0", 9, 3, 2),
            "b": ProcessRecord("4500-0", 2, 1, 1, leaving=True),
        },
        {"a": {"u1": "online"}, "b": {"u1": "busy", "u2": "away"}},
    )
    assert {(u, st_) for _, u, st_ in changes(out)} == {
        ("gone", "offline"),
        ("u1", "busy"),
        ("u2", "away"),
    }
    assert s.counts() == (3, 2)  # a leaving process no longer counts
    # The leaving one is forgotten after the grace from its last position.
    out = s.apply("9501-0", BeatEntry("c", 1, 0, 0))
    assert Expired("b", "4500-0") in out
    assert s.presence() == {"u1": "online"}
    # Sequence numbers from the snapshot: an older entry of a is a duplicate.
    assert s.apply("9502-0", PresenceEntry("a", 9, "u9", "online")) == []


def test_ids_that_are_almost_ours_are_refused_and_the_last_index_is_the_last() -> None:
    assert ClusterId.parse("0000000000001-00001-000000") is None  # a part too short
    assert ClusterId.parse("0000000000001-00000x-000000") is None
    with pytest.raises(BadEntry) as caught:
        ClusterId(1, 1, 999_999).following()
    assert caught.value.kind == "too_many_messages"


def test_user_ids_must_be_a_list_of_strings() -> None:
    fields = encode_entry(
        MessageEntry(
            "p",
            1,
            "notification",
            '{"level":"info","message":"x"}',
            "2025-12-26T13:00:00.000Z",
            ("u",),
        )
    )
    for bad in (b'"u"', b"[]", b"[1]"):
        with pytest.raises(BadEntry, match="userIds"):
            decode_entry({**fields, b"u": bad})


def test_an_offline_row_for_a_user_a_process_does_not_hold_changes_nothing() -> None:
    s = state()
    assert s.apply("1-0", PresenceEntry("b", 1, "nobody", "offline")) == []
    s.apply("1-1", PresenceEntry("b", 2, "u", "online"))
    assert s.apply("1-2", PresenceEntry("c", 1, "u", "offline")) == []
    assert s.holders("u") == {"b": "online"}


def test_load_skips_offline_rows_and_reports_only_what_changed() -> None:
    s = state("c")
    s.apply("1000-0", PresenceEntry("a", 1, "same", "online"))
    out = s.load(
        "2000-0",
        {"a": ProcessRecord("1500-0", 3, 1, 1)},
        {"a": {"same": "online", "ghost": "offline"}},
    )
    assert out == []
    assert s.presence() == {"same": "online"}
    assert s.load("0-0", {}, {}) == [PresenceChange(ClusterId(2000, 0, 1), "same", "offline")]


class Member:
    """A hub member that records what it is sent."""

    def __init__(self, user_id: str | None, presence: str = "online") -> None:
        self.user_id = user_id
        self.presence = presence
        self.subscriptions: frozenset[str] = frozenset()
        self.got: list[dict[str, object]] = []

    def deliver(self, message: object, now: float, wall: float, *, counted: bool = True) -> bool:
        self.got.append(json.loads(message.text))  # type: ignore[attr-defined]
        return True


class Raw(Member):
    """A hub member that keeps what it is sent as it came (a group stays one)."""

    def __init__(self, user_id: str | None) -> None:
        super().__init__(user_id)
        self.got: list[PreparedMessage] = []  # type: ignore[assignment]

    def deliver(self, message: object, now: float, wall: float, *, counted: bool = True) -> bool:
        self.got.append(message)  # type: ignore[arg-type]
        return True


class Link:
    """The adapter side of a ClusterHub, recording what the hub hands out."""

    def __init__(self) -> None:
        self.published: list[object] = []
        self.statuses: list[tuple[str, str]] = []
        self.cluster: dict[str, str] = {"remote_user": "busy"}

    def publish(self, item: object, *, now: float, wall: float, scope: Scope) -> Published:
        self.published.append((item, scope))
        return Published("", 0)

    def local_status_changed(self, user_id: str, status: str) -> None:
        self.statuses.append((user_id, status))

    def cluster_presence(self) -> dict[str, str]:
        return dict(self.cluster)

    def health(self) -> dict[str, object]:
        return {"status": "degraded", "cluster": {"clients": 9}}


def test_a_cluster_hub_sends_out_and_delivers_what_comes_back() -> None:
    link = Link()
    hub = ClusterHub(Settings(presence_grace=1.0), link)  # type: ignore[arg-type]
    # What the log told this process (here, before any connection of its own).
    hub.deliver_presence_changes(
        [PresenceChange(ClusterId(0, 1, 0), "remote_user", "busy")], 0.0, WALL
    )
    alice, alice2, bob, anon = Member("alice"), Member("alice"), Member("bob"), Member(None)
    for member in (alice, alice2, bob, anon):
        hub.open_session(member, 0.0, WALL)  # type: ignore[arg-type]
    # presence_state is the cluster's; the local aggregate goes to the link, not out.
    assert alice.got == [
        {
            "type": "presence_state",
            "data": {"users": [{"userId": "remote_user", "status": "busy"}]},
            "timestamp": "2025-12-26T13:00:00.000Z",
        },
        {
            "type": "agent_state",
            "data": {"agents": []},
            "timestamp": "2025-12-26T13:00:00.000Z",
        },
    ]
    assert link.statuses == [("alice", "online"), ("bob", "online")]
    assert hub.local_presence() == {"alice": "online", "bob": "online"}
    assert hub.presence() == {"remote_user": "busy"}  # who is online: the cluster's view
    # Publishing goes to the link.
    note = Notification(level="info", message="x")
    assert hub.send_notification("info", "x", now=1.0, wall=WALL) == Published("", 0)
    assert link.published == [(note, EVERYONE)]
    # What the log brings back reaches the scope, under the log's id.
    entry = decode_entry(
        encode_entry(
            replace(
                message_entry(
                    Notification(level="info", message="hi", user_id="alice"), origin="p", wall=WALL
                ),
                ref=1,
            )
        )
    )
    assert entry.scope == Scope.of(user_ids=["alice"])
    delivered = hub.deliver_entry(entry, "0000000000001-000000-000000", 1.0, WALL)
    assert delivered == 2
    assert alice2.got[-1]["id"] == "0000000000001-000000-000000"
    assert bob.got[-1]["type"] == "agent_state"  # the greeting only: not in scope
    everyone = replace(entry, user_ids=None)
    assert hub.deliver_entry(everyone, "0000000000001-000001-000000", 1.0, WALL) == 3
    change = PresenceChange(ClusterId(2, 0, 0), "remote_user", "away")
    assert hub.deliver_presence_changes([change], 1.0, WALL) == 3
    assert bob.got[-1]["data"] == {"userId": "remote_user", "status": "away"}
    assert bob.got[-1]["id"] == "0000000000002-000000-000000"
    # The last tab of a user closes: offline goes to the link after the grace only.
    hub.close_session(bob, 2.0, WALL)  # type: ignore[arg-type]
    assert link.statuses[-1] == ("bob", "online")
    hub.handle_timer(3.0, WALL)
    assert link.statuses[-1] == ("bob", "offline")
    alice.presence = "online"
    hub.presence_changed(alice, 3.0, WALL)  # type: ignore[arg-type]
    assert link.statuses[-1] == ("bob", "offline")  # unchanged aggregate: nothing sent
    assert hub.health() == {
        "status": "degraded",
        "clients": 3,
        "authenticated": 2,
        "unauthenticated": 1,
        "cluster": {"clients": 9},
    }


def test_consecutive_presence_changes_reach_each_connection_as_one_delivery() -> None:
    hub = ClusterHub(Settings(), Link())  # type: ignore[arg-type]
    watcher = Raw("watcher")
    hub.open_session(watcher, 0.0, WALL)  # type: ignore[arg-type]
    watcher.got.clear()
    changes = [
        PresenceChange(ClusterId(5, 0, 0), "u1", "online"),
        PresenceChange(ClusterId(5, 1, 0), "u2", "busy"),
        PresenceChange(ClusterId(6, 0, 0), "u1", "offline"),
        PresenceChange(ClusterId(7, 0, 0), "u3", "away"),
    ]
    assert hub.deliver_presence_changes(changes, 1.0, WALL) == 1
    [group] = watcher.got  # one deliver (one write) for the four
    assert group.count == 4
    sent = [json.loads(part.text) for part in group.parts]
    # Each change keeps its own message, its id from the log, and its place.
    assert [(m["data"]["userId"], m["data"]["status"], m["id"]) for m in sent] == [
        ("u1", "online", str(ClusterId(5, 0, 0))),
        ("u2", "busy", str(ClusterId(5, 1, 0))),
        ("u1", "offline", str(ClusterId(6, 0, 0))),
        ("u3", "away", str(ClusterId(7, 0, 0))),
    ]
    assert hub.deliver_presence_changes([], 1.0, WALL) == 0
    # A newcomer's snapshot is what the changes told: the user who left is not in it.
    newcomer = Member("newcomer")
    hub.open_session(newcomer, 2.0, WALL)  # type: ignore[arg-type]
    assert newcomer.got[0]["data"] == {
        "users": [{"userId": "u2", "status": "busy"}, {"userId": "u3", "status": "away"}]
    }


def test_an_entry_that_cannot_be_read_still_moves_log_time() -> None:
    s = state("a", expire=1.0)
    s.apply("1000-0", PresenceEntry("b", 1, "u", "online"))
    out = s.skip("3000-0")
    assert changes(out) == [("0000000003000-000000-000000", "u", "offline")]
    assert s.position == "3000-0"


def test_the_scope_travels_in_the_entry_and_is_checked_there() -> None:
    scope = Scope.of(user_ids=["u2", "u1"], channel="room:1")
    entry = message_entry(
        AgentStatus(agent_name="a", state="idle"), origin="p", wall=WALL, scope=scope
    )
    assert entry.user_ids == ("u1", "u2")
    back = decode_entry(encode_entry(replace(entry, ref=1)))
    assert back.scope == scope  # type: ignore[union-attr]
    assert prepare(back, "x").scope == scope  # type: ignore[arg-type]
    note = Notification(level="info", message="m", user_id="u1")
    assert message_entry(note, origin="p", wall=WALL).scope == Scope.of(user_ids=["u1"])
    with pytest.raises(ValueError, match="not both"):
        message_entry(note, origin="p", wall=WALL, scope=scope)
    fields = encode_entry(replace(entry, ref=1))
    for bad in ({b"c": b"no spaces allowed"}, {b"u": json.dumps(["x"] * 1001).encode()}):
        with pytest.raises(BadEntry, match="scope"):
            decode_entry({**fields, **bad})
