"""PROTOCOL.md section 4a: scoped delivery through the hub and the session.

Audiences (``userIds``) and channels; ``subscribe``/``unsubscribe`` and their answers;
the per-connection limit; who may subscribe (the identity's grant, an in-process
authorizer, a verdict that comes later); a refreshed token that revokes a subscription;
``channels=`` in the connect URL. Bytes in, bytes out, explicit times.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentcast.protocol import AuthFailure, AuthResult, Hub, Identity, Settings
from agentcast.protocol.scope import (
    ALL_CHANNELS,
    NO_CHANNELS,
    ChannelGrant,
    PendingVerdict,
    Scope,
)

W = {"now": 0.0, "wall": 0.0}


class TableAuth:
    """token -> (user, grant): tokens name who they are and what they may subscribe to."""

    def __init__(self, table: dict[str, tuple[str, ChannelGrant]]) -> None:
        self.table = table

    def authenticate(self, token: str, wall: float) -> AuthResult:
        found = self.table.get(token)
        if found is None:
            return AuthFailure("Invalid token")
        return Identity(user_id=found[0], channels=found[1])


TEAM = ChannelGrant.parse(["conversation:team-*"])
AUTH = TableAuth(
    {
        "alice": ("alice", ALL_CHANNELS),
        "alice-team": ("alice", TEAM),
        "alice-none": ("alice", NO_CHANNELS),
        "bob": ("bob", ALL_CHANNELS),
        "bob-team": ("bob", TEAM),
        "carol": ("carol", ALL_CHANNELS),
    }
)


def join(h, hub: Hub, token: str | None, query: str = ""):
    pair = h.Pair(hub)
    target = "/ws" if token is None else f"/ws?token={token}"
    if query:
        target += ("&" if token is not None else "?") + query
    first = pair.handshake(target, authenticator=AUTH)
    return pair, first


def sub(pair, channel: str, kind: str = "subscribe") -> list[dict[str, Any]]:
    pair.send_json({"type": kind, "data": {"channel": channel}})
    return pair.messages()


def subscribed(channel: str) -> dict[str, Any]:
    return {"type": "subscribed", "data": {"channel": channel}}


def contents(pair) -> list[str]:
    """The chat contents a client received since the last read."""
    return [m["data"]["content"] for m in pair.messages() if m["type"] == "chat_message"]


def chat(hub: Hub, content: str, **scope: Any):
    return hub.broadcast_chat_message("conv", content, content, "agent", **W, **scope)


def strip(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k in ("type", "data")} for m in messages]


# -- delivery sets ----------------------------------------------------------------------------


def test_seed_clients_receive_unscoped_broadcasts_and_nothing_scoped(h, hub):
    seed, _ = join(h, hub, "alice")
    listener, _ = join(h, hub, "bob")
    assert strip(sub(listener, "room:1")) == [subscribed("room:1")]
    chat(hub, "for everyone")
    chat(hub, "for the room", channel="room:1")
    chat(hub, "for bob", user_ids=["bob"])
    assert contents(seed) == ["for everyone"]
    assert contents(listener) == ["for everyone", "for the room", "for bob"]


def test_a_channel_broadcast_reaches_exactly_its_subscribers(h, hub):
    a, _ = join(h, hub, "alice")
    b, _ = join(h, hub, "bob")
    c, _ = join(h, hub, "carol")
    sub(a, "room:1")
    sub(b, "room:2")
    sub(c, "room:1")
    published = chat(hub, "one", channel="room:1")
    assert published.delivered == 2
    assert (contents(a), contents(b), contents(c)) == (["one"], [], ["one"])
    assert hub.broadcast_agent_status("bot", "idle", channel="room:2", **W).delivered == 1
    assert [m["type"] for m in b.messages()] == ["agent_status"]
    assert hub.send_notification("info", "n", channel="room:3", **W).delivered == 0


def test_an_audience_reaches_every_connection_of_its_users_and_nobody_else(h, hub):
    a1, _ = join(h, hub, "alice")
    a2, _ = join(h, hub, "alice")
    b, _ = join(h, hub, "bob")
    c, _ = join(h, hub, "carol")
    anonymous, _ = join(h, hub, None)
    assert chat(hub, "x", user_ids=["alice", "carol", "nobody"]).delivered == 3
    assert [contents(p) for p in (a1, a2, b, c, anonymous)] == [["x"], ["x"], [], ["x"], []]


def test_audience_and_channel_reach_the_subscribed_connections_of_those_users(h, hub):
    a_in, _ = join(h, hub, "alice")
    a_out, _ = join(h, hub, "alice")
    b_in, _ = join(h, hub, "bob")
    c_in, _ = join(h, hub, "carol")
    for pair in (a_in, b_in, c_in):
        sub(pair, "room:1")
    # both ways of walking the indexes: a small audience, and a small channel
    assert chat(hub, "few users", user_ids=["alice"], channel="room:1").delivered == 1
    many = [f"u{i}" for i in range(10)] + ["alice", "bob"]
    assert chat(hub, "many users", user_ids=many, channel="room:1").delivered == 2
    assert contents(a_in) == ["few users", "many users"]
    assert contents(a_out) == []
    assert contents(b_in) == ["many users"]
    assert contents(c_in) == []


def test_the_scope_is_not_part_of_the_message(h, hub):
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    hub.send_notification("info", "hi", user_ids=["alice"], channel="room:1", **W)
    [message] = a.messages()
    assert message["data"] == {"level": "info", "message": "hi"}
    assert set(message) == {"type", "data", "timestamp", "id"}


def test_a_notification_takes_user_id_or_user_ids_not_both(h, hub):
    join(h, hub, "alice")
    with pytest.raises(ValueError, match="userId or userIds, not both"):
        hub.send_notification("info", "m", "alice", user_ids=["bob"], **W)
    # a notification's userId with a channel: that user's subscribed connections
    assert hub.send_notification("info", "m", "alice", channel="room:1", **W).delivered == 0


@pytest.mark.parametrize(
    ("scope", "match"),
    [
        ({"user_ids": []}, "1 to 1,000"),
        ({"user_ids": "alice"}, "list of user ids"),
        ({"user_ids": [f"u{i}" for i in range(1001)]}, "1 to 1,000"),
        ({"channel": "bad name"}, "channel must be"),
        ({"channel": ""}, "channel must be"),
    ],
)
def test_every_broadcast_method_validates_its_scope(hub, scope, match):
    with pytest.raises(ValueError, match=match):
        hub.broadcast_agent_status("bot", "idle", **W, **scope)
    with pytest.raises(ValueError, match=match):
        hub.broadcast_chat_message("c", "m", "x", "s", **W, **scope)
    with pytest.raises(ValueError, match=match):
        hub.send_notification("info", "m", **W, **scope)


def test_unauthenticated_connections_never_receive_a_broadcast_of_any_scope(h, hub):
    anonymous, _ = join(h, hub, None)
    chat(hub, "a")
    chat(hub, "b", user_ids=["user_x"])
    chat(hub, "c", channel="room:1")
    assert contents(anonymous) == []


# -- subscribe, unsubscribe ---------------------------------------------------------------


def test_subscribe_and_unsubscribe_are_answered_and_take_effect(h, hub):
    a, _ = join(h, hub, "alice")
    assert strip(sub(a, "room:1")) == [subscribed("room:1")]
    assert (hub.subscriptions_count(), hub.channels_count(), hub.subscribers("room:1")) == (1, 1, 1)
    assert strip(sub(a, "room:1", "unsubscribe")) == [
        {"type": "unsubscribed", "data": {"channel": "room:1"}}
    ]
    assert (hub.subscriptions_count(), hub.channels_count()) == (0, 0)
    assert chat(hub, "gone", channel="room:1").delivered == 0
    assert contents(a) == []


def test_subscribing_twice_is_answered_twice_and_counts_once(h, hub):
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    assert strip(sub(a, "room:1")) == [subscribed("room:1")]
    assert hub.subscriptions_count() == 1
    assert chat(hub, "once", channel="room:1").delivered == 1
    assert contents(a) == ["once"]


def test_unsubscribing_from_a_channel_never_subscribed_is_answered(h, hub):
    a, _ = join(h, hub, "alice")
    assert strip(sub(a, "room:9", "unsubscribe")) == [
        {"type": "unsubscribed", "data": {"channel": "room:9"}}
    ]


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("channel", ["", "a b", "x" * 129, 5, None])
def test_an_invalid_channel_name_is_an_error_and_the_connection_stays(h, hub, kind, channel):
    a, _ = join(h, hub, "alice")
    a.send_json({"type": kind, "data": {"channel": channel}})
    assert strip(a.messages()) == [
        {"type": "error", "data": h.error("Invalid channel name", "invalid_channel")}
    ]
    a.send_json({"type": "ping"})
    assert a.types() == ["pong"]


def test_subscribe_without_data_is_a_format_error(h, hub):
    a, _ = join(h, hub, "alice")
    a.send_json({"type": "subscribe"})
    assert strip(a.messages()) == [
        {"type": "error", "data": h.error("Invalid message format", "invalid_format")}
    ]


@pytest.mark.parametrize("channel", ["room:1", "bad name"])
def test_an_unauthenticated_client_may_not_subscribe(h, hub, channel):
    anonymous, _ = join(h, hub, None)
    assert strip(sub(anonymous, channel)) == [
        {"type": "error", "data": h.error("Not authenticated", "not_authenticated")}
    ]
    assert hub.subscriptions_count() == 0


def test_subscribed_and_unsubscribed_are_server_only(h, hub):
    a, _ = join(h, hub, "alice")
    a.send_json({"type": "subscribed", "data": {"channel": "c"}})
    assert strip(a.messages()) == [
        {"type": "error", "data": h.error("Message type not allowed from client", "not_allowed")}
    ]


# -- the limit ----------------------------------------------------------------------------------


def test_subscriptions_are_limited_per_connection(h):
    hub = Hub(Settings(max_subscriptions=2))
    a, _ = join(h, hub, "alice")
    b, _ = join(h, hub, "bob")
    sub(a, "c1")
    sub(a, "c2")
    assert strip(sub(a, "c3")) == [
        {
            "type": "error",
            "data": {
                "error": "Too many subscriptions (at most 2)",
                "code": "too_many_subscriptions",
                "channel": "c3",
            },
        }
    ]
    assert strip(sub(b, "c3")) == [subscribed("c3")]  # per connection, not per hub
    sub(a, "c1", "unsubscribe")
    assert strip(sub(a, "c3")) == [subscribed("c3")]
    assert hub.subscriptions_count() == 3


def test_the_default_limit_is_100(h, hub):
    a, _ = join(h, hub, "alice")
    for i in range(100):
        a.send_json({"type": "subscribe", "data": {"channel": f"c{i}"}})
        a.now += 0.1  # under the rate limit
    assert a.types() == ["subscribed"] * 100
    assert [m["data"]["code"] for m in sub(a, "c100")] == ["too_many_subscriptions"]


# -- authorization ------------------------------------------------------------------------------


def test_the_identity_grant_decides_without_an_authorizer(h, hub):
    a, _ = join(h, hub, "alice-team")
    assert strip(sub(a, "conversation:team-1")) == [subscribed("conversation:team-1")]
    assert strip(sub(a, "conversation:other")) == [
        {
            "type": "error",
            "data": {
                "error": "Channel not allowed",
                "code": "forbidden_channel",
                "channel": "conversation:other",
            },
        }
    ]
    chat(hub, "leak", channel="conversation:other")
    assert contents(a) == []
    assert hub.stats.errors["forbidden_channel"] == 1


def test_no_channel_grant_subscribes_to_nothing(h, hub):
    a, _ = join(h, hub, "alice-none")
    assert [m["data"]["code"] for m in sub(a, "anything")] == ["forbidden_channel"]


def test_an_authorizer_decides_instead_of_the_grant(h):
    asked: list[tuple[str, str]] = []

    def authorizer(identity: Identity, channel: str) -> bool:
        asked.append((identity.user_id, channel))
        return channel == f"inbox:{identity.user_id}"

    hub = Hub(authorizer=authorizer)
    a, _ = join(h, hub, "alice-none")  # the grant says nothing; the authorizer says yes
    assert strip(sub(a, "inbox:alice")) == [subscribed("inbox:alice")]
    assert [m["data"]["code"] for m in sub(a, "inbox:bob")] == ["forbidden_channel"]
    assert asked == [("alice", "inbox:alice"), ("alice", "inbox:bob")]


@pytest.mark.parametrize("answer", ["raise", "yes", None])
def test_a_broken_authorizer_refuses_and_is_counted(h, answer):
    def authorizer(identity: Identity, channel: str) -> Any:
        if answer == "raise":
            raise RuntimeError("database down")
        return answer

    hub = Hub(authorizer=authorizer)
    a, _ = join(h, hub, "alice")
    assert [m["data"]["code"] for m in sub(a, "c")] == ["forbidden_channel"]
    assert hub.stats.errors["authorizer_failed"] == 1
    a.send_json({"type": "ping"})
    assert a.types() == ["pong"]


class LaterAuthorizer:
    """Answers every question later: the test completes the verdicts."""

    def __init__(self) -> None:
        self.pending: dict[str, PendingVerdict] = {}

    def __call__(self, identity: Identity, channel: str) -> PendingVerdict:
        verdict = self.pending[channel] = PendingVerdict()
        return verdict


def test_a_verdict_that_comes_later(h):
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    a, _ = join(h, hub, "alice")
    assert sub(a, "room:1") == []  # no answer yet
    chat(hub, "before the verdict", channel="room:1")
    a.send_json({"type": "ping"})  # the connection goes on meanwhile
    assert a.types() == ["pong"]
    a.now = 3.0
    later.pending["room:1"].complete(True, now=a.now, wall=a.wall)
    assert strip(a.messages()) == [subscribed("room:1")]
    chat(hub, "after", channel="room:1")
    assert contents(a) == ["after"]


def test_a_later_refusal(h):
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    later.pending["room:1"].complete(False, now=1.0, wall=h.WALL0 + 1.0)
    assert [m["data"]["code"] for m in a.messages()] == ["forbidden_channel"]
    assert hub.subscriptions_count() == 0


def test_pending_verdicts_count_against_the_limit_and_answer_once(h):
    later = LaterAuthorizer()
    hub = Hub(Settings(max_subscriptions=1), authorizer=later)
    a, _ = join(h, hub, "alice")
    assert sub(a, "room:1") == []
    assert sub(a, "room:1") == []  # the same question is not asked twice
    assert [m["data"]["code"] for m in sub(a, "room:2")] == ["too_many_subscriptions"]
    later.pending["room:1"].complete(True, now=0.0, wall=0.0)
    assert strip(a.messages()) == [subscribed("room:1")]


def test_unsubscribing_while_pending_drops_the_verdict(h):
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    assert [m["type"] for m in sub(a, "room:1", "unsubscribe")] == ["unsubscribed"]
    later.pending["room:1"].complete(True, now=0.0, wall=0.0)
    assert a.messages() == []
    assert chat(hub, "x", channel="room:1").delivered == 0


def test_a_verdict_for_a_closed_connection_is_ignored(h):
    later = LaterAuthorizer()
    hub = Hub(authorizer=later)
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    a.eof()
    later.pending["room:1"].complete(True, now=0.0, wall=0.0)
    assert (hub.subscriptions_count(), hub.channels_count()) == (0, 0)


def test_an_authorizer_may_answer_with_a_completed_verdict(h):
    def authorizer(identity: Identity, channel: str) -> PendingVerdict:
        verdict = PendingVerdict()
        verdict.complete(channel == "yes", now=0.0, wall=0.0)
        return verdict

    hub = Hub(authorizer=authorizer)
    a, _ = join(h, hub, "alice")
    assert strip(sub(a, "yes")) == [subscribed("yes")]
    assert [m["data"]["code"] for m in sub(a, "no")] == ["forbidden_channel"]


# -- a refreshed token re-checks every subscription ----------------------------------------


def refresh(pair, token: str) -> list[dict[str, Any]]:
    pair.send_json({"type": "auth", "data": {"token": token}})
    pair.answer_auth(AUTH)
    return pair.messages()


def test_a_refresh_ends_the_subscriptions_no_longer_allowed(h, hub):
    a, _ = join(h, hub, "alice")
    sub(a, "conversation:team-1")
    sub(a, "conversation:other")
    assert strip(refresh(a, "alice-team")) == [
        {"type": "auth", "data": {"success": True, "userId": "alice"}},
        {
            "type": "unsubscribed",
            "data": {"channel": "conversation:other", "reason": "no longer allowed"},
        },
    ]
    chat(hub, "kept", channel="conversation:team-1")
    chat(hub, "revoked", channel="conversation:other")
    assert contents(a) == ["kept"]
    assert (hub.subscriptions_count(), hub.channels_count()) == (1, 1)
    # and from now on the new grant decides new subscriptions too
    assert [m["data"]["code"] for m in sub(a, "conversation:other")] == ["forbidden_channel"]


def test_a_failed_refresh_changes_no_subscription(h, hub):
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    assert [m["type"] for m in refresh(a, "unknown")] == ["auth"]
    assert [m["type"] for m in refresh(a, "bob")] == ["auth"]  # another user: refused
    assert chat(hub, "still", channel="room:1").delivered == 1


def test_a_refresh_with_a_later_verdict_holds_the_subscription_until_it_comes(h):
    verdicts: list[bool | PendingVerdict] = [True]
    later = LaterAuthorizer()

    def authorizer(identity: Identity, channel: str) -> bool | PendingVerdict:
        return verdicts.pop(0) if verdicts else later(identity, channel)

    hub = Hub(authorizer=authorizer)
    a, _ = join(h, hub, "alice")
    assert strip(sub(a, "room:1")) == [subscribed("room:1")]
    assert [m["type"] for m in refresh(a, "alice")] == ["auth"]
    assert chat(hub, "meanwhile", channel="room:1").delivered == 1
    later.pending["room:1"].complete(False, now=0.0, wall=0.0)
    assert strip(a.messages())[1:] == [
        {"type": "unsubscribed", "data": {"channel": "room:1", "reason": "no longer allowed"}}
    ]
    assert chat(hub, "after", channel="room:1").delivered == 0


# -- channels= in the connect URL ---------------------------------------------------------------


def test_channels_in_the_url_are_subscribed_right_after_auth(h, hub):
    _a, first = join(h, hub, "alice-team", "channels=conversation:team-1,bad%20name,other")
    assert strip(first) == [
        {"type": "auth", "data": {"success": True, "userId": "alice"}},
        {"type": "presence_state", "data": {"users": []}},
        {"type": "agent_state", "data": {"agents": []}},
        {"type": "user_presence", "data": {"userId": "alice", "status": "online"}},
        subscribed("conversation:team-1"),
        {"type": "error", "data": h.error("Invalid channel name", "invalid_channel")},
        {
            "type": "error",
            "data": {
                "error": "Channel not allowed",
                "code": "forbidden_channel",
                "channel": "other",
            },
        },
    ]
    assert chat(hub, "x", channel="conversation:team-1").delivered == 1


def test_channels_in_the_url_repeated_or_blank_count_once(h, hub):
    _, first = join(h, hub, "alice", "channels=a,,a,%20b&channels=b")
    assert [m for m in strip(first) if m["type"] == "subscribed"] == [
        subscribed("a"),
        subscribed("b"),
    ]


def test_channels_in_the_url_past_the_limit(h):
    hub = Hub(Settings(max_subscriptions=2))
    names = ",".join(f"c{i}" for i in range(50))
    _, first = join(h, hub, "alice", f"channels={names}")
    answers = [m for m in first if m["type"] in ("subscribed", "error")]
    # two subscribed, then one refusal that says why; the rest are not answered
    assert [m["type"] for m in answers] == ["subscribed", "subscribed", "error"]
    assert answers[2]["data"]["code"] == "too_many_subscriptions"


def test_channels_in_the_url_without_authentication(h, hub):
    _, first = join(h, hub, None, "channels=a")
    assert strip(first)[1:] == [
        {"type": "error", "data": h.error("Not authenticated", "not_authenticated")}
    ]
    assert hub.subscriptions_count() == 0


# -- the indexes follow the connections -----------------------------------------------------------


def test_a_closed_connection_leaves_every_channel(h, hub):
    a, _ = join(h, hub, "alice")
    b, _ = join(h, hub, "bob")
    for channel in ("c1", "c2"):
        sub(a, channel)
        sub(b, channel)
    a.eof()
    assert (hub.subscriptions_count(), hub.channels_count()) == (2, 2)
    b.eof()
    assert (hub.subscriptions_count(), hub.channels_count()) == (0, 0)


def test_publish_takes_a_scope(h, hub):
    from agentcast.protocol import ChatMessage

    a, _ = join(h, hub, "alice")
    join(h, hub, "bob")
    item = ChatMessage(conversation_id="c", message_id="m", content="x", sender="s")
    assert hub.publish(item, scope=Scope.of(user_ids=["alice"]), **W).delivered == 1
    assert contents(a) == ["x"]


def test_a_scoped_broadcast_does_no_work_for_connections_outside_it(h, monkeypatch):
    """1,000 connections, 10 of them subscribed: the hub queues 10 messages and looks
    at no other connection (the indexes by channel and by user)."""
    import agentcast.protocol.hub as hub_module
    from agentcast.protocol.session import Session

    hub = Hub(Settings(max_connections=None, max_connections_per_ip=None, connection_rate=None))
    subscribed = []
    for i in range(1_000):
        pair, _ = h.connect(hub, f"u{i % 200}")
        if i % 100 == 0:
            sub(pair, "room:1")
            subscribed.append(pair)
    checked: list[object] = []
    queued: list[object] = []
    receives = hub_module.receives
    deliver = Session.deliver

    def counting_receives(*args: Any) -> bool:
        checked.append(args)
        return receives(*args)

    def counting_deliver(self: Session, *args: Any) -> bool:
        queued.append(self)
        return deliver(self, *args)

    monkeypatch.setattr(hub_module, "receives", counting_receives)
    monkeypatch.setattr(Session, "deliver", counting_deliver)
    assert chat(hub, "x", channel="room:1").delivered == 10
    assert len(queued) == 10
    queued.clear()
    assert chat(hub, "y", user_ids=["user_u1", "user_u2"]).delivered == 10  # 5 tabs each
    assert len(queued) == 10
    queued.clear()
    # both: the smaller side is walked and checked against the rule (2 users' 10 tabs,
    # of which 0 are subscribed: u0 and u100's tabs are, u1's and u2's are not)
    assert chat(hub, "w", user_ids=["user_u1", "user_u2"], channel="room:1").delivered == 0
    assert (len(checked), len(queued)) == (10, 0)
    checked.clear()
    assert chat(hub, "v", user_ids=["user_u0"], channel="room:1").delivered == 5
    assert (len(checked), len(queued)) == (5, 5)
    queued.clear()
    assert chat(hub, "z").delivered == 1_000
    assert len(queued) == 1_000


def test_a_refresh_verdict_that_allows_keeps_the_subscription(h):
    later = LaterAuthorizer()
    verdicts: list[bool] = [True]

    def authorizer(identity: Identity, channel: str) -> bool | PendingVerdict:
        return verdicts.pop(0) if verdicts else later(identity, channel)

    hub = Hub(authorizer=authorizer)
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    refresh(a, "alice")
    later.pending["room:1"].complete(True, now=0.0, wall=0.0)
    assert a.messages() == []
    assert chat(hub, "kept", channel="room:1").delivered == 1


def test_a_refresh_verdict_after_unsubscribe_or_close_is_ignored(h):
    later = LaterAuthorizer()
    verdicts: list[bool] = [True, True]

    def authorizer(identity: Identity, channel: str) -> bool | PendingVerdict:
        return verdicts.pop(0) if verdicts else later(identity, channel)

    hub = Hub(authorizer=authorizer)
    a, _ = join(h, hub, "alice")
    sub(a, "room:1")
    sub(a, "room:2")
    refresh(a, "alice")
    sub(a, "room:1", "unsubscribe")  # the client left before the verdict
    later.pending["room:1"].complete(False, now=0.0, wall=0.0)
    assert a.messages() == []
    a.eof()  # and the connection is gone before the other one
    later.pending["room:2"].complete(False, now=0.0, wall=0.0)
    assert (hub.subscriptions_count(), hub.channels_count()) == (0, 0)


def test_publish_refuses_a_notification_user_id_with_an_audience(hub):
    from agentcast.protocol import Notification

    item = Notification(level="info", message="m", user_id="alice")
    with pytest.raises(ValueError, match="userId or userIds, not both"):
        hub.publish(item, scope=Scope.of(user_ids=["bob"]), **W)


class Member:
    """A hub member that is not a Session."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.presence = "online"
        self.subscriptions: dict[str, None] = {}
        self.got: list[Any] = []

    def deliver(self, message: Any, now: float, wall: float, *, counted: bool = True) -> bool:
        self.got.append(message)
        return True


def test_the_subscription_index_is_idempotent(hub):
    member = Member("alice")
    hub.open_session(member, 0.0, 0.0)
    member.subscriptions["c"] = None
    hub.add_subscription(member, "c")
    hub.add_subscription(member, "c")
    assert (hub.subscriptions_count(), hub.subscribers("c")) == (1, 1)
    hub.remove_subscription(member, "c")
    hub.remove_subscription(member, "c")
    hub.remove_subscription(member, "never")
    assert (hub.subscriptions_count(), hub.channels_count(), hub.subscribers("c")) == (0, 0, 0)
