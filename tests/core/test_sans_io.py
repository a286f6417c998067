"""The core is Sans-IO: no I/O or clock imports, importable without any event loop
library, and its layers work apart (transport without session, session without
transport)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

import agentcast.protocol
from agentcast.protocol import (
    BytesReceived,
    ConnectionClosed,
    HttpAnswer,
    Hub,
    Identity,
    Session,
    Settings,
    TextReceived,
    TransportState,
    UpgradeRequested,
    WebSocketTransport,
)

PROTOCOL_DIR = Path(agentcast.protocol.__file__).parent
FORBIDDEN = {"anyio", "asyncio", "trio", "socket", "threading", "time", "sniffio", "selectors"}


def protocol_sources() -> list[Path]:
    files = sorted(PROTOCOL_DIR.glob("*.py"))
    assert PROTOCOL_DIR.name == "protocol"
    assert any(f.name == "__init__.py" for f in files)
    assert len(files) >= 10
    return files


def imports_of(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, level) of every import statement, anywhere in the tree."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
            if node.module is None:  # from . import x
                found += [(alias.name, node.level) for alias in node.names]
    return found


def test_protocol_imports_no_io_clock_or_adapters():
    offenders = []
    for path in protocol_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for module, level in imports_of(tree):
            top = module.split(".")[0]
            if level == 0 and (top in FORBIDDEN or module.startswith("agentcast.adapters")):
                offenders.append(f"{path.name}: import {module}")
            if level >= 2 and top == "adapters":
                offenders.append(f"{path.name}: from {'.' * level}{module}")
        for node in ast.walk(tree):
            # No dynamic imports that could dodge the check above.
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name in {"__import__", "import_module"}:
                    offenders.append(f"{path.name}:{node.lineno}: {name}()")
            # No clock reads through datetime either.
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"now", "utcnow", "today"}
                and isinstance(node.value, ast.Name)
                and node.value.id in {"datetime", "date"}
            ):
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offenders == []


def test_the_import_check_would_catch_an_offender():
    tree = ast.parse("import time\nfrom asyncio import sleep\nfrom ..adapters import x\n")
    assert imports_of(tree) == [("time", 0), ("asyncio", 0), ("adapters", 2)]


def test_protocol_imports_with_event_loop_libraries_absent():
    blocked = ["anyio", "trio", "asyncio", "sniffio", "socket", "selectors", "threading"]
    code = f"""
import os, sys
for name in {blocked!r}:
    sys.modules[name] = None  # "import name" now fails
import agentcast.protocol
from agentcast.protocol import ServerConnection, Hub
ServerConnection(Hub(), now=0.0)
loaded = sorted(m for m in sys.modules if m.startswith("agentcast.adapters"))
print("ok", loaded)
sys.stdout.flush()
os._exit(0)  # skip interpreter shutdown, which wants the real threading module
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok []"


def test_the_blocking_works():
    code = "import sys; sys.modules['anyio'] = None; import anyio"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


# -- the transport alone: an echo application, no session ------------------------------------


def open_transport(**kwargs) -> tuple[WebSocketTransport, WSConnection]:
    ws = WebSocketTransport(now=0.0, **kwargs)
    client = WSConnection(ConnectionType.CLIENT)
    ws.receive_data(client.send(Request(host="h", target="/ws?x=1", subprotocols=["echo"])), 0.0)
    [upgrade] = ws.events_received()
    assert isinstance(upgrade, UpgradeRequested)
    assert (upgrade.path, upgrade.query, upgrade.subprotocols) == ("/ws", "x=1", ("echo",))
    assert ws.state is TransportState.UPGRADING
    ws.accept(0.0, "echo")
    client.receive_data(ws.data_to_send())
    [accepted] = list(client.events())
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == "echo"
    return ws, client


def echo(ws: WebSocketTransport) -> None:
    for event in ws.events_received():
        if isinstance(event, TextReceived):
            ws.send_text(event.text)
        elif isinstance(event, BytesReceived):
            ws.send_bytes(event.data)


def test_transport_runs_an_echo_application():
    ws, client = open_transport()
    wakes = []
    ws.on_output = lambda: wakes.append(1)
    assert ws.on_output is not None
    ws.receive_data(client.send(Message(data="héllo")) + client.send(Message(data=b"\x00")), 1.0)
    echo(ws)
    assert wakes == [1]  # woken once, when output became pending
    ws.send_ping(b"hb")
    client.receive_data(ws.data_to_send())
    events = list(client.events())
    assert [type(e) for e in events] == [TextMessage, BytesMessage, Ping]
    assert (events[0].data, events[1].data, events[2].payload) == ("héllo", b"\x00", b"hb")
    assert ws.last_activity == 1.0
    # No session: no JSON answers, no heartbeat of its own.
    ws.receive_data(client.send(Message(data='{"type":"ping"}')), 2.0)
    assert ws.events_received() == [TextReceived(text='{"type":"ping"}')]
    assert ws.data_to_send() == b""
    assert ws.next_deadline() is None
    ws.send_text("{}")
    ws.close(1000, "done", 3.0)
    client.receive_data(ws.data_to_send())
    [frame, close] = list(client.events())
    assert isinstance(frame, TextMessage)
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1000, "done")
    # Sending after close queues nothing.
    ws.send_text("x")
    ws.send_bytes(b"x")
    ws.send_ping()
    assert ws.data_to_send() == b""
    ws.receive_data(client.send(close.response()), 4.0)
    assert ws.events_received() == [ConnectionClosed(code=1000, reason="done")]
    assert ws.closed


