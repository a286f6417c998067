"""Scopes hold on every delivery path (PROTOCOL.md 4a): guards for code not written yet.

A broadcast reaches connections in exactly one place, the hub's fan-out, whose recipients
are exactly the connections the scope rule (``protocol/scope.py: receives``) admits (a
test below compares the two). These tests fail when a
new delivery path appears that bypasses it: a new public method of the hub that is not
classified below, or a call that queues a message on a session from anywhere else. The
Redis backplane (messages from other processes) and resume replays must go through the
fan-out, or through ``receives`` with the message's own scope, and be added here with a
test that the scope holds.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

import agentcast.adapters
import agentcast.protocol
from agentcast.protocol import Hub, Identity
from agentcast.protocol.scope import EVERYONE, Scope, receives

W = {"now": 0.0, "wall": 0.0}

#: Every public attribute of Hub, and whether it delivers broadcasts. A method that
#: delivers must take a scope (``user_ids=``/``channel=``, or ``scope=``) and appear in
#: DELIVERY_CALLS below, so that a test shows its scope holding.
HUB_PUBLIC: dict[str, bool] = {
    "broadcast_agent_status": True,
    "broadcast_chat_message": True,
    "send_notification": True,
    "publish": True,
    "deliver_local": True,  # the backplane's way in: the scope travels with the message
    "open_session": False,  # presence_state to the new session itself (section 4)
    "close_session": False,  # presence changes: user_presence goes to everyone
    "presence_changed": False,  # likewise
    "add_subscription": False,
    "remove_subscription": False,
    "clients_count": False,
    "authenticated_clients_count": False,
    "subscriptions_count": False,
    "channels_count": False,
    "subscribers": False,
    "authorize": False,
    "presence": False,
    "next_deadline": False,
    "handle_timer": False,  # presence changes: user_presence goes to everyone (section 4)
    "on_deadline": False,  # the adapter's callback: the hub needs waking
    "publishing_batch": False,  # marks a batch step; each publish in it has its scope
    "batch": False,
    # A resume replays kept messages, each through `receives` with its own scope
    # (test_a_replay_keeps_each_message_s_scope below); `history` only keeps them.
    "resume": False,
    # Likewise a subscribe with since: the kept messages of one channel, each through
    # `receives` (test_a_channel_replay_keeps_each_message_s_scope below).
    "replay_channel": False,
    "history": False,
    "settings": False,
    "stats": False,
    "admission": False,
    "accepting": False,  # the accept() back-off and its counters: delivers nothing
    "authorizer": False,
    "health": False,  # the body of /healthz
    "presence_step": False,  # a number: how many connections a presence step reaches
    # The agent_state snapshot's store: it delivers nothing itself; open_session queues
    # its snapshot, built through the scope rule (test_the_agent_state_snapshot_keeps_...).
    "agent_states": False,
}

#: Where a message may be queued on a session: the hub's fan-out (broadcasts, through the
#: scope rule) and the session's own answers to its client.
ALLOWED_DELIVERY_SITES = {
    ("protocol/hub.py", "_fan_out"),  # broadcasts, through the scope rule
    # presence_state and agent_state, to the new session only; the agent_state snapshot
    # holds only statuses whose scope admits that session (tests below).
    ("protocol/hub.py", "open_session"),
    # a resume, or a subscribe with since: kept messages through `receives`
    ("protocol/hub.py", "_replay"),
    ("protocol/hub.py", "resume"),  # the `resume` answer after it, to that session only
    ("protocol/session.py", "_send"),  # the session's answers to its own client
}
DELIVERY_METHODS = {"_deliver", "deliver"}


def test_every_public_hub_attribute_is_classified():
    public = {name for name in dir(Hub) if not name.startswith("_")}
    public |= {name for name in vars(Hub()) if not name.startswith("_")}
    unknown = sorted(public - set(HUB_PUBLIC))
    assert not unknown, (
        f"new public Hub attributes {unknown}: if one delivers messages, it must apply "
        "the scope rule (PROTOCOL.md 4a); classify it in HUB_PUBLIC and test its scope"
    )


def test_every_delivering_hub_method_takes_a_scope():
    for name, delivers in HUB_PUBLIC.items():
        if not delivers:
            continue
        parameters = inspect.signature(getattr(Hub, name)).parameters
        assert "scope" in parameters or {"user_ids", "channel"} <= set(parameters), name


def _hub_with_three_connections(h, hub=None):
    hub = Hub() if hub is None else hub
    inside, _ = h.connect(hub, "alice")
    inside.send_json({"type": "subscribe", "data": {"channel": "room:1"}})
    other_user, _ = h.connect(hub, "bob")
    other_user.send_json({"type": "subscribe", "data": {"channel": "room:1"}})
    unsubscribed, _ = h.connect(hub, "alice")
    for pair in (inside, other_user, unsubscribed):
        pair.messages()
    return hub, inside, (other_user, unsubscribed)


DELIVERY_CALLS = {
    "broadcast_agent_status": lambda hub, **s: hub.broadcast_agent_status("a", "idle", **W, **s),
    "broadcast_chat_message": lambda hub, **s: hub.broadcast_chat_message(
        "c", "m", "x", "s", **W, **s
    ),
    "send_notification": lambda hub, **s: hub.send_notification("info", "m", **W, **s),
    "publish": lambda hub, **s: hub.publish(
        agentcast.protocol.Notification(level="info", message="m"),
        scope=Scope.of(**s),
        **W,
    ),
    "deliver_local": lambda hub, **s: hub.deliver_local(
        agentcast.protocol.Notification(level="info", message="m"),
        "00000000000000ff",
        scope=Scope.of(**s),
        **W,
    ),
}


@pytest.mark.parametrize("name", [n for n, d in HUB_PUBLIC.items() if d])
def test_every_delivering_hub_method_keeps_the_scope(h, name):
    hub, inside, outside = _hub_with_three_connections(h)
    published = DELIVERY_CALLS[name](hub, user_ids=["user_alice"], channel="room:1")
    assert published.delivered == 1
    assert len(inside.messages()) == 1
    for pair in outside:
        assert pair.messages() == []


def _delivery_sites(root: Path) -> list[tuple[str, str, int]]:
    """Every call of ``x._deliver(...)``/``x.deliver(...)`` under *root*: (file, function,
    line)."""
    sites = []
    base = root.parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in DELIVERY_METHODS
                ):
                    rel = path.relative_to(base).as_posix()
                    sites.append((rel, func.name, node.lineno))
    return sites


class _Link:
    """The adapter side of a ClusterHub, enough to open sessions."""

    def publish(self, item, *, now, wall, scope=EVERYONE):
        raise AssertionError("not published here")

    def local_status_changed(self, user_id, status):
        pass

    def cluster_presence(self):
        return {}

    def health(self):
        return {}


def test_messages_from_other_processes_keep_their_scope(h):
    """The backplane's way in (``ClusterHub.deliver_entry``): the scope travels in the
    stream entry, comes back on the prepared message, and the fan-out applies it."""
    from dataclasses import replace

    from agentcast.protocol.cluster import decode_entry, encode_entry, message_entry
    from agentcast.protocol.cluster_hub import ClusterHub

    hub = ClusterHub(None, _Link())
    hub, inside, outside = _hub_with_three_connections(h, hub)
    scope = Scope.of(user_ids=["user_alice"], channel="room:1")
    item = agentcast.protocol.Notification(level="info", message="m")
    entry = message_entry(item, origin="elsewhere", wall=0.0, scope=scope)
    entry = decode_entry(encode_entry(replace(entry, ref=1)))  # as read from Redis
    assert hub.deliver_entry(entry, "0000000000001-000000-000000", 0.0, 0.0) == 1
    assert len(inside.messages()) == 1
    for pair in outside:
        assert pair.messages() == []


def test_messages_reach_sessions_only_through_the_fan_out():
    protocol_root = Path(agentcast.protocol.__file__).parent
    adapters_root = Path(agentcast.adapters.__file__).parent
    sites = _delivery_sites(protocol_root) + _delivery_sites(adapters_root)
    assert {(f, fn) for f, fn, _ in sites if f.startswith("protocol/")} >= {
        ("protocol/hub.py", "_fan_out")
    }
    stray = [s for s in sites if (s[0], s[1]) not in ALLOWED_DELIVERY_SITES]
    assert not stray, (
        f"messages queued on sessions outside the hub's fan-out: {stray}. A broadcast "
        "must keep its scope (PROTOCOL.md 4a): go through Hub._fan_out, or check "
        "scope.receives(message.scope, ...) and add the site here with a test"
    )


def test_a_broadcast_carries_its_scope(h):
    """The scope travels with the prepared message (not in its text), so whatever keeps
    or forwards a message (history, another process) has it at hand."""
    hub = Hub()
    pair, _ = h.connect(hub, "alice")
    pair.messages()
    scope = Scope.of(user_ids=["user_alice"])
    hub.send_notification("info", "m", user_ids=["user_alice"], **W)
    [message] = pair.server.session._sink.outbox.take_messages()
    assert message.scope == scope
    assert "user_alice" not in message.text


def test_receives_is_the_rule_the_hub_applies(h):
    """Over every combination of the three connections' users and subscriptions and a
    set of scopes, the hub delivers exactly to the connections ``receives`` admits."""
    hub, inside, outside = _hub_with_three_connections(h)
    pairs = [inside, *outside]
    sessions = {id(p): p.server.session for p in pairs}
    scopes = [
        EVERYONE,
        Scope.of(user_ids=["user_alice"]),
        Scope.of(user_ids=["user_bob", "user_x"]),
        Scope.of(channel="room:1"),
        Scope.of(channel="room:2"),
        Scope.of(user_ids=["user_alice"], channel="room:1"),
        Scope.of(user_ids=["user_bob"], channel="room:1"),
    ]
    for scope in scopes:
        expected = [
            p
            for p in pairs
            if receives(scope, sessions[id(p)].user_id, sessions[id(p)].subscriptions)
        ]
        item = agentcast.protocol.Notification(level="info", message="m")
        assert hub.publish(item, scope=scope, **W).delivered == len(expected)
        got = [p for p in pairs if p.messages()]
        assert got == expected, scope


def test_an_identity_defaults_to_every_channel():
    """An application's own authenticator that knows nothing of channels keeps the
    seed's openness; restricting is the authenticator's (or authorizer's) decision."""
    assert Identity(user_id="u").channels.allows("any:channel")


def test_a_replay_keeps_each_message_s_scope(h):
    """A resume replays a kept message to exactly the connections ``receives`` admits for
    that message's own scope, as the live fan-out would have."""
    hub = Hub()
    seen = hub.broadcast_chat_message("c", "m", "before", "s", **W).id
    scopes = [
        EVERYONE,
        Scope.of(user_ids=["user_alice"]),
        Scope.of(user_ids=["user_bob"]),
        Scope.of(channel="room:1"),
        Scope.of(channel="room:2"),
        Scope.of(user_ids=["user_alice"], channel="room:1"),
    ]
    ids = {
        hub.publish(
            agentcast.protocol.Notification(level="info", message="m"), scope=scope, **W
        ).id: scope
        for scope in scopes
    }
    for user, channels in [("alice", "room:1"), ("bob", "room:1"), ("alice", None)]:
        query = f"token={user}&since={seen}" + (f"&channels={channels}" if channels else "")
        pair = h.Pair(hub)
        messages = pair.handshake(f"/ws?{query}")
        session = pair.server.session
        replayed = [m["id"] for m in messages if m["type"] == "notification"]
        expected = [
            i for i, s in ids.items() if receives(s, session.user_id, session.subscriptions)
        ]
        assert replayed == expected, (user, channels)
        [resume] = [m for m in messages if m["type"] == "resume"]
        assert resume["data"] == {"complete": True, "replayed": len(expected)}


def test_a_channel_replay_keeps_each_message_s_scope(h):
    """A subscribe with since replays a kept message of that channel to exactly the
    connections ``receives`` admits for the message's own scope, and nothing of any
    other scope: the rest it received live, or was never meant to."""
    hub = Hub()
    seen = hub.broadcast_chat_message("c", "m", "before", "s", **W).id
    scopes = [
        EVERYONE,
        Scope.of(user_ids=["user_alice"]),
        Scope.of(user_ids=["user_bob"]),
        Scope.of(channel="room:1"),
        Scope.of(channel="room:2"),
        Scope.of(user_ids=["user_alice"], channel="room:1"),
        Scope.of(user_ids=["user_bob"], channel="room:1"),
    ]
    ids = {
        hub.publish(
            agentcast.protocol.Notification(level="info", message="m"), scope=scope, **W
        ).id: scope
        for scope in scopes
    }
    for user, held in [("alice", None), ("bob", None), ("alice", "room:2")]:
        query = f"token={user}" + (f"&channels={held}" if held else "")
        pair = h.Pair(hub)
        pair.handshake(f"/ws?{query}")
        pair.send_json({"type": "subscribe", "data": {"channel": "room:1", "since": seen}})
        messages = pair.messages()
        session = pair.server.session
        replayed = [m["id"] for m in messages if m["type"] == "notification"]
        expected = [
            i
            for i, s in ids.items()
            if s.channel == "room:1" and receives(s, session.user_id, session.subscriptions)
        ]
        assert replayed == expected, (user, held)
        assert messages[-1]["data"] == {
            "channel": "room:1",
            "complete": True,
            "replayed": len(expected),
        }


def test_the_agent_state_snapshot_keeps_the_scope(h):
    """The snapshot a new connection receives is a delivery path too: a status is in it
    only for the connections that would have received the status itself."""
    hub, inside, outside = _hub_with_three_connections(h)
    hub.broadcast_agent_status("public", "idle", **W)
    hub.broadcast_agent_status("scoped", "working", user_ids=["user_alice"], channel="room:1", **W)
    for pair in (inside, *outside):
        session = pair.server.session
        message = hub.agent_states.snapshot(session.user_id, session.subscriptions, 0.0, 0.0)
        names = [a["agentName"] for a in json.loads(message.text)["data"]["agents"]]
        assert names == (["public", "scoped"] if pair is inside else ["public"])


def test_receives_is_the_rule_the_agent_state_snapshot_applies():
    """Over every combination of users, subscriptions and a set of scopes, a status is
    in a connection's snapshot exactly when ``receives`` admits its scope."""
    hub = Hub()
    scopes = [
        EVERYONE,
        Scope.of(user_ids=["alice"]),
        Scope.of(user_ids=["bob", "x"]),
        Scope.of(channel="room:1"),
        Scope.of(channel="room:2"),
        Scope.of(user_ids=["alice"], channel="room:1"),
        Scope.of(user_ids=["bob"], channel="room:1"),
    ]
    for index, scope in enumerate(scopes):
        hub.publish(
            agentcast.protocol.AgentStatus(agent_name=f"a{index}", state="idle"),
            scope=scope,
            **W,
        )
    for user in ("alice", "bob", "carol"):
        for subscriptions in ((), ("room:1",), ("room:2",), ("room:1", "room:2")):
            agents = hub.agent_states.agents(user, subscriptions, 0.0)
            expected = [
                f"a{i}" for i, scope in enumerate(scopes) if receives(scope, user, subscriptions)
            ]
            assert [a["agentName"] for a in agents] == expected, (user, subscriptions)
