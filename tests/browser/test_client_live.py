"""agentcast.js against a real server, in Chromium: the module as served at
``/agentcast.js``, imported by a page of the same origin, with channels that hold across
a server restart."""

from __future__ import annotations

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture fails (CI) or skips with the reason
    expect = None

START = """async () => {
    const { AgentcastClient } = await import("/agentcast.js");
    window.seen = [];
    const client = (window.client = new AgentcastClient("/ws", {
        token: "dora",
        channels: ["agent:planner"],
    }));
    client.on("agent_status", (data) => seen.push(data.agentName));
    client.on("subscribed", (data) => seen.push(`subscribed ${data.channel}`));
    client.on("open", () => seen.push("open"));
    client.connect();
}"""


def seen(page):
    return page.evaluate("window.seen")


def wait_seen(page, item):
    page.wait_for_function("(item) => window.seen.includes(item)", arg=item)


def test_channels_in_the_url_hold_across_a_server_restart(new_page, serve):
    server = serve()
    # Playwright's waiting evaluates strings in the page, which the dashboard's policy
    # (no eval) refuses: this test is about the client, not the policy.
    page = new_page(bypass_csp=True)
    page.goto(server.base + "/")  # a page of the server's origin (the form: no token)
    page.evaluate(START)
    wait_seen(page, "subscribed agent:planner")
    assert page.evaluate("client.userId") == "user_dora"

    server.publish("/api/agent-status", {"agentName": "other", "state": "idle", "channel": "x"})
    server.publish(
        "/api/agent-status", {"agentName": "planner", "state": "idle", "channel": "agent:planner"}
    )
    wait_seen(page, "planner")
    assert "other" not in seen(page)  # a channel it never subscribed to

    page.evaluate("client.subscribe('agent:coder')")
    wait_seen(page, "subscribed agent:coder")

    server.kill()
    page.wait_for_function("client.state === 'reconnecting' || client.state === 'connecting'")
    server.start()
    page.wait_for_function("window.seen.filter((s) => s === 'open').length === 2", timeout=30_000)
    page.wait_for_function(
        "window.seen.filter((s) => s === 'subscribed agent:coder').length === 2"
    )  # from the URL of the new connection, with agent:planner
    server.publish(
        "/api/agent-status", {"agentName": "coder", "state": "working", "channel": "agent:coder"}
    )
    wait_seen(page, "coder")
    assert seen(page).count("subscribed agent:planner") == 2
    # The browser logs each refused connection while the server was down; nothing else.
    assert [p for p in page.problems if "ERR_CONNECTION_REFUSED" not in p] == []


RECORD = """async (since) => {
    const { AgentcastClient } = await import("/agentcast.js");
    window.got = [];
    const client = (window.client = new AgentcastClient("/ws", { token: "erin" }));
    for (const type of ["chat_message", "notification", "subscribed"]) {
        client.on(type, (data, message) => got.push({ type, data, id: message.id ?? null }));
    }
    client.subscribe("conversation:c1", since === null ? {} : { since });
    client.connect();
}"""


def test_subscribe_with_since_replays_the_channel_s_missed_messages(new_page, serve):
    server = serve()
    page = new_page(bypass_csp=True)
    page.goto(server.base + "/")
    page.evaluate(RECORD, None)
    page.wait_for_function("got.some((m) => m.type === 'subscribed')")
    chat = {"conversationId": "c1", "messageId": "m", "sender": "bot", "channel": "conversation:c1"}
    seen = server.publish("/api/chat-messages", {**chat, "content": "seen"})["id"]
    page.wait_for_function("got.some((m) => m.type === 'chat_message')")
    page.evaluate("client.close()")  # the tab goes away; the application kept the last id

    missed = [
        server.publish("/api/chat-messages", {**chat, "content": f"missed {n}"})["id"]
        for n in range(3)
    ]
    server.publish("/api/chat-messages", {**chat, "content": "elsewhere", "channel": "other"})

    page.evaluate(RECORD, seen)  # a new client: subscribes with the kept id
    page.wait_for_function("got.some((m) => m.type === 'subscribed')")
    got = page.evaluate("got")
    assert [m["id"] for m in got if m["type"] == "chat_message"] == missed
    assert got[-1] == {
        "type": "subscribed",
        "data": {"channel": "conversation:c1", "complete": True, "replayed": 3},
        "id": None,
    }
    live = server.publish("/api/chat-messages", {**chat, "content": "live"})["id"]
    page.wait_for_function("(id) => got.some((m) => m.id === id)", arg=live)
    assert page.evaluate("client.channels") == ["conversation:c1"]
    assert page.problems == []
