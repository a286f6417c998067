"""PROTOCOL.md section 11: the session as Server-Sent Events, with bytes and explicit times.

The encoder is checked against a reader written from the WHATWG algorithm
(``conftest.parse_sse``); the session path through :class:`ServerConnection` with the
in-memory client ``conftest.Stream``.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol import (
    ConnectionClosed,
    Hub,
    Identity,
    LocalProtocolError,
    PreparedMessage,
    Route,
    ServerConnection,
    Settings,
    StaticAuthenticator,
    route,
)
from agentcast.protocol.eventstream import PING_COMMENT, EventStream, close_event
from agentcast.protocol.outbox import Outbox
from agentcast.protocol.routing import refusal
from agentcast.protocol.sse import encode_comment, encode_event, encode_retry
from agentcast.protocol.upgrade import TOKEN_COOKIE, Upgrade, extract_since, extract_token
from agentcast.protocol.websocket import TransportState, WebSocketTransport

# -- the encoder --------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)))
_ONE_LINE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"))
_ID = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\0"))


def _lines(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)


@given(data=_TEXT, event=st.none() | _ONE_LINE, id=st.none() | _ID)
def test_an_event_reads_back_as_written(h, data, event, id):
    events, comments = h.parse_sse(encode_event(data, event=event, id=id).decode())
    assert events == [(event or "message", _lines(data), id, None)]
    assert comments == []


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("event"), _TEXT, _ONE_LINE, _ID),
            st.tuples(st.just("comment"), _TEXT),
            st.tuples(st.just("retry"), st.integers(0, 10**9)),
        )
    )
)
def test_a_stream_of_events_comments_and_retries_reads_back_in_order(h, items):
    stream = b""
    expected = []
    comments: list[str] = []
    retry = None
    for item in items:
        if item[0] == "event":
            _, data, event, id = item
            stream += encode_event(data, event=event, id=id)
            expected.append((event or "message", _lines(data), id, retry))
        elif item[0] == "comment":
            stream += encode_comment(item[1])
            comments += _lines(item[1]).split("\n")
        else:
            stream += encode_retry(item[1])
            retry = item[1]
    events, seen = h.parse_sse(stream.decode())
    assert events == expected
    assert seen == comments


def test_encoder_framing_examples():
    assert encode_event('{"a":1}', event="x", id="7") == b'event: x\nid: 7\ndata: {"a":1}\n\n'
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event("") == b"data: \n\n"
    assert encode_event(" lead") == b"data:  lead\n\n"  # the reader strips one space
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("a\n\nb") == b": a\n:\n: b\n\n"
    assert encode_comment() == b":\n\n"
    assert encode_retry(3000) == b"retry: 3000\n\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event": "a\nb"}, "event must be one line"),
        ({"event": "a\rb"}, "event must be one line"),
        ({"id": "1\n2"}, "id must be one line"),
        ({"id": "1\x002"}, "U\\+0000"),
    ],
)
def test_fields_that_would_split_the_event_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_event("x", **kwargs)


def test_a_negative_retry_is_refused():
    with pytest.raises(ValueError, match="negative"):
        encode_retry(-1)


def test_a_prepared_message_is_encoded_as_an_event_once(h):
    message = PreparedMessage.build("notification", {"level": "info"}, h.WALL0, "00000000000000a1")
    assert message.event is message.event
    (event,), _ = h.parse_sse(message.event.decode())
    assert event == ("notification", message.text, "00000000000000a1", None)
    ping = PreparedMessage.build("ping", None, h.WALL0)
    assert ping.event == f"event: ping\ndata: {ping.text}\n\n".encode()


def test_close_event():
    assert close_event(1001, "server shutting down") == (
        b'event: close\ndata: {"type":"close","data":{"code":1001,'
        b'"reason":"server shutting down"}}\n\n'
    )


# -- the outbox and the sink ----------------------------------------------------------------


def test_an_event_outbox_counts_and_writes_events(h):
    outbox = Outbox(events=True)
    first = PreparedMessage.build("agent_status", {"n": 1}, h.WALL0, "01", key="A")
    newer = PreparedMessage.build("agent_status", {"n": 2}, h.WALL0, "02", key="A")
    outbox.push(b": raw\n\n")
    outbox.push(first)
    assert outbox.backlog == len(b": raw\n\n") + len(first.event)
    assert outbox.size_of(first) == len(first.event) != len(first.frame)
    assert outbox.replace(newer)  # conflation measures the event form too
    assert outbox.backlog == len(b": raw\n\n") + len(newer.event)
    assert outbox.firm_backlog == len(b": raw\n\n")
    assert outbox.take_bytes() == b": raw\n\n" + newer.event


def test_the_sink_pings_with_a_comment_and_closes_once():
    outbox = Outbox()
    sink = EventStream(outbox, Settings(events_retry=1.5))
    assert outbox.events
    sink.send_ping()
    sink.close(1013, "client too slow", 4.0)
    sink.close(1001, "again", 5.0)
    sink.send_ping()  # nothing after the close event
    assert (sink.close_code, sink.close_reason, sink.closed_at) == (1013, "client too slow", 4.0)
    assert outbox.take_bytes() == b"retry: 1500\n\n" + PING_COMMENT + close_event(
        1013, "client too slow"
    )


# -- routing and the request ------------------------------------------------------------------


def test_routes():
    settings = Settings(events_path="/stream")
    assert route("GET", "/stream", settings) is Route.EVENTS
    assert route("POST", "/stream", settings) is Route.METHOD_NOT_ALLOWED
    assert route("GET", "/events", settings) is Route.NOT_FOUND
    answer = refusal(Route.METHOD_NOT_ALLOWED, "/stream")
    assert answer is not None
    assert (answer.status, answer.header("allow")) == (405, "GET")


def test_post_to_the_event_stream_is_405(h, hub):
    conn = ServerConnection(hub, now=0.0)
    conn.receive_data(h.http_request("/events", method="POST"), 0.0, h.WALL0)
    status, headers, _ = h.parse_response(conn.data_to_send())
    assert (status, headers["allow"]) == (405, "GET")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events_path": "events"}, "events_path must start with '/'"),
        ({"events_path": "/ws"}, "must differ"),
        ({"events_retry": 0}, "events_retry must be positive"),
    ],
)
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Settings(**kwargs)


def test_token_sources():
    cookie = ("Cookie", f"theme=dark; {TOKEN_COOKIE}=from-cookie; x=1")
    assert extract_token("", [cookie], (), cookie=TOKEN_COOKIE) == ("from-cookie", None)
    # The query and the header come first; a WebSocket never reads the cookie.
    assert extract_token("token=q", [cookie], (), cookie=TOKEN_COOKIE)[0] == "q"
    bearer = ("Authorization", "Bearer b")
    assert extract_token("", [bearer, cookie], (), cookie=TOKEN_COOKIE)[0] == "b"
    assert extract_token("", [cookie], ()) == (None, None)
    quoted = ("cookie", f'{TOKEN_COOKIE}="q1"; other')
    assert extract_token("", [quoted], (), cookie=TOKEN_COOKIE)[0] == "q1"
    empty = ("cookie", f"{TOKEN_COOKIE}=")
    assert extract_token("", [empty], (), cookie=TOKEN_COOKIE)[0] is None


def test_last_event_id_is_since_and_wins_over_the_query():
    assert extract_since("", [("Last-Event-ID", "00a")]) == "00a"
    assert extract_since("since=001", [("last-event-id", "00a")]) == "00a"
    assert extract_since("since=001", [("last-event-id", "  ")]) == "001"
    assert extract_since("since=001&x=1", [("accept", "text/event-stream")]) == "001"
    assert extract_since("since=", []) == ""
    assert extract_since("", []) is None
    assert extract_since("since=002") == "002"  # a WebSocket's URL alone


def test_the_resume_point_reaches_the_session_opening_path(h, hub):
    """``Last-Event-ID`` lands where a WebSocket's ``since`` does: on the Upgrade that
    opens the session."""
    upgrade = Upgrade(
        hub,
        query="token=abc123&since=0001",
        headers=[("Last-Event-ID", "0002")],
        subprotocols=(),
        client="127.0.0.1",
        now=0.0,
        cookie=TOKEN_COOKIE,
    )
    assert (upgrade.token, upgrade.since) == ("abc123", "0002")
    websocket = Upgrade(hub, query="since=0001", headers=(), subprotocols=(), client=None, now=0.0)
    assert websocket.since == "0001"


def test_stream_needs_a_pending_request():
    transport = WebSocketTransport(now=0.0)
    with pytest.raises(LocalProtocolError, match="stream"):
        transport.stream(b"HTTP/1.1 200 OK\r\n\r\n")


# -- the session over the stream ----------------------------------------------------------------


def test_the_stream_carries_the_session(h, hub):
    stream = h.Stream(hub)
    assert stream.status == 200
    headers = stream.headers
    assert headers["content-type"] == "text/event-stream"
    assert headers["connection"] == "close"
    assert "content-length" not in headers
    assert "no-cache" in headers["cache-control"]
    assert "access-control-allow-origin" not in headers  # no Origin: not a CORS request
    assert stream.body.startswith("retry: 3000\n\n")
    events = stream.sse()
    assert [e.event for e in events] == ["auth", "presence_state", "agent_state", "user_presence"]
    assert json.loads(events[0].data) == {
        "type": "auth",
        "data": {"success": True, "userId": "user_abc123"},
        "timestamp": h.TS0,
    }
    assert events[0].id is None
    assert events[1].id is None
    assert events[2].id is None  # the snapshot is not a resume point
    assert events[3].id == json.loads(events[3].data)["id"]
    assert hub.clients_count() == hub.authenticated_clients_count() == 1
    assert hub.stats.opened_total == 1


def test_broadcasts_are_the_same_json_as_over_websocket_with_their_ids(h, hub):
    ws, _ = h.connect(hub, "abc123")
    stream = h.Stream(hub, "/events?token=zed")
    ws.messages()
    before = len(stream.sse())
    published = hub.broadcast_agent_status("A", "working", "t", 50, now=1.0, wall=h.WALL0 + 1)
    chat = hub.broadcast_chat_message("c", "m", "hi\nthere", "bot", now=1.0, wall=h.WALL0 + 1)
    events = stream.sse()[before:]
    assert [(e.event, e.id) for e in events] == [
        ("agent_status", published.id),
        ("chat_message", chat.id),
    ]
    assert [json.loads(e.data) for e in events] == ws.messages()[-2:]


def test_a_notification_for_one_user_reaches_only_that_user(h, hub):
    a = h.Stream(hub, "/events?token=a")
    b = h.Stream(hub, "/events", headers=[("Authorization", "Bearer b")])
    a.sse(), b.sse()
    seen_by_b = len(b.sse())
    hub.send_notification("info", "for a", "user_a", now=1.0, wall=h.WALL0 + 1)
    assert a.types()[-1] == "notification"
    assert json.loads(a.sse()[-1].data)["data"]["message"] == "for a"
    assert len(b.sse()) == seen_by_b


def test_the_token_may_come_in_the_cookie(h, hub):
    stream = h.Stream(hub, "/events", headers=[("Cookie", f"{TOKEN_COOKIE}=c00kie")])
    assert stream.messages()[0]["data"] == {"success": True, "userId": "user_c00kie"}


def test_heartbeat_is_a_ping_event_and_a_comment_and_silence_never_closes(h, hub):
    stream = h.Stream(hub)
    stream.read()
    assert stream.server.next_deadline() == 30.0
    stream.tick(30.0)
    data = stream.read().decode()
    assert data.endswith(": ping\n\n")
    assert stream.types()[-1] == "ping"
    # Far past the heartbeat timeout: the client cannot send, so it is not "silent".
    for n in range(2, 12):
        stream.tick(30.0 * n)
    assert not stream.server.closed
    stream.read()
    assert stream.raw.count(b": ping\n\n") == 11
    assert stream.types().count("ping") == 11


def test_a_refused_token_gets_the_auth_event_and_the_stream_ends(h, hub):
    auth = StaticAuthenticator({"good": "u"})
    stream = h.Stream(hub, "/events?token=bad", authenticator=auth)
    assert stream.status == 200
    events = stream.sse()
    assert [e.event for e in events] == ["auth", "close"]
    assert json.loads(events[0].data)["data"]["success"] is False
    assert json.loads(events[1].data) == {
        "type": "close",
        "data": {"code": 1008, "reason": "authentication required"},
    }
    assert stream.server.closed
    assert [e for e in stream.events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(code=1008, reason="authentication required")
    ]
    assert hub.clients_count() == 0
    assert hub.admission.connections == 0
    assert hub.stats.closes[1008] == 1


def test_no_token_is_unauthenticated_too(h, hub):
    stream = h.Stream(hub, "/events")
    assert stream.types() == ["auth", "close"]
    assert stream.messages()[0]["data"] == {"success": False, "error": "Missing token"}


@pytest.mark.parametrize("target", ["/events", "/events?token=bad"])
def test_require_auth_answers_401_and_opens_nothing(h, target):
    hub = Hub(Settings(require_auth=True))
    stream = h.Stream(hub, target, authenticator=StaticAuthenticator({"good": "u"}))
    assert stream.status == 401
    assert stream.headers["www-authenticate"] == "Bearer"
    assert stream.server.closed
    assert hub.stats.opened_total == 0
    assert hub.admission.refused["auth"] == 1
    assert hub.admission.connections == 0


def test_origin_checks_and_cors(h):
    hub = Hub(Settings(allowed_origins=("https://app.example",)))
    allowed = h.Stream(hub, headers=[("Origin", "https://app.example")])
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert allowed.headers["vary"] == "Origin"
    refused = h.Stream(hub, headers=[("Origin", "https://evil.example")])
    assert refused.status == 403
    assert "access-control-allow-origin" not in refused.headers
    assert hub.admission.refused["origin"] == 1


def test_limits_count_streams_with_websockets(h):
    hub = Hub(Settings(max_connections=2, max_connections_per_user=1))
    first = h.Stream(hub)
    assert first.status == 200
    assert h.Stream(hub).status == 503  # the same user
    h.connect(hub, "other")
    assert h.Stream(hub, "/events?token=third").status == 503  # max_connections
    first.eof()
    assert h.Stream(hub, "/events?token=third").status == 200


def test_the_client_leaving_ends_the_session(h, hub):
    stream = h.Stream(hub)
    stream.server.receive_data(b"anything the client sends is ignored", 1.0, h.WALL0)
    assert not stream.server.closed
    assert stream.eof() == [ConnectionClosed(code=1001, reason="")]
    assert stream.server.closed
    assert hub.clients_count() == 0
    assert hub.admission.connections == 0


def test_a_failed_write_ends_the_session(h, hub):
    stream = h.Stream(hub)
    stream.server.send_failed(1.0, h.WALL0 + 1)
    assert stream.server.events_received() == [ConnectionClosed(code=1006, reason="")]
    assert stream.server.closed
    assert hub.clients_count() == 0


def test_shutdown_sends_the_close_event_and_ends_the_stream(h, hub):
    stream = h.Stream(hub)
    stream.read()
    stream.server.close(1001, "server shutting down", 5.0, h.WALL0 + 5)
    assert stream.read() == (
        b'event: close\ndata: {"type":"close","data":{"code":1001,'
        b'"reason":"server shutting down"}}\n\n'
    )
    assert stream.server.closed
    assert stream.server.events_received() == [
        ConnectionClosed(code=1001, reason="server shutting down")
    ]
    assert stream.server.transport.state is TransportState.CLOSED


def test_token_expiry_ends_the_stream_with_4001(h, hub):
    class Expiring:
        def authenticate(self, token, now):
            return Identity(user_id="u", expires_at=now + 10)

    stream = h.Stream(hub, authenticator=Expiring())
    stream.tick(10.0)
    assert stream.sse()[-1].event == "close"
    assert json.loads(stream.sse()[-1].data)["data"]["code"] == 4001
    assert stream.server.closed


def test_a_slow_reader_is_dropped_while_others_continue(h):
    hub = Hub(Settings(max_send_buffer=4096, conflation_threshold=1 << 20))
    slow = h.Stream(hub, "/events?token=slow")
    fast = h.Stream(hub, "/events?token=fast")
    slow.server.data_to_send()  # a write in flight that never completes
    for n in range(40):
        hub.send_notification("info", "x" * 100 + str(n), now=1.0, wall=h.WALL0 + 1)
        fast.read()
    assert hub.stats.slow_client_drops == 1
    # The session closed during a broadcast: the stream ends at the next timer.
    assert slow.server.next_deadline() == 1.0
    assert not slow.server.closed
    slow.tick(1.0)
    assert slow.server.closed
    assert [e for e in slow.events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(code=1013, reason="client too slow")
    ]
    data = slow.server.data_to_send()
    assert data.endswith(close_event(1013, "client too slow"))
    assert b"notification" not in data  # what was pending was dropped
    notes = [e for e in fast.sse() if e.event == "notification"]
    assert len(notes) == 40
    assert [json.loads(e.data)["data"]["message"][100:] for e in notes] == [
        str(n) for n in range(40)
    ]


def test_a_send_buffer_too_small_for_the_first_message_ends_the_stream_cleanly(h):
    """A send buffer too small for the first message drops the client while the
    session opens; the stream still ends cleanly."""
    hub = Hub(Settings(max_send_buffer=16))
    stream = h.Stream(hub)
    assert stream.server.closed
    assert stream.sse()[-1].event == "close"
    assert json.loads(stream.sse()[-1].data)["data"]["code"] == 1013


def test_the_writer_is_woken_when_the_stream_ends_with_output_pending(h, hub):
    """A writer waiting on a client that reads nothing must learn that the stream is
    over even though output was already pending (the output callback fires anyway)."""
    stream = h.Stream(hub)
    wakes: list[int] = []
    stream.server.on_output = lambda: wakes.append(1)
    hub.broadcast_agent_status("A", "idle", now=1.0, wall=h.WALL0 + 1)
    assert len(wakes) == 1
    stream.server.close(1001, "server shutting down", 2.0, h.WALL0 + 2)
    assert len(wakes) >= 2
    assert stream.server.closed


def test_other_cookies_alone_are_no_token():
    headers = [("Cookie", "a=1; b"), ("Cookie", "c=2")]
    assert extract_token("", headers, (), cookie=TOKEN_COOKIE) == (None, None)


def test_a_client_gone_before_the_verdict_gets_nothing(h, hub):
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
    conn.receive_data(h.http_request("/events?token=abc123"), 0.0, h.WALL0)
    assert [type(e).__name__ for e in conn.events_received()] == ["AuthRequested"]
    assert hub.admission.connections == 1
    conn.receive_eof(0.5, h.WALL0)
    assert conn.closed
    assert hub.admission.connections == 0
    conn.complete_auth(Identity(user_id="u"), 1.0, h.WALL0 + 1)  # the verdict, too late
    assert conn.data_to_send() == b""
    assert hub.clients_count() == 0
    assert hub.stats.opened_total == 0


def test_the_request_times_out_while_the_verdict_is_awaited(h, hub):
    conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
    conn.receive_data(h.http_request("/events?token=abc123"), 0.0, h.WALL0)
    conn.events_received()
    assert conn.next_deadline() == hub.settings.handshake_timeout
    conn.handle_timer(hub.settings.handshake_timeout, h.WALL0)
    assert h.parse_response(conn.data_to_send())[0] == 408
    conn.complete_auth(Identity(user_id="u"), 11.0, h.WALL0)
    assert hub.clients_count() == 0
    assert hub.admission.connections == 0


def test_channels_in_the_url_scope_the_stream_as_a_websocket(h, hub):
    """``channels=`` on the stream subscribes as on a WebSocket (each answered
    ``subscribed`` right after ``auth``), and a channel's messages reach only its
    subscribers."""
    listener = h.Stream(hub, "/events?token=abc123&channels=room:1")
    other = h.Stream(hub, "/events?token=other")
    subscribed = [m for m in listener.messages() if m["type"] == "subscribed"]
    assert [m["data"] for m in subscribed] == [{"channel": "room:1"}]
    seen_by_other = len(other.sse())
    published = hub.send_notification("info", "in room 1", channel="room:1", now=1.0, wall=h.WALL0)
    last = listener.sse()[-1]
    assert (last.event, last.id) == ("notification", published.id)
    assert len(other.sse()) == seen_by_other
