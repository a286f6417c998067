"""PROTOCOL.md section 2: authentication (token sources, dev/static authenticators,
the first ``auth`` message, require_auth, in-band refresh and token expiry)."""

from __future__ import annotations

import pytest
from wsproto.events import CloseConnection, Request

from agentcast.protocol import (
    SUBPROTOCOL,
    AuthFailure,
    AuthRequested,
    AuthResult,
    ConnectionClosed,
    DevAuthenticator,
    Hub,
    Identity,
    LocalProtocolError,
    Settings,
    StaticAuthenticator,
    extract_token,
)


class Fixed:
    """An authenticator that answers the same verdict for any token."""

    def __init__(self, result: AuthResult) -> None:
        self.result = result

    def authenticate(self, token: str, wall: float) -> AuthResult:
        return self.result


def requested(pair) -> AuthRequested:
    [event] = [e for e in pair.events if isinstance(e, AuthRequested)]
    return event


# -- where the token comes from ----------------------------------------------------------


def test_token_from_query(h, hub):
    p = h.Pair(hub)
    p.send(Request(host="localhost", target="/ws?token=abc123"))
    event = requested(p)
    assert (event.token, event.refresh) == ("abc123", False)
    p.answer_auth()
    assert p.messages()[0]["data"] == {"success": True, "userId": "user_abc123"}


def test_query_token_is_url_decoded(h, hub):
    p = h.Pair(hub)
    p.send(Request(host="localhost", target="/ws?x=1&token=a%2Eb%2Dc&y=2"))
    assert requested(p).token == "a.b-c"


def test_token_from_authorization_bearer(h, hub):
    p = h.Pair(hub)
    msgs = p.handshake("/ws", extra_headers=[(b"Authorization", b"Bearer  tok_1")])
    assert msgs[0]["data"] == {"success": True, "userId": "user_tok_1"}
    assert p.accept is not None
    assert p.accept.subprotocol is None


def test_token_from_subprotocol_selects_agentcast_v1(h, hub):
    p = h.Pair(hub)
    msgs = p.handshake("/ws", subprotocols=["agentcast.v1", "bearer.tok2"])
    assert msgs[0]["data"] == {"success": True, "userId": "user_tok2"}
    assert p.accept is not None
    assert p.accept.subprotocol == "agentcast.v1"


def test_bearer_subprotocol_without_agentcast_v1_is_not_a_token(h, hub):
    p = h.Pair(hub)
    msgs = p.handshake("/ws", subprotocols=["bearer.tok2"])
    assert msgs[0]["data"] == {"success": False, "error": "Missing token"}
    assert p.accept is not None
    assert p.accept.subprotocol is None


@pytest.mark.parametrize(
    ("query", "headers", "protocols", "expected"),
    [
        ("token=q", [("authorization", "Bearer h")], ["agentcast.v1", "bearer.s"], "q"),
        ("", [("Authorization", "Bearer h")], ["agentcast.v1", "bearer.s"], "h"),
        ("", [("Authorization", "bearer h")], [], "h"),
        ("", [("Authorization", "Basic aDpo")], ["agentcast.v1", "bearer.s"], "s"),
        ("", [("Authorization", "Bearer ")], [], None),
        ("token=", [], [], None),
        ("", [], ["agentcast.v1", "bearer."], None),
        ("", [], ["agentcast.v1"], None),
        ("", [], [], None),
    ],
)
def test_extract_token_order(query, headers, protocols, expected):
    token, selected = extract_token(query, headers, protocols)
    assert token == expected
    assert selected == (SUBPROTOCOL if "agentcast.v1" in protocols else None)


def test_missing_token_is_auth_failure_and_the_connection_stays(h, hub):
    p = h.Pair(hub)
    msgs = p.handshake("/ws")
    assert msgs == [
        {"type": "auth", "data": {"success": False, "error": "Missing token"}, "timestamp": h.TS0}
    ]
    assert not any(isinstance(e, AuthRequested) for e in p.events)
    assert hub.clients_count() == 1
    assert hub.authenticated_clients_count() == 0
    p.send_json({"type": "ping"})
    assert p.types() == ["pong"]


def test_auth_requested_repr_never_shows_the_token(h, hub):
    p = h.Pair(hub)
    p.send(Request(host="localhost", target="/ws?token=s3cr3t-tok"))
    event = requested(p)
    assert "s3cr3t-tok" not in repr(event)
    assert "s3cr3t-tok" not in str(event)
    assert "s3cr3t-tok" not in repr(AuthRequested(token="s3cr3t-tok", refresh=True))


