"""PROTOCOL.md section 4a, the pure parts: channel names, scopes, the delivery rule,
what an identity may subscribe to, and the decoding of ``subscribe``/``unsubscribe``."""

from __future__ import annotations

import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol import DevAuthenticator, Identity, StaticAuthenticator
from agentcast.protocol.errors import LocalProtocolError
from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet, make_dev_token
from agentcast.protocol.messages import (
    INVALID_CHANNEL,
    INVALID_FORMAT,
    NOT_ALLOWED,
    ErrorCode,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    forbidden_channel,
    too_many_subscriptions,
)
from agentcast.protocol.scope import (
    ALL_CHANNELS,
    EVERYONE,
    NO_CHANNELS,
    ChannelGrant,
    PendingVerdict,
    Scope,
    is_channel,
    parse_user_ids,
    receives,
    split_scope,
    validate_channel,
)

SECRET = "s" * 32
WALL = 1_766_754_000.0

# -- channel names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "conversation:conv-123",
        "agent:CLOUD_ASSISTANT",
        "a",
        "x" * 128,
        "team/room.1@host:8080_-",
    ],
)
def test_valid_channel_names(name):
    assert is_channel(name)
    assert validate_channel(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 129, "has space", "star*", "ümlaut", "tab\t", "new\nline", "a,b", None, 5, ["a"]],
)
def test_invalid_channel_names(name):
    assert not is_channel(name)
    with pytest.raises(ValueError, match="channel must be 1 to 128 characters"):
        validate_channel(name)


@given(st.text(max_size=140))
def test_channel_rule_is_exactly_the_alphabet_and_length(name):
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@/-")
    assert is_channel(name) == (1 <= len(name) <= 128 and set(name) <= allowed)


# -- scopes and the delivery rule ---------------------------------------------------------


def test_scope_of_nothing_is_everyone():
    assert Scope.of() is EVERYONE
    assert EVERYONE.everyone
    assert not Scope.of(channel="c").everyone


def test_scope_of_a_single_user_id_is_a_one_element_audience():
    assert Scope.of(user_id="alice") == Scope(frozenset({"alice"}), None)


def test_scope_refuses_user_id_and_user_ids_together():
    with pytest.raises(ValueError, match="userId or userIds, not both"):
        Scope.of(user_id="alice", user_ids=["bob"])


def test_scope_validates_the_channel():
    with pytest.raises(ValueError, match="channel must be"):
        Scope.of(channel="no spaces")


def test_scope_to_data_is_the_publish_form():
    assert Scope.of(user_ids=["b", "a", "b"], channel="c").to_data() == {
        "userIds": ["a", "b"],
        "channel": "c",
    }
    assert EVERYONE.to_data() == {}


@pytest.mark.parametrize(
    ("scope", "user", "subscriptions", "expected"),
    [
        # the seed's rule: every authenticated connection, never an unauthenticated one
        (EVERYONE, "alice", set(), True),
        (EVERYONE, None, set(), False),
        (EVERYONE, None, {"c"}, False),
        # an audience
        (Scope.of(user_ids=["alice", "bob"]), "alice", set(), True),
        (Scope.of(user_ids=["alice", "bob"]), "carol", set(), False),
        (Scope.of(user_ids=["alice"]), None, set(), False),
        # a channel
        (Scope.of(channel="c"), "alice", {"c"}, True),
        (Scope.of(channel="c"), "alice", {"d"}, False),
        (Scope.of(channel="c"), "alice", set(), False),
        (Scope.of(channel="c"), None, {"c"}, False),
        # both: the subscribed connections of those users
        (Scope.of(user_ids=["alice"], channel="c"), "alice", {"c"}, True),
        (Scope.of(user_ids=["alice"], channel="c"), "alice", {"d"}, False),
        (Scope.of(user_ids=["alice"], channel="c"), "bob", {"c"}, False),
    ],
)
def test_the_delivery_rule(scope, user, subscriptions, expected):
    assert receives(scope, user, subscriptions) is expected


users = st.sampled_from(["alice", "bob", "carol"])
channels = st.sampled_from(["c1", "c2", "c3"])


