"""What the garbage collector sees of the reference server's connections.

    .venv/bin/python benchmarks/gc_census.py [--clients 2000] [--churn 2000]
                                             [--backend asyncio|uvloop|trio] [--top 25]

The server runs in this process (``Server`` with the benchmark settings: dev auth,
admission limits lifted, no heartbeat, no presence grace), on ``--backend``; the C load
generator (``benchmarks/loadgen``) is the client, in a process of its own, so that
nothing of the clients is counted. What start-up created is frozen (``gc.freeze()``)
before anything is counted, as ``agentcast serve`` does, so the counts are the
connections' own. Then:

1. **Idle connections.** ``--clients`` distinct users connect (100 handshakes in
   flight) and wait until every one has seen every other online; after a
   ``gc.collect()``, the objects the collector tracks (``gc.get_objects()``), per
   connection and by type, and how long a full collection of that heap takes
   (``gc.collect()``, median of 5).
2. **Dropped connections.** With the automatic collector off, the load generator resets
   every connection (no close frame); once the server has let go of all of them,
   ``gc.collect()`` under ``gc.DEBUG_SAVEALL`` shows what only the cyclic collector
   could free: objects per closed connection, by type (0 means reference counting
   freed everything).
3. **Clean closes.** The same for ``--churn`` connections that each connect,
   authenticate, see their own arrival and close with a closing handshake, 10 at a
   time.

Prints one table (markdown) on stdout. The numbers are counts, not times (except the
collection's duration), so a busy machine does not change them.
"""

from __future__ import annotations

import argparse
import collections
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from agentcast.adapters import Server
from agentcast.protocol import Settings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402 (next to this script: the load generator's build)

Counts = collections.Counter[str]


def type_name(obj: object) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def census() -> Counts:
    """Tracked objects by type (the frozen start-up heap excluded)."""
    return collections.Counter(type_name(obj) for obj in gc.get_objects())


def rows(counts: Counts, per: int, top: int) -> list[str]:
    out = []
    for name, count in counts.most_common(top):
        out.append(f"| `{name}` | {count / per:.2f} |")
    rest = sum(counts.values()) - sum(c for _, c in counts.most_common(top))
    if rest:
        out.append(f"| (other types) | {rest / per:.2f} |")
    return out


def loadgen(scenario: str, clients: int, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """The load generator; each scenario its own users (a user who comes back within the
    presence window is not announced again, and the churn waits for that)."""
    cmd = [
        str(bench.LOADGEN), "--scenario", scenario, "--clients", str(clients),
        "--port", str(port), "--api-key", bench.API_KEY, "--token-prefix", f"gc{scenario}",
        "--timeout", "120", *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)
    del what


async def garbage_after(server: Server, proc: subprocess.Popen[bytes]) -> tuple[Counts, int]:
    """Let *proc* end (its clients reset or close), wait until the server holds no
    connection, and return what only the cyclic collector frees, with the collector's
    own count of unreachable objects."""
    assert proc.stdin is not None
    proc.stdin.close()
    await anyio.to_thread.run_sync(proc.wait)
    service = server.service
    await wait_until(lambda: not service.connections, "every connection gone")
    await anyio.sleep(0.2)  # timers and callbacks of the last closes
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        unreachable = gc.collect()
        garbage = collections.Counter(type_name(obj) for obj in gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    return garbage, unreachable


async def main_async(args: argparse.Namespace) -> str:
    settings = Settings(
        heartbeat_interval=3600.0,
        heartbeat_timeout=7200.0,
        presence_grace=0.0,
        api_key=bench.API_KEY,
        max_connections=None,
        max_connections_per_ip=None,
        max_connections_per_user=None,
        connection_rate=None,
        dashboard=False,
    )
    server = Server(settings, port=0)
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        port = server.addresses[0][1]
        gc.collect()
        gc.freeze()  # the start-up heap, as `agentcast serve` does
        base = census()

        # 1. idle connections
        n = args.clients
        proc = loadgen("storm", n, port, "--concurrency", "100", "--hold")
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        if b'"ok":true' not in line:
            raise SystemExit(f"the load generator failed: {line.decode()[:1500]}")
        await wait_until(lambda: server.authenticated_clients_count() == n, "all connected")
        gc.collect()
        idle = census()
        idle.subtract(base)
        idle = +idle
        total = sum(idle.values())
        pauses = []
        for _ in range(5):
            started = time.perf_counter()
            gc.collect()
            pauses.append(time.perf_counter() - started)
        pause = statistics.median(pauses)
        lines += [
            f"### {n:,} idle authenticated connections ({args.backend})",
            "",
            f"* tracked objects per connection: **{total / n:.1f}** ({total:,} in all)",
            f"* a full collection of that heap: {pause * 1e3:.1f} ms (median of 5; "
            f"{pause * 1e9 / max(total, 1):.0f} ns per object)",
            "",
            "| type | per connection |",
            "|---|---:|",
            *rows(idle, n, args.top),
            "",
        ]

        # 2. dropped connections (the load generator resets them)
        gc.disable()
        try:
            garbage, unreachable = await garbage_after(server, proc)
        finally:
            gc.enable()
        lines += [
            f"### after {n:,} connections were reset by the client",
            "",
            f"* objects only the cyclic collector freed, per closed connection: "
            f"**{sum(garbage.values()) / n:.1f}** (collector: {unreachable:,} unreachable)",
        ]
        if garbage:
            lines += ["", "| type | per connection |", "|---|---:|", *rows(garbage, n, args.top)]
        lines.append("")

        # 3. clean closes (closing handshake), 10 at a time
        m = args.churn
        gc.collect()
        gc.disable()
        try:
            proc = loadgen("churn", m, port, "--concurrency", "10")
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            if b'"ok":true' not in line:
                raise SystemExit(f"the load generator failed: {line.decode()[:1500]}")
            garbage, unreachable = await garbage_after(server, proc)
        finally:
            gc.enable()
        lines += [
            f"### after {m:,} connections closed with a closing handshake",
            "",
            f"* objects only the cyclic collector freed, per closed connection: "
            f"**{sum(garbage.values()) / m:.1f}** (collector: {unreachable:,} unreachable)",
        ]
        if garbage:
            lines += ["", "| type | per connection |", "|---|---:|", *rows(garbage, m, args.top)]
        lines.append("")
        gc.unfreeze()
        server.shutdown()
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2_000)
    parser.add_argument("--churn", type=int, default=2_000)
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    bench.build_loadgen()
    bench.raise_fd_limit(args.clients + 1024)
    backend = "trio" if args.backend == "trio" else "asyncio"
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    print(anyio.run(main_async, args, backend=backend, backend_options=options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
