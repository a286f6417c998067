"""PROTOCOL.md sections 3 and 4: the envelope, timestamps, broadcast ids, delivery rules
and the in-process publishing API's validation."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
from wsproto.events import TextMessage

from agentcast.protocol import (
    AgentStatus,
    ChatMessage,
    Hub,
    Notification,
    PreparedMessage,
    Settings,
    encode_server_message,
    format_timestamp,
)
from agentcast.protocol.history import parse_id
from agentcast.protocol.messages import MAX_FIELD_LENGTH, frame_text
from agentcast.protocol.timestamps import is_iso_timestamp


def seq(message_id: str) -> int:
    """The sequence number of a broadcast id (the part after the epoch)."""
    parsed = parse_id(message_id)
    assert parsed is not None, message_id
    return parsed[1]


# -- timestamps: exactly JavaScript's Date.prototype.toISOString() -------------------------


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        (1766754000.0, "2025-12-26T13:00:00.000Z"),
        (1766754000.5, "2025-12-26T13:00:00.500Z"),
        (1766754000.9999, "2025-12-26T13:00:00.999Z"),  # truncated, never rounded up
        (1766754059.25, "2025-12-26T13:00:59.250Z"),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (0.0009, "1970-01-01T00:00:00.000Z"),
        (951782400.0, "2000-02-29T00:00:00.000Z"),
        (-1.5, "1969-12-31T23:59:58.500Z"),  # new Date(-1500).toISOString()
        (-0.0005, "1970-01-01T00:00:00.000Z"),  # JS truncates the time value toward zero
    ],
)
def test_timestamp_format(wall, expected):
    assert format_timestamp(wall) == expected


def test_timestamp_cache_follows_the_second():
    assert format_timestamp(1766754000.1) == "2025-12-26T13:00:00.100Z"
    assert format_timestamp(1766754000.2) == "2025-12-26T13:00:00.200Z"
    assert format_timestamp(1766754001.0) == "2025-12-26T13:00:01.000Z"
    assert format_timestamp(1766754000.3) == "2025-12-26T13:00:00.300Z"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2025-12-26T13:00:00.000Z", True),
        ("2025-12-26T13:00:00Z", True),
        ("2025-12-26T13:00:00.123456+02:00", True),
        ("2025-12-26 13:00:00Z", False),
        ("2025-12-26T13:00:00", False),
        ("yesterday", False),
        (5, False),
    ],
)
def test_iso_timestamp_check(value, ok):
    assert is_iso_timestamp(value) is ok


def test_every_server_message_has_the_timestamp_of_wall(h, hub):
    p = h.Pair(hub, now=2.5)
    msgs = p.handshake()
    p.send_json({"type": "ping"})
    msgs += p.messages()
    assert msgs
    assert {m["timestamp"] for m in msgs} == {"2025-12-26T13:00:02.500Z"}


def test_server_pong_shape(h, pair):
    pair.send_json({"type": "ping"})
    assert pair.messages() == [{"type": "pong", "timestamp": h.TS0}]


# -- encoding ----------------------------------------------------------------------------


def test_encode_server_message_shape():
    text = encode_server_message("notification", {"level": "info", "message": "é"}, 0.0, "01")
    assert text == (
        '{"type":"notification","data":{"level":"info","message":"é"},'
        '"timestamp":"1970-01-01T00:00:00.000Z","id":"01"}'
    )
    assert encode_server_message("ping", None, 0.0) == (
        '{"type":"ping","timestamp":"1970-01-01T00:00:00.000Z"}'
    )


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 70000])
def test_server_frames_decode_at_every_length_boundary(h, pair, n):
    text = "x" * n
    pair.server.transport.send_text(text)
    [event] = pair.flush()
    assert isinstance(event, TextMessage)
    assert event.data == text
    assert frame_text(text.encode())[:1] == b"\x81"


def test_prepared_message_is_encoded_once():
    msg = PreparedMessage.build("chat_message", {"content": "hi"}, 0.0, "0a")
    assert json.loads(msg.text) == {
        "type": "chat_message",
        "data": {"content": "hi"},
        "timestamp": "1970-01-01T00:00:00.000Z",
        "id": "0a",
    }
    assert len(msg) == len(msg.frame) == 2 + len(msg.text.encode())
    assert repr(msg) == f"PreparedMessage({msg.text!r})"


# -- broadcast ids -----------------------------------------------------------------------


def test_broadcast_ids_are_strictly_increasing_strings(h, hub):
    pair, _ = h.connect(hub)
    ids = []
    for i in range(20):
        ids.append(hub.send_notification("info", f"n{i}", now=0.0, wall=h.WALL0).id)
        ids.append(hub.broadcast_agent_status("a", "idle", now=0.0, wall=h.WALL0).id)
    pair.send_json({"type": "user_presence", "data": "busy"})
    ids.append(hub.broadcast_chat_message("c", "m", "x", "s", now=0.0, wall=h.WALL0).id)
    assert all(isinstance(i, str) for i in ids)
    assert all(a < b for a, b in itertools.pairwise(ids))
    seen = [m["id"] for m in pair.messages()]
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert set(ids) <= set(seen)


def test_non_broadcast_messages_carry_no_id(h, pair):
    pair.send_json({"type": "ping"})
    pair.send_json({"type": "nope"})
    pair.tick(30.0)
    msgs = pair.messages()
    assert [m["type"] for m in msgs] == ["pong", "error", "ping"]
    assert all("id" not in m for m in msgs)


# -- delivery rules ----------------------------------------------------------------------


@pytest.fixture
def crowd(h, hub):
    """alice (two connections), bob, and an unauthenticated client; greetings read."""
    alice1, _ = h.connect(hub, "alice")
    alice2, _ = h.connect(hub, "alice")
    bob, _ = h.connect(hub, "bob")
    anon, _ = h.connect(hub, None)
    for p in (alice1, alice2, bob, anon):
        p.messages()
    return {"alice1": alice1, "alice2": alice2, "bob": bob, "anon": anon}


def received(crowd):
    return {name: p.messages() for name, p in crowd.items()}


def test_agent_status_reaches_every_authenticated_connection(h, hub, crowd):
    published = hub.broadcast_agent_status(
        "planner", "working", "step 2", 42.5, now=0.0, wall=h.WALL0
    )
    assert published.delivered == 3
    expected = {
        "type": "agent_status",
        "data": {
            "agentName": "planner",
            "state": "working",
            "currentTask": "step 2",
            "progress": 42.5,
        },
        "timestamp": h.TS0,
        "id": published.id,
    }
    assert received(crowd) == {
        "alice1": [expected],
        "alice2": [expected],
        "bob": [expected],
        "anon": [],
    }


def test_agent_status_optional_fields_are_left_out(h, hub, crowd):
    hub.broadcast_agent_status("planner", "idle", now=0.0, wall=h.WALL0)
    assert crowd["bob"].messages()[0]["data"] == {"agentName": "planner", "state": "idle"}


def test_chat_message_reaches_every_authenticated_connection(h, hub, crowd):
    published = hub.broadcast_chat_message(
        "conv1", "m1", "hello", "agent", now=1.0, wall=h.WALL0 + 1
    )
    assert published.delivered == 3
    got = received(crowd)
    assert got["anon"] == []
    assert got["bob"] == [
        {
            "type": "chat_message",
            "data": {
                "conversationId": "conv1",
                "messageId": "m1",
                "content": "hello",
                "sender": "agent",
                "timestamp": "2025-12-26T13:00:01.000Z",  # defaults to publishing time
            },
            "timestamp": "2025-12-26T13:00:01.000Z",
            "id": published.id,
        }
    ]
    assert got["alice1"] == got["alice2"] == got["bob"]


def test_chat_message_keeps_a_given_timestamp(h, hub, crowd):
    hub.broadcast_chat_message("c", "m", "", "s", "2025-01-01T00:00:00.000Z", now=0.0, wall=h.WALL0)
    data = crowd["bob"].messages()[0]["data"]
    assert data["timestamp"] == "2025-01-01T00:00:00.000Z"
    assert data["content"] == ""


def test_notification_to_everyone(h, hub, crowd):
    published = hub.send_notification("warning", "disk", now=0.0, wall=h.WALL0)
    expected = {
        "type": "notification",
        "data": {"level": "warning", "message": "disk"},
        "timestamp": h.TS0,
        "id": published.id,
    }
    assert published.delivered == 3
    assert received(crowd) == {
        "alice1": [expected],
        "alice2": [expected],
        "bob": [expected],
        "anon": [],
    }


def test_notification_to_one_user_reaches_all_their_connections_only(h, hub, crowd):
    published = hub.send_notification("success", "done", "user_alice", now=0.0, wall=h.WALL0)
    expected = {
        "type": "notification",
        "data": {"level": "success", "message": "done"},
        "timestamp": h.TS0,
        "id": published.id,
    }
    assert published.delivered == 2
    assert received(crowd) == {
        "alice1": [expected],
        "alice2": [expected],
        "bob": [],
        "anon": [],
    }


def test_notification_to_an_absent_user_reaches_nobody(h, hub, crowd):
    published = hub.send_notification("info", "x", "user_nobody", now=0.0, wall=h.WALL0)
    assert published.delivered == 0
    assert all(m == [] for m in received(crowd).values())


def test_unauthenticated_gets_only_auth_pong_ping_error(h):
    hub = Hub(Settings(heartbeat_interval=10.0, heartbeat_timeout=25.0))
    anon, first = h.connect(hub, None)
    assert [m["type"] for m in first] == ["auth"]
    other, _ = h.connect(hub, "bob")
    other.send_json({"type": "user_presence", "data": "away"})
    hub.broadcast_agent_status("a", "idle", now=0.0, wall=h.WALL0)
    hub.broadcast_chat_message("c", "m", "x", "s", now=0.0, wall=h.WALL0)
    hub.send_notification("info", "x", now=0.0, wall=h.WALL0)
    hub.send_notification("info", "x", "user_bob", now=0.0, wall=h.WALL0)
    anon.send_json({"type": "ping"})
    anon.send_json({"type": "user_presence", "data": "busy"})
    anon.tick(10.0)
    assert anon.types() == ["pong", "error", "ping"]
    assert hub.presence() == {"user_bob": "away"}


def test_broadcasts_arrive_in_publish_order(h, hub, crowd):
    for i in range(10):
        hub.send_notification("info", str(i), now=0.0, wall=h.WALL0)
        hub.broadcast_agent_status(f"a{i}", "idle", now=0.0, wall=h.WALL0)
    msgs = crowd["bob"].messages()
    assert [m["data"].get("message", m["data"].get("agentName")) for m in msgs] == [
        x for i in range(10) for x in (str(i), f"a{i}")
    ]


def test_counts(h, hub, crowd):
    assert hub.clients_count() == 4
    assert hub.authenticated_clients_count() == 3


# -- the in-process API validates its arguments --------------------------------------------

W = {"now": 0.0, "wall": 0.0}
LONG = "x" * (MAX_FIELD_LENGTH + 1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "idle"), "agentName must not be empty"),
        ((None, "idle"), "agentName must be a string"),
        ((5, "idle"), "agentName must be a string"),
        ((LONG, "idle"), "agentName is longer"),
        (("a", "running"), "state must be one of"),
        (("a", None), "state must be one of"),
        (("a", ["idle"]), "state must be one of"),
        (("a", "idle", 5), "currentTask must be a string"),
        (("a", "idle", LONG), "currentTask is longer"),
        (("a", "idle", None, -0.1), "progress must be a number from 0 to 100"),
        (("a", "idle", None, 100.01), "progress must be a number from 0 to 100"),
        (("a", "idle", None, math.nan), "progress must be a number from 0 to 100"),
        (("a", "idle", None, True), "progress must be a number from 0 to 100"),
        (("a", "idle", None, "50"), "progress must be a number from 0 to 100"),
    ],
)
def test_broadcast_agent_status_validates(hub, args, match):
    with pytest.raises(ValueError, match=match):
        hub.broadcast_agent_status(*args, **W)


@pytest.mark.parametrize("progress", [0, 100, 0.0, 55.5])
def test_progress_bounds_are_inclusive(hub, progress):
    hub.broadcast_agent_status("a", "working", None, progress, **W)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "m", "c", "s"), "conversationId must not be empty"),
        ((1, "m", "c", "s"), "conversationId must be a string"),
        (("c", "", "c", "s"), "messageId must not be empty"),
        (("c", "m", None, "s"), "content must be a string"),
        (("c", "m", LONG, "s"), "content is longer"),
        (("c", "m", "c", ""), "sender must not be empty"),
        (("c", "m", "c", "s", "today"), "timestamp must be an ISO 8601"),
        (("c", "m", "c", "s", 5), "timestamp must be an ISO 8601"),
    ],
)
def test_broadcast_chat_message_validates(hub, args, match):
    with pytest.raises(ValueError, match=match):
        hub.broadcast_chat_message(*args, **W)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("debug", "m"), "level must be one of"),
        ((["info"], "m"), "level must be one of"),
        (("info", ""), "message must not be empty"),
        (("info", None), "message must be a string"),
        (("info", "m", ""), "userId must not be empty"),
        (("info", "m", 5), "userId must be a string"),
    ],
)
def test_send_notification_validates(hub, args, match):
    with pytest.raises(ValueError, match=match):
        hub.send_notification(*args, **W)


def test_invalid_publish_sends_nothing_and_uses_no_id(h, hub, crowd):
    first = hub.send_notification("info", "a", **W).id
    with pytest.raises(ValueError, match="level"):
        hub.send_notification("loud", "b", **W)
    second = hub.send_notification("info", "c", **W).id
    assert [m["data"]["message"] for m in crowd["bob"].messages()] == ["a", "c"]
    assert seq(second) == seq(first) + 1


@pytest.mark.parametrize(
    ("cls", "data", "match"),
    [
        (AgentStatus, [], "agent status must be an object"),
        (AgentStatus, {"agentName": "a", "state": "idle", "progres": 1}, "unknown field 'progres'"),
        (ChatMessage, "x", "chat message must be an object"),
        (Notification, None, "notification must be an object"),
        (Notification, {"level": "info", "message": "m", "to": "u"}, "unknown field 'to'"),
    ],
)
def test_from_data_validates(cls, data, match):
    with pytest.raises(ValueError, match=match):
        cls.from_data(data)


@pytest.mark.parametrize(
    "call",
    [
        lambda hub: hub.send_notification("info", "a\ud800b", **W),
        lambda hub: hub.broadcast_chat_message("c", "m", "\udfff", "s", **W),
        lambda hub: hub.broadcast_agent_status("\ud83d", "idle", **W),
    ],
)
def test_lone_surrogates_are_refused(hub, call):
    # JSON may carry "\ud800", but no UTF-8 text frame can.
    with pytest.raises(ValueError, match="not valid Unicode"):
        call(hub)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "ws"}, "path must start with '/'"),
        ({"heartbeat_interval": 0}, "heartbeat_interval must be positive"),
        ({"heartbeat_timeout": -1.0}, "heartbeat_timeout must be positive"),
        ({"rate_limit": 0.0}, "rate_limit must be positive"),
        ({"close_timeout": math.nan}, "close_timeout must be positive"),
        ({"presence_grace": -0.1}, "presence_grace must not be negative"),
        ({"max_message_size": 0}, "max_message_size must be at least 1"),
        ({"max_send_buffer": 0}, "max_send_buffer must be at least 1"),
        ({"rate_burst": 0}, "rate_burst must be at least 1"),
        ({"max_batch": 0}, "max_batch must be at least 1"),
    ],
)
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Settings(**kwargs)


def test_settings_repr_hides_the_api_key():
    assert "s3cret" not in repr(Settings(api_key="s3cret"))


WALL0 = 1766754000.0  # the wall clock at now == 0 (2025-12-26T13:00:00Z)


# -- validation answers (the publish API returns these texts as {"error": ...}) ------------


def test_unknown_type_with_a_lone_surrogate_is_echoed_with_a_replacement(h):
    hub = Hub()
    s, sink = h.open_session(hub, "u1")
    s.receive_text('{"type":"x\\ud800y"}', 1.0, h.WALL0 + 1)
    [answer] = sink.messages()
    assert answer["data"] == {"error": "Unknown message type: x?y", "code": "unknown_type"}
    assert sink.closed is None


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: ChatMessage.from_data([]), "chat message must be an object"),
        (lambda: Notification.from_data("n"), "notification must be an object"),
        (
            lambda: Notification(level="info", message="m", user_id=""),
            "userId must not be empty",
        ),
        (
            lambda: AgentStatus(agent_name="a", state="idle", progress=101),
            "progress must be a number from 0 to 100",
        ),
        (
            lambda: ChatMessage(conversation_id="c", message_id="m", content=5, sender="s"),
            "content must be a string",
        ),
        (
            lambda: ChatMessage(
                conversation_id="c", message_id="m", content="x", sender="s", timestamp="now"
            ),
            "timestamp must be an ISO 8601 date-time such as 2025-12-26T13:00:00.000Z",
        ),
        (
            lambda: ChatMessage(conversation_id="c", message_id="m", content="a\ud800", sender="s"),
            "content is not valid Unicode (a lone surrogate)",
        ),
        (
            lambda: AgentStatus(agent_name="a\udfff", state="idle"),
            "agentName is not valid Unicode (a lone surrogate)",
        ),
    ],
)
def test_invalid_publish_data_is_refused_with_its_exact_reason(make, error):
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        make()


def test_fields_of_exactly_the_maximum_length_are_accepted():
    longest = "x" * MAX_FIELD_LENGTH
    assert AgentStatus(agent_name=longest, state="idle").to_data()["agentName"] == longest
    chat = ChatMessage(conversation_id="c", message_id="m", content=longest, sender="s")
    assert chat.to_data(WALL0)["content"] == longest
    with pytest.raises(ValueError, match="is longer than"):
        ChatMessage(conversation_id="c", message_id="m", content=longest + "x", sender="s")
