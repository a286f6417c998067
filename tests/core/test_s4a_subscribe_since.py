"""PROTOCOL.md 4a: a ``subscribe`` with ``since`` replays the channel's missed messages,
then answers ``subscribed`` with ``complete``.

The replay comes from the same history as a resume (section 7), through the same
delivery rule, in the same core step as the subscription (no gap, no duplicate with live
traffic); it is a backlog like any other (1013 when it cannot fit). Bytes in, bytes out,
explicit times.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol import Hub, Identity, Session, Settings
from agentcast.protocol.history import MAX_ID_LENGTH, format_id
from agentcast.protocol.scope import PendingVerdict

W = {"now": 0.0, "wall": 1_800_000_000.0}


def chat(hub: Hub, text: str, now: float = 0.0, **scope: Any) -> str:
    wall = W["wall"]
    return hub.broadcast_chat_message("conv", text, text, "bot", now=now, wall=wall, **scope).id


def subscribe(pair: Any, channel: str, since: object = None, **extra: Any) -> list[dict[str, Any]]:
    """Send ``subscribe`` (with ``since`` unless it is None) and read what came back."""
    data: dict[str, Any] = {"channel": channel, **extra}
    if since is not None:
        data["since"] = since
    pair.send_json({"type": "subscribe", "data": data})
    return pair.messages()


def since_message(channel: str, since: str) -> str:
    return json.dumps({"type": "subscribe", "data": {"channel": channel, "since": since}})


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["content"] for m in messages if m["type"] == "chat_message"]


def answer(messages: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [m for m in messages if m["type"] == "subscribed"]
    return found["data"]


def test_missed_channel_messages_come_first_then_subscribed_then_live(h, hub):
    """A client saw up to some id on one connection; on the next it subscribes with that
    id: exactly the channel's messages it missed, in order, then ``subscribed``."""
    first, _ = h.connect(hub, "alice")
    subscribe(first, "room:1")
    seen = chat(hub, "seen", channel="room:1")
    assert contents(first.messages()) == ["seen"]
    first.eof()  # gone
    missed = [chat(hub, f"m{i}", channel="room:1") for i in range(3)]
    chat(hub, "another channel", channel="room:2")
    chat(hub, "unscoped")  # received live by the next connection if it is there; not replayed
    note = hub.send_notification("info", "note", channel="room:1", **W).id
    second, _ = h.connect(hub, "alice")
    second.messages()
    messages = subscribe(second, "room:1", seen)
    assert [m["type"] for m in messages] == [
        "chat_message",
        "chat_message",
        "chat_message",
        "notification",
        "subscribed",
    ]
    assert [m["id"] for m in messages[:4]] == [*missed, note]
    assert contents(messages) == ["m0", "m1", "m2"]
    assert messages[-1]["data"] == {"channel": "room:1", "complete": True, "replayed": 4}
    assert "id" not in messages[-1]
    live = chat(hub, "live", channel="room:1")
    [after] = second.messages()
    assert after["id"] == live
    assert hub.subscribers("room:1") == 1
    assert hub.stats.messages_out["subscribed"] == 2


def test_without_since_the_answer_is_unchanged(h, hub):
    pair, _ = h.connect(hub, "alice")
    chat(hub, "before", channel="room:1")
    messages = subscribe(pair, "room:1")
    assert [(m["type"], m["data"]) for m in messages] == [("subscribed", {"channel": "room:1"})]
    # null is no since
    pair.send_json({"type": "subscribe", "data": {"channel": "room:2", "since": None}})
    messages = pair.messages()
    assert [(m["type"], m["data"]) for m in messages] == [("subscribed", {"channel": "room:2"})]


def test_nothing_missed(h, hub):
    last = chat(hub, "last", channel="room:1")
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    assert subscribe(pair, "room:1", last) == [
        {
            "type": "subscribed",
            "data": {"channel": "room:1", "complete": True, "replayed": 0},
            "timestamp": h.TS0,
        }
    ]


def test_any_id_is_a_resume_point_even_another_channel_s(h):
    hub = Hub(Settings(presence_grace=0, presence_interval=0, presence_window=0))
    other = chat(hub, "other", channel="room:2")
    after = chat(hub, "after", channel="room:1")
    pair, first = h.connect(hub, "alice")
    arrival = [m for m in first if m["type"] == "user_presence"][-1]["id"]  # a presence id
    later = chat(hub, "later", channel="room:1")
    messages = subscribe(pair, "room:1", other)
    assert [m["id"] for m in messages if m["type"] == "chat_message"] == [after, later]
    pair2, _ = h.connect(hub, "bob")
    pair2.messages()
    messages = subscribe(pair2, "room:1", arrival)
    assert [m["id"] for m in messages if m["type"] == "chat_message"] == [later]
    assert answer(messages) == {"channel": "room:1", "complete": True, "replayed": 1}


