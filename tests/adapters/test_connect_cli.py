"""``agentcast connect``, driven as a person would: through a pseudo-terminal (pexpect),
against a server started from the command line. And piped: one JSON message per line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from .conftest import REPO, TIMEOUT

AGENTCAST = str(Path(sys.executable).parent / "agentcast")
_URL = re.compile(r"agentcast listening on (ws://\S+)")


class ServerCommand:
    """``agentcast serve`` in a subprocess, restartable on the same port."""

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, port: int = 0) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [AGENTCAST, "serve", "--port", str(port), *self.flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _URL.search(line)
            if match:
                self.url = match.group(1)
                return self.url
        raise AssertionError("the server exited without listening")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def publish_chat(self, content: str) -> None:
        base = self.url.replace("ws://", "http://").rsplit("/", 1)[0]
        body = {"conversationId": "c1", "messageId": "m1", "content": content, "sender": "bot"}
        request = urllib.request.Request(
            f"{base}/api/chat-messages", data=json.dumps(body).encode(), method="POST"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=TIMEOUT) as response:
            assert response.status == 202

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(TIMEOUT)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def server() -> Iterator[ServerCommand]:
    command = ServerCommand()
    command.start()
    yield command
    command.stop(signal.SIGKILL)


def spawn_connect(*args: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
    env["TERM"] = "xterm"
    return pexpect.spawn(
        AGENTCAST, ["connect", *args], encoding="utf-8", timeout=TIMEOUT, env=env, cwd=str(REPO)
    )


def test_prints_messages_sends_a_ping_and_shows_a_reconnect(server: ServerCommand):
    child = spawn_connect(server.url, "--token", "abc123")
    try:
        child.expect("connected")
        child.expect("authenticated as user_abc123")
        child.expect("user_abc123 is online")
        server.publish_chat("hello from the server")
        child.expect(r"\[c1\] bot: hello from the server")
        child.sendline("/ping")
        child.expect(r"pong in [\d.]+ ms")
        child.sendline("/presence away")
        child.expect("user_abc123 is away")
        child.sendline('{"type": "ping"}')
        child.expect("pong")
        child.sendline("not json")
        child.expect("not JSON")
        # A deploy: the server goes away with 1001 and comes back on the same port.
        port = server.port
        server.stop()
        child.expect(r"disconnected \(close 1001 server shutting down\); reconnecting in")
        server.start(port)
        child.expect("connected, resuming after")
        child.expect("authenticated as user_abc123")
        child.expect("user_abc123 is away")  # its presence restored by the client
        server.publish_chat("after the restart")
        child.expect("after the restart")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_terminal_close_exits_non_zero_with_the_reason():
    refusing = ServerCommand("--require-auth")
    refusing.start()
    try:
        child = spawn_connect(refusing.url, "--token", "bad token!")
        child.expect(pexpect.EOF)
        child.close()
    finally:
        refusing.stop(signal.SIGKILL)
    assert child.exitstatus == 1
    assert "connection refused: HTTP 401 Unauthorized" in child.before


def test_piped_output_is_one_json_message_per_line(server: ServerCommand):
    process = subprocess.Popen(
        [AGENTCAST, "connect", server.url, "--token", "abc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        lines = [json.loads(process.stdout.readline()) for _ in range(4)]
        assert [m["type"] for m in lines] == [
            "auth",
            "presence_state",
            "agent_state",
            "user_presence",
        ]
        server.publish_chat("piped")
        chat = json.loads(process.stdout.readline())
        assert chat["type"] == "chat_message"
        assert chat["data"]["content"] == "piped"
        assert chat["id"] > lines[3]["id"]
        process.stdin.write('{"type":"ping"}\n/quit\n')
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["type"] == "pong"
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stdin.close()
        assert process.stderr is not None
        process.stderr.close()


def test_waits_for_a_server_that_is_not_up_yet():
    later = ServerCommand()
    later.start()
    port = later.port
    later.stop()
    child = spawn_connect(f"ws://127.0.0.1:{port}/ws", "--token", "early")
    try:
        child.expect(r"disconnected \(.*(refused|failed).*\); reconnecting in")
        later.start(port)
        child.expect("authenticated as user_early", timeout=3 * TIMEOUT)  # after a back-off
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
        later.stop(signal.SIGKILL)
    assert child.exitstatus == 0


def test_a_subscription_with_since_says_what_was_replayed():
    from agentcast.adapters.client import Subscribed
    from agentcast.adapters.terminal import describe

    ts = "2026-01-01T12:00:00.000Z"
    line = describe(Subscribed(channel="room:1", complete=True, replayed=3, timestamp=ts))
    assert line.endswith("subscribed     room:1: 3 missed message(s) replayed")
    line = describe(Subscribed(channel="room:1", complete=False, timestamp=ts))
    assert "room:1: replay incomplete, messages were lost" in line
    assert describe(Subscribed(channel="room:1", timestamp=ts)).endswith("subscribed     room:1")
