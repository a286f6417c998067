"""The dashboard at ``/`` in a real browser (Chromium), against a real server: what a
person opening ``http://127.0.0.1:3000/`` sees as agents report, people come and go, and
the server restarts."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture fails (CI) or skips with the reason
    expect = None

from .conftest import REPO, free_port

#: ``UPDATE_SCREENSHOT=1`` writes the dashboard's picture in the docs.
SCREENSHOT = REPO / "docs" / "dashboard.png"


def agent(name, state, task, progress):
    return {"agentName": name, "state": state, "currentTask": task, "progress": progress}


def open_dashboard(new_page, server, token="abc123"):
    page = new_page()
    page.goto(f"{server.base}/?token={token}")
    expect(page.locator("#connection")).to_have_text(f"Connected as user_{token}")
    return page


def test_agents_notifications_and_chat_appear_live(new_page, serve, tmp_path):
    server = serve()
    page = open_dashboard(new_page, server)
    # The token was read, then removed from the address bar and the history entry.
    assert page.url == f"{server.base}/"

    server.publish(
        "/api/agent-status",
        [
            {
                "agentName": "planner",
                "state": "working",
                "currentTask": "Sprint plan",
                "progress": 10,
            },
            {"agentName": "CLOUD_ASSISTANT", "state": "idle"},
            {"agentName": "reviewer", "state": "stopped", "progress": 100},
            {
                "agentName": "planner",
                "state": "working",
                "currentTask": "Sprint plan",
                "progress": 45,
            },
        ],
    )
    server.publish(
        "/api/chat-messages",
        {
            "conversationId": "conv-123",
            "messageId": "msg-456",
            "content": "Task completed successfully!",
            "sender": "ENGINEERING_LEAD_SUPERVISOR",
            "timestamp": "2025-12-26T13:00:00.000Z",
        },
    )
    server.publish(
        "/api/chat-messages",
        {
            "conversationId": "conv-9",
            "messageId": "m-1",
            "content": "Another thread",
            "sender": "CLOUD_ASSISTANT",
            "timestamp": "2025-12-26T13:01:00.000Z",
        },
    )
    server.publish("/api/notifications", {"level": "success", "message": "All tests passed!"})
    server.publish("/api/notifications", {"level": "warning", "message": "Disk at 85 %"})

    planner = page.locator('tr[data-agent="planner"]')
    expect(planner).to_have_attribute("data-state", "working")
    expect(planner.locator(".task")).to_have_text("Sprint plan")
    expect(planner.locator("progress")).to_have_js_property("value", 45)
    expect(planner.locator(".percent")).to_have_text("45 %")
    expect(page.locator('tr[data-agent="reviewer"] .state')).to_have_text("stopped")
    expect(page.locator("#agent-rows tr")).to_have_count(3)
    # Rows in name order, whatever order the agents reported in.
    expect(page.locator("#agent-rows th")).to_have_text(["CLOUD_ASSISTANT", "planner", "reviewer"])

    newest = page.locator("#notifications li").first
    expect(newest).to_have_attribute("data-level", "warning")
    expect(newest).to_contain_text("Disk at 85 %")
    expect(page.locator("#notifications li.level-success")).to_contain_text("All tests passed!")

    # The first conversation is shown; the other is one keyboard choice away.
    expect(page.locator("#chat li")).to_have_count(1)
    expect(page.locator("#chat li")).to_contain_text("ENGINEERING_LEAD_SUPERVISOR")
    expect(page.locator("#chat li")).to_contain_text("Task completed successfully!")
    expect(page.locator("#conversation option")).to_have_text(["conv-123", "conv-9 (1 new)"])
    page.locator("#conversation").focus()
    page.keyboard.press("ArrowDown")
    expect(page.locator("#chat li")).to_contain_text("Another thread")

    assert page.problems == []  # no CSP violation, no script error
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    take_screenshot(new_page, server, page, Path(shot))


def take_screenshot(new_page, server, page, path):
    """The picture in the docs: a few agents at work, two people, a chat."""
    server.publish(
        "/api/agent-status",
        [
            {
                "agentName": "CLOUD_ASSISTANT",
                "state": "working",
                "currentTask": "Analyzing code",
                "progress": 72,
            },
            {
                "agentName": "test-runner",
                "state": "working",
                "currentTask": "Running 1,204 tests",
                "progress": 31,
            },
        ],
    )
    server.publish("/api/notifications", {"level": "error", "message": "Deploy to staging failed"})
    server.publish("/api/notifications", {"level": "info", "message": "Nightly build started"})
    other = open_dashboard(new_page, server, "maria")
    other.select_option("#presence", "busy")
    expect(page.locator('#people li[data-user="user_maria"]')).to_have_attribute(
        "data-status", "busy"
    )
    page.locator("#conversation").select_option("conv-123")
    expect(page.locator("#chat li")).to_have_count(1)
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000


def test_another_user_online_then_away_then_offline(new_page, serve):
    server = serve("--presence-grace", "1")
    page = open_dashboard(new_page, server)
    me = page.locator('#people li[data-user="user_abc123"]')
    expect(me).to_have_attribute("data-status", "online")
    expect(me).to_contain_text("(you)")

    bob_page = open_dashboard(new_page, server, "bob")
    bob = page.locator('#people li[data-user="user_bob"]')
    expect(bob).to_have_attribute("data-status", "online")
    expect(bob.locator(".status-label")).to_have_text("Online")

    bob_page.locator("#presence").select_option("away")  # the control, as a person uses it
    expect(bob).to_have_attribute("data-status", "away")
    expect(bob.locator(".status-label")).to_have_text("Away")

    bob_page.close()
    expect(bob).to_have_attribute("data-status", "offline")  # after the grace period
    expect(me).to_have_attribute("data-status", "online")


def test_the_page_reconnects_after_a_server_restart(new_page, serve):
    server = serve()
    page = open_dashboard(new_page, server)
    page.locator("#presence").select_option("busy")
    server.publish("/api/notifications", {"level": "info", "message": "before the restart"})
    expect(page.locator("#notifications li")).to_have_count(1)

    server.kill()
    pill = page.locator("#connection")
    expect(pill).to_have_text(re.compile(r"^Reconnecting"))
    expect(pill).to_have_attribute("data-state", re.compile(r"^(re)?connecting$"))

    server.start()  # the same port
    expect(pill).to_have_text("Connected as user_abc123", timeout=30_000)
    # The page says it came back; a server that keeps history then says what the resume
    # gave (after a restart without Redis: a gap, the ids of a new epoch).
    expect(page.locator("#resume")).to_have_text(re.compile(r"^(Reconnected at|History gap)"))
    server.publish("/api/notifications", {"level": "info", "message": "after the restart"})
    expect(page.locator("#notifications li").first).to_contain_text("after the restart")
    # The presence set before the restart is set again on the new connection.
    me = page.locator('#people li[data-user="user_abc123"]')
    expect(me).to_have_attribute("data-status", "busy")


def test_a_thousand_updates_are_drawn_per_frame(new_page, serve):
    server = serve()
    page = open_dashboard(new_page, server)
    renders = int(page.locator("body").get_attribute("data-renders") or 0)
    batch = [
        {"agentName": f"agent-{i % 50:02}", "state": "working", "progress": i // 10}
        for i in range(1000)
    ]
    server.publish("/api/agent-status", batch)
    expect(page.locator("#agent-rows tr")).to_have_count(50)
    expect(page.locator('tr[data-agent="agent-49"] .percent')).to_have_text("99 %")
    expect(page.locator('tr[data-agent="agent-00"] .percent')).to_have_text("95 %")
    drawn = int(page.locator("body").get_attribute("data-renders") or 0) - renders
    # A thousand messages, drawn in a few frames (one per animation frame at most).
    assert 1 <= drawn < 100


def test_the_form_connects_with_the_keyboard_and_shows_a_refused_token(new_page, serve):
    server = serve()
    page = new_page()
    page.goto(server.base + "/")
    token = page.get_by_label("Token")
    expect(token).to_be_focused()
    page.keyboard.type("bad token!")  # dev auth takes [A-Za-z0-9_.-] only
    page.keyboard.press("Enter")
    expect(page.locator("#login-error")).to_contain_text("Authentication failed")
    expect(token).to_be_focused()
    page.keyboard.type("carol")
    page.keyboard.press("Enter")
    expect(page.locator("#connection")).to_have_text("Connected as user_carol")
    # A reload keeps the tab's token (sessionStorage), not the address bar.
    page.reload()
    expect(page.locator("#connection")).to_have_text("Connected as user_carol")
    page.get_by_role("button", name="Disconnect").click()
    expect(token).to_be_visible()
    expect(page.locator("#connection")).to_have_text("Not connected")


def test_the_asgi_app_serves_the_dashboard(new_page, serve):
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "agentcast.adapters.asgi:app", "--port", str(port)]
    server = serve(command=command, port=port)
    page = open_dashboard(new_page, server)
    server.publish("/api/agent-status", {"agentName": "asgi-agent", "state": "idle"})
    expect(page.locator('tr[data-agent="asgi-agent"] .state')).to_have_text("idle")
    assert page.problems == []


def scripted_server(page, *messages, close=None):
    """Route the page's WebSocket to a script (Playwright's WebSocket routing) that sends
    *messages* once connected, then closes with *close* (code, reason) if given: for what
    no server sends yet, or not on demand."""
    seen = {"connections": 0}

    def handler(ws):
        seen["url"], seen["protocols"] = ws.url, ws.protocols
        seen["connections"] += 1
        for message in messages:
            ws.send(json.dumps(message))
        if close is not None and seen["connections"] == 1:
            ws.close(code=close[0], reason=close[1])

    page.route_web_socket(re.compile(r".*/ws(\?.*)?$"), handler)
    return seen


def test_an_agent_state_snapshot_fills_the_table_and_the_resume_is_shown(new_page, serve):
    server = serve()
    page = new_page()
    seen = scripted_server(
        page,
        {"type": "auth", "data": {"success": True, "userId": "user_abc123"}},
        {"type": "presence_state", "data": {"users": [{"userId": "user_zoe", "status": "away"}]}},
        {
            "type": "agent_state",
            "data": {
                "agents": [
                    agent("indexer", "working", "Indexing the repository", 80),
                    {"agentName": "planner", "state": "idle"},
                ]
            },
        },
        {"type": "resume", "data": {"complete": True, "replayed": 3}},
    )
    page.goto(f"{server.base}/?token=abc123")
    expect(page.locator('tr[data-agent="indexer"] .percent')).to_have_text("80 %")
    expect(page.locator('tr[data-agent="planner"]')).to_have_attribute("data-state", "idle")
    expect(page.locator('#people li[data-user="user_zoe"]')).to_have_attribute(
        "data-status", "away"
    )
    expect(page.locator("#resume")).to_have_text("Resumed: 3 missed messages replayed")
    # The token went in the subprotocol, not in the URL.
    assert seen["protocols"] == ["agentcast.v1", "bearer.abc123"]
    assert "token" not in seen["url"]


def test_a_history_gap_is_shown(new_page, serve):
    server = serve()
    page = new_page()
    scripted_server(
        page,
        {"type": "auth", "data": {"success": True, "userId": "user_abc123"}},
        {"type": "resume", "data": {"complete": False}},
    )
    page.goto(f"{server.base}/?token=abc123")
    expect(page.locator("#resume")).to_contain_text("History gap")
    expect(page.locator("#notifications li.gap")).to_contain_text("may be missing")


AXE_RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def audit(page, js_tools):
    """axe-core's WCAG 2.1 A/AA violations on the page as it is (contrast included)."""
    page.add_script_tag(path=str(js_tools / "node_modules" / "axe-core" / "axe.min.js"))
    return page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, { runOnly: { type: "tag", values: tags } });
            const where = (v) => v.nodes.map((n) => n.target).join(", ");
            return result.violations.map((v) => `${v.id}: ${where(v)}`);
        }""",
        AXE_RULES,
    )


def test_the_dashboard_passes_an_accessibility_audit(new_page, serve, js_tools):
    server = serve()
    # The audit's script is injected, which the page's policy would refuse (rightly).
    page = new_page(bypass_csp=True)
    page.goto(server.base + "/")
    expect(page.get_by_label("Token")).to_be_focused()
    assert audit(page, js_tools) == []  # the form

    page.goto(f"{server.base}/?token=abc123")
    expect(page.locator("#connection")).to_have_text("Connected as user_abc123")
    server.publish("/api/agent-status", [agent("planner", "working", "Sprint plan", 45)])
    for level in ("info", "success", "warning", "error"):
        server.publish("/api/notifications", {"level": level, "message": f"a {level} message"})
    server.publish(
        "/api/chat-messages",
        {"conversationId": "c", "messageId": "m", "content": "hello", "sender": "bot"},
    )
    expect(page.locator("#notifications li")).to_have_count(4)
    expect(page.locator("#chat li")).to_have_count(1)
    assert audit(page, js_tools) == []  # every panel filled


def test_a_server_that_says_do_not_come_back_is_not_retried_until_asked(new_page, serve):
    server = serve()
    page = new_page()
    seen = scripted_server(
        page,
        {"type": "auth", "data": {"success": True, "userId": "user_abc123"}},
        close=(4500, "user revoked"),
    )
    page.goto(f"{server.base}/?token=abc123")
    pill = page.locator("#connection")
    expect(pill).to_have_text("Disconnected (user revoked, code 4500)")
    expect(pill).to_have_attribute("data-state", "stopped")
    assert seen["connections"] == 1
    page.get_by_role("button", name="Reconnect").click()
    expect(pill).to_have_text("Connected as user_abc123")
    expect(page.get_by_role("button", name="Reconnect")).to_be_hidden()
    assert seen["connections"] == 2


def test_the_dashboard_under_a_mount_point_connects_below_it(new_page, serve):
    """examples/fastapi_app.py mounts agentcast at /realtime: the page at /realtime/
    loads its files and opens its WebSocket below the mount point."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", "examples"]
    server = serve(command=[*command, "--port", str(port)], port=port)
    page = new_page()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{server.base}/realtime/?token=abc123")
    expect(page.locator("#connection")).to_have_text("Connected as user_abc123")
    assert sockets == [f"ws://127.0.0.1:{port}/realtime/ws"]
    server.publish("/realtime/api/agent-status", {"agentName": "mounted", "state": "idle"})
    expect(page.locator('tr[data-agent="mounted"] .state')).to_have_text("idle")
    assert page.problems == []
