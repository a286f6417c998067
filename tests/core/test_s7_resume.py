"""Resuming after a reconnect (PROTOCOL.md 7): the replay, its bounds, the delivery rules,
and no gap or duplicate between replay and live traffic. Bytes and explicit times."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol import Hub, Identity, Session, Settings
from agentcast.protocol.history import format_id
from agentcast.protocol.scope import PendingVerdict

W = {"now": 0.0, "wall": 1_800_000_000.0}
BROADCASTS = {"agent_status", "chat_message", "notification", "user_presence"}


def join(
    h: Any, hub: Hub, user: str, since: str | None = None, now: float = 0.0
) -> tuple[Session, Any]:
    sink = h.ListSink()
    session = Session(hub, sink, Identity(user_id=user), now=now, wall=W["wall"], since=since)
    return session, sink


def chat(hub: Hub, text: str, now: float = 0.0) -> str:
    return hub.broadcast_chat_message("c", "m", text, "bot", now=now, wall=W["wall"]).id


def resume_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    [resume] = [m for m in messages if m["type"] == "resume"]
    return resume["data"]


def test_replay_after_presence_state_then_resume_then_live(h):
    hub = Hub(Settings(presence_grace=0, presence_interval=0, presence_window=0))  # at once
    first, sink = join(h, hub, "alice")
    seen = [m for m in sink.messages() if "id" in m][-1]["id"]  # alice's own arrival
    first.close(1006, "gone", **W)
    missed = [chat(hub, f"m{i}") for i in range(3)]
    note = hub.send_notification("warning", "disk", **W).id
    _, sink = join(h, hub, "alice", since=seen)
    messages = sink.messages()
    assert [m["type"] for m in messages] == [
        "auth",
        "presence_state",
        "agent_state",
        "chat_message",
        "chat_message",
        "chat_message",
        "notification",
        "resume",
        "user_presence",  # alice online again: live, after the replay
    ]
    assert [m["id"] for m in messages[3:7]] == [*missed, note]
    assert [m["data"]["content"] for m in messages[3:6]] == ["m0", "m1", "m2"]
    assert messages[7]["data"] == {"complete": True, "replayed": 4}
    assert "id" not in messages[7]
    live = chat(hub, "live")
    [after] = sink.messages()
    assert after["id"] == live > messages[8]["id"] > note


def test_nothing_missed(h, hub):
    last = chat(hub, "seen")
    _, sink = join(h, hub, "alice", since=last)
    messages = sink.messages()
    assert resume_of(messages) == {"complete": True, "replayed": 0}
    assert [m["type"] for m in messages][:4] == ["auth", "presence_state", "agent_state", "resume"]


def test_a_presence_id_is_a_resume_point_but_presence_is_not_replayed(h):
    hub = Hub(Settings(presence_grace=0, presence_interval=0, presence_window=0))
    chat(hub, "before")
    bob, _ = join(h, hub, "bob")  # user_presence bob online
    bob.close(1000, "", **W)  # user_presence bob offline
    _, sink = join(h, hub, "carol")
    arrival = [m for m in sink.messages() if m["type"] == "user_presence"][-1]["id"]
    after = chat(hub, "after")
    _, sink = join(h, hub, "carol", since=arrival)
    messages = sink.messages()
    assert resume_of(messages) == {"complete": True, "replayed": 1}
    assert [m["id"] for m in messages if m["type"] == "chat_message"] == [after]
    # From before bob came and went: his presence changes are not replayed.
    _, sink = join(h, hub, "dave", since=format_id(0, 1))
    replayed = sink.messages()
    assert [m["type"] for m in replayed].count("user_presence") == 1  # dave's own arrival
    assert resume_of(replayed) == {"complete": True, "replayed": 1}


def test_count_bound(h):
    hub = Hub(Settings(history_size=3))
    ids = [chat(hub, f"m{i}") for i in range(5)]
    _, sink = join(h, hub, "alice", since=ids[1])
    messages = sink.messages()
    assert [m["id"] for m in messages if m["type"] == "chat_message"] == ids[2:]
    assert resume_of(messages) == {"complete": True, "replayed": 3}
    _, sink = join(h, hub, "alice", since=ids[0])
    messages = sink.messages()
    assert resume_of(messages) == {"complete": False}
    assert "chat_message" not in [m["type"] for m in messages]


def test_age_bound(h):
    hub = Hub(Settings(history_ttl=300.0))
    old = chat(hub, "old", now=0.0)
    newer = chat(hub, "newer", now=200.0)
    _, sink = join(h, hub, "alice", since=old, now=299.0)
    assert resume_of(sink.messages()) == {"complete": True, "replayed": 1}
    # Five minutes after it was published, "newer" is no longer kept.
    _, sink = join(h, hub, "alice", since=old, now=500.0)
    assert resume_of(sink.messages()) == {"complete": False}
    _, sink = join(h, hub, "alice", since=newer, now=500.0)
    assert resume_of(sink.messages()) == {"complete": True, "replayed": 0}


@pytest.mark.parametrize(
    "since",
    [
        "",
        "garbage",
        "0000000000000001",  # an id of the 16-hex-digit form older servers issued
        "0000000000000-000000000999",  # never issued
        "9999999999999-000000000001",  # another epoch
        "x" * 10_000,
        "\u00e9\u0000",
    ],
)
def test_unknown_or_malformed_since_is_incomplete_and_the_connection_stays(h, hub, since):
    chat(hub, "m")
    session, sink = join(h, hub, "alice", since=since)
    messages = sink.messages()
    assert resume_of(messages) == {"complete": False}
    assert not session.closed
    assert sink.closed is None
    live = chat(hub, "live")
    assert [m["id"] for m in sink.messages()] == [live]


def test_a_new_epoch_answers_ids_of_the_previous_one_incomplete(h):
    before = Hub(epoch=1_764_441_600_000)
    seen = chat(before, "seen")
    restarted = Hub(epoch=1_764_441_700_000)
    first = chat(restarted, "after the restart")
    assert first > seen
    _, sink = join(h, restarted, "alice", since=seen)
    messages = sink.messages()
    assert resume_of(messages) == {"complete": False}
    assert "chat_message" not in [m["type"] for m in messages]


def test_notifications_are_replayed_only_to_their_user(h, hub):
    start = chat(hub, "start")
    for_alice = hub.send_notification("info", "for alice", user_id="alice", **W).id
    for_all = hub.send_notification("info", "for all", **W).id
    for_bob = hub.send_notification("info", "for bob", user_id="bob", **W).id
    _, alice = join(h, hub, "alice", since=start)
    _, bob = join(h, hub, "bob", since=start)
    alice_got = alice.messages()
    bob_got = bob.messages()
    assert [m["id"] for m in alice_got if m["type"] == "notification"] == [for_alice, for_all]
    assert [m["id"] for m in bob_got if m["type"] == "notification"] == [for_all, for_bob]
    assert resume_of(alice_got) == {"complete": True, "replayed": 2}


def test_unauthenticated_gets_no_replay(h, hub):
    start = chat(hub, "start")
    chat(hub, "missed")
    sink = h.ListSink()
    Session(hub, sink, None, since=start, **W)
    assert sink.types() == ["auth"]


def test_a_replay_that_cannot_fit_closes_1013_and_never_joins(h):
    hub = Hub(Settings(max_send_buffer=4096, presence_grace=0))
    start = chat(hub, "start")
    for i in range(100):
        chat(hub, f"missed {i:03d}")
    _, watcher = join(h, hub, "watcher")
    watcher.messages()
    session, sink = join(h, hub, "alice", since=start)
    assert session.closed
    assert sink.closed == (1013, "client too slow")
    assert hub.stats.slow_client_drops == 1
    assert hub.authenticated_clients_count() == 1
    assert "user_alice" not in hub.presence()
    assert watcher.messages() == []  # no online/offline flap for alice
    # Resuming with a bigger buffer from the same point works.
    roomy = Hub(Settings(max_send_buffer=1 << 20))
    start = chat(roomy, "start")
    for i in range(100):
        chat(roomy, f"missed {i:03d}")
    _, sink = join(h, roomy, "alice", since=start)
    assert resume_of(sink.messages()) == {"complete": True, "replayed": 100}


def test_since_from_the_query_with_any_token_placement(h, hub):
    seen = chat(hub, "seen")
    missed = chat(hub, "missed")
    by_query, _ = h.connect(hub, "abc")
    assert by_query is not None
    for target, kwargs in [
        (f"/ws?token=abc&since={seen}", {}),
        (f"/ws?since={seen}", {"extra_headers": [(b"authorization", b"Bearer abc")]}),
        (f"/ws?since={seen}", {"subprotocols": ["agentcast.v1", "bearer.abc"]}),
    ]:
        pair = h.Pair(hub)
        messages = pair.handshake(target, **kwargs)
        assert messages[0]["data"] == {"success": True, "userId": "user_abc"}
        assert [m["id"] for m in messages if m["type"] == "chat_message"] == [missed]
        assert resume_of(messages) == {"complete": True, "replayed": 1}


# -- no gap, no duplicate ------------------------------------------------------------------

users = st.sampled_from(["alice", "bob"])
operations = st.lists(
    st.tuples(st.sampled_from(["chat", "note", "read", "reconnect", "reconnect_publish"]), users),
    max_size=40,
)


@given(operations)
def test_every_message_exactly_once_in_order_across_reconnects(h, ops):
    """Whatever the interleaving of publishing, reading and resuming, each user's client
    receives every broadcast meant for it exactly once and in publish order. A dropped
    connection loses what its client had not read yet; the resume brings it back."""
    hub = Hub(Settings(presence_grace=0, presence_interval=0, presence_window=0))
    expected: dict[str, list[str]] = {"alice": [], "bob": []}
    got: dict[str, list[str]] = {"alice": [], "bob": []}
    seen: dict[str, str | None] = {"alice": None, "bob": None}
    clients: dict[str, tuple[Session, Any]] = {}

    def read(user: str) -> None:
        for m in clients[user][1].messages():
            if m["type"] in BROADCASTS:
                seen[user] = m["id"]
            if m["type"] in ("chat_message", "notification"):
                got[user].append(m["id"])
            if m["type"] == "resume":
                assert m["data"]["complete"] is True

    def publish_chat() -> None:
        message_id = chat(hub, "m")
        for queue in expected.values():
            queue.append(message_id)

    for user in ("alice", "bob"):
        clients[user] = join(h, hub, user)
        read(user)
    for op, user in ops:
        if op == "chat":
            publish_chat()
        elif op == "note":
            expected[user].append(hub.send_notification("info", "n", user_id=user, **W).id)
        elif op == "read":
            read(user)
        else:
            clients[user][0].close(1006, "dropped", **W)  # unread messages are lost
            if op == "reconnect_publish":
                publish_chat()  # while the client is away
            clients[user] = join(h, hub, user, since=seen[user])
    for user in ("alice", "bob"):
        read(user)
    assert got == expected


def test_a_channel_still_waiting_for_its_verdict_makes_the_resume_incomplete(h):
    verdicts: list[PendingVerdict] = []

    def authorizer(identity: Identity, channel: str) -> PendingVerdict:
        verdicts.append(PendingVerdict())
        return verdicts[-1]

    hub = Hub(authorizer=authorizer)
    seen = chat(hub, "seen")
    hub.broadcast_chat_message("c", "m", "missed", "bot", channel="room:1", **W)
    pair = h.Pair(hub)
    messages = pair.handshake(f"/ws?token=abc&channels=room:1&since={seen}")
    assert resume_of(messages) == {"complete": False}
    assert "chat_message" not in [m["type"] for m in messages]
    verdicts[0].complete(True, **W)  # the verdict comes: subscribed, live from now on
    assert [m["type"] for m in pair.messages()] == ["subscribed"]


def test_resume_for_a_closed_or_unauthenticated_member_does_nothing(h, hub):
    chat(hub, "m")
    anon = Session(hub, h.ListSink(), None, **W)
    hub.resume(anon, format_id(0, 0), **W)
    closed, sink = join(h, hub, "alice")
    sink.messages()
    closed.close(1000, "bye", **W)
    hub.resume(closed, format_id(0, 0), **W)
    assert sink.messages() == []