@given(
    st.none() | st.frozensets(users, min_size=1),
    st.none() | channels,
    st.none() | users,
    st.frozensets(channels),
)
def test_the_delivery_rule_is_the_conjunction_of_both_scopes(ids, channel, user, subs):
    scope = Scope.of(user_ids=ids, channel=channel)
    by_audience = receives(Scope.of(user_ids=ids), user, subs)
    by_channel = receives(Scope.of(channel=channel), user, subs)
    assert receives(scope, user, subs) == (by_audience and by_channel)
    assert receives(scope, user, subs) == (
        user is not None and (ids is None or user in ids) and (channel is None or channel in subs)
    )


# -- audiences -------------------------------------------------------------------------------


def test_user_ids_are_deduplicated():
    assert parse_user_ids(["a", "b", "a"]) == frozenset({"a", "b"})
    assert parse_user_ids({"a"}) == frozenset({"a"})
    # the limit is on the list as given: 1,001 entries are refused even if they repeat
    with pytest.raises(ValueError, match="1 to 1,000"):
        parse_user_ids(("a",) * 1001)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "must name 1 to 1,000 users"),
        ([f"u{i}" for i in range(1001)], "must name 1 to 1,000 users"),
        ("alice", "must be a list of user ids"),
        (b"alice", "must be a list of user ids"),
        (None, "must be a list of user ids"),
        (5, "must be a list of user ids"),
        ({"a": 1}, "must be a list of user ids"),
        ([""], "non-empty strings"),
        ([5], "non-empty strings"),
        (["x" * 257], "longer than 256"),
        (["\ud800"], "not valid Unicode"),
    ],
)
def test_user_ids_validation(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_user_ids(value)


def test_exactly_1000_user_ids_are_accepted():
    assert len(parse_user_ids([f"u{i}" for i in range(1000)])) == 1000


# -- the publish API's scope fields ----------------------------------------------------------


def test_split_scope_takes_the_fields_out():
    item = {"agentName": "a", "state": "idle", "userIds": ["u1"], "channel": "agent:a"}
    rest, scope = split_scope(item)
    assert rest == {"agentName": "a", "state": "idle"}
    assert scope == Scope(frozenset({"u1"}), "agent:a")


def test_split_scope_leaves_an_unscoped_item_alone():
    item = {"level": "info", "message": "m", "userId": "u"}
    rest, scope = split_scope(item)
    assert rest is item
    assert scope is EVERYONE
    assert split_scope([1]) == ([1], EVERYONE)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"userIds": [], "level": "info", "message": "m"}, "userIds must name 1 to 1,000"),
        ({"userIds": "u", "level": "info", "message": "m"}, "userIds must be a list"),
        ({"channel": "", "level": "info", "message": "m"}, "channel must be 1 to 128"),
        ({"channel": None, "level": "info", "message": "m"}, "channel must be 1 to 128"),
        (
            {"userId": "a", "userIds": ["b"], "level": "info", "message": "m"},
            "userId or userIds, not both",
        ),
    ],
)
def test_split_scope_refuses_bad_fields(item, reason):
    with pytest.raises(ValueError, match=reason):
        split_scope(item)


# -- grants: what an identity may subscribe to ---------------------------------------------


def test_grant_exact_names_and_prefix_patterns():
    grant = ChannelGrant.parse(["agent:CLOUD", "conversation:team-*"])
    assert grant.allows("agent:CLOUD")
    assert not grant.allows("agent:CLOUDY")
    assert grant.allows("conversation:team-1")
    assert grant.allows("conversation:team-")
    assert not grant.allows("conversation:other")
    assert not grant.allows("conversation:team")


def test_grant_star_alone_is_everything():
    assert ChannelGrant.parse(["*"]) == ALL_CHANNELS
    assert ChannelGrant.parse(["*"]).allows("anything")


def test_grant_none_and_all():
    assert not NO_CHANNELS.allows("c")
    assert ALL_CHANNELS.allows("c")
    assert ChannelGrant.parse([]) == NO_CHANNELS


