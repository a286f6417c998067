"""PROTOCOL.md sections 8 and 4a: ``userIds`` and ``channel`` on publish API items."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentcast.protocol import HttpRequest, Hub, Settings
from agentcast.protocol.http import answer

KEY = "k-123"
STATUS = {"agentName": "bot", "state": "working"}
CHAT = {"conversationId": "c", "messageId": "m", "content": "x", "sender": "s"}
NOTE = {"level": "info", "message": "m"}
CHANNEL_ERROR = "channel must be 1 to 128 characters from A-Z a-z 0-9 _ . : @ / -"


def post(hub: Hub, path: str, body: object) -> tuple[int, Any]:
    request = HttpRequest(
        method="POST",
        path=path,
        query="",
        headers=(("authorization", f"Bearer {KEY}"),),
        body=json.dumps(body).encode(),
        client="127.0.0.1",
    )
    result = answer(request, hub, now=0.0, wall=0.0)
    return result.status, json.loads(result.body)


@pytest.fixture
def room(h):
    """alice subscribed to room:1, alice's second tab and bob not subscribed."""
    hub = Hub(Settings(api_key=KEY))
    alice, _ = h.connect(hub, "alice")
    alice.send_json({"type": "subscribe", "data": {"channel": "room:1"}})
    tab, _ = h.connect(hub, "alice")
    bob, _ = h.connect(hub, "bob")
    bob.send_json({"type": "subscribe", "data": {"channel": "room:1"}})
    for pair in (alice, tab, bob):
        pair.messages()
    return hub, alice, tab, bob


def kinds(pair) -> list[str]:
    return [m["type"] for m in pair.messages()]


@pytest.mark.parametrize(
    ("path", "item", "kind"),
    [
        ("/api/agent-status", STATUS, "agent_status"),
        ("/api/chat-messages", CHAT, "chat_message"),
        ("/api/notifications", NOTE, "notification"),
    ],
)
def test_every_endpoint_takes_a_channel_and_user_ids(room, path, item, kind):
    hub, alice, tab, bob = room
    status, body = post(hub, path, {**item, "channel": "room:1"})
    assert (status, body["delivered"]) == (202, 2)
    assert (kinds(alice), kinds(tab), kinds(bob)) == ([kind], [], [kind])
    status, body = post(hub, path, {**item, "userIds": ["user_alice"]})
    assert (status, body["delivered"]) == (202, 2)
    assert (kinds(alice), kinds(tab), kinds(bob)) == ([kind], [kind], [])
    status, body = post(hub, path, {**item, "userIds": ["user_alice"], "channel": "room:1"})
    assert (status, body["delivered"]) == (202, 1)
    assert (kinds(alice), kinds(tab), kinds(bob)) == ([kind], [], [])


def test_the_scope_fields_are_not_sent_to_clients(room):
    hub, alice, _, _ = room
    post(hub, "/api/chat-messages", {**CHAT, "userIds": ["user_alice"], "channel": "room:1"})
    [message] = alice.messages()
    assert message["data"] == {**CHAT, "timestamp": "1970-01-01T00:00:00.000Z"}


def test_a_batch_carries_a_scope_per_item(room):
    hub, alice, tab, bob = room
    batch = [
        {**NOTE, "message": "room"} | {"channel": "room:1"},
        {**NOTE, "message": "bob"} | {"userIds": ["user_bob"]},
        {**NOTE, "message": "all"},
    ]
    status, body = post(hub, "/api/notifications", batch)
    assert (status, body["delivered"]) == (202, 2 + 1 + 3)
    assert [m["data"]["message"] for m in alice.messages()] == ["room", "all"]
    assert [m["data"]["message"] for m in tab.messages()] == ["all"]
    assert [m["data"]["message"] for m in bob.messages()] == ["room", "bob", "all"]


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"userIds": []}, "userIds must name 1 to 1,000 users"),
        ({"userIds": [f"u{i}" for i in range(1001)]}, "userIds must name 1 to 1,000 users"),
        ({"userIds": "user_alice"}, "userIds must be a list of user ids"),
        ({"userIds": [""]}, "userIds must hold non-empty strings"),
        ({"userIds": [5]}, "userIds must hold non-empty strings"),
        ({"channel": "no spaces"}, CHANNEL_ERROR),
        ({"channel": "x" * 129}, CHANNEL_ERROR),
        ({"channel": 5}, CHANNEL_ERROR),
    ],
)
def test_bad_scope_fields_are_400(room, extra, error):
    hub, alice, _, _ = room
    assert post(hub, "/api/agent-status", {**STATUS, **extra}) == (400, {"error": error})
    assert alice.messages() == []


def test_a_notification_with_user_id_and_user_ids_is_400(room):
    hub, alice, _, _ = room
    body = {**NOTE, "userId": "user_alice", "userIds": ["user_bob"]}
    assert post(hub, "/api/notifications", body) == (
        400,
        {"error": "give userId or userIds, not both"},
    )
    assert alice.messages() == []


def test_a_notification_user_id_with_a_channel(room):
    hub, alice, tab, bob = room
    status, body = post(
        hub, "/api/notifications", {**NOTE, "userId": "user_alice", "channel": "room:1"}
    )
    assert (status, body["delivered"]) == (202, 1)
    assert (kinds(alice), kinds(tab), kinds(bob)) == (["notification"], [], [])


def test_a_bad_scope_in_a_batch_names_the_item_and_publishes_nothing(room):
    hub, alice, tab, bob = room
    batch = [NOTE, {**NOTE, "channel": "ok"}, {**NOTE, "userIds": []}]
    assert post(hub, "/api/notifications", batch) == (
        400,
        {"error": "item 2: userIds must name 1 to 1,000 users"},
    )
    assert (alice.messages(), tab.messages(), bob.messages()) == ([], [], [])


def test_user_id_is_still_refused_on_other_kinds(room):
    """``userId`` belongs to notifications (seed); other items name ``userIds``."""
    hub, _, _, _ = room
    assert post(hub, "/api/agent-status", {**STATUS, "userId": "user_alice"}) == (
        400,
        {"error": "unknown field 'userId'"},
    )
