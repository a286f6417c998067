"""The client's rules (``agentcast.protocol.client``), with explicit times and random values.

What a user of the Python client notices: where the token goes, that a reconnect resumes
from the last id it saw, which closes it reconnects after and which it stops at, how long
it waits, that its token is refreshed before it expires, that the heartbeat is answered.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol.client import (
    Backoff,
    ClientSession,
    Connected,
    Reconnect,
    Stop,
    close_decision,
    jwt_expiry,
)
from agentcast.protocol.client_messages import (
    AgentState,
    AgentStatus,
    AuthResult,
    ChatMessage,
    Error,
    Notification,
    Ping,
    Pong,
    PresenceState,
    Resume,
    Subscribed,
    Unknown,
    Unsubscribed,
    UserPresence,
    parse_server_message,
)
from agentcast.protocol.errors import LocalProtocolError

WALL0 = 1_800_000_000.0


def envelope(kind: str, data: object = None, message_id: str | None = None) -> str:
    obj: dict[str, object] = {"type": kind, "timestamp": "2026-01-01T00:00:00.000Z"}
    if data is not None:
        obj["data"] = data
    if message_id is not None:
        obj["id"] = message_id
    return json.dumps(obj)


def jwt(exp: float | None, sub: str = "user_1") -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims: dict[str, object] = {"sub": sub}
    if exp is not None:
        claims["exp"] = exp
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.signature"


def query_of(resource: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(resource).query))


AUTH_OK = envelope("auth", {"success": True, "userId": "user_1"})


def connected(session: ClientSession, now: float = 0.0) -> ClientSession:
    session.opened(now, WALL0 + now)
    session.receive_text(AUTH_OK, now, WALL0 + now)
    return session


# -- where the token and the resume point go ---------------------------------------------


def test_token_in_query_with_custom_path_and_other_parameters_kept():
    session = ClientSession("ws://example.com:8080/rt/socket?app=1&token=old", token="a b&c")
    target = session.target()
    assert (target.secure, target.host, target.port) == (False, "example.com", 8080)
    assert target.host_header == "example.com:8080"
    assert target.path == "/rt/socket"
    assert query_of(target.resource) == {"app": "1", "token": "a b&c"}
    assert target.headers == ()
    assert target.subprotocols == ()
    assert "a b&c" not in repr(target)


def test_token_already_in_the_url_is_kept_when_none_given():
    target = ClientSession("ws://h/ws?token=abc").target()
    assert query_of(target.resource) == {"token": "abc"}


def test_token_in_header_and_subprotocol_stay_out_of_the_url():
    header = ClientSession("wss://example.com/ws", token="t1", token_in="header").target()
    assert (header.secure, header.port, header.host_header) == (True, 443, "example.com")
    assert header.headers == (("Authorization", "Bearer t1"),)
    assert "t1" not in header.resource
    sub = ClientSession("ws://example.com/ws", token="t1", token_in="subprotocol").target()
    assert sub.subprotocols == ("agentcast.v1", "bearer.t1")
    assert "t1" not in sub.resource
    assert sub.headers == ()


def test_ipv6_host_header():
    target = ClientSession("ws://[::1]:3000/ws").target()
    assert (target.host, target.port, target.host_header) == ("::1", 3000, "[::1]:3000")


@pytest.mark.parametrize("url", ["http://h/ws", "h/ws", "ws:///ws"])
def test_only_ws_urls_with_a_host(url: str):
    with pytest.raises(ValueError, match=r"ws://|host"):
        ClientSession(url)


def test_a_reconnect_resumes_from_the_last_id_seen():
    session = ClientSession("ws://h/ws?since=stale", token="t", since="00a")
    assert query_of(session.target().resource)["since"] == "00a"
    connected(session)
    session.receive_text(envelope("chat_message", {}, "00b"), 1.0, WALL0)  # malformed: Unknown
    session.receive_text(envelope("user_presence", {"userId": "u", "status": "away"}, "00c"), 1, 0)
    session.receive_text(envelope("pong"), 1.0, WALL0)  # no id: the resume point stays
    assert session.last_id == "00c"
    decision = session.connection_lost(1001, "server shutting down", 2.0, 0.5)
    assert isinstance(decision, Reconnect)
    assert query_of(session.target().resource) == {"token": "t", "since": "00c"}


def test_first_connection_has_no_since():
    assert "since" not in ClientSession("ws://h/ws", token="t").target().resource


# -- messages ------------------------------------------------------------------------------


def test_json_ping_is_answered_with_pong_and_surfaced():
    session = connected(ClientSession("ws://h/ws"))
    session.texts_to_send()
    message = session.receive_text(envelope("ping"), 1.0, WALL0)
    assert isinstance(message, Ping)
    assert session.texts_to_send() == ['{"type":"pong"}']
    assert session.texts_to_send() == []


def test_typed_messages():
    chat = parse_server_message(
        envelope(
            "chat_message",
            {
                "conversationId": "c",
                "messageId": "m",
                "content": "hi",
                "sender": "bot",
                "timestamp": "2026-01-01T00:00:00.000Z",
            },
            "0001",
        )
    )
    assert chat == ChatMessage(
        conversation_id="c",
        message_id="m",
        content="hi",
        sender="bot",
        sent_at="2026-01-01T00:00:00.000Z",
        id="0001",
        timestamp="2026-01-01T00:00:00.000Z",
    )
    status = parse_server_message(
        envelope("agent_status", {"agentName": "a", "state": "working", "progress": 50}, "2")
    )
    assert status == AgentStatus(
        agent_name="a", state="working", progress=50, id="2", timestamp=chat.timestamp
    )
    assert parse_server_message(envelope("notification", {"level": "info", "message": "m"})) == (
        Notification(level="info", message="m", timestamp=chat.timestamp)
    )
    presence = parse_server_message(envelope("user_presence", {"userId": "u", "status": "busy"}))
    assert isinstance(presence, UserPresence)
    assert presence.status == "busy"
    state = parse_server_message(
        envelope("presence_state", {"users": [{"userId": "u", "status": "away"}]})
    )
    assert isinstance(state, PresenceState)
    assert state.users == {"u": "away"}
    agents = parse_server_message(
        envelope("agent_state", {"agents": [{"agentName": "a", "state": "idle"}]})
    )
    assert isinstance(agents, AgentState)
    assert agents.agents[0].agent_name == "a"
    resume = parse_server_message(envelope("resume", {"complete": True, "replayed": 3}))
    assert resume == Resume(complete=True, replayed=3, timestamp=chat.timestamp)
    error = parse_server_message(envelope("error", {"error": "Bad", "code": "invalid_format"}))
    assert error == Error(error="Bad", code="invalid_format", timestamp=chat.timestamp)
    failed = parse_server_message(envelope("auth", {"success": False, "error": "Bad token"}))
    assert failed == AuthResult(success=False, error="Bad token", timestamp=chat.timestamp)
    assert isinstance(parse_server_message(envelope("pong")), Pong)
    sub = parse_server_message(envelope("subscribed", {"channel": "c:1", "complete": False}))
    assert sub == Subscribed(channel="c:1", complete=False, timestamp=chat.timestamp)
    assert chat.raw["data"]["content"] == "hi"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("not json", ""),
        ("[1, 2]", ""),
        ('{"type": 3}', ""),
        ('{"type": "chat_message", "data": {"content": "no other fields"}}', "chat_message"),
        ('{"type": "agent_status", "data": {"agentName": "a", "state": "x", "progress": true}}',
         "agent_status"),
        ('{"type": "resume", "data": {"complete": "yes"}}', "resume"),
        ('{"type": "brand_new", "data": [1]}', "brand_new"),
    ],
)  # fmt: skip
def test_what_the_client_cannot_read_is_unknown(text: str, kind: str):
    message = parse_server_message(text)
    assert isinstance(message, Unknown)
    assert message.kind == kind


@given(st.text())
def test_parsing_never_raises(text: str):
    parse_server_message(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(
    st.sampled_from(
        ["auth", "ping", "pong", "agent_status", "chat_message", "notification",
         "user_presence", "presence_state", "agent_state", "resume", "error", "subscribed",
         "unsubscribed", "other"]
    ),
    json_values,
    json_values,
)  # fmt: skip
def test_any_data_of_any_type_is_read_without_raising(kind: str, data: object, mid: object):
    session = connected(ClientSession("ws://h/ws"))
    message = session.receive_text(json.dumps({"type": kind, "data": data, "id": mid}), 1, 0)
    assert message.id == (mid if isinstance(mid, str) else None)


def test_incomplete_resume_is_surfaced():
    session = connected(ClientSession("ws://h/ws", since="0005"))
    message = session.receive_text(envelope("resume", {"complete": False}), 1.0, WALL0)
    assert message == Resume(complete=False, timestamp="2026-01-01T00:00:00.000Z")


# -- close codes and back-off --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (None, "reconnect"),
        (1000, "stop"),
        (1001, "reconnect"),
        (1002, "stop"),
        (1005, "reconnect"),
        (1006, "reconnect"),
        (1007, "stop"),
        (1008, "stop"),
        (1009, "stop"),
        (1011, "reconnect"),
        (1012, "reconnect"),
        (1013, "reconnect"),
        (3000, "stop"),
        (4000, "reconnect"),
        (4001, "refresh"),
        (4499, "reconnect"),
        (4500, "stop"),
        (4999, "stop"),
    ],
)
def test_close_code_taxonomy(code: int | None, verdict: str):
    assert close_decision(code) == verdict


@given(st.integers(4000, 4499).filter(lambda c: c != 4001), st.integers(4500, 4999))
def test_private_ranges(reconnect: int, stop: int):
    assert close_decision(reconnect) == "reconnect"
    assert close_decision(stop) == "stop"


def test_stop_surfaces_code_and_reason_and_never_reconnects():
    session = connected(ClientSession("ws://h/ws"))
    decision = session.connection_lost(4501, "user revoked", 5.0, 0.3)
    assert decision == Stop(4501, "user revoked")
    assert session.stopped == decision
    with pytest.raises(LocalProtocolError):
        session.target()
    assert session.connect_failed("refused", 0.3) == decision


def test_policy_close_1008_stops():
    session = connected(ClientSession("ws://h/ws"))
    assert session.connection_lost(1008, "rate limit exceeded", 1.0, 0.0) == Stop(
        1008, "rate limit exceeded"
    )


def test_full_jitter_doubles_to_the_cap():
    backoff = Backoff()
    ceilings = []
    for _ in range(9):
        ceilings.append(backoff.next_delay(0.999999) / 0.999999)
    assert ceilings == pytest.approx([0.5, 1, 2, 4, 8, 16, 20, 20, 20])
    assert Backoff().next_delay(0.0) == 0.0
    assert Backoff(attempt=3).next_delay(0.5) == pytest.approx(2.0)


@given(st.integers(0, 10_000), st.floats(0, 1, exclude_max=True))
def test_delay_never_exceeds_the_cap(attempt: int, random: float):
    delay = Backoff(attempt=attempt).next_delay(random)
    assert 0 <= delay <= 20.0
    with pytest.raises(ValueError, match="random"):
        Backoff().next_delay(1.0)


def test_abnormal_close_reconnects_with_growing_delay():
    session = ClientSession("ws://h/ws")
    delays = []
    for i in range(4):
        connected(session, now=float(i))
        decision = session.connection_lost(None, "", float(i) + 1.0, 0.5)
        assert isinstance(decision, Reconnect)
        assert decision.code == 1006
        delays.append(decision.delay)
    assert delays == [0.25, 0.5, 1.0, 2.0]


def test_back_off_starts_over_after_a_stable_minute():
    session = ClientSession("ws://h/ws")
    for _ in range(5):
        session.connect_failed("refused", 0.5)
    assert session.backoff.attempt == 5
    connected(session, now=100.0)
    decision = session.connection_lost(1006, "", 159.999, 0.5)  # not yet a minute
    assert isinstance(decision, Reconnect)
    assert decision.delay == pytest.approx(8.0)
    connected(session, now=200.0)
    decision = session.connection_lost(1006, "", 260.0, 0.5)  # a stable minute
    assert isinstance(decision, Reconnect)
    assert decision.delay == pytest.approx(0.25)


def test_connected_event_counts_attempts_and_names_the_resume_point():
    session = ClientSession("ws://h/ws")
    assert session.opened(0, WALL0) == Connected(since=None, attempt=0)
    session.receive_text(envelope("notification", {"level": "info", "message": "m"}, "9"), 0, 0)
    session.connection_lost(1013, "client too slow", 1.0, 0.1)
    assert session.opened(2.0, WALL0) == Connected(since="9", attempt=1)


def test_token_expired_asks_the_provider_for_a_fresh_token():
    with_provider = connected(ClientSession("ws://h/ws", token="old", can_refresh=True))
    decision = with_provider.connection_lost(4001, "token expired", 1.0, 0.5)
    assert decision == Reconnect(0.25, 4001, "token expired", refresh_token=True)
    with_provider.set_token("new")
    assert query_of(with_provider.target().resource)["token"] == "new"
    # Without a provider the same expired token would be refused: stop, with the reason.
    without = connected(ClientSession("ws://h/ws", token="old"))
    assert without.connection_lost(4001, "token expired", 1.0, 0.5) == Stop(4001, "token expired")


@pytest.mark.parametrize(
    ("status", "provider", "verdict"),
    [
        (401, True, "refresh"),
        (401, False, "stop"),
        (403, True, "stop"),
        (404, False, "stop"),
        (429, False, "reconnect"),
        (503, False, "reconnect"),
    ],
)
def test_refused_handshake(status: int, provider: bool, verdict: str):
    session = ClientSession("ws://h/ws", can_refresh=provider)
    decision = session.handshake_refused(status, f"HTTP {status}", 0.5)
    if verdict == "stop":
        assert decision == Stop(None, f"HTTP {status}", status)
    else:
        assert isinstance(decision, Reconnect)
        assert decision.refresh_token is (verdict == "refresh")


def test_without_reconnect_every_end_stops():
    session = connected(ClientSession("ws://h/ws", reconnect=False))
    assert session.connection_lost(1001, "server shutting down", 1.0, 0.5) == Stop(
        1001, "server shutting down"
    )


def test_closed_by_the_application_never_reconnects():
    session = connected(ClientSession("ws://h/ws"))
    session.close()
    assert session.connection_lost(1000, "", 1.0, 0.5) == Stop(1000, "closed by the client")
    assert not session.connected


# -- token refresh, idle timeout, presence -------------------------------------------------


def test_jwt_expiry():
    assert jwt_expiry(jwt(WALL0 + 60)) == WALL0 + 60
    assert jwt_expiry(jwt(None)) is None
    assert jwt_expiry("abc123") is None
    assert jwt_expiry("a.!!!.c") is None
    assert jwt_expiry(f"a.{base64.urlsafe_b64encode(b'[1]').decode()}.c") is None


def test_refresh_is_due_the_margin_before_exp_and_sent_in_band():
    session = ClientSession("ws://h/ws", token=jwt(WALL0 + 3600), can_refresh=True)
    session.opened(10.0, WALL0)
    assert session.next_deadline() is None  # nothing scheduled before auth succeeds
    session.receive_text(AUTH_OK, 10.0, WALL0)
    assert session.next_deadline() == 10.0 + 3600 - 30
    assert session.handle_timer(3579.999) is None
    assert session.handle_timer(3580.0) == "refresh"
    assert session.handle_timer(3580.0) is None  # asked once
    fresh = jwt(WALL0 + 7200)
    session.texts_to_send()
    session.refresh(fresh, 3581.0, WALL0 + 3571)
    assert json.loads(session.texts_to_send()[0]) == {"type": "auth", "data": {"token": fresh}}
    assert session.next_deadline() is None  # waiting for the answer
    session.receive_text(AUTH_OK, 3581.1, WALL0 + 3571.1)
    assert session.next_deadline() == pytest.approx(3581.1 + (7200 - 3571.1) - 30)
    # the fresh token is also the next connection's
    assert query_of(session.target().resource)["token"] == fresh


def test_short_token_refreshes_at_half_its_remaining_life():
    session = ClientSession("ws://h/ws", token=jwt(WALL0 + 20), can_refresh=True)
    connected(session, now=0.0)
    assert session.next_deadline() == 10.0


def test_no_refresh_without_a_provider_or_exp():
    assert connected(ClientSession("ws://h/ws", token=jwt(WALL0 + 60))).next_deadline() is None
    no_exp = ClientSession("ws://h/ws", token=jwt(None), can_refresh=True)
    assert connected(no_exp).next_deadline() is None


def test_a_silent_server_is_presumed_gone():
    session = ClientSession("ws://h/ws", idle_timeout=90.0)
    connected(session, now=0.0)
    assert session.next_deadline() == 90.0
    session.touch(50.0)  # a protocol Ping from the server
    assert session.next_deadline() == 140.0
    assert session.handle_timer(139.999) is None
    assert session.handle_timer(140.0) == "abort"
    decision = session.connection_lost(None, "silent", 140.0, 0.5)
    assert isinstance(decision, Reconnect)
    assert decision.code == 1006


def test_presence_is_sent_and_restored_after_a_reconnect():
    session = ClientSession("ws://h/ws")
    session.set_presence("away")  # before the first connection: remembered
    connected(session)
    assert session.texts_to_send() == ['{"type":"user_presence","data":"away"}']
    session.set_presence("busy")
    assert session.texts_to_send() == ['{"type":"user_presence","data":"busy"}']
    session.connection_lost(1006, "", 1.0, 0.5)
    connected(session, now=2.0)
    assert session.texts_to_send() == ['{"type":"user_presence","data":"busy"}']
    with pytest.raises(ValueError, match="presence"):
        session.set_presence("gone")


def test_online_presence_is_not_repeated():
    session = ClientSession("ws://h/ws")
    session.set_presence("online")
    connected(session)
    assert session.texts_to_send() == []


def test_sending_needs_a_connection():
    session = ClientSession("ws://h/ws")
    with pytest.raises(LocalProtocolError):
        session.send_ping()
    connected(session)
    session.send_ping()
    session.send_json({"type": "user_presence", "data": "é"})
    assert session.texts_to_send() == [
        '{"type":"ping"}',
        '{"type":"user_presence","data":"é"}',
    ]


def test_token_placement_must_be_known():
    with pytest.raises(ValueError, match="token_in"):
        ClientSession("ws://h/ws", token_in="cookie")  # type: ignore[arg-type]


def test_before_and_between_connections_nothing_is_due():
    session = ClientSession("ws://h/ws", token="t", idle_timeout=10.0, can_refresh=True)
    assert session.token == "t"
    assert session.next_deadline() is None
    assert session.handle_timer(100.0) is None
    session.touch(5.0)
    # A message read after the connection ended changes nothing.
    message = session.receive_text(envelope("chat_message", {}, "0001"), 1.0, WALL0)
    assert message.id == "0001"
    assert session.last_id is None
    session.refresh("fresh", 1.0, WALL0)  # remembered for the next connection
    assert session.token == "fresh"
    assert session.texts_to_send() == []
    session.close()
    session.close()
    assert session.stopped == Stop(1000, "closed by the client")


def test_a_refused_refresh_waits_for_the_4001():
    session = ClientSession("ws://h/ws", token=jwt(WALL0 + 3600), can_refresh=True)
    connected(session, now=0.0)
    assert session.handle_timer(3570.0) == "refresh"
    session.refresh(jwt(WALL0 + 7200, sub="someone else"), 3570.0, WALL0 + 3570)
    refused = envelope("auth", {"success": False, "error": "Token is for another user"})
    message = session.receive_text(refused, 3570.1, WALL0 + 3570.1)
    assert isinstance(message, AuthResult)
    assert not message.success
    assert session.next_deadline() is None  # no retry on this connection
    decision = session.connection_lost(4001, "token expired", 3600.0, 0.5)
    assert isinstance(decision, Reconnect)
    assert decision.refresh_token


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("auth", {"success": True, "userId": 5}),
        ("auth", {"success": "yes"}),
        ("presence_state", {"users": {"u": "online"}}),
        ("resume", {"complete": True, "replayed": "3"}),
        ("resume", {"complete": True, "replayed": True}),
        ("subscribed", {"channel": "c", "complete": "no"}),
        ("unsubscribed", {"channel": 5}),
        ("agent_state", {"agents": "none"}),
    ],
)
def test_wrong_shapes_are_unknown(kind: str, data: object):
    message = parse_server_message(envelope(kind, data))
    assert isinstance(message, Unknown)
    assert message.kind == kind
    assert message.data == data


def test_unsubscribed():
    message = parse_server_message(envelope("unsubscribed", {"channel": "c:1"}))
    assert message == Unsubscribed(channel="c:1", timestamp="2026-01-01T00:00:00.000Z")


def test_a_refused_token_leaves_the_client_connected_unauthenticated():
    session = ClientSession("ws://h/ws", token=jwt(WALL0 + 3600), can_refresh=True)
    session.set_presence("away")
    session.opened(0.0, WALL0)
    refused = envelope("auth", {"success": False, "error": "Invalid token"})
    message = session.receive_text(refused, 0.0, WALL0)
    assert message == AuthResult(
        success=False, error="Invalid token", timestamp="2026-01-01T00:00:00.000Z"
    )
    assert session.connected
    assert session.next_deadline() is None  # no refresh scheduled for a refused token
    assert session.texts_to_send() == []  # and no presence: it is not authenticated


def test_channels_hold_across_reconnects_and_refused_ones_are_dropped():
    session = ClientSession("ws://h/ws?channels=room:1,%20room:2,,room:1", token="t")
    assert list(session.channels) == ["room:1", "room:2"]
    assert query_of(session.target().resource)["channels"] == "room:1,room:2"
    session.subscribe("room:3")  # not connected: only remembered
    session.unsubscribe("room:9")  # likewise
    connected(session)
    assert session.texts_to_send() == []
    session.subscribe("secret")
    session.unsubscribe("room:2")
    assert [json.loads(t) for t in session.texts_to_send()] == [
        {"type": "subscribe", "data": {"channel": "secret"}},
        {"type": "unsubscribe", "data": {"channel": "room:2"}},
    ]
    refused = {"error": "Channel not allowed", "code": "forbidden_channel", "channel": "secret"}
    message = session.receive_text(envelope("error", refused), 1.0, WALL0)
    assert message == Error(
        error="Channel not allowed",
        code="forbidden_channel",
        channel="secret",
        timestamp="2026-01-01T00:00:00.000Z",
    )
    session.receive_text(envelope("error", {"error": "Rate limit exceeded"}), 1.0, WALL0)
    session.connection_lost(1006, "", 2.0, 0.5)
    assert query_of(session.target().resource)["channels"] == "room:1,room:3"


def test_subscribed_after_since_says_whether_the_replay_was_complete():
    text = envelope("subscribed", {"channel": "c:1", "complete": True, "replayed": 3})
    assert parse_server_message(text) == Subscribed(
        channel="c:1", complete=True, replayed=3, timestamp="2026-01-01T00:00:00.000Z"
    )
    text = envelope("subscribed", {"channel": "c:1", "complete": False})
    assert parse_server_message(text) == Subscribed(
        channel="c:1", complete=False, timestamp="2026-01-01T00:00:00.000Z"
    )
    for replayed in ("3", True, 1.5):
        text = envelope("subscribed", {"channel": "c", "complete": True, "replayed": replayed})
        assert isinstance(parse_server_message(text), Unknown)


def texts(session: ClientSession) -> list[object]:
    return [json.loads(t) for t in session.texts_to_send()]


def test_subscribe_with_since_while_connected_is_sent_at_once():
    session = connected(ClientSession("ws://h/ws?channels=room:1", token="t"))
    session.subscribe("room:2", since="0001-0042")
    session.subscribe("room:3")
    assert texts(session) == [
        {"type": "subscribe", "data": {"channel": "room:2", "since": "0001-0042"}},
        {"type": "subscribe", "data": {"channel": "room:3"}},
    ]
    answer = {"channel": "room:2", "complete": True, "replayed": 2}
    session.receive_text(envelope("subscribed", answer), 1.0, WALL0)
    # Answered: from now on a channel like the others, in the URL of the next connection.
    session.connection_lost(1006, "", 2.0, 0.5)
    assert query_of(session.target().resource)["channels"] == "room:1,room:2,room:3"
    connected(session, 3.0)
    assert texts(session) == []


def test_subscribe_with_since_while_away_is_sent_after_the_next_auth_not_in_the_url():
    session = ClientSession("ws://h/ws?channels=room:1", token="t")
    session.subscribe("room:2", since="0001-0042")
    assert query_of(session.target().resource)["channels"] == "room:1"
    session.opened(0.0, WALL0)
    assert texts(session) == []  # not before auth
    session.receive_text(AUTH_OK, 0.0, WALL0)
    assert texts(session) == [
        {"type": "subscribe", "data": {"channel": "room:2", "since": "0001-0042"}}
    ]
    # Lost before the answer: asked again, with the same since, on the next connection.
    session.connection_lost(1006, "", 1.0, 0.5)
    assert query_of(session.target().resource)["channels"] == "room:1"
    connected(session, 2.0)
    assert texts(session) == [
        {"type": "subscribe", "data": {"channel": "room:2", "since": "0001-0042"}}
    ]
    # A refresh's auth answer asks nothing again.
    session.refresh("t2", 3.0, WALL0 + 3)
    session.texts_to_send()
    session.receive_text(AUTH_OK, 3.0, WALL0 + 3)
    assert texts(session) == []


def test_subscribe_with_since_before_auth_is_not_asked_twice():
    session = ClientSession("ws://h/ws", token="t")
    session.opened(0.0, WALL0)
    session.subscribe("room:2", since="0001-0042")
    session.receive_text(AUTH_OK, 0.0, WALL0)
    assert texts(session) == [
        {"type": "subscribe", "data": {"channel": "room:2", "since": "0001-0042"}}
    ]


def test_a_since_dropped_by_a_plain_subscribe_an_unsubscribe_or_a_refusal():
    session = ClientSession("ws://h/ws", token="t")
    session.subscribe("a", since="1")
    session.subscribe("a")  # the application changed its mind: a plain subscription
    session.subscribe("b", since="1")
    session.unsubscribe("b")
    session.subscribe("c", since="1")
    assert query_of(session.target().resource)["channels"] == "a"
    connected(session)
    assert texts(session) == [{"type": "subscribe", "data": {"channel": "c", "since": "1"}}]
    refused = {"error": "Channel not allowed", "code": "forbidden_channel", "channel": "c"}
    session.receive_text(envelope("error", refused), 1.0, WALL0)
    session.connection_lost(1006, "", 2.0, 0.5)
    assert query_of(session.target().resource)["channels"] == "a"
    connected(session, 3.0)
    assert texts(session) == []
