"""agentcast.js on its own, in Chromium: each JavaScript test of ``client_tests.js`` runs
in a page that imports the module as a browser application does. The page, the module and
the tests are served by the test itself (Playwright's request routing), with no server:
the tests script the WebSocket, the timers and the random draws."""

from __future__ import annotations

import pytest

from .conftest import STATIC

HERE = __import__("pathlib").Path(__file__).parent
ORIGIN = "http://client.test"
PAGE = b"""<!doctype html><html><head><meta charset="utf-8">
<script type="module" src="/client_tests.js"></script></head><body></body></html>"""

FILES = {
    "/": ("text/html", PAGE),
    "/agentcast.js": ("text/javascript", (STATIC / "agentcast.js").read_bytes()),
    "/client_tests.js": ("text/javascript", (HERE / "client_tests.js").read_bytes()),
}

#: Every test of client_tests.js (checked against the module's own list).
TESTS = [
    "full_jitter_backoff_doubles_to_the_cap",
    "reconnect_delays_follow_the_backoff_and_the_random_draw",
    "a_stable_minute_starts_the_backoff_over",
    "close_codes_reconnect_or_stop",
    "token_expired_asks_the_provider_for_a_fresh_token",
    "token_expired_without_a_provider_stops",
    "a_failing_token_provider_is_retried_with_backoff",
    "a_jwt_is_refreshed_in_band_before_it_expires",
    "a_reconnect_resumes_after_the_last_id_seen",
    "a_resume_point_can_be_given",
    "channels_are_kept_across_reconnects",
    "a_refused_subscription_is_not_asked_for_again",
    "a_subscription_with_since_replays_then_is_a_channel_like_the_others",
    "a_since_is_dropped_by_unsubscribe_a_refusal_or_a_plain_subscribe",
    "presence_is_set_again_after_every_reconnect",
    "the_server_ping_is_answered_and_a_silent_server_is_left",
    "a_connection_that_never_opens_is_given_up",
    "a_socket_the_browser_refuses_stops",
    "the_token_goes_in_the_subprotocol_or_the_query",
    "events_per_message_type_and_a_failing_handler_breaks_nothing",
    "close_stops_for_good",
    "a_relative_url_becomes_a_websocket_url",
]


@pytest.fixture(scope="module")
def test_page(browser):
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))

    def fulfil(route):
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if path in FILES:
            content_type, body = FILES[path]
            route.fulfill(status=200, content_type=content_type, body=body)
        else:
            route.fulfill(status=404, body=b"")

    page.route(ORIGIN + "/**", fulfil)
    page.goto(ORIGIN + "/")
    page.wait_for_function("window.clientTestsReady === true", timeout=10_000)
    assert problems == []
    yield page
    context.close()


def test_every_javascript_test_is_run(test_page):
    assert sorted(test_page.evaluate("Object.keys(window.clientTests)")) == sorted(TESTS)


@pytest.mark.parametrize("name", TESTS)
def test_client(test_page, name):
    error = test_page.evaluate(
        """async (name) => {
            try { await window.clientTests[name](); return null; }
            catch (error) { return String(error && error.stack || error); }
        }""",
        name,
    )
    assert error is None, error