def test_a_message_for_another_audience_on_the_channel_is_never_replayed(h, hub):
    start = chat(hub, "start")
    for_all = chat(hub, "for all", channel="room:1")
    for_alice = chat(hub, "for alice", channel="room:1", user_ids=["user_alice"])
    for_bob = chat(hub, "for bob", channel="room:1", user_ids=["user_bob"])
    note_alice = hub.send_notification("info", "n", user_id="user_alice", channel="room:1", **W).id
    hub.send_notification("info", "n", user_id="user_alice", **W)  # no channel: not replayed
    alice, _ = h.connect(hub, "alice")
    bob, _ = h.connect(hub, "bob")
    alice.messages()
    bob.messages()
    got_alice = subscribe(alice, "room:1", start)
    got_bob = subscribe(bob, "room:1", start)
    assert [m["id"] for m in got_alice if "id" in m] == [for_all, for_alice, note_alice]
    assert [m["id"] for m in got_bob if "id" in m] == [for_all, for_bob]
    assert answer(got_alice)["replayed"] == 3
    assert answer(got_bob)["replayed"] == 2


def test_already_subscribed_nothing_is_replayed(h, hub):
    """It has been receiving the channel live: replaying would duplicate."""
    pair, _ = h.connect(hub, "alice")
    start = chat(hub, "start")
    subscribe(pair, "room:1")
    chat(hub, "live", channel="room:1")
    assert contents(pair.messages()) == ["live"]
    messages = subscribe(pair, "room:1", start)
    assert [(m["type"], m["data"]) for m in messages] == [
        ("subscribed", {"channel": "room:1", "complete": True, "replayed": 0})
    ]
    assert hub.subscriptions_count() == 1


# -- complete: false ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since",
    [
        "",
        "garbage",
        "0000000000000001",  # an id of the 16-hex-digit form older servers issued
        "0000000000000-000000000999",  # never issued
        "9999999999999-000000000001",  # another epoch
        "x" * (MAX_ID_LENGTH + 1),
        "\u00e9\u0000",
    ],
)
def test_an_unknown_or_malformed_since_is_incomplete_and_subscribes(h, hub, since):
    chat(hub, "kept", channel="room:1")
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    messages = subscribe(pair, "room:1", since)
    assert [(m["type"], m["data"]) for m in messages] == [
        ("subscribed", {"channel": "room:1", "complete": False})
    ]
    assert pair.close_events() == []
    assert contents(chat_and_read(hub, pair)) == ["live"]


def chat_and_read(hub: Hub, pair: Any) -> list[dict[str, Any]]:
    chat(hub, "live", channel="room:1")
    return pair.messages()


def test_a_since_longer_than_any_id_is_not_looked_up(h, hub):
    class Watched:
        def __init__(self, history: Any) -> None:
            self.history = history
            self.asked: list[str] = []

        def __getattr__(self, name: str) -> Any:
            return getattr(self.history, name)

        def since(self, message_id: str, now: float) -> Any:
            self.asked.append(message_id)
            return self.history.since(message_id, now)

    watched = Watched(hub.history)
    hub.history = watched  # type: ignore[assignment]
    pair, _ = h.connect(hub, "alice")
    subscribe(pair, "room:1", "1" * (MAX_ID_LENGTH + 1))
    subscribe(pair, "room:2", "1" * MAX_ID_LENGTH)
    assert watched.asked == ["1" * MAX_ID_LENGTH]


def test_when_the_history_no_longer_reaches_back(h):
    hub = Hub(Settings(history_size=3, history_ttl=300.0))
    ids = [chat(hub, f"m{i}", channel="room:1") for i in range(5)]
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    messages = subscribe(pair, "room:1", ids[1])
    assert contents(messages) == ["m2", "m3", "m4"]
    assert answer(messages) == {"channel": "room:1", "complete": True, "replayed": 3}
    other, _ = h.connect(hub, "alice")
    other.messages()
    messages = subscribe(other, "room:1", ids[0])  # m1 is no longer kept
    assert [(m["type"], m["data"]) for m in messages] == [
        ("subscribed", {"channel": "room:1", "complete": False})
    ]
    # Five minutes after it was published, a message is no longer kept either.
    late = h.Pair(hub, now=400.0)
    late.handshake("/ws?token=carol")
    messages = subscribe(late, "room:1", ids[2])
    assert answer(messages) == {"channel": "room:1", "complete": False}


def test_a_since_that_is_not_a_string_is_a_format_error_and_subscribes_nothing(h, hub):
    pair, _ = h.connect(hub, "alice")
    chat(hub, "kept", channel="room:1")
    pair.messages()
    for since in (42, ["1-2"], {"id": "1"}, True):
        messages = subscribe(pair, "room:1", since)
        assert [(m["type"], m["data"]) for m in messages] == [
            ("error", h.error("Invalid message format", "invalid_format"))
        ]
    assert hub.subscribers("room:1") == 0
    assert pair.close_events() == []


