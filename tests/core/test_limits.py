"""Origin allow-list, connection limits and rate, hostile handshakes, in the core.

Bytes in, bytes out, scripted time: no sockets, no sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from agentcast.protocol import (
    AuthRequested,
    ConnectionClosed,
    DevAuthenticator,
    HttpAnswer,
    Hub,
    LocalProtocolError,
    ServerConnection,
    Settings,
)
from agentcast.protocol.admission import Ticket, address_key
from agentcast.protocol.upgrade import Upgrade

WALL = 1_766_754_000.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key
ADDRESS = "203.0.113.7"


def _request(target: str = "/ws?token=abc", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: agentcast.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:80]
    return int(data.split(b" ", 2)[1])


def _attempt(
    hub: Hub,
    token: str | None = "abc",
    *,
    client: str | None = ADDRESS,
    headers: tuple[tuple[str, str], ...] = (),
    now: float = 0.0,
) -> tuple[ServerConnection, bytes]:
    """One upgrade, authenticated with the dev authenticator; returns what was answered."""
    conn = ServerConnection(hub, now=now, client=client)
    target = "/ws" if token is None else f"/ws?token={token}"
    conn.receive_data(_request(target, headers), now, WALL + now)
    for event in conn.events_received():
        assert isinstance(event, AuthRequested)
        conn.complete_auth(DevAuthenticator().authenticate(event.token, WALL), now, WALL + now)
    return conn, conn.data_to_send()


def _unlimited(**kw: Any) -> Settings:
    """Settings with no limit but the ones a test sets."""
    limits: dict[str, Any] = {
        "max_connections": None,
        "max_connections_per_ip": None,
        "max_connections_per_user": None,
        "connection_rate": None,
    }
    limits.update(kw)
    return Settings(**limits)


def _counts(hub: Hub, client: str = ADDRESS, user: str = "user_abc") -> tuple[int, int, int]:
    a = hub.admission
    return a.connections, a.connections_from(client), a.connections_of(user)


# -- origin ---------------------------------------------------------------------------------

ORIGINS = ("https://app.example.com", "https://*.example.org", "http://localhost:5173")


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example.com", 101),
        ("https://app.example.com:443", 101),  # the default port, written out
        ("HTTPS://APP.EXAMPLE.COM", 101),
        ("https://a.example.org", 101),
        ("https://a.b.example.org", 101),
        ("http://localhost:5173", 101),
        (None, 101),  # no Origin: not a browser
        ("https://example.org", 403),  # the wildcard needs a subdomain
        ("https://evilexample.org", 403),
        ("https://example.org.evil.test", 403),
        ("http://a.example.org", 403),  # scheme must match
        ("https://a.example.org:8443", 403),  # port must match
        ("http://localhost:3000", 403),
        ("https://app.example.com.evil.test", 403),
        ("https://evil.test", 403),
        ("null", 403),  # sandboxed iframe, file: page
        ("https://app.example.com/path", 403),
        ("not an origin", 403),
        ("https://app.example.com:https", 403),  # not a port
    ],
)
def test_origin_allow_list_at_the_upgrade(origin: str | None, status: int) -> None:
    hub = Hub(Settings(allowed_origins=ORIGINS))
    headers = () if origin is None else (("Origin", origin),)
    conn, data = _attempt(hub, headers=headers)
    assert _status(data) == status
    if status == 403:
        assert data.endswith(b"Forbidden: origin not allowed\n")
        assert conn.closed
        assert hub.clients_count() == 0
        assert hub.admission.refused["origin"] == 1
    else:
        assert hub.clients_count() == 1


def test_two_origin_headers_are_refused() -> None:
    hub = Hub(Settings(allowed_origins=ORIGINS))
    headers = (("Origin", "https://app.example.com"), ("Origin", "https://evil.test"))
    assert _status(_attempt(hub, headers=headers)[1]) == 403


def test_without_an_allow_list_any_origin_is_accepted() -> None:
    hub = Hub(Settings())
    assert _status(_attempt(hub, headers=(("Origin", "https://anything.test"),))[1]) == 101


@pytest.mark.parametrize(
    "pattern", ["*", "example.com", "https://*", "https://a.*.com", "https://x.test/app", ""]
)
def test_a_bad_origin_pattern_is_a_configuration_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="origin pattern"):
        Settings(allowed_origins=(pattern,))


def test_allowed_origins_must_be_a_sequence_and_is_kept_as_a_tuple() -> None:
    with pytest.raises(ValueError, match="not one string"):
        Settings(allowed_origins="https://app.example.com")  # type: ignore[arg-type]
    settings = Settings(allowed_origins=["https://app.example.com"])  # type: ignore[arg-type]
    assert settings.allowed_origins == ("https://app.example.com",)


# -- connection limits ----------------------------------------------------------------------


def _close_by_client(conn: ServerConnection, now: float) -> None:
    # A masked close frame, code 1000, from the client.
    conn.receive_data(b"\x88\x82\x00\x00\x00\x00\x03\xe8", now, WALL + now)


def test_a_thousand_upgrades_from_one_address_against_a_limit_of_100() -> None:
    hub = Hub(_unlimited(max_connections_per_ip=100))
    answers = [_attempt(hub, f"t{i}") for i in range(1_000)]
    statuses = [_status(data) for _, data in answers]
    assert statuses.count(101) == 100
    assert statuses.count(503) == 900
    assert statuses[:100] == [101] * 100
    refused = answers[100][1]
    assert refused.endswith(b"Service Unavailable: too many connections from this address\n")
    assert hub.clients_count() == 100
    assert hub.admission.refused["max_connections_per_ip"] == 900
    # Another address is not affected.
    assert _status(_attempt(hub, "other", client="198.51.100.1")[1]) == 101
    # Closing gives the places back.
    for conn, _ in answers[:100]:
        _close_by_client(conn, 1.0)
        assert conn.closed
    assert hub.admission.connections_from(ADDRESS) == 0
    assert hub.clients_count() == 1
    assert _status(_attempt(hub, "again", now=2.0)[1]) == 101


def test_the_total_limit() -> None:
    hub = Hub(_unlimited(max_connections=3))
    for i in range(3):
        assert _status(_attempt(hub, f"t{i}", client=f"198.51.100.{i}")[1]) == 101
    _, data = _attempt(hub, "t9", client="198.51.100.9")
    assert _status(data) == 503
    assert data.endswith(b"Service Unavailable: too many connections\n")
    assert hub.admission.refused["max_connections"] == 1


def test_the_per_user_limit_is_checked_once_the_token_is_known() -> None:
    hub = Hub(_unlimited(max_connections_per_user=2))
    first, _ = _attempt(hub, "abc", client="198.51.100.1")
    _attempt(hub, "abc", client="198.51.100.2")
    conn, data = _attempt(hub, "abc", client="198.51.100.3")
    assert _status(data) == 503
    assert data.endswith(b"Service Unavailable: too many connections for this user\n")
    assert conn.closed
    assert _counts(hub, "198.51.100.3") == (2, 0, 2)
    # Someone else is welcome; and once one of the user's connections goes, so is the user.
    assert _status(_attempt(hub, "xyz", client="198.51.100.3")[1]) == 101
    _close_by_client(first, 1.0)
    assert _status(_attempt(hub, "abc", client="198.51.100.3", now=1.0)[1]) == 101
    assert hub.admission.connections_of("user_abc") == 2


def test_unauthenticated_connections_count_against_address_and_total_but_no_user() -> None:
    hub = Hub(_unlimited(max_connections_per_ip=2, max_connections_per_user=1))
    _attempt(hub, None)
    _attempt(hub, None)
    assert _counts(hub) == (2, 2, 0)
    assert _status(_attempt(hub, "abc")[1]) == 503


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    hub = Hub(_unlimited(max_connections_per_ip=2))
    assert _status(_attempt(hub, "a", client="2001:db8:1:2::1")[1]) == 101
    assert _status(_attempt(hub, "b", client="2001:db8:1:2:ffff::9")[1]) == 101
    assert _status(_attempt(hub, "c", client="2001:db8:1:2::77")[1]) == 503
    assert _status(_attempt(hub, "d", client="2001:db8:1:3::1")[1]) == 101
    assert address_key("::ffff:203.0.113.7") == ADDRESS
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("unix-socket") == "unix-socket"
    assert address_key(None) is None


def test_admission_counts_a_ticket_once_however_often_it_is_told() -> None:
    admission = Hub(_unlimited(max_connections_per_user=1)).admission
    ticket = admission.admit((), ADDRESS, 0.0)
    assert isinstance(ticket, Ticket)
    assert admission.admit_user(ticket, "u") is None
    assert admission.admit_user(ticket, "u") is None  # already counted for u
    assert (admission.connections, admission.connections_of("u")) == (1, 1)
    admission.release(ticket)
    admission.release(ticket)
    assert (admission.connections, admission.connections_of("u")) == (0, 0)
    assert admission.connections_from(ADDRESS) == 0


def test_a_connection_without_an_address_counts_in_the_total_only() -> None:
    hub = Hub(_unlimited(max_connections=1, max_connections_per_ip=1))
    assert _status(_attempt(hub, "a", client=None)[1]) == 101
    assert _status(_attempt(hub, "b", client=None)[1]) == 503
    assert hub.admission.connections == 1


def test_plain_http_is_not_limited() -> None:
    hub = Hub(_unlimited(max_connections=1, connection_rate=1))
    _attempt(hub, "a")
    for _ in range(5):
        conn = ServerConnection(hub, now=0.0, client=ADDRESS)
        conn.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, WALL)
        assert [type(e).__name__ for e in conn.events_received()] == ["HttpRequest"]


# -- every way a connection ends gives its places back --------------------------------------


def _open(hub: Hub) -> ServerConnection:
    conn, data = _attempt(hub, "abc")
    assert _status(data) == 101
    return conn


def _pending(hub: Hub) -> ServerConnection:
    """An upgrade waiting for the authenticator's verdict."""
    conn = ServerConnection(hub, now=0.0, client=ADDRESS)
    conn.receive_data(_request(), 0.0, WALL)
    assert isinstance(conn.events_received()[0], AuthRequested)
    return conn


