"""A closed connection of the core holds no reference cycle: once the adapter lets go of
it, reference counting frees it (and its session), however it ended. The adapters' own
objects are checked over real sockets in ``tests/adapters/test_freed.py``."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from wsproto.events import CloseConnection

from agentcast.protocol import HttpAnswer, HttpRequest, Hub


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def client_closes(p: Any) -> None:
    p.send(CloseConnection(code=1000, reason="bye"))


def server_closes(p: Any) -> None:
    p.server.close(1001, "going away", p.now, p.wall)
    p.flush()
    p.send(CloseConnection(code=1001))  # the client's answer


def server_gives_up(p: Any) -> None:
    p.server.close(1001, "going away", p.now, p.wall)
    p.tick(p.now + 60)  # the client never answers: the close timeout


def dropped(p: Any) -> None:
    p.eof()


def write_failed(p: Any) -> None:
    p.server.send_failed(p.now, p.wall)


def too_big(p: Any) -> None:
    p.send_text("x" * (p.hub.settings.max_message_size + 1))  # 1009
    p.flush()
    p.send(CloseConnection(code=1009))


ENDINGS: list[Callable[[Any], None]] = [
    client_closes,
    server_closes,
    server_gives_up,
    dropped,
    write_failed,
    too_big,
]


@pytest.mark.parametrize("end", ENDINGS, ids=[end.__name__ for end in ENDINGS])
def test_a_closed_websocket_is_freed_without_the_collector(h, hub, end, no_collector):
    p, _ = h.connect(hub, "alice")
    end(p)
    p.flush()
    assert p.server.closed
    assert not hub.clients_count()
    conn, session = weakref.ref(p.server), weakref.ref(p.server.session)
    del p
    assert conn() is None
    assert session() is None


def test_an_answered_http_request_is_freed_without_the_collector(h, hub, no_collector):
    p = h.Pair(hub)
    p.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    [request] = [e for e in p.events if isinstance(e, HttpRequest)]
    p.server.respond(HttpAnswer.plain(200, "ok"))
    assert p.server.closed
    conn = weakref.ref(p.server)
    del p, request
    assert conn() is None


def test_a_refused_upgrade_is_freed_without_the_collector(h, no_collector):
    hub = Hub()
    p = h.Pair(hub)
    p.feed(h.http_request("/elsewhere", headers=h.UPGRADE_HEADERS))  # 404
    assert p.server.closed
    conn = weakref.ref(p.server)
    del p
    assert conn() is None


def test_the_close_code_outlives_the_close(h, hub):
    p, _ = h.connect(hub, "alice")
    p.server.close(4000, "heartbeat timeout", p.now, p.wall)
    p.flush()
    p.send(CloseConnection(code=4000))
    assert p.server.closed
    assert p.server.transport.close_code == 4000