def test_a_refused_token_is_not_echoed(h, hub):
    p = h.Pair(hub)
    msgs = p.handshake("/ws?token=bad%20token%21")
    assert msgs[0]["data"] == {"success": False, "error": "Invalid token"}
    assert "bad token!" not in str(msgs)


# -- require_auth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/ws", b"Unauthorized: missing token\n"),
        ("/ws?token=%20", b"Unauthorized: Invalid token\n"),
    ],
)
def test_require_auth_refuses_the_upgrade_with_401(h, target, reason):
    hub = Hub(Settings(require_auth=True))
    p = h.Pair(hub)
    p.send(Request(host="localhost", target=target))
    p.answer_auth()
    p.flush()
    assert p.accept is None
    assert p.rejection() == (401, reason)
    assert p.server.closed
    assert p.server.session is None
    assert hub.clients_count() == 0


def test_require_auth_401_carries_www_authenticate(h):
    hub = Hub(Settings(require_auth=True))
    conn = h.Pair(hub).server
    conn.receive_data(h.http_request("/ws", headers=h.UPGRADE_HEADERS), 0.0, 0.0)
    status, headers, _ = h.parse_response(conn.data_to_send())
    assert (status, headers["www-authenticate"]) == (401, "Bearer")


def test_require_auth_accepts_a_valid_token(h):
    hub = Hub(Settings(require_auth=True))
    p = h.Pair(hub)
    msgs = p.handshake("/ws?token=abc123")
    assert msgs[0]["data"] == {"success": True, "userId": "user_abc123"}


# -- authenticators ----------------------------------------------------------------------


@pytest.mark.parametrize("token", ["a", "abc123", "A-Z_a.z-0.9", "x" * 128, "...", "-", "_"])
def test_dev_authenticator_accepts(token):
    assert DevAuthenticator().authenticate(token, 0.0) == Identity(user_id=f"user_{token}")


@pytest.mark.parametrize(
    "token", ["", "x" * 129, "a b", "a/b", "é", "a\n", "a:b", "tok=", "\x00", "abc\u0661"]
)
def test_dev_authenticator_refuses(token):
    assert DevAuthenticator().authenticate(token, 0.0) == AuthFailure("Invalid token")


def test_static_authenticator_table():
    auth = StaticAuthenticator({"t-alice": "alice", "t-bob": "bob"})
    assert auth.authenticate("t-alice", 0.0) == Identity(user_id="alice")
    assert auth.authenticate("t-bob", 0.0) == Identity(user_id="bob")
    assert auth.authenticate("t-alic", 0.0) == AuthFailure("Invalid token")
    assert auth.authenticate("abc123", 0.0) == AuthFailure("Invalid token")
    assert "t-alice" not in repr(auth)


@pytest.mark.parametrize("table", [{"": "alice"}, {"tok": ""}])
def test_static_authenticator_refuses_empty_entries(table):
    with pytest.raises(ValueError, match="must not be empty"):
        StaticAuthenticator(table)


def test_static_authenticator_over_the_wire(h, hub):
    p = h.Pair(hub)
    msgs = p.handshake("/ws?token=t-alice", authenticator=StaticAuthenticator({"t-alice": "alice"}))
    assert msgs[0]["data"] == {"success": True, "userId": "alice"}


# -- the first message -------------------------------------------------------------------


def test_auth_is_the_first_message(h, hub):
    h.connect(hub, "other")  # someone already online
    p = h.Pair(hub)
    msgs = p.handshake("/ws?token=abc123")
    assert msgs[0] == {
        "type": "auth",
        "data": {"success": True, "userId": "user_abc123"},
        "timestamp": h.TS0,
    }
    assert [m["type"] for m in msgs] == ["auth", "presence_state", "agent_state", "user_presence"]


# -- in-band refresh ---------------------------------------------------------------------


def test_refresh_same_user_answers_a_new_auth(h, pair):
    pair.send_json({"type": "auth", "data": {"token": "abc123"}})
    event = requested(pair)
    assert (event.token, event.refresh) == ("abc123", True)
    pair.answer_auth()
    assert pair.messages() == [
        {"type": "auth", "data": {"success": True, "userId": "user_abc123"}, "timestamp": h.TS0}
    ]


def test_refresh_for_another_user_fails_and_keeps_the_identity(h, pair, hub):
    pair.send_json({"type": "auth", "data": {"token": "mallory"}})
    pair.answer_auth()
    assert pair.messages() == [
        {
            "type": "auth",
            "data": {"success": False, "error": "Token is for another user"},
            "timestamp": h.TS0,
        }
    ]
    assert pair.server.session is not None
    assert pair.server.session.user_id == "user_abc123"
    assert hub.authenticated_clients_count() == 1
    pair.now = 1.0  # a presence interval after the arrival: the change goes out at once
    pair.send_json({"type": "user_presence", "data": "busy"})
    assert pair.messages()[0]["data"] == {"userId": "user_abc123", "status": "busy"}


