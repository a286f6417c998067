"""The dashboard through a restart of its server in a cluster, in a real browser: the
Redis stream is the history, so the page resumes and misses nothing published while its
server was down."""

from __future__ import annotations

import re

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture fails (CI) or skips with the reason
    expect = None

from tests.cluster.conftest import start_redis

from .test_dashboard import agent, open_dashboard


def test_nothing_published_while_the_server_was_down_is_missing(new_page, serve):
    redis = start_redis()
    try:
        cluster = ("--redis-url", redis.url, "--redis-stream", "dashboard")
        server = serve(*cluster)
        other = serve(*cluster)  # another process of the cluster, to publish through
        page = open_dashboard(new_page, server)
        server.publish("/api/notifications", {"level": "info", "message": "before"})
        expect(page.locator("#notifications li")).to_have_count(1)

        server.kill()
        pill = page.locator("#connection")
        expect(pill).to_have_text(re.compile(r"^Reconnecting"))
        for n in range(3):
            other.publish("/api/notifications", {"level": "warning", "message": f"meanwhile {n}"})
        other.publish(
            "/api/chat-messages",
            {"conversationId": "c1", "messageId": "m1", "content": "hello", "sender": "bot"},
        )
        other.publish("/api/agent-status", agent("indexer", "working", "Indexing", 40))

        server.start()  # the same port, a new process: its history comes from Redis
        expect(pill).to_have_text("Connected as user_abc123", timeout=30_000)
        expect(page.locator("#resume")).to_have_text("Resumed: 5 missed messages replayed")
        notes = page.locator("#notifications li")
        expect(notes).to_have_count(4)
        for n in range(3):
            expect(notes.filter(has_text=f"meanwhile {n}")).to_have_count(1)
        expect(page.locator("#chat")).to_contain_text("hello")
        expect(page.locator('tr[data-agent="indexer"] .percent')).to_have_text("40 %")
        expect(page.locator("#notifications li.gap")).to_have_count(0)
    finally:
        redis.stop()
