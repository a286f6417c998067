"""fuzz/autobahn_echo.py, the echo application the RFC 6455 conformance run (fuzz/autobahn)
talks to, still starts and echoes on both backends, so the conformance command never rots.

It drives the reference server's connection pump with a look-alike of ServerConnection; a
change of that interface shows up here, not only in a 30-second Autobahn run. The client is
the `websockets` package (sync client); the echo application runs as a subprocess.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

ECHO = Path(__file__).resolve().parents[2] / "fuzz" / "autobahn_echo.py"
TIMEOUT = 10.0


@pytest.fixture(params=["asyncio", "trio"])
def echo_port(request: pytest.FixtureRequest) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(ECHO), "--port", "0", "--backend", request.param],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(TIMEOUT), "the echo application did not start in time"
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line + proc.stdout.read()
        yield int(line.split()[-1])
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def _client(port: int) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{port}/ws", open_timeout=TIMEOUT, max_size=None)


def test_echoes_text_as_text_and_binary_as_binary(echo_port: int) -> None:
    with _client(echo_port) as ws:
        ws.send("héllo wörld ✓")
        assert ws.recv(TIMEOUT) == "héllo wörld ✓"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(TIMEOUT) == b"\x00\xffbinary"
        ws.send(["frag", "mented ", "κόσμε"])  # one text message in three frames
        assert ws.recv(TIMEOUT) == "fragmented κόσμε"
        # Far above the server's default max_message_size (64 KiB): the echo raises it.
        big = bytes(range(256)) * 4096  # 1 MiB
        ws.send(big)
        assert ws.recv(TIMEOUT) == big
        assert ws.ping(b"p").wait(TIMEOUT)
        ws.close(1000, "bye")
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1000
