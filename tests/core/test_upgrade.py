"""The upgrade decisions and the session rules an adapter without wsproto relies on (the
ASGI adapter): admission, token, verdict, open, release; silence delegated to the
transport; max_message_size for messages someone else framed. No transport at all."""

from __future__ import annotations

import pytest

from agentcast.protocol import (
    AuthFailure,
    HttpAnswer,
    Hub,
    Identity,
    LocalProtocolError,
    Settings,
    Upgrade,
)
from agentcast.protocol.answers import body_too_large, not_an_upgrade, wrong_path
from agentcast.protocol.routing import Route, refusal, route


def request(hub, query="", headers=(), subprotocols=(), *, client="10.0.0.1", now=0.0):
    return Upgrade(
        hub, query=query, headers=headers, subprotocols=subprotocols, client=client, now=now
    )


def test_a_token_is_verified_then_the_session_opens_and_release_gives_the_place_back(h):
    hub = Hub()
    upgrade = request(hub, subprotocols=["agentcast.v1", "bearer.tok"])
    assert upgrade.refusal is None
    assert (upgrade.token, upgrade.subprotocol) == ("tok", "agentcast.v1")
    assert "tok" not in repr(upgrade)
    assert hub.admission.connections == 1  # counted from the request
    identity = Identity(user_id="user_tok")
    assert upgrade.decide(identity) is None
    sink = h.ListSink()
    session = upgrade.open(sink, identity, now=0.0, wall=h.WALL0)
    assert sink.types() == ["auth", "presence_state", "agent_state", "user_presence"]
    assert session.user_id == "user_tok"
    assert hub.admission.connections_of("user_tok") == 1
    upgrade.release()
    upgrade.release()  # idempotent
    assert hub.admission.connections == 0
    assert hub.admission.connections_of("user_tok") == 0


def test_no_token_opens_an_unauthenticated_session(h):
    hub = Hub()
    upgrade = request(hub)
    assert upgrade.token is None
    assert upgrade.decide(None) is None
    sink = h.ListSink()
    session = upgrade.open(sink, None, now=0.0, wall=h.WALL0)
    assert sink.types() == ["auth"]
    assert not session.authenticated


def test_origin_refused_at_the_request_counts_nothing():
    hub = Hub(Settings(allowed_origins=("https://app.example",)))
    upgrade = request(hub, "token=abc", headers=[("origin", "https://evil.example")])
    assert upgrade.refusal is not None
    assert upgrade.refusal.status == 403
    assert upgrade.token is None  # not even looked at
    assert upgrade.decide(Identity(user_id="x")) is upgrade.refusal
    assert hub.admission.connections == 0


def test_require_auth_refuses_missing_and_bad_tokens_with_401():
    hub = Hub(Settings(require_auth=True))
    missing = request(hub)
    refusal = missing.decide(None)
    assert refusal is not None
    assert (refusal.status, refusal.body) == (401, b"Unauthorized: missing token\n")
    assert refusal.header("www-authenticate") == "Bearer"
    bad = request(hub, "token=x")
    refusal = bad.decide(AuthFailure("Invalid token"))
    assert refusal is not None
    assert refusal.body == b"Unauthorized: Invalid token\n"
    assert hub.admission.refused["auth"] == 2
    assert hub.admission.connections == 0  # a refusal releases by itself


def test_per_user_limit_refuses_with_503():
    hub = Hub(Settings(max_connections_per_user=1))
    first = request(hub, "token=a")
    assert first.decide(Identity(user_id="u")) is None
    second = request(hub, "token=a")
    refusal = second.decide(Identity(user_id="u"))
    assert refusal is not None
    assert refusal.status == 503
    assert hub.admission.connections == 1


def test_misuse_raises(h):
    hub = Hub()
    upgrade = request(hub)
    with pytest.raises(LocalProtocolError):
        upgrade.open(h.ListSink(), None, now=0.0, wall=0.0)  # before decide()
    upgrade.decide(None)
    with pytest.raises(LocalProtocolError):
        upgrade.decide(None)
    refused = request(Hub(Settings(require_auth=True)))
    refused.decide(None)
    with pytest.raises(LocalProtocolError):
        refused.open(h.ListSink(), None, now=0.0, wall=0.0)


def test_silence_can_be_left_to_the_transport(h):
    """close_silent=False: no 4000, whatever the silence; pings and expiry still run."""
    hub = Hub()
    sink = h.ListSink()
    identity = Identity(user_id="u", expires_at=h.WALL0 + 500)
    upgrade = request(hub)
    upgrade.decide(identity)
    session = upgrade.open(sink, identity, now=0.0, wall=h.WALL0, close_silent=False)
    sink.types()
    assert session.next_deadline() == 30.0
    for t in (30.0, 60.0, 90.0, 120.0):
        session.handle_timer(t, h.WALL0 + t)
    assert sink.closed is None
    assert sink.types() == ["ping"] * 4
    assert hub.stats.heartbeat_timeouts == 0
    session.handle_timer(500.0, h.WALL0 + 500)
    assert sink.closed == (4001, "token expired")


def test_a_message_framed_elsewhere_over_the_limit_closes_1009(h):
    hub = Hub(Settings(max_message_size=10))
    sink = h.ListSink()
    upgrade = request(hub)
    upgrade.decide(None)
    session = upgrade.open(sink, None, now=0.0, wall=h.WALL0)
    sink.types()
    session.receive_text('{"type":"ping"}'[:10], 1.0, h.WALL0)  # 10 bytes: allowed
    assert sink.types() == ["error"]
    session.receive_text("é" * 6, 1.0, h.WALL0)  # 6 characters, 12 bytes
    assert sink.closed == (1009, "message too big")
    assert session.closed

    other = h.ListSink()
    upgrade = request(hub)
    upgrade.decide(None)
    session = upgrade.open(other, None, now=0.0, wall=h.WALL0)
    session.receive_binary(1.0, h.WALL0, size=11)
    assert other.closed == (1009, "message too big")
    assert other.types() == ["auth"]  # no error answer before the close


def test_shared_http_answers():
    settings = Settings()

    def refuse(method: str, path: str) -> HttpAnswer | None:
        return refusal(route(method, path, settings), path)

    assert refuse("GET", "/nowhere").status == 404
    answer = refuse("POST", "/healthz")
    assert (answer.status, answer.header("allow")) == (405, "GET")
    assert refuse("GET", "/metrics") is None
    assert refuse("POST", "/api/anything").status == 404
    assert route("GET", "/api/notifications", settings) is Route.METHOD_NOT_ALLOWED
    assert refuse("GET", "/api/notifications").header("allow") == "POST"
    assert route("POST", "/api/notifications", settings) is Route.PUBLISH
    assert route("POST", "/ws", settings) is Route.WEBSOCKET  # the upgrade checks the method
    upgrade_required = not_an_upgrade("GET")
    assert (upgrade_required.status, upgrade_required.header("upgrade")) == (426, "websocket")
    assert not_an_upgrade("POST").status == 400
    assert HttpAnswer.json(200, {}, [("x-a", "b")]).header_fields() == [
        (b"content-type", b"application/json"),
        (b"content-length", b"2"),
        (b"x-a", b"b"),
    ]
    assert wrong_path("/ws").body == b"Not Found: the WebSocket endpoint is /ws\n"
    assert body_too_large(10).status == 413
    assert body_too_large(10).content_type == "application/json"  # an API answer
