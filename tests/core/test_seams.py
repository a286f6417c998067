"""The seams inside the core: no import cycle, and Hub and Session each usable with a
stand-in for the other (the interfaces a Redis backplane plugs into)."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

from agentcast.protocol import (
    AgentStatus,
    Hub,
    Identity,
    Notification,
    PreparedMessage,
    Session,
    Settings,
    Stats,
)
from agentcast.protocol.history import format_id

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


def _imports(module: Path) -> set[str]:
    """The protocol modules *module* imports, wherever the import statement is (under
    ``if TYPE_CHECKING:`` and inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1:
                found.add(name.split(".")[0] if name else "")
            elif name.startswith("agentcast.protocol."):
                found.add(name.split(".")[2])
    found.discard("")
    return found


def test_protocol_has_no_import_cycle():
    graph = {path.stem: _imports(path) for path in PROTOCOL.glob("*.py")}
    graph.pop("__init__")
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in done:
            return
        for imported in graph.get(name, ()):
            visit(imported, (*trail, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    assert "hub" not in graph["session"]
    assert "session" not in graph["hub"]


class Recorder:
    """A hub member that is not a Session: what a test, or another transport, may be."""

    def __init__(self, user_id: str | None, presence: str = "online") -> None:
        self.user_id = user_id
        self.presence = presence
        self.subscriptions: dict[str, None] = {}
        self.got: list[PreparedMessage] = []

    def deliver(
        self, message: PreparedMessage, now: float, wall: float, *, counted: bool = True
    ) -> bool:
        self.got.append(message)
        return True


def test_deliver_local_uses_the_given_id_and_the_delivery_rules(h):
    hub = Hub(Settings(presence_window=0))
    alice, bob, anon = Recorder("alice"), Recorder("bob"), Recorder(None)
    for member in (alice, bob, anon):
        hub.open_session(member, 0.0, h.WALL0)
    assert [m.kind for m in alice.got] == [
        "presence_state",
        "agent_state",
        "user_presence",
        "user_presence",
    ]
    assert anon.got == []
    for member in (alice, bob):
        member.got.clear()
    note = Notification(level="info", message="for bob", user_id="bob")
    published = hub.deliver_local(note, "00000000000000ff", now=1.0, wall=h.WALL0 + 1)
    assert (published.id, published.delivered) == ("00000000000000ff", 1)
    assert alice.got == []
    [message] = bob.got
    assert json.loads(message.text)["id"] == "00000000000000ff"
    status = AgentStatus(agent_name="a", state="idle")
    assert hub.deliver_local(status, "0000000000000100", now=1.0, wall=h.WALL0).delivered == 2
    assert anon.got == []
    # An id given elsewhere does not move the hub's own sequence.
    assert hub.publish(status, now=2.0, wall=h.WALL0).id == format_id(0, 3)
    # ... and is not kept for a resume: this hub's history did not issue it.
    assert hub.history.since(format_id(0, 2), now=2.0) is not None
    assert [e.id for e in hub.history.since(format_id(0, 0), now=2.0) or []] == [format_id(0, 3)]


def test_members_presence_and_close_through_the_public_seam(h):
    hub = Hub(Settings(presence_grace=0, presence_window=0))
    watcher, tab = Recorder("w"), Recorder("u")
    hub.open_session(watcher, 0.0, h.WALL0)
    hub.open_session(tab, 0.0, h.WALL0)
    watcher.got.clear()
    tab.presence = "busy"
    hub.presence_changed(tab, 1.0, h.WALL0)
    hub.close_session(tab, 2.0, h.WALL0)
    hub.close_session(tab, 2.0, h.WALL0)  # idempotent
    statuses = [json.loads(m.text)["data"]["status"] for m in watcher.got]
    assert statuses == ["busy", "offline"]
    assert hub.clients_count() == 1


class Host:
    """A stand-in hub for a session alone: settings, counters, and a log of calls."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.stats = Stats()
        self.batch = 0
        self.calls: list[str] = []

    def open_session(
        self, member: Session, now: float, wall: float, *, resuming: bool = False
    ) -> None:
        self.calls.append("open, resuming" if resuming else "open")

    def resume(
        self, member: Session, since: str, now: float, wall: float, *, complete: bool = True
    ) -> None:
        self.calls.append(f"resume after {since}")

    def presence_changed(self, member: Session, now: float, wall: float) -> None:
        self.calls.append(f"presence {member.presence}")

    def close_session(self, member: Session, now: float, wall: float) -> None:
        self.calls.append("close")


def test_a_session_needs_only_the_host_interface(h):
    host, sink = Host(), h.ListSink()
    session = Session(host, sink, Identity(user_id="u"), now=0.0, wall=h.WALL0)
    session.receive_text('{"type":"user_presence","data":"away"}', 1.0, h.WALL0 + 1)
    session.close(1000, "bye", 2.0, h.WALL0 + 2)
    assert host.calls == ["open", "presence away", "close"]
    assert sink.types() == ["auth"]
    assert host.stats.messages_in == Counter({"user_presence": 1})
    assert not session.deliver(PreparedMessage.build("ping", None, h.WALL0), 3.0, h.WALL0)


def test_a_member_may_publish_while_receiving_and_everyone_gets_both_once(h):
    hub = Hub()

    class Relay(Recorder):
        def deliver(
            self, message: PreparedMessage, now: float, wall: float, *, counted: bool = True
        ) -> bool:
            super().deliver(message, now, wall)
            if message.kind == "agent_status":
                hub.send_notification("info", "relayed", now=now, wall=wall)
            return True

    relay, other = Relay("r"), Recorder("o")
    hub.open_session(relay, 0.0, h.WALL0)
    hub.open_session(other, 0.0, h.WALL0)
    relay.got.clear()
    other.got.clear()
    assert hub.broadcast_agent_status("a", "idle", now=1.0, wall=h.WALL0).delivered == 2
    assert [m.kind for m in relay.got] == ["agent_status", "notification"]
    assert sorted(m.kind for m in other.got) == ["agent_status", "notification"]


def test_the_resume_point_reaches_the_host(h):
    host = Host()
    Session(host, h.ListSink(), Identity(user_id="u"), now=0.0, wall=h.WALL0, since="0042")
    assert host.calls == ["open, resuming", "resume after 0042"]
    # Unauthenticated: nothing to resume.
    host = Host()
    Session(host, h.ListSink(), None, now=0.0, wall=h.WALL0, since="0042")
    assert host.calls == ["open"]
