"""The README's uvicorn command, run as written (a free port, a real key): tokens stay out
of uvicorn's logs, and the ASGI application answers ``GET /openapi.json`` like the
reference server."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agentcast.protocol.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-t0ken"


def readme_uvicorn_command(port: int) -> str:
    [block] = [
        b
        for b in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
        if "uvicorn agentcast.adapters.asgi:app" in b
    ]
    command = block.replace("\\\n", " ").strip()
    assert "--port 3000" in command
    return command.replace("--port 3000", f"--port {port}").replace("…", "k" * 32)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_readme_uvicorn_command_never_logs_a_token(spawn, unused_port):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    uvicorn = spawn(["bash", "-c", readme_uvicorn_command(unused_port)], env={"PATH": path})
    uvicorn.wait_for("Uvicorn running on")
    base = f"127.0.0.1:{unused_port}"
    with connect(f"ws://{base}/ws?token={TOKEN}") as ws:
        assert json.loads(ws.recv(timeout=10))["data"]["success"] is True
    with pytest.raises(InvalidStatus):  # a refused upgrade is logged too (404)
        connect(f"ws://{base}/elsewhere?token={TOKEN}").close()
    with urllib.request.urlopen(f"http://{base}/healthz?token={TOKEN}", timeout=10) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"http://{base}/openapi.json", timeout=10) as reply:
        assert json.load(reply) == openapi_document()
    assert uvicorn.interrupt() == 0
    logged = uvicorn.output
    # The lines are there, with the token's value replaced.
    assert re.search(r'"WebSocket /ws\?token=\[redacted\]" \[accepted\]', logged), logged
    assert re.search(r'"WebSocket /elsewhere\?token=\[redacted\]" 404', logged), logged
    assert re.search(r'"GET /healthz\?token=\[redacted\] HTTP/1.1" 200', logged), logged
    assert TOKEN not in logged


def test_a_bad_setting_stops_uvicorn_with_one_line(spawn, unused_port):
    uvicorn = spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "agentcast.adapters.asgi:app",
            "--port",
            str(unused_port),
        ],
        env={"AGENTCAST_HEARTBEAT_INTERVAL": "soon"},
    )
    assert uvicorn.process.wait(timeout=30) != 0
    assert "agentcast: error: AGENTCAST_HEARTBEAT_INTERVAL: 'soon' is not a number" in (
        uvicorn.output
    )
    assert "Traceback" not in uvicorn.output