@pytest.mark.parametrize(
    "claim",
    ["conversation:*", None, 5, {"a": 1}, [5], ["bad name"], ["a**"], ["*a"], ["x" * 129]],
)
def test_grant_refuses_what_is_not_a_list_of_names_and_patterns(claim):
    with pytest.raises(ValueError, match="channels"):
        ChannelGrant.parse(claim)


def test_dev_identity_may_subscribe_to_everything():
    identity = DevAuthenticator().authenticate("abc", WALL)
    assert isinstance(identity, Identity)
    assert identity.channels.allows("conversation:anything")


def test_static_table_allows_everything_unless_configured():
    plain = StaticAuthenticator({"t1": "alice"}).authenticate("t1", WALL)
    assert isinstance(plain, Identity)
    assert plain.channels == ALL_CHANNELS
    table = StaticAuthenticator(
        {"t1": "alice", "t2": "bob"}, channels={"alice": ["room:a*", "lobby"]}
    )
    alice = table.authenticate("t1", WALL)
    bob = table.authenticate("t2", WALL)
    assert isinstance(alice, Identity)
    assert isinstance(bob, Identity)
    assert alice.channels.allows("room:a1")
    assert alice.channels.allows("lobby")
    assert not alice.channels.allows("room:b1")
    assert bob.channels == NO_CHANNELS  # configured, and bob is not listed


def test_static_table_refuses_a_bad_channel_configuration():
    with pytest.raises(ValueError, match="channels of alice"):
        StaticAuthenticator({"t": "alice"}, channels={"alice": ["no spaces"]})
    with pytest.raises(ValueError, match="channels of alice"):
        StaticAuthenticator({"t": "alice"}, channels={"alice": "room:*"})


def _jwt(claims: dict[str, object]) -> str:
    return jwt.encode({"sub": "alice", "exp": WALL + 60, **claims}, SECRET, algorithm="HS256")


def test_jwt_channels_claim():
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    identity = auth.authenticate(_jwt({"channels": ["conversation:team-*"]}), WALL)
    assert isinstance(identity, Identity)
    assert identity.channels.allows("conversation:team-1")
    assert not identity.channels.allows("conversation:other")


def test_jwt_without_channels_claim_may_subscribe_to_nothing():
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    identity = auth.authenticate(_jwt({}), WALL)
    assert isinstance(identity, Identity)
    assert identity.channels == NO_CHANNELS


@pytest.mark.parametrize("claim", ["conversation:*", None, [1], ["bad name"], {"a": 1}])
def test_jwt_with_a_malformed_channels_claim_is_refused(claim):
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    result = auth.authenticate(_jwt({"channels": claim}), WALL)
    assert not isinstance(result, Identity)
    assert result.reason == "invalid claim: channels"


def test_jwt_channels_claim_name_is_configurable():
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET), channels_claim="ac/ch")
    identity = auth.authenticate(_jwt({"ac/ch": ["lobby"], "channels": ["*"]}), WALL)
    assert isinstance(identity, Identity)
    assert identity.channels.allows("lobby")
    assert not identity.channels.allows("other")  # the default claim name is not read
    with pytest.raises(ValueError, match="channels_claim"):
        JwtAuthenticator(JwtKeySet.from_secret(SECRET), channels_claim="")


def test_dev_token_carries_the_channels_claim():
    token = make_dev_token(SECRET, "alice", 60, WALL, channels=["conversation:team-*"])
    assert jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})[
        "channels"
    ] == ["conversation:team-*"]
    with pytest.raises(ValueError, match="not a channel or a pattern"):
        make_dev_token(SECRET, "alice", 60, WALL, channels=["bad name"])


# -- a verdict that comes later ------------------------------------------------------------


def test_pending_verdict_calls_its_waiters_once():
    verdict = PendingVerdict()
    seen: list[tuple[bool, float, float]] = []
    verdict.add_waiter(lambda ok, now, wall: seen.append((ok, now, wall)))
    assert not verdict.done
    assert verdict.allowed is None
    verdict.complete(True, now=1.0, wall=2.0)
    assert seen == [(True, 1.0, 2.0)]
    assert verdict.done
    assert verdict.allowed is True
    with pytest.raises(LocalProtocolError):
        verdict.complete(False, now=1.0, wall=2.0)
    with pytest.raises(LocalProtocolError):
        verdict.add_waiter(lambda ok, now, wall: None)