def _close_client(hub: Hub) -> ServerConnection:
    conn = _open(hub)
    _close_by_client(conn, 1.0)
    return conn


def _eof_open(hub: Hub) -> ServerConnection:
    conn = _open(hub)
    conn.receive_eof(1.0, WALL + 1)
    return conn


def _eof_pending(hub: Hub) -> ServerConnection:
    conn = _pending(hub)
    conn.receive_eof(1.0, WALL + 1)
    return conn


def _timeout_pending(hub: Hub) -> ServerConnection:
    conn = _pending(hub)
    conn.handle_timer(10.0, WALL + 10)  # the authenticator never answered: 408
    assert _status(conn.data_to_send()) == 408
    return conn


def _refused_401(hub: Hub) -> ServerConnection:
    conn = _pending(hub)
    conn.complete_auth(None, 0.0, WALL)
    assert _status(conn.data_to_send()) == 401
    return conn


def _send_failed(hub: Hub) -> ServerConnection:
    conn = _open(hub)
    conn.send_failed(1.0, WALL + 1)
    return conn


def _server_close(hub: Hub) -> ServerConnection:
    conn = _open(hub)
    conn.close(1001, "going away", 1.0, WALL + 1)
    conn.handle_timer(1.0 + hub.settings.close_timeout, WALL + 7)  # no answer from the peer
    return conn


