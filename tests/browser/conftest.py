"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, and the server
as a subprocess (``python -m agentcast.adapters serve``), so a test can kill it and start
it again on the same port.

Chromium comes from the distribution (``apt-get install chromium``; ``scripts/test``
installs it when it is missing and the machine allows), never from Playwright's own
download. Without it the tests fail in CI (``CI=true``) and are skipped, with the reason,
elsewhere.

Nothing waits by sleeping: Playwright's expectations poll the page until a condition
holds or a timeout passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "adapters" / "static"
CHROMIUM = os.environ.get("AGENTCAST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 15.0
#: npm packages the browser tests use: TypeScript, React's types, axe-core.
JS_TOOLS = REPO / "tests" / "browser" / "js"

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _missing(reason: str) -> None:
    message = (
        f"browser tests need {reason}; install it with `apt-get install chromium` "
        "(scripts/test does when run as root) or set AGENTCAST_CHROMIUM"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Per module, not per session: Playwright's sync API keeps an event loop set as running
    # in this thread while it is open, and the anyio tests collected after this folder
    # (tests/cluster) cannot start theirs meanwhile.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package (the test extra)")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        _missing(f"Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """``new_page()``: a page in a fresh browser context (its own storage), closed after
    the test. Page errors and console errors are collected in ``page.problems``."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        context = browser.new_context(viewport={"width": 1200, "height": 820}, **options)
        context.set_default_timeout(TIMEOUT * 1000)
        contexts.append(context)
        page = context.new_page()
        page.problems = []
        page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"),
        )
        return page

    yield make
    for context in contexts:
        context.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``agentcast serve`` on a fixed port, which :meth:`kill` and :meth:`start` may
    stop and start again (a restart, as a deploy or a crash does)."""

    def __init__(self, *flags: str, port: int | None = None, command: list[str] | None = None):
        self.port = port or free_port()
        self.flags = flags
        self.command = command
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        argv = self.command or [
            sys.executable,
            "-m",
            "agentcast.adapters",
            "serve",
            "--port",
            str(self.port),
            "--backend",
            "asyncio",
            *self.flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
        )
        ready = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.lines.append(line.rstrip())
                if "listening on" in line or "Uvicorn running" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(TIMEOUT) or process.poll() is not None:
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines))
        return self

    def kill(self) -> None:
        """SIGKILL: no close frame, the clients see 1006."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)

    def publish(self, path: str, body: object) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with _opener.open(request, timeout=TIMEOUT) as response:
            assert response.status == 202
            result: dict[str, Any] = json.loads(response.read())
            return result


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """``serve(*flags)``: a started server; every one is killed after the test."""
    started: list[ServerProcess] = []

    def start(*flags: str, **options: Any) -> ServerProcess:
        server = ServerProcess(*flags, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        with contextlib.suppress(Exception):
            server.kill()


@pytest.fixture(scope="session")
def js_tools() -> Path:
    """``tests/browser/js`` with its npm packages installed (on first use)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.fail("node and npm are required for the browser tests' tools (tests/browser/js)")
    if not (JS_TOOLS / "node_modules" / ".package-lock.json").is_file():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=JS_TOOLS,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm install in {JS_TOOLS} failed:\n{result.stdout}\n{result.stderr}")
    return JS_TOOLS