# -- decoding subscribe / unsubscribe --------------------------------------------------------


def _decode(obj: object):
    return decode_client_message(json.dumps(obj))


def test_decode_subscribe_and_unsubscribe():
    assert _decode({"type": "subscribe", "data": {"channel": "c:1"}}) == Subscribe("c:1")
    assert _decode({"type": "unsubscribe", "data": {"channel": "c:1"}}) == Unsubscribe("c:1")
    # unknown fields do not make it invalid
    assert _decode({"type": "subscribe", "data": {"channel": "c", "x": 1}}) == Subscribe("c")


def test_decode_subscribe_with_since():
    since = "1766754000000-000000000042"
    message = {"type": "subscribe", "data": {"channel": "c", "since": since}}
    assert _decode(message) == Subscribe("c", since)
    # Any string: whether it is an id the history knows is the history's to judge.
    assert _decode({"type": "subscribe", "data": {"channel": "c", "since": ""}}) == Subscribe(
        "c", ""
    )
    # null is no since (a client that has seen nothing yet).
    assert _decode({"type": "subscribe", "data": {"channel": "c", "since": None}}) == Subscribe("c")
    # unsubscribe has no since: the field is ignored like any other
    assert _decode({"type": "unsubscribe", "data": {"channel": "c", "since": 5}}) == Unsubscribe(
        "c"
    )


@pytest.mark.parametrize("since", [42, 4.2, True, ["1-2"], {"id": "1-2"}])
def test_decode_subscribe_with_a_since_that_is_not_a_string(since):
    message = {"type": "subscribe", "data": {"channel": "c", "since": since}}
    assert _decode(message) == INVALID_FORMAT
    # the channel is judged first
    message = {"type": "subscribe", "data": {"channel": "a b", "since": since}}
    assert _decode(message) == INVALID_CHANNEL


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "subscribe"}, INVALID_FORMAT),
        ({"type": "subscribe", "data": "c"}, INVALID_FORMAT),
        ({"type": "unsubscribe", "data": ["c"]}, INVALID_FORMAT),
        ({"type": "subscribe", "data": {}}, INVALID_CHANNEL),
        ({"type": "subscribe", "data": {"channel": 5}}, INVALID_CHANNEL),
        ({"type": "subscribe", "data": {"channel": "a b"}}, INVALID_CHANNEL),
        ({"type": "unsubscribe", "data": {"channel": "x" * 129}}, INVALID_CHANNEL),
        ({"type": "subscribed", "data": {"channel": "c"}}, NOT_ALLOWED),
        ({"type": "unsubscribed", "data": {"channel": "c"}}, NOT_ALLOWED),
    ],
)
def test_decode_bad_subscriptions(obj, expected):
    assert _decode(obj) == expected


def test_subscription_errors_name_the_channel():
    assert INVALID_CHANNEL.to_data() == {"error": "Invalid channel name", "code": "invalid_channel"}
    assert forbidden_channel("c").to_data() == {
        "error": "Channel not allowed",
        "code": "forbidden_channel",
        "channel": "c",
    }
    too_many = too_many_subscriptions("c", 100)
    assert too_many.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
    assert too_many.to_data()["channel"] == "c"
    assert "100" in too_many.error


def test_grant_equality_hash_and_repr():
    a = ChannelGrant.parse(["x", "y*"])
    assert a == ChannelGrant.parse(["y*", "x"])
    assert hash(a) == hash(ChannelGrant.parse(["y*", "x"]))
    assert a != ChannelGrant.parse(["x"])
    assert a != ALL_CHANNELS
    assert a != ["x", "y*"]
    assert repr(a) == "ChannelGrant(names=['x'], prefixes=['y'])"
    assert repr(ALL_CHANNELS) == "ChannelGrant(everything=True)"