def _heartbeat_timeout(hub: Hub) -> ServerConnection:
    conn = _open(hub)
    for t in (30.0, 60.0, 60.0 + hub.settings.close_timeout):
        conn.handle_timer(t, WALL + t)
    return conn


@pytest.mark.parametrize(
    "end",
    [
        _close_client,
        _eof_open,
        _eof_pending,
        _timeout_pending,
        _refused_401,
        _send_failed,
        _server_close,
        _heartbeat_timeout,
    ],
)
def test_every_way_a_connection_ends_releases_its_counts(
    end: Callable[[Hub], ServerConnection],
) -> None:
    hub = Hub(Settings(require_auth=True, max_connections_per_ip=1, connection_rate=None))
    conn = end(hub)
    assert conn.closed
    assert _counts(hub) == (0, 0, 0)
    conn.receive_eof(100.0, WALL + 100)  # a late EOF releases nothing twice
    assert _counts(hub) == (0, 0, 0)
    assert _status(_attempt(hub, "abc", now=100.0)[1]) == 101
    assert _counts(hub) == (1, 1, 1)


# -- new connections per second ------------------------------------------------------------


def test_the_connection_rate_is_a_token_bucket_answered_503_with_retry_after() -> None:
    hub = Hub(_unlimited(connection_rate=5))
    statuses = [_status(_attempt(hub, f"t{i}", client=f"198.51.100.{i}")[1]) for i in range(7)]
    assert statuses == [101] * 5 + [503] * 2
    _, data = _attempt(hub, "late", client="198.51.100.99", now=0.1)
    assert _status(data) == 503
    assert b"\r\nretry-after: 1\r\n" in data
    assert data.endswith(b"Service Unavailable: too many new connections, retry later\n")
    # 0.2 s later one more has come back; a second later, five.
    assert _status(_attempt(hub, "x", client="198.51.100.50", now=0.2)[1]) == 101
    assert _status(_attempt(hub, "y", client="198.51.100.51", now=0.2)[1]) == 503
    later = [_status(_attempt(hub, f"z{i}", client="198.51.100.60", now=5.0)[1]) for i in range(6)]
    assert later == [101] * 5 + [503]


