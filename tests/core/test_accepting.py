"""Accepting when out of file descriptors: back-off, one report per shortage, counters,
/healthz. Scripted time, no sockets."""

from __future__ import annotations

import errno
import json

import pytest

from agentcast.protocol import Hub
from agentcast.protocol.accepting import (
    FIRST_DELAY,
    MAX_DELAY,
    REPORT_INTERVAL,
    AcceptGuard,
    accept_error_reason,
    describe,
)
from agentcast.protocol.http import healthz


def emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


def test_the_pause_grows_to_a_ceiling_and_starts_over_after_an_accept():
    guard = AcceptGuard()
    delays = [guard.failed("emfile", 1.0)[0] for _ in range(8)]
    assert delays[0] == FIRST_DELAY
    assert delays == sorted(delays)  # never shorter while failing in a row
    assert delays[-1] == MAX_DELAY
    assert sum(delays) > 3 * MAX_DELAY  # eight failures take seconds, not microseconds
    guard.accepted(2.0)  # a descriptor was free for one
    assert guard.failed("emfile", 2.0)[0] == FIRST_DELAY


def test_a_shortage_is_reported_once_at_each_end():
    guard = AcceptGuard()
    assert guard.accepting
    _, started = guard.failed("emfile", 10.0)
    assert started is not None
    assert (started.reason, started.started) == ("emfile", 10.0)
    for _ in range(1000):
        assert guard.failed("emfile", 10.5)[1] is None  # not reported again
    assert not guard.accepting
    guard.accepted(11.0)
    assert not guard.accepting  # others still wait in the queue
    ended = guard.drained(12.0)
    assert ended is started
    assert ended.failures == 1001
    assert guard.accepting
    assert guard.drained(12.5) is None  # nothing to report: no shortage
    assert guard.errors == {"emfile": 1001, "enfile": 0, "enobufs": 0, "enomem": 0}


def test_shortages_in_quick_succession_are_folded_into_the_next_report():
    guard = AcceptGuard()
    guard.failed("emfile", 0.0)
    assert guard.drained(1.0) is not None
    # Flapping at the limit: each is a shortage, none reported on its own.
    for t in (2.0, 4.0, 6.0):
        assert guard.failed("emfile", t)[1] is None
        assert not guard.accepting  # /healthz still tells
        assert guard.drained(t + 0.5) is None
    _, started = guard.failed("enfile", 1.0 + REPORT_INTERVAL)
    assert started is not None
    assert (started.reason, started.folded) == ("enfile", 3)
    assert guard.drained(12.0) is started
    assert guard.errors["emfile"] == 4
    assert guard.errors["enfile"] == 1


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (emfile(), "emfile"),
        (OSError(errno.ENFILE, "x"), "enfile"),
        (OSError(errno.ENOBUFS, "x"), "enobufs"),
        (OSError(errno.ENOMEM, "x"), "enomem"),
        (OSError(errno.EPERM, "x"), "eperm"),
        (ConnectionAbortedError(errno.ECONNABORTED, "x"), None),  # the client left first
        (BlockingIOError(errno.EAGAIN, "x"), None),
    ],
)
def test_the_reason_of_an_accept_error(exc, reason):
    assert accept_error_reason(exc) == reason


def test_the_reason_is_found_under_a_wrapper():
    """anyio reports a failed accept() as BrokenResourceError, caused by the OSError."""

    class BrokenResourceError(Exception):
        pass

    wrapped = BrokenResourceError()
    wrapped.__cause__ = emfile()
    assert accept_error_reason(wrapped) == "emfile"
    assert accept_error_reason(BrokenResourceError()) == "brokenresourceerror"


def test_describe():
    assert "out of file descriptors" in describe("emfile")
    assert "out of file descriptors" in describe("enfile")
    assert describe("eperm") == "accept() error EPERM"


def test_healthz_says_degraded_while_a_shortage_lasts():
    hub = Hub()
    assert json.loads(healthz(hub).body) == {
        "status": "ok",
        "clients": 0,
        "authenticated": 0,
        "unauthenticated": 0,
    }
    hub.accepting.failed("emfile", 1.0)
    answer = healthz(hub)
    assert answer.status == 200  # a liveness probe must not restart a serving server
    assert json.loads(answer.body) == {
        "status": "degraded",
        "clients": 0,
        "authenticated": 0,
        "unauthenticated": 0,
        "accepting": False,
        "acceptError": "emfile",
    }
    hub.accepting.drained(2.0)
    assert json.loads(healthz(hub).body)["status"] == "ok"
