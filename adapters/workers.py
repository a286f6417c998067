"""``agentcast serve --workers N``: N server processes on one port, one supervisor.

Each worker is a complete ``agentcast serve`` (same flags, one worker) that binds the
port with ``SO_REUSEPORT``, so the kernel spreads new connections over the workers; the
workers act as one server through the Redis backplane (a Redis URL is required). The
supervisor (this module, in the parent process) starts them, passes SIGINT and SIGTERM on
(every worker then drains its clients with ``1001``), and exits 0 once all of them have
stopped cleanly. A worker that dies (killed by a signal, or exiting later on) is started
again; one that exits with an error at start (Redis unreachable, port taken) stops the
whole group with its exit status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["WORKER_ENV", "run_workers", "worker_index"]

log = logging.getLogger("agentcast.workers")

#: Set in each worker's environment to ``<index>/<count>`` (index from 1).
WORKER_ENV = "AGENTCAST_WORKER"
#: A worker that exits with an error within this many seconds of its start failed to start.
_START_WINDOW = 5.0
_POLL = 0.1


def worker_index() -> tuple[int, int] | None:
    """``(index, count)`` when this process is a worker of a supervisor, else ``None``."""
    value = os.environ.get(WORKER_ENV, "")
    index, sep, count = value.partition("/")
    if sep and index.isdigit() and count.isdigit():
        return int(index), int(count)
    return None


def run_workers(count: int, argv: Sequence[str]) -> int:
    """Run *count* workers, each ``python -m agentcast.adapters <argv>`` (*argv* names one
    worker: no ``--workers`` above 1), until SIGINT/SIGTERM. Returns the exit status."""
    command = [sys.executable, "-m", "agentcast.adapters", *argv]
    workers: list[tuple[subprocess.Popen[bytes], float]] = []
    stopping: list[int] = []

    def start(index: int) -> tuple[subprocess.Popen[bytes], float]:
        env = {**os.environ, WORKER_ENV: f"{index + 1}/{count}", "AGENTCAST_WORKERS": "1"}
        return subprocess.Popen(command, env=env), time.monotonic()

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, count)
        stopping.append(signum)
        for process, _ in workers:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        workers.extend(start(i) for i in range(count))
        log.info("started %d workers: pids %s", count, " ".join(str(p.pid) for p, _ in workers))
        while True:
            alive = 0
            for i, (process, started) in enumerate(workers):
                code = process.poll()
                if code is None:
                    alive += 1
                    continue
                if stopping:
                    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                        status = status or 1
                    continue
                if code > 0 and time.monotonic() - started < _START_WINDOW:
                    log.error("worker %d failed to start (exit status %s): stopping", i + 1, code)
                    status = code if code > 0 else 1
                    forward(signal.SIGTERM, None)
                    continue
                log.warning(
                    "worker %d (pid %d) exited with %s: starting it again", i + 1, process.pid, code
                )
                workers[i] = start(i)
                alive += 1
            if stopping and not alive:
                return status
            time.sleep(_POLL)  # a supervisor's poll of its children, not a test's wait
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