def test_a_slow_rate_asks_for_a_longer_wait() -> None:
    hub = Hub(_unlimited(connection_rate=0.1))  # one every 10 s
    assert _status(_attempt(hub, "a")[1]) == 101
    _, data = _attempt(hub, "b", now=2.0)
    assert b"\r\nretry-after: 8\r\n" in data


def test_attempts_refused_for_another_reason_do_not_use_up_the_rate() -> None:
    hub = Hub(_unlimited(connection_rate=3, max_connections_per_ip=1))
    assert _status(_attempt(hub, "a")[1]) == 101
    for _ in range(50):  # the same address hammering past its own limit
        assert _status(_attempt(hub, "a")[1]) == 503
    assert hub.admission.refused == {"max_connections_per_ip": 50}
    others = [_status(_attempt(hub, "b", client=f"198.51.100.{i}")[1]) for i in range(3)]
    assert others == [101, 101, 503]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_connections", 0),
        ("max_connections_per_ip", -1),
        ("max_connections_per_user", 0),
        ("connection_rate", 0.0),
        ("unauthenticated_timeout", -5.0),
    ],
)
def test_limits_must_be_positive_or_none(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        Settings(**{name: value})
    Settings(**{name: None})


def test_the_defaults_are_finite() -> None:
    s = Settings()
    assert (s.max_connections, s.max_connections_per_ip, s.max_connections_per_user) == (
        10_000,
        500,
        32,
    )
    assert (s.connection_rate, s.unauthenticated_timeout, s.allowed_origins) == (500.0, 30.0, None)


# -- idle unauthenticated connections --------------------------------------------------------


def _close_frame(data: bytes) -> tuple[int, str]:
    """The code and reason of *data*, which must be exactly one server close frame."""
    assert data[0] == 0x88
    assert data[1] == len(data) - 2 < 126  # unmasked, short
    return int.from_bytes(data[2:4], "big"), data[4:].decode()


def test_an_unauthenticated_connection_is_closed_1008_after_the_timeout() -> None:
    hub = Hub(_unlimited(unauthenticated_timeout=30.0))
    conn, data = _attempt(hub, None)
    assert _status(data) == 101
    assert conn.next_deadline() == 30.0
    conn.handle_timer(29.9, WALL + 29.9)
    assert not conn.closed
    conn.handle_timer(30.0, WALL + 30)
    assert _close_frame(conn.data_to_send()) == (1008, "authentication required")
    assert hub.clients_count() == 0


def test_an_authenticated_connection_has_no_such_timeout() -> None:
    hub = Hub(_unlimited(unauthenticated_timeout=5.0))
    conn, _ = _attempt(hub, "abc")
    assert conn.next_deadline() == 30.0  # the first heartbeat
    conn.handle_timer(30.0, WALL + 30)
    assert not conn.closed


def test_the_unauthenticated_timeout_can_be_switched_off() -> None:
    hub = Hub(_unlimited(unauthenticated_timeout=None))
    conn, _ = _attempt(hub, None)
    conn.handle_timer(30.0, WALL + 30)
    assert not conn.closed
    assert conn.next_deadline() == 60.0  # the heartbeat rules apply as before


# -- hostile handshakes ----------------------------------------------------------------------


def test_a_slowloris_client_is_cut_off_at_the_handshake_timeout() -> None:
    hub = Hub(Settings(handshake_timeout=10.0))
    conn = ServerConnection(hub, now=0.0, client=ADDRESS)
    assert conn.next_deadline() == 10.0
    request = _request()
    second = 0
    while not conn.closed:
        assert second < len(request), "the request was read whole: never cut off"
        conn.receive_data(request[second : second + 1], float(second), WALL + second)
        second += 1
        conn.handle_timer(float(second), WALL + second)
        if second < 10:
            assert not conn.closed
            assert conn.next_deadline() == 10.0  # bytes do not push the deadline back
    assert second == 10
    data = conn.data_to_send()
    assert _status(data) == 408
    assert conn.events_received() == []


def test_a_megabyte_of_headers_is_refused_431_without_being_buffered() -> None:
    hub = Hub(Settings())
    conn = ServerConnection(hub, now=0.0, client=ADDRESS)
    conn.receive_data(b"GET /ws HTTP/1.1\r\nHost: x\r\n", 0.0, WALL)
    header = b"X-Filler: " + b"a" * 1_000 + b"\r\n"
    fed = 0
    while not conn.closed and fed < 1024 * 1024:
        conn.receive_data(header, 0.0, WALL)
        fed += len(header)
    assert conn.closed
    assert fed <= hub.settings.max_header_size + len(header)
    assert _status(conn.data_to_send()) == 431
    conn.receive_data(header * 100, 0.0, WALL)  # more is ignored
    assert conn.data_to_send() == b""
    assert conn.events_received() == []


# -- compression bombs: permessage-deflate is never negotiated ------------------------------


def test_permessage_deflate_is_never_accepted_and_a_compressed_frame_is_1002() -> None:
    hub = Hub(Settings())
    conn = ServerConnection(hub, now=0.0, client=ADDRESS)
    client = WSConnection(ConnectionType.CLIENT)
    offer = Request(host="x", target="/ws?token=abc", extensions=[PerMessageDeflate()])
    conn.receive_data(client.send(offer), 0.0, WALL)
    (event,) = conn.events_received()
    assert isinstance(event, AuthRequested)
    conn.complete_auth(DevAuthenticator().authenticate(event.token, WALL), 0.0, WALL)
    data = conn.data_to_send()
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 101 ")
    assert b"sec-websocket-extensions" not in head
    client.receive_data(data)
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection)
    assert events[0].extensions == []
    assert [json.loads(e.data)["type"] for e in events[1:] if isinstance(e, TextMessage)] == [
        "auth",
        "presence_state",
        "agent_state",
        "user_presence",
    ]
    # A "compressed" text frame (RSV1 set), masked with a zero key: a protocol error.
    conn.receive_data(b"\xc1\x85\x00\x00\x00\x00hello", 1.0, WALL + 1)
    closed = [e for e in conn.events_received() if isinstance(e, ConnectionClosed)]
    assert [c.code for c in closed] == [1002]
    client.receive_data(conn.data_to_send())
    (close,) = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert close.code == 1002
    assert conn.closed
    assert hub.admission.connections == 0


