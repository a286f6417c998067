"""The cluster benchmarks: `agentcast serve --workers 2` with Redis next to one process.

    .venv/bin/python benchmarks/cluster.py            # ~2 minutes
    .venv/bin/python benchmarks/cluster.py --quick    # smaller (under a minute)

Prints one Markdown table (and writes it to benchmarks/.build/results/cluster-<time>.md):

* **fan-out**: the C load generator (``loadgen --scenario fanout``) connects N clients
  (one user) and POSTs batches of 100 notifications; delivered messages per second, and
  server CPU per delivered message (the sum of ``utime + stime`` over every server
  process, read from ``/proc`` at the edges of the window; the supervisor of ``--workers``
  is idle and not counted). Compared: one process without Redis, one process with Redis,
  two workers with Redis. Nothing is pinned: two workers need both cores, and the load
  generator and Redis share them, so their CPU is reported too (what the workers could not
  get).
* **cross-process latency**: two processes on their own ports, one Redis; a publisher
  POSTs 1,000 notifications a second to process A (a batch of 10 every 10 ms), each
  carrying its request's send time; `websockets` clients on A and on B note the
  arrival. The same with one process without Redis as the baseline. p50/p99 of publish
  -> arrival.
* **storm**: a reconnect storm (``loadgen --scenario storm``): N distinct users connect,
  100 handshakes in flight, every client's presence view checked against the true set,
  a probe client pinging 10 times a second through it; one process without Redis, then
  two workers with Redis. Time until every view is true, server CPU (per presence
  delivery: N(N+1)/2 + N), the probe's ping RTT.
* **memory**: N idle authenticated connections across two workers (the load generator's
  fan-out scenario up to the point where every client is connected): RSS growth of the two
  workers per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import LOADGEN, build_loadgen, free_port, wait_for_port  # noqa: E402

API_KEY = "bench-key"
BATCH = 10  # latency: notifications per publish request
RESULTS = HERE / ".build" / "results"
LOGS = HERE / ".build" / "logs"
UNLIMITED = [
    "--max-connections", "0", "--max-connections-per-ip", "0",
    "--max-connections-per-user", "0", "--connection-rate", "0",
]  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, Path(os.devnull))
        yield f"redis://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@contextlib.contextmanager
def server(
    name: str, redis: str | None, workers: int, *extra: str
) -> Iterator[tuple[int, list[int]]]:
    """An ``agentcast serve``; yields ``(port, pids of the serving processes)``."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "agentcast.adapters", "serve", "--port", str(port),
        "--api-key", API_KEY, "--heartbeat-interval", "3600", "--heartbeat-timeout", "7200",
        "--presence-grace", "0", "--log-level", "warning", *UNLIMITED,
    ]  # fmt: skip
    if redis is not None:
        cmd += ["--redis-url", redis, "--redis-stream", f"bench-{name}-{port}"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cmd += extra  # last: a flag given here wins
    LOGS.mkdir(parents=True, exist_ok=True)
    logfile = LOGS / f"cluster-{name}.log"
    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    try:
        wait_for_port(port, proc, logfile)
        pids = [proc.pid]
        if workers > 1:
            deadline = time.monotonic() + 30
            while len(pids := children(proc.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # let every worker bind and join before the clients come
        yield port, pids
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_cpu(pid: int | None) -> int:
    return cpu_ticks(pid) if pid is not None else 0


def loadgen(port: int, pids: list[int], clients: int, bursts: int, tag: str) -> dict[str, Any]:
    cmd = [
        str(LOADGEN), "--scenario", "fanout", "--clients", str(clients), "--port", str(port),
        "--api-key", API_KEY, "--server-pid", ",".join(map(str, pids)), "--token-prefix", tag,
        "--same-user", "--bursts", str(bursts), "--burst-size", "100", "--msg-bytes", "200",
        "--timeout", "600",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0 and not out.stdout.strip():
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def fanout(redis: tuple[str, int], clients: int, bursts: int) -> list[list[str]]:
    rows = []
    tick = os.sysconf("SC_CLK_TCK")
    for name, url, workers in (
        ("1 process, no Redis", None, 1),
        ("1 process + Redis", redis[0], 1),
        ("2 workers + Redis", redis[0], 2),
    ):
        with server(name.split()[0] + name.split()[-1], url, workers) as (port, pids):
            r0 = redis_cpu(redis[1]) if url else 0
            r = loadgen(port, pids, clients, bursts, f"f{workers}")
            r1 = redis_cpu(redis[1]) if url else 0
        if not r.get("zero_loss"):
            log(f"{name}: loss or disorder reported: {json.dumps(r)[:400]}")
        rate = r["delivered"] / r["window_s"]
        rows.append(
            [
                f"fan-out {clients:,} clients, {bursts * 100:,} msgs: {name}",
                f"{rate:,.0f} msg/s",
                f"{r['server_cpu_us'] / r['delivered']:.2f} µs",
                f"loadgen {r['loadgen_cpu_us'] / 1e6:.2f} s, Redis {(r1 - r0) / tick:.2f} s"
                f" CPU in a {r['window_s']:.2f} s window"
                + ("" if r.get("zero_loss") else "; LOSS"),
            ]
        )
        log(" | ".join(rows[-1]))
    return rows


# -- latency ------------------------------------------------------------------------------


async def _post(port: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + API_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    await reader.read()
    writer.close()


async def _latency(
    pub_port: int, watch_ports: list[int], rate: int, seconds: float
) -> list[list[float]]:
    from websockets.asyncio.client import connect  # noqa: PLC0415

    samples: list[list[float]] = [[] for _ in watch_ports]
    total = int(rate * seconds)
    done = asyncio.Event()

    async def watch(i: int, port: int, ready: asyncio.Event) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws?token=watch{i}") as ws:
            ready.set()
            async for raw in ws:
                now = time.monotonic_ns()
                message = json.loads(raw)
                if message["type"] == "notification":
                    sent = int(message["data"]["message"].split()[1])
                    samples[i].append((now - sent) / 1e6)
                    if len(samples[i]) >= total:
                        return
                if done.is_set() and len(samples[i]) >= total:
                    return

    readies = [asyncio.Event() for _ in watch_ports]
    tasks = [
        asyncio.create_task(watch(i, p, r))
        for i, (p, r) in enumerate(zip(watch_ports, readies, strict=True))
    ]
    for r in readies:
        await r.wait()
    await asyncio.sleep(0.5)
    start = time.monotonic()
    posts = set()
    # A batch of BATCH every BATCH/rate seconds: the rate with a tenth of the HTTP requests
    # (the harness shares the two cores with the servers); each message carries the time
    # its request was sent.
    for n in range(0, total, BATCH):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.monotonic_ns()
        items = [{"level": "info", "message": f"t {sent} {n + i}"} for i in range(BATCH)]
        task = asyncio.create_task(_post(pub_port, json.dumps(items).encode()))
        posts.add(task)
        task.add_done_callback(posts.discard)
    done.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)
    for t in tasks:
        t.cancel()
    return samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def latency(redis: tuple[str, int], rate: int, seconds: float) -> list[list[str]]:
    rows = []
    with server("lat-single", None, 1) as (port, _):
        (alone,) = asyncio.run(_latency(port, [port], rate, seconds))
    with (
        server("lat-a", redis[0], 1, "--redis-stream", "bench-lat") as (a, _),
        server("lat-b", redis[0], 1, "--redis-stream", "bench-lat") as (b, _),
    ):
        same, other = asyncio.run(_latency(a, [a, b], rate, seconds))
    for label, values in (
        ("1 process, no Redis", alone),
        ("2 processes + Redis: client on the publishing process", same),
        ("2 processes + Redis: client on the other process", other),
    ):
        rows.append(
            [
                f"publish -> client at {rate:,} msgs/s: {label}",
                f"p50 {pct(values, 0.5):.2f} ms",
                f"p99 {pct(values, 0.99):.2f} ms",
                f"{len(values):,} samples (of {int(rate * seconds):,})",
            ]
        )
        log(" | ".join(rows[-1]))
    return rows


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def memory(redis: tuple[str, int], clients: int) -> list[list[str]]:
    """*clients* connections from two load generators (each process may hold only
    ``ulimit -n`` descriptors), held open while the workers' RSS is read."""
    with server("mem", redis[0], 2) as (port, pids):
        rss0 = sum(rss_kb(pid) for pid in pids)
        half = clients // 2

        def command(i: int) -> list[str]:
            return [
                str(LOADGEN), "--scenario", "fanout", "--clients", str(half),
                "--port", str(port), "--api-key", API_KEY, "--token-prefix", f"m{i}",
                "--same-user", "--bursts", "1", "--burst-size", "1", "--timeout", "600",
                "--hold",
            ]  # fmt: skip

        gens = [
            subprocess.Popen(
                command(i),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i in range(2)
        ]
        try:
            for gen in gens:
                assert gen.stdout is not None
                gen.stdout.readline()  # its report: every client is connected
            held = health(port)["cluster"]["clients"]
            rss1 = sum(rss_kb(pid) for pid in pids)
        finally:
            for gen in gens:
                assert gen.stdin is not None
                gen.stdin.close()
                gen.wait(60)
    per = (rss1 - rss0) / clients
    row = [
        f"{clients:,} idle authenticated connections across 2 workers",
        f"{per:.1f} KiB/connection",
        f"RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB (both workers)",
        f"{held:,} connections counted cluster-wide",
    ]
    log(" | ".join(row))
    return [row]


def storm(redis: tuple[str, int], users: int) -> list[list[str]]:
    """A reconnect storm: *users* distinct users connect, 100 handshakes in flight, on one
    process without Redis and on two workers with Redis (the load generator's ``storm``
    scenario: every client's presence view checked, a probe client pinging through it)."""
    rows = []
    setups = (("1 process, no Redis", None, 1), ("2 workers + Redis", redis[0], 2))
    for name, url, workers in setups:
        with server(f"storm{workers}", url, workers) as (port, pids):
            cmd = [
                str(LOADGEN), "--scenario", "storm", "--clients", str(users),
                "--port", str(port), "--api-key", API_KEY,
                "--server-pid", ",".join(map(str, pids)), "--token-prefix", f"s{workers}",
                "--concurrency", "100", "--probe-rate", "10", "--timeout", "600",
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        if not out.stdout.strip():
            raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        deliveries = users * (users + 1) / 2 + users  # what every view must learn
        probe = r["probe_rtt_us"]
        rows.append(
            [
                f"storm, {users:,} users, 100 in flight: {name}",
                f"every view true in {r['window_s']:.2f} s" + ("" if r.get("ok") else " (FAILED)"),
                f"server CPU {r['server_cpu_us'] / 1e6:.2f} s"
                f" ({r['server_cpu_us'] / deliveries:.2f} µs per presence delivery)",
                f"probe ping RTT p99 {probe['p99'] / 1e3:.1f} ms (p50 {probe['p50'] / 1e3:.1f})",
            ]
        )
        log(" | ".join(rows[-1]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="fanout,latency,memory,storm", help="which parts")
    parser.add_argument("--clients", type=int, default=2_000, help="fan-out clients")
    parser.add_argument("--connections", type=int, help="memory: idle connections")
    parser.add_argument("--users", type=int, help="storm: users (default 5,000; 2,000 quick)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    build_loadgen()
    connections = args.connections or (5_000 if args.quick else 20_000)
    raise_fd_limit(connections + 1_000)
    rows: list[list[str]] = []
    with redis_server() as redis:
        if "fanout" in parts:
            rows += fanout(redis, args.clients, 5 if args.quick else 20)
        if "latency" in parts:
            rows += latency(redis, 1_000, 2.0 if args.quick else 5.0)
        if "memory" in parts:
            rows += memory(redis, connections)
        if "storm" in parts:
            rows += storm(redis, args.users or (2_000 if args.quick else 5_000))
    table = ["| measurement | result | | |", "|---|---|---|---|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(table)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