def test_an_unauthenticated_client_may_not_subscribe_with_since(h, hub):
    seen = chat(hub, "seen", channel="room:1")
    chat(hub, "missed", channel="room:1")
    pair, _ = h.connect(hub, None)
    messages = subscribe(pair, "room:1", seen)
    assert [(m["type"], m["data"]) for m in messages] == [
        ("error", h.error("Not authenticated", "not_authenticated"))
    ]


def test_a_refused_subscription_replays_nothing(h):
    def authorizer(identity: Identity, channel: str) -> bool:
        return channel != "secret"

    hub = Hub(authorizer=authorizer)
    seen = chat(hub, "seen", channel="secret")
    chat(hub, "missed", channel="secret")
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    messages = subscribe(pair, "secret", seen)
    assert [m["type"] for m in messages] == ["error"]
    assert messages[0]["data"]["code"] == "forbidden_channel"


# -- a verdict that comes later ------------------------------------------------------------------


class LaterAuthorizer:
    def __init__(self) -> None:
        self.pending: dict[str, PendingVerdict] = {}

    def __call__(self, identity: Identity, channel: str) -> PendingVerdict:
        verdict = self.pending[channel] = PendingVerdict()
        return verdict


def test_a_later_verdict_replays_up_to_its_own_moment(h):
    """Messages published while the verdict is pending are in the replay; live traffic
    starts after the ``subscribed`` answer: nothing twice, nothing lost."""
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    seen = chat(hub, "seen", channel="room:1")
    chat(hub, "missed", channel="room:1")
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    assert subscribe(pair, "room:1", seen) == []  # no answer yet
    # Asked again meanwhile: answered once, when the verdict comes (the first since holds).
    assert subscribe(pair, "room:1", format_id(0, 99)) == []
    chat(hub, "while pending", channel="room:1", now=2.0)
    pair.now = 3.0
    later.pending["room:1"].complete(True, now=pair.now, wall=pair.wall)
    messages = pair.messages()
    assert contents(messages) == ["missed", "while pending"]
    assert [m["type"] for m in messages][-1] == "subscribed"
    assert answer(messages) == {"channel": "room:1", "complete": True, "replayed": 2}
    chat(hub, "live", channel="room:1", now=4.0)
    assert contents(pair.messages()) == ["live"]


def test_a_later_refusal_replays_nothing(h):
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    seen = chat(hub, "seen", channel="room:1")
    chat(hub, "missed", channel="room:1")
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    subscribe(pair, "room:1", seen)
    later.pending["room:1"].complete(False, now=1.0, wall=W["wall"])
    assert [m["data"]["code"] for m in pair.messages()] == ["forbidden_channel"]


def test_a_later_verdict_after_unsubscribe_replays_nothing(h):
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    seen = chat(hub, "seen", channel="room:1")
    chat(hub, "missed", channel="room:1")
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    subscribe(pair, "room:1", seen)
    pair.send_json({"type": "unsubscribe", "data": {"channel": "room:1"}})
    assert [m["type"] for m in pair.messages()] == ["unsubscribed"]
    later.pending["room:1"].complete(True, now=1.0, wall=W["wall"])
    assert pair.messages() == []


# -- the send buffer -------------------------------------------------------------------------------


def test_a_replay_that_cannot_fit_closes_1013_and_leaves_the_channel(h):
    hub = Hub(Settings(max_send_buffer=4096, presence_grace=0, presence_window=0))
    start = chat(hub, "start")
    for i in range(100):
        chat(hub, f"missed {i:03d}", channel="room:1")
    sink = h.ListSink()
    session = Session(hub, sink, Identity(user_id="alice"), **W)
    sink.messages()
    session.receive_text(since_message("room:1", start), **W)
    assert session.closed
    assert sink.closed == (1013, "client too slow")
    assert hub.stats.slow_client_drops == 1
    assert "subscribed" not in sink.types()
    assert hub.subscribers("room:1") == 0
    assert hub.clients_count() == 0
    # With room for it, the same replay goes through.
    roomy = Hub(Settings(max_send_buffer=1 << 20))
    start = chat(roomy, "start")
    for i in range(100):
        chat(roomy, f"missed {i:03d}", channel="room:1")
    pair, _ = h.connect(roomy, "alice")
    pair.messages()
    messages = subscribe(pair, "room:1", start)
    assert answer(messages) == {"channel": "room:1", "complete": True, "replayed": 100}