# -- every TCP connection counts under its address ----------------------------------------


def test_every_tcp_connection_counts_under_its_address_from_the_start() -> None:
    hub = Hub(_unlimited(max_connections_per_ip=2))
    silent = [ServerConnection(hub, now=0.0, client=ADDRESS) for _ in range(2)]
    assert hub.admission.connections_from(ADDRESS) == 2
    refused = ServerConnection(hub, now=0.0, client=ADDRESS)
    assert refused.closed  # answered at once, before reading anything
    data = refused.data_to_send()
    assert _status(data) == 503
    assert data.endswith(b"Service Unavailable: too many connections from this address\n")
    assert hub.admission.refused["max_connections_per_ip"] == 1
    # Another address, and a connection whose address is unknown, are not affected.
    assert not ServerConnection(hub, now=0.0, client="198.51.100.1").closed
    assert not ServerConnection(hub, now=0.0, client=None).closed
    # A plain HTTP request answered gives its place back...
    first = silent[0]
    first.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, WALL)
    assert [type(e).__name__ for e in first.events_received()] == ["HttpRequest"]
    first.respond(HttpAnswer.json(200, {}))
    assert hub.admission.connections_from(ADDRESS) == 1
    # ...and an upgrade on a counted connection is not counted twice.
    second = silent[1]
    second.receive_data(_request("/ws?token=abc"), 0.0, WALL)
    [event] = second.events_received()
    assert isinstance(event, AuthRequested)
    second.complete_auth(DevAuthenticator().authenticate(event.token, WALL), 0.0, WALL)
    assert _status(second.data_to_send()) == 101
    assert hub.admission.connections_from(ADDRESS) == 1
    assert hub.admission.connections == 1
    _close_by_client(second, 1.0)
    assert hub.admission.connections_from(ADDRESS) == 0
    assert hub.admission.connections == 0