def test_transport_reject():
    ws = WebSocketTransport(now=0.0)
    client = WSConnection(ConnectionType.CLIENT)
    ws.receive_data(client.send(Request(host="h", target="/ws")), 0.0)
    ws.events_received()
    ws.respond(HttpAnswer.plain(403, "Forbidden: origin not allowed", [("x-why", "origin")]))
    client.receive_data(ws.data_to_send())
    [reject, *_] = list(client.events())
    assert isinstance(reject, RejectConnection)
    assert reject.status_code == 403
    assert ws.closed


def test_transport_output_not_yet_taken_can_be_discarded():
    ws, client = open_transport()
    ws.send_text("hi")
    ws.outbox.discard()
    assert ws.data_to_send() == b""
    ws.send_text("hi")
    client.receive_data(ws.data_to_send())
    assert [e.data for e in client.events()] == ["hi"]


# -- the session alone: fed decoded text, no wsproto ---------------------------------------


def test_session_works_on_decoded_text_without_a_transport(h):
    hub = Hub(Settings(presence_grace=0))
    sink = h.ListSink()
    session = Session(hub, sink, Identity(user_id="u1"), now=0.0, wall=h.WALL0)
    assert [m["type"] for m in sink.messages()] == [
        "auth",
        "presence_state",
        "agent_state",
        "user_presence",
    ]
    session.receive_text('{"type":"ping"}', 1.0, h.WALL0 + 1)
    session.receive_text('{"type":"user_presence","data":"busy"}', 1.0, h.WALL0 + 1)
    session.receive_text("nope", 1.0, h.WALL0 + 1)
    session.receive_binary(1.0, h.WALL0 + 1)
    assert [m["type"] for m in sink.messages()] == ["pong", "user_presence", "error", "error"]
    hub.send_notification("info", "x", now=2.0, wall=h.WALL0 + 2)
    assert [m["type"] for m in sink.messages()] == ["notification"]
    session.handle_timer(30.0, h.WALL0 + 30)
    assert [m["type"] for m in sink.messages()] == ["ping"]
    assert sink.pings == 1
    session.handle_timer(61.0, h.WALL0 + 61)
    assert sink.closed == (4000, "heartbeat timeout")
    assert session.closed
    assert session.next_deadline() is None
    assert hub.clients_count() == 0
    # Input after the close is ignored.
    session.receive_text('{"type":"ping"}', 62.0, h.WALL0 + 62)
    session.receive_binary(62.0, h.WALL0 + 62)
    session.handle_timer(90.0, h.WALL0 + 90)
    session.complete_auth(Identity(user_id="u1"), 90.0, h.WALL0 + 90)
    assert sink.messages() == []
    session.ended(4000, 63.0, h.WALL0 + 63)
    assert hub.stats.closes[4000] == 1


def test_session_touch_is_liveness(h, hub):
    sink = h.ListSink()
    session = Session(hub, sink, Identity(user_id="u1"), now=0.0, wall=h.WALL0)
    session.touch(50.0)
    session.touch(10.0)  # an older time never moves liveness back
    session.handle_timer(60.0, h.WALL0 + 60)
    assert sink.closed is None
    assert session.next_deadline() == 90.0  # next ping; the timeout is at 110
    session.handle_timer(109.999, h.WALL0 + 110)
    assert sink.closed is None
    session.handle_timer(110.0, h.WALL0 + 110)
    assert sink.closed == (4000, "heartbeat timeout")


def test_server_connection_on_output_wakes_the_writer(h, hub):
    p, _ = h.connect(hub, "a")
    p.server.data_to_send()
    wakes: list[int] = []
    p.server.on_output = lambda: wakes.append(1)
    assert p.server.on_output is not None
    hub.send_notification("info", "1", now=0.0, wall=h.WALL0)
    hub.send_notification("info", "2", now=0.0, wall=h.WALL0)
    assert wakes == [1]  # once, when the outbox stopped being empty
    p.server.data_to_send()
    hub.send_notification("info", "3", now=0.0, wall=h.WALL0)
    assert wakes == [1, 1]


def test_on_output_also_says_when_a_close_moves_the_deadline(h, hub):
    # An adapter whose write is stuck (a client that reads nothing) waits on on_output and
    # next_deadline(): when the server starts closing with output still pending, it must
    # learn of the closing handshake's deadline, or it would wait for ever.
    p, _ = h.connect(hub, "a")
    p.server.data_to_send()
    wakes: list[float | None] = []
    p.server.on_output = lambda: wakes.append(p.server.next_deadline())
    hub.send_notification("info", "pending", now=0.0, wall=h.WALL0)
    assert len(wakes) == 1
    p.server.close(1001, "going away", 1.0, h.WALL0 + 1)
    assert wakes[1:] == [1.0 + hub.settings.close_timeout]