def test_the_replay_counts_against_what_the_client_has_not_read(h):
    """The replay joins the backlog already queued: a client that fits the replay alone
    but has not read its earlier messages is too slow all the same."""
    hub = Hub(Settings(max_send_buffer=4096, presence_window=0))
    start = chat(hub, "start")
    for i in range(15):
        chat(hub, f"missed {i:03d}", channel="room:1")
    reader, _ = h.connect(hub, "alice")
    reader.messages()
    assert answer(subscribe(reader, "room:1", start))["replayed"] == 15
    sink = h.ListSink()
    session = Session(hub, sink, Identity(user_id="bob"), **W)
    for i in range(15):
        chat(hub, f"unread {i:03d}")  # bob does not read these
    session.receive_text(since_message("room:1", start), **W)
    assert sink.closed == (1013, "client too slow")


# -- no gap, no duplicate --------------------------------------------------------------------------

operations = st.lists(
    st.sampled_from(
        ["room", "room_alice", "room_bob", "other_room", "everyone", "read", "reconnect"]
    ),
    max_size=40,
)


@given(operations)
def test_every_channel_message_exactly_once_in_order_across_reconnects(h, ops):
    """Alice's client subscribes to room:1; whatever the interleaving of publishing,
    reading and reconnecting (a new connection subscribing with ``since`` = the last id
    it saw), it receives every room:1 message meant for alice exactly once, in publish
    order, and no room:1 message meant for someone else."""
    hub = Hub(Settings(presence_grace=0, presence_interval=0, presence_window=0))
    expected: list[str] = []
    got: list[str] = []
    seen: list[str | None] = [None]

    def connect() -> tuple[Session, Any]:
        sink = h.ListSink()
        session = Session(hub, sink, Identity(user_id="alice"), **W)
        since = seen[0]  # None on the first connection only
        if since is None:
            session.receive_text('{"type":"subscribe","data":{"channel":"room:1"}}', **W)
        else:
            session.receive_text(since_message("room:1", since), **W)
        return session, sink

    def read(sink: Any) -> None:
        for m in sink.messages():
            if "id" in m:
                seen[0] = m["id"]
            if m["type"] == "chat_message" and m["data"]["sender"] == "room:1":
                got.append(m["id"])
            if m["type"] == "subscribed" and "complete" in m["data"]:
                assert m["data"]["complete"] is True

    def room(**audience: Any) -> str:
        return hub.broadcast_chat_message(
            "conv", "m", "x", "room:1", channel="room:1", **audience, **W
        ).id

    session, sink = connect()
    read(sink)  # its arrival: a resume point
    for op in ops:
        if op == "room":
            expected.append(room())
        elif op == "room_alice":
            expected.append(room(user_ids=["alice"]))
        elif op == "room_bob":
            room(user_ids=["bob"])
        elif op == "other_room":
            chat(hub, "elsewhere", channel="room:2")
        elif op == "everyone":
            chat(hub, "everyone")
        elif op == "read":
            read(sink)
        else:
            session.close(1006, "dropped", **W)  # what it had not read is lost
            session, sink = connect()
    read(sink)
    assert got == expected


def test_a_cluster_process_replays_a_channel_from_what_it_applied(h):
    """In a cluster the history is the one each process fills from the log, under the
    log's ids: a subscribe with since replays from it by the same rules."""
    from agentcast.protocol.cluster_hub import ClusterHub
    from agentcast.protocol.scope import Scope

    from .test_cluster import Link
    from .test_cluster_history import chat as entry
    from .test_cluster_history import cid

    hub = ClusterHub(Settings(presence_window=0), Link())  # type: ignore[arg-type]
    seen = cid(1)
    hub.deliver_entry(entry("seen", scope=Scope.of(channel="room:1")), seen, 1.0, W["wall"])
    hub.deliver_entry(entry("missed", scope=Scope.of(channel="room:1")), cid(2), 1.0, W["wall"])
    other = Scope.of(channel="room:1", user_ids=["bob"])
    hub.deliver_entry(entry("for bob", scope=other), cid(3), 1.0, W["wall"])
    hub.deliver_entry(entry("everyone"), cid(4), 1.0, W["wall"])
    sink = h.ListSink()
    session = Session(hub, sink, Identity(user_id="alice"), now=2.0, wall=W["wall"])
    sink.messages()
    session.receive_text(since_message("room:1", seen), 2.0, W["wall"])
    messages = sink.messages()
    assert [(m["type"], m.get("id")) for m in messages] == [
        ("chat_message", cid(2)),
        ("subscribed", None),
    ]
    assert messages[-1]["data"] == {"channel": "room:1", "complete": True, "replayed": 1}
    # An id this process has not reached: it cannot say.
    session.receive_text(since_message("room:2", cid(9)), 2.0, W["wall"])
    assert sink.messages()[-1]["data"] == {"channel": "room:2", "complete": False}
