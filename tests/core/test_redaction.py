"""Credentials never reach a repr: a logged or asserted event shows no token or key."""

from __future__ import annotations

from agentcast.protocol import AuthRequested, HttpRequest, UpgradeRequested

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"
KEY = "publish-api-key-0123456789"


def test_events_hide_the_query_headers_and_token():
    events = [
        HttpRequest(
            method="POST",
            path="/api/notifications",
            query=f"token={TOKEN}",
            headers=(("authorization", f"Bearer {KEY}"),),
            body=b"{}",
        ),
        UpgradeRequested(
            path="/ws",
            query=f"token={TOKEN}",
            headers=(("authorization", f"Bearer {TOKEN}"),),
            subprotocols=("agentcast.v1", f"bearer.{TOKEN}"),
        ),
        AuthRequested(token=TOKEN),
    ]
    for event in events:
        shown = repr(event) + str(event)
        assert TOKEN not in shown
        assert KEY not in shown
    assert "/api/notifications" in repr(events[0])  # the path is still there to debug