def test_refresh_with_a_refused_token(h, pair):
    pair.send_json({"type": "auth", "data": {"token": "bad token"}})
    pair.answer_auth()
    [msg] = pair.messages()
    assert msg["data"] == {"success": False, "error": "Invalid token"}
    assert pair.server.session is not None
    assert pair.server.session.authenticated


def test_refresh_while_unauthenticated_is_not_authenticated(h, hub):
    p = h.Pair(hub)
    p.handshake("/ws")
    p.send_json({"type": "auth", "data": {"token": "abc123"}})
    assert not any(isinstance(e, AuthRequested) for e in p.events)
    assert p.messages() == [
        {
            "type": "error",
            "data": h.error("Not authenticated", "not_authenticated"),
            "timestamp": h.TS0,
        }
    ]


@pytest.mark.parametrize("data", [None, {}, {"token": ""}, {"token": 5}, "abc123", ["abc123"]])
def test_refresh_without_a_token_is_invalid_format(h, pair, data):
    msg = {"type": "auth"} if data is None else {"type": "auth", "data": data}
    pair.send_json(msg)
    assert [m["data"] for m in pair.messages()] == [
        h.error("Invalid message format", "invalid_format")
    ]


def test_refresh_needs_a_result(pair):
    with pytest.raises(LocalProtocolError, match="refresh needs a result"):
        pair.server.complete_auth(None, 0.0, 0.0)


def test_complete_auth_after_close_is_ignored(h, pair):
    pair.send(CloseConnection(code=1000))
    pair.flush()
    pair.server.complete_auth(Identity(user_id="user_abc123"), 0.0, 0.0)
    assert pair.server.data_to_send() == b""


# -- token expiry ------------------------------------------------------------------------


def test_token_expiry_closes_4001_exactly_at_the_deadline(h, hub):
    p = h.Pair(hub, now=5.0)
    # exp is wall-clock: 20 s after the wall time of the handshake.
    auth = Fixed(Identity(user_id="u", expires_at=h.WALL0 + 5.0 + 20.0))
    p.handshake("/ws?token=x", authenticator=auth)
    assert p.server.next_deadline() == 25.0
    p.tick(24.999)
    assert p.flush() == []
    p.tick(25.0)
    p.flush()
    [close] = p.close_events()
    assert (close.code, close.reason) == (4001, "token expired")
    p.feed(p.client.send(close.response()))
    assert [e for e in p.events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(code=4001, reason="token expired")
    ]
    assert hub.clients_count() == 0


def test_refresh_extends_the_expiry(h, hub):
    p = h.Pair(hub)
    p.handshake("/ws?token=x", authenticator=Fixed(Identity(user_id="u", expires_at=h.WALL0 + 20)))
    p.now = 10.0
    p.send_json({"type": "auth", "data": {"token": "y"}})
    p.answer_auth(Fixed(Identity(user_id="u", expires_at=h.WALL0 + 10 + 20)))
    assert p.messages()[0]["data"] == {"success": True, "userId": "u"}
    assert p.server.next_deadline() == 30.0
    p.tick(20.0)
    p.tick(29.999)
    assert p.close_events() == []
    p.flush()
    assert p.close_events() == []
    p.tick(30.0)
    p.flush()
    assert [(c.code, c.reason) for c in p.close_events()] == [(4001, "token expired")]


def test_refresh_without_expiry_removes_it(h, hub):
    p = h.Pair(hub)
    p.handshake("/ws?token=x", authenticator=Fixed(Identity(user_id="u", expires_at=h.WALL0 + 20)))
    p.send_json({"type": "auth", "data": {"token": "y"}})
    p.answer_auth(Fixed(Identity(user_id="u")))
    assert p.server.next_deadline() == 30.0  # the heartbeat, no expiry any more


def test_failed_refresh_keeps_the_old_expiry(h, hub):
    p = h.Pair(hub)
    p.handshake("/ws?token=x", authenticator=Fixed(Identity(user_id="u", expires_at=h.WALL0 + 20)))
    p.send_json({"type": "auth", "data": {"token": "y"}})
    p.answer_auth(Fixed(AuthFailure("Token expired")))
    assert p.messages()[0]["data"] == {"success": False, "error": "Token expired"}
    p.tick(20.0)
    p.flush()
    assert [(c.code, c.reason) for c in p.close_events()] == [(4001, "token expired")]