def test_a_refused_upgrade_gives_the_address_back() -> None:
    hub = Hub(_unlimited(max_connections_per_ip=1, max_connections_per_user=1))
    _attempt(hub, "abc", client="198.51.100.1")
    conn, data = _attempt(hub, "abc")  # the user is full
    assert _status(data) == 503
    assert conn.closed
    assert hub.admission.connections_from(ADDRESS) == 0
    assert not ServerConnection(hub, now=0.0, client=ADDRESS).closed


def test_refuse_is_for_a_connection_that_has_read_nothing() -> None:
    conn = ServerConnection(Hub(), now=0.0, client=ADDRESS)
    conn.receive_data(_request(), 0.0, WALL)
    with pytest.raises(LocalProtocolError):
        conn.transport.refuse(HttpAnswer.plain(503, "no"))


# -- unauthenticated connections have their own cap ---------------------------------------


def test_connections_without_a_valid_token_have_their_own_smaller_cap() -> None:
    hub = Hub(_unlimited(max_unauthenticated_connections=2))
    strangers = [_attempt(hub, None, client="198.51.100.1")[0]]
    strangers.append(_attempt(hub, "bad%20token", client="198.51.100.2")[0])  # refused
    assert hub.admission.unauthenticated == 2
    _, data = _attempt(hub, None, client="198.51.100.3")
    assert _status(data) == 503
    assert data.endswith(b"Service Unavailable: too many connections without a valid token\n")
    assert hub.admission.refused["max_unauthenticated_connections"] == 1
    assert hub.admission.connections == 2
    # A user is not affected.
    assert _status(_attempt(hub, "member", client="198.51.100.4")[1]) == 101
    assert hub.admission.unauthenticated == 2
    # A place given back is free again.
    _close_by_client(strangers[0], 1.0)
    assert hub.admission.unauthenticated == 1
    assert _status(_attempt(hub, None, client="198.51.100.5", now=2.0)[1]) == 101


def test_an_upgrade_counts_its_address_where_the_adapter_does_not_see_tcp() -> None:
    # Under ASGI the HTTP server owns the sockets: the upgrade counts the address.
    hub = Hub(_unlimited(max_connections_per_ip=1))

    def upgrade() -> Upgrade:
        return Upgrade(hub, query="", headers=(), subprotocols=(), client=ADDRESS, now=0.0)

    first = upgrade()
    assert first.refusal is None
    second = upgrade()
    assert second.refusal is not None
    assert second.refusal.status == 503
    first.release()
    assert upgrade().refusal is None
