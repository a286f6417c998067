"""Fixtures of the documentation tests: programs run as a user runs them, in subprocesses.

``spawn(argv)`` starts a program with its output collected line by line, and waits for
what it prints; ``serve`` is ``agentcast serve`` on a free port, as ``scripts/serve``
starts it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Program:
    """A subprocess whose merged stdout and stderr is read by a thread, line by line."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update(env or {})
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        self._drain()
        return "\n".join(self.lines)

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first line (from the start of the output) that matches *pattern*."""
        regex = re.compile(pattern)
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{self.argv}: no line matching {pattern!r}:\n{self.output}")
            try:
                line = self._queue.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"{self.argv} ended before printing {pattern!r}:\n{self.output}")
            self.lines.append(line)

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C: SIGINT, then the exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(argv: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Program:
        program = Program(argv, cwd=cwd, env=env)
        started.append(program)
        return program

    yield start
    for program in started:
        program.kill()


@pytest.fixture
def serve(spawn: Callable[..., Program]) -> Callable[..., tuple[Program, int]]:
    """``agentcast serve --port 0 ARGS``; returns the program and its port."""

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[Program, int]:
        program = spawn(
            [sys.executable, "-m", "agentcast.adapters", "serve", "--port", "0", *args], env=env
        )
        port = int(program.wait_for(r"listening on wss?://[^ ]+:(\d+)/")[1])
        return program, port

    return start
