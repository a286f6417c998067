"""Every example program in ``examples/`` and every Python block in the README runs.

README blocks
    Every ```` ```python ```` block of README.md is written to a file and run with this
    Python; it must exit 0 within a minute. A block that talks to a server (it names
    ``127.0.0.1:3000``, the default address) gets one: the test starts ``agentcast serve``
    on a free port and puts that port in the block's address.

    A block that is a fragment, not a program (a sketch with names the reader supplies),
    says so in an HTML comment on the line right before its fence, with the reason::

        <!-- fragment: the sketch of an adapter's loop; request_bytes and sock are the adapter's -->

    The comment is invisible on the rendered page. A fragment is still compiled, so it
    cannot hold a syntax error; nothing else is skipped.

Examples
    Each file in ``examples/`` is run the way its docstring tells a user to run it, and
    what it promises is checked (a client receives what it publishes, Ctrl-C exits 0).
    A new example without a test here fails :func:`test_every_example_has_a_test`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FRAGMENT = re.compile(r"<!-- fragment: (?P<reason>[^>]+?) -->\n```python\n")
DEFAULT_ADDRESS = "127.0.0.1:3000"


def readme_blocks() -> list[tuple[str, str, str | None]]:
    """``(name, code, fragment reason or None)`` of every Python block of the README."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text, re.S):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start() + len("```python\n")]
        fragment = FRAGMENT.search(before[-300:])
        reason = fragment["reason"] if fragment and before.endswith(fragment[0]) else None
        blocks.append((f"README.md:{line}", match[1], reason))
    return blocks


def test_the_readme_has_runnable_python_blocks():
    blocks = readme_blocks()
    runnable = [name for name, _, reason in blocks if reason is None]
    assert len(runnable) >= 3, blocks  # the client, the publisher and the FastAPI app
    assert len(blocks) - len(runnable) <= 1  # fragments are the exception


@pytest.mark.parametrize("block", readme_blocks(), ids=[b[0] for b in readme_blocks()])
def test_readme_python_block_runs(block, serve, spawn, tmp_path):
    name, code, fragment = block
    compile(code, name, "exec")
    if fragment is not None:
        return  # a fragment: compiled above, not run
    if DEFAULT_ADDRESS in code:
        _, port = serve()
        code = code.replace(DEFAULT_ADDRESS, f"127.0.0.1:{port}")
    script = tmp_path / "block.py"
    script.write_text(code)
    program = spawn([sys.executable, str(script)], cwd=tmp_path)
    try:
        status = program.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not end within 60 s:\n{program.output}")
    assert status == 0, f"{name} exited {status}:\n{code}\n---\n{program.output}"
    assert "Traceback" not in program.output


# -- examples/ ------------------------------------------------------------------------


def test_publisher_publishes_on_a_timer_and_stops_on_ctrl_c(spawn):
    program = spawn([sys.executable, "examples/publisher.py", "--port", "0", "--interval", "0.05"])
    url = program.wait_for(r"publishing to (ws://\S+\?token=abc123)")[1]
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=10))["data"] == {"success": True, "userId": "user_abc123"}
        kinds = set()
        while not {"agent_status", "chat_message", "notification"} <= kinds:
            kinds.add(json.loads(ws.recv(timeout=10))["type"])
        # The counts it prints include this client.
        program.wait_for(r"delivered=1 clients=1 authenticated=1")
        assert program.interrupt() == 0
        # Ctrl-C closes the client with 1001 before the program exits.
        assert close_code(ws) == 1001
    program.wait_for(r"^stopped$")
    assert "Traceback" not in program.output


def test_publisher_runs_on_trio_and_exits_0(spawn):
    program = spawn([sys.executable, "examples/publisher.py", "--port", "0", "--backend", "trio"])
    program.wait_for(r"agent_status +0% id=[\w-]+ delivered=0 clients=0 authenticated=0")
    assert program.interrupt() == 0


def test_publisher_default_port_is_not_the_servers():
    # Run beside `scripts/serve` (port 3000), it must not fail to bind.
    spec = spec_from_file_location("publisher_example", ROOT / "examples" / "publisher.py")
    assert spec is not None
    assert spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_args([]).port not in (0, 3000)
    assert module.parse_args(["--port", "4100"]).port == 4100


def test_fastapi_app_runs_under_uvicorn_as_its_docstring_says(spawn, unused_port):
    program = spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_app:app",
            "--port",
            str(unused_port),
            "--ws-max-size",
            "65536",
            "--ws-per-message-deflate",
            "false",
        ]
    )
    program.wait_for(r"Uvicorn running on")
    with connect(f"ws://127.0.0.1:{unused_port}/realtime/ws?token=abc123") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "auth"
        request = urllib.request.Request(
            f"http://127.0.0.1:{unused_port}/agents/planner/status",
            data=json.dumps(
                {"state": "working", "currentTask": "indexing", "progress": 40}
            ).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 202
        while (message := json.loads(ws.recv(timeout=10)))["type"] != "agent_status":
            pass
        assert message["data"] == {
            "agentName": "planner",
            "state": "working",
            "currentTask": "indexing",
            "progress": 40,
        }
    assert program.interrupt() == 0


def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; the code it closed with."""
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


TESTED_EXAMPLES = {"publisher.py", "fastapi_app.py"}


def test_every_example_has_a_test():
    assert {p.name for p in (ROOT / "examples").iterdir() if p.suffix == ".py"} == TESTED_EXAMPLES


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_readme_interactive_client_session_is_what_a_user_sees(serve, spawn):
    """The README's `python -m websockets` transcript: the lines after `>` are typed, and
    the messages after `<` arrive (timestamps aside)."""
    [session] = [
        block
        for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
        if "python -m websockets 'ws://127.0.0.1:3000" in block
    ]
    assert "pip install websockets" in session
    typed = [line[2:] for line in session.splitlines() if line.startswith("> ")]
    shown = [json.loads(line[2:]) for line in session.splitlines() if line.startswith("< ")]
    lines = session.splitlines()
    typed_at = next(i for i, line in enumerate(lines) if line.startswith("> "))
    greeting = sum(line.startswith("< ") for line in lines[:typed_at])
    _, port = serve()
    with connect(f"ws://127.0.0.1:{port}/ws?token=abc123") as ws:
        received = [json.loads(ws.recv(timeout=10)) for _ in range(greeting)]
        for text in typed:
            ws.send(text)
            received.append(json.loads(ws.recv(timeout=10)))
    for message in (*shown, *received):
        message.pop("timestamp", None)
        if "id" in message:  # <epoch>-<sequence>: the epoch is the server's start time
            epoch, _, sequence = message["id"].partition("-")
            assert len(epoch) == 13
            message["id"] = sequence
    assert received == shown
    # And the command itself connects and prints what arrives (it ends at end of input).
    url = f"ws://127.0.0.1:{port}/ws?token=abc123"
    result = subprocess.run(
        [sys.executable, "-m", "websockets", url],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"Connected to {url}." in result.stdout
