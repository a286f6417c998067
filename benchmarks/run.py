"""Run the benchmarks: agentcast (on asyncio, uvloop and trio) beside its peers.

    .venv/bin/python benchmarks/run.py                  # the table: every server, ~10 min
    .venv/bin/python benchmarks/run.py [--quick] [--rounds 2] [--only rtt-1000,connect]
                                       [--servers agentcast,websockets] [--all]
                                       [--loop asyncio|uvloop] [--profile SCENARIO]

The servers: agentcast on plain asyncio, on uvloop and on trio, and three peers serving
the same workload with the same bytes on the wire: ``websockets`` (the yardstick: every
ratio is to it, within the same round), ``picows`` and Node's ``ws`` (installed here by
pip and npm on first use, into the venv and benchmarks/.build/node; not project
dependencies). For every round and scenario each server runs in turn (the order
alternates between rounds), freshly started and pinned to CPU 0 with ``taskset``, while
the C load generator (benchmarks/loadgen/loadgen.c, compiled here with ``gcc -O2`` into
benchmarks/.build/) runs pinned to CPU 1 and reads the server's CPU time and memory from
/proc at the edges of the measured window. The table holds the median over the rounds.
See benchmarks/README.md.

``--profile SCENARIO`` runs that scenario once against agentcast under ``py-spy record``
(``pip install py-spy``) instead, writes a flame graph and prints the hottest frames.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / ".build"
LOADGEN_SRC = HERE / "loadgen" / "loadgen.c"
LOADGEN = BUILD / "loadgen"
NODE_MODULES = BUILD / "node" / "node_modules"
API_KEY = "bench-key"
SERVER_CPU, LOADGEN_CPU = 0, 1
#: Every server, in the table's order. "agentcast" runs on --loop (plain asyncio by
#: default), like the Python peers; the two others on uvloop and trio whatever --loop says.
SERVERS = ("websockets", "picows", "node-ws", "agentcast", "agentcast-uvloop", "agentcast-trio")
BASELINE = "websockets"
TITLES = {
    "websockets": "websockets",
    "picows": "picows",
    "node-ws": "Node ws",
    "agentcast": "agentcast",
    "agentcast-uvloop": "agentcast uvloop",
    "agentcast-trio": "agentcast trio",
}
AGENTCAST = ("agentcast", "agentcast-uvloop", "agentcast-trio")
ASYNCIO_PATHS = ("agentcast", "agentcast-uvloop")
BURST = 100  # notifications per POST /api/notifications
MSG_BYTES = 200  # size of one notification frame on the wire
STORM_IN_FLIGHT = 100  # storm: handshakes in flight at most
PROBE_RATE = 10  # storm: pings/s of the already-connected probe (under the rate limit)
STORM_SECONDS = {5_000: 15.0, 10_000: 60.0}  # storm: time goals, everyone sees everyone
LATENCY_RATE = 1_000  # latency: single publishes per second
LATENCY_SECONDS = 10
LATENCY_GRACE = 2.0  # latency: how long a server behind the rate is waited for


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # loadgen --scenario
    clients: int
    args: tuple[str, ...] = ()
    timeout: float = 300.0
    inproc: int = 0  # latency: notifications the server publishes itself (on SIGUSR2)


@dataclass(frozen=True)
class Target:
    """A performance goal for some of the servers: their value over *against*'s in the
    same round at most (or, with ``higher``, at least) *ratio*; or, with *limit*, the
    value itself at most *limit* (the metric's unit)."""

    servers: tuple[str, ...]
    ratio: float | None = None
    limit: float | None = None
    against: str = BASELINE


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    value: Callable[[dict[str, Any]], float]
    lower_is_better: bool
    targets: tuple[Target, ...] = ()
    digits: int = 2
    ratio: bool = True  # False where the websockets value is ~0 and a ratio means nothing


@dataclass
class Results:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )


def scenarios(quick: bool, everything: bool = False) -> list[Scenario]:
    """The table's scenarios (and, with *everything*, the long ones too)."""

    def fanout(clients: int, messages: int) -> Scenario:
        bursts = max(1, messages // BURST)
        return Scenario(
            f"fanout-{clients}",
            "fanout",
            clients,
            ("--same-user", "--bursts", str(bursts), "--burst-size", str(BURST),
             "--msg-bytes", str(MSG_BYTES)),
        )  # fmt: skip

    def storm(users: int, timeout: float) -> Scenario:
        return Scenario(
            f"storm-{users}", "storm", users,
            ("--concurrency", str(STORM_IN_FLIGHT), "--probe-rate", str(PROBE_RATE)),
            timeout=timeout,
        )  # fmt: skip

    def latency(how: str, seconds: int) -> Scenario:
        count = LATENCY_RATE * seconds
        return Scenario(
            f"latency-{how}", "latency", 1_000,
            ("--publish", how, "--publish-rate", str(LATENCY_RATE), "--messages", str(count),
             "--msg-bytes", str(MSG_BYTES), "--grace", str(LATENCY_GRACE)),
            timeout=seconds + 60.0, inproc=count if how == "inproc" else 0,
        )  # fmt: skip

    if quick:
        return [
            Scenario("rtt-1000", "rtt", 1_000, ("--ping-rate", "1000", "--duration", "3")),
            Scenario("connect", "churn", 1_000, ("--concurrency", "10",)),
            fanout(5_000, 100),
            latency("inproc", 3),
            latency("http", 3),
            *([fanout(100, 3_000), fanout(1_000, 300), storm(2_000, 300)] if everything else []),
        ]  # fmt: skip
    return [
        Scenario("rtt-1000", "rtt", 1_000, ("--ping-rate", "1000", "--duration", "4")),
        Scenario("connect", "churn", 2_000, ("--concurrency", "10",)),
        fanout(5_000, 100),
        latency("inproc", LATENCY_SECONDS),
        latency("http", LATENCY_SECONDS),
        *(
            [fanout(100, 10_000), fanout(1_000, 1_000), storm(5_000, 600), storm(10_000, 600)]
            if everything
            else []
        ),
    ]  # fmt: skip


def metrics(scenario: Scenario) -> list[Metric]:
    n = scenario.clients
    if scenario.kind == "fanout":
        at_scale = n >= 1_000
        out = [
            Metric(
                "server CPU per delivered message", "µs",
                lambda r: r["server_cpu_us"] / r["delivered"], True,
                (Target(ASYNCIO_PATHS, 0.7), Target(("agentcast-trio",), 1.5, against="agentcast"))
                if at_scale else (),
            ),
            Metric(
                "delivered messages/s", "msg/s",
                lambda r: r["delivered"] / r["window_s"], False,
                (Target(ASYNCIO_PATHS, 1.3),) if at_scale else (), 0,
            ),
        ]  # fmt: skip
        if at_scale:
            out += [
                Metric(
                    "idle memory per authenticated connection (before the bursts)", "KiB",
                    lambda r: (r["rss_ready_kb"] - r["rss0_kb"]) / n, True,
                    (Target(AGENTCAST, 1.0),), 1,
                ),
                Metric(
                    "memory still held per connection after the bursts, once quiet", "KiB",
                    lambda r: (r["rss_end_kb"] - r["rss_ready_kb"]) / n, True, (), 1,
                    ratio=False,
                ),
            ]  # fmt: skip
        return out
    if scenario.kind == "rtt":
        return [
            Metric("ping RTT p50", "ms", lambda r: r["rtt_us"]["p50"] / 1e3, True,
                   (Target(ASYNCIO_PATHS, 0.8),), 3),
            Metric("ping RTT p99", "ms", lambda r: r["rtt_us"]["p99"] / 1e3, True,
                   (Target(ASYNCIO_PATHS, 0.8),), 3),
            Metric(
                f"memory per connection after {n:,} distinct users came online", "KiB",
                lambda r: (r["rss_ready_kb"] - r["rss0_kb"]) / n, True, (), 1,
            ),
        ]  # fmt: skip
    if scenario.kind == "churn":
        return [
            Metric(
                "server CPU per accepted connection", "µs",
                lambda r: r["server_cpu_us"] / r["delivered"], True,
                (Target(ASYNCIO_PATHS, 0.7), Target(("agentcast-trio",), 1.2)), 0,
            ),
            Metric("connections/s (10 at a time)", "conn/s",
                   lambda r: r["delivered"] / r["window_s"], False, (), 0),
        ]  # fmt: skip
    if scenario.kind == "latency":
        goals: tuple[Target, ...] = (Target(AGENTCAST, 1.0),)
        if scenario.inproc:
            goals = (Target(AGENTCAST, limit=5.0), *goals)
        return [
            Metric("publish -> delivery p50", "ms", lambda r: r["latency_us"]["p50"] / 1e3,
                   True, (), 3),
            Metric("publish -> delivery p99", "ms", lambda r: r["latency_us"]["p99"] / 1e3,
                   True, goals, 3),
            Metric("publish -> delivery max", "ms", lambda r: r["latency_us"]["max"] / 1e3,
                   True, (), 1),
            Metric("server CPU per delivered message", "µs",
                   lambda r: r["server_cpu_us"] / r["delivered"], True, (), 2),
            Metric(f"deliveries still missing {LATENCY_GRACE:g} s after the last publish "
                   "(then the latencies above are lower bounds)", "%",
                   lambda r: 100 * r["latency_us"]["not_delivered_in_window"] / r["expected"],
                   True, (), 1, ratio=False),
        ]  # fmt: skip
    return [
        Metric("time until every client's presence view was the true set", "s",
               lambda r: r["window_s"], True,
               (Target(AGENTCAST, limit=STORM_SECONDS[n]),) if n in STORM_SECONDS else (), 2),
        Metric("peak RSS", "MiB", lambda r: r["hwm_kb"] / 1024, True, (), 1),
        Metric("server CPU", "s", lambda r: r["server_cpu_us"] / 1e6, True, (), 2),
        Metric(
            "server CPU per presence delivery (N(N+1)/2 + N)", "µs",
            lambda r: r["server_cpu_us"] / r["expected"], True, (Target(AGENTCAST, limit=2.0),), 2,
        ),
        Metric(
            "ping RTT p99 of an already-connected client during the storm", "ms",
            lambda r: r["probe_rtt_us"]["p99"] / 1e3, True, (Target(AGENTCAST, limit=50.0),), 1,
        ),
        Metric(
            "ping RTT max of that client", "ms",
            lambda r: r["probe_rtt_us"]["max"] / 1e3, True, (), 1,
        ),
        Metric(
            "memory per connection afterwards", "KiB",
            lambda r: (r["rss_end_kb"] - r["rss0_kb"]) / n, True, (), 1,
        ),
    ]  # fmt: skip


# -- processes ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_loadgen() -> None:
    BUILD.mkdir(exist_ok=True)
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    log("building the load generator: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < needed:
        log(f"warning: ulimit -n is {soft} (hard {hard}); the largest scenario needs ~{needed}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def wait_for_port(port: int, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {logfile.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on {port}: {logfile.read_text()}")


def ensure_peers(servers: tuple[str, ...]) -> tuple[str, ...]:
    """Install what the chosen peers need (picows with pip into this venv, ws with npm
    into benchmarks/.build/node); a peer that cannot be had is left out, with a warning."""
    chosen = []
    for kind in servers:
        if kind == "picows" and importlib.util.find_spec("picows") is None:
            log("installing picows (pip) for the picows peer")
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            if subprocess.run([*cmd, "picows"], check=False).returncode != 0:
                log("warning: could not install picows: the picows peer is left out")
                continue
        if kind == "node-ws":
            if not shutil.which("node") or not shutil.which("npm"):
                log("warning: node and npm are needed for the Node ws peer: left out")
                continue
            if not (NODE_MODULES / "ws" / "package.json").exists():
                log("installing ws@8 (npm) for the Node ws peer")
                (BUILD / "node").mkdir(parents=True, exist_ok=True)
                npm = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix"]
                done = subprocess.run([*npm, str(BUILD / "node"), "ws@8"], check=False)
                if done.returncode != 0:
                    log("warning: could not install ws: the Node ws peer is left out")
                    continue
        chosen.append(kind)
    return tuple(chosen)


def peer_versions(servers: tuple[str, ...]) -> str:
    parts = []
    for kind, module in (("websockets", "websockets"), ("picows", "picows")):
        if kind in servers:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                parts.append(f"{kind} {importlib.metadata.version(module)}")
    if "node-ws" in servers:
        with contextlib.suppress(OSError, ValueError):
            ws = json.loads((NODE_MODULES / "ws" / "package.json").read_text())["version"]
            node = subprocess.run(
                ["node", "--version"], check=False, capture_output=True, text=True
            ).stdout
            parts.append(f"ws {ws} on Node {node.strip()}")
    return ", ".join(parts)


def server_cmd(kind: str, loop: str, port: int, pub_port: int, scenario: Scenario) -> list[str]:
    python = sys.executable
    inproc = ["--inproc-rate", str(LATENCY_RATE), "--inproc-count", str(scenario.inproc),
              "--msg-bytes", str(MSG_BYTES)] if scenario.inproc else []  # fmt: skip
    if kind in AGENTCAST:
        backend = "trio" if kind == "agentcast-trio" else "asyncio"
        uvloop = kind == "agentcast-uvloop" or (kind == "agentcast" and loop == "uvloop")
        return [
            python, str(HERE / "serve_agentcast.py"), *inproc, "serve", "--port", str(port),
            "--api-key", API_KEY, "--heartbeat-interval", "3600", "--heartbeat-timeout", "7200",
            "--presence-grace", "0", "--log-level", "warning", "--backend", backend,
            # every loop named: agentcast alone would pick uvloop when it is installed
            "--uvloop" if uvloop else "--no-uvloop",
            # The peers send each presence change at once: so does agentcast here, or each
            # connection would wait out the presence window and the run would measure that,
            # and (presence interval) a user's offline right after its online would be held
            # for a second: every connection's presence_state would list the users of the
            # last second, and their offline broadcasts would come after the window.
            *(["--presence-window", "0", "--presence-interval", "0"]
              if scenario.kind == "churn" else []),
        ]  # fmt: skip
    common = ["--port", str(port), "--pub-port", str(pub_port), "--api-key", API_KEY,
              "--presence-grace", "0", *inproc]  # fmt: skip
    if kind == "node-ws":
        return ["node", str(HERE / "peer_node_ws.js"), *common]
    script = {"websockets": "peer_websockets.py", "picows": "peer_picows.py"}[kind]
    return [python, str(HERE / script), *common, *(["--uvloop"] if loop == "uvloop" else [])]


@contextlib.contextmanager
def server(
    kind: str, loop: str, logfile: Path, scenario: Scenario
) -> Iterator[tuple[int, int, int]]:
    """Start a server pinned to CPU 0; yields ``(pid, ws_port, publish_port)``."""
    port = free_port()
    pub_port = port if kind in AGENTCAST else free_port()
    cmd = server_cmd(kind, loop, port, pub_port, scenario)
    with logfile.open("wb") as out:
        proc = subprocess.Popen(pinned(SERVER_CPU, cmd), stdout=out, stderr=out, cwd=ROOT)
    try:
        wait_for_port(port, proc, logfile)
        if pub_port != port:
            wait_for_port(pub_port, proc, logfile)
        yield proc.pid, port, pub_port
    finally:
        proc.kill()
        proc.wait()


def loadgen_cmd(scenario: Scenario, pid: int, port: int, pub_port: int, tag: str) -> list[str]:
    return pinned(
        LOADGEN_CPU,
        [
            str(LOADGEN), "--scenario", scenario.kind, "--clients", str(scenario.clients),
            "--port", str(port), "--pub-port", str(pub_port), "--api-key", API_KEY,
            "--server-pid", str(pid), "--token-prefix", tag, "--timeout", str(scenario.timeout),
            "--hold", *scenario.args,
        ],
    )  # fmt: skip


def run_one(scenario: Scenario, kind: str, loop: str, tag: str) -> dict[str, Any]:
    logfile = BUILD / "logs" / f"{tag}-{scenario.name}-{kind}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with server(kind, loop, logfile, scenario) as (pid, port, pub_port):
        lg = subprocess.Popen(
            loadgen_cmd(scenario, pid, port, pub_port, tag),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert lg.stdout is not None
        assert lg.stdin is not None
        line = lg.stdout.readline()
        # the server is stopped (leaving the with block) before the clients go away
    lg.stdin.close()
    lg.wait(timeout=60)
    if not line:
        raise RuntimeError(f"the load generator said nothing (exit {lg.returncode})")
    result: dict[str, Any] = json.loads(line)
    return result


def summary(scenario: Scenario, r: dict[str, Any]) -> str:
    parts = []
    for m in metrics(scenario):
        try:
            parts.append(f"{m.label} {m.value(r):.{m.digits}f} {m.unit}")
        except (ZeroDivisionError, KeyError):
            parts.append(f"{m.label} n/a")
    if r.get("window_s", 0) > 0:
        parts.append(f"load generator CPU {r['loadgen_cpu_us'] / 1e4 / r['window_s']:.0f}%")
    if r["ok"]:
        flag = "ok"
    elif r["timeout"]:
        flag = f"NOT OK: timed out ({r['delivered']:,} of {r['expected']:,} delivered)"
    else:
        views = f"{r['views_wrong']} presence views wrong, " if r.get("views_wrong") else ""
        flag = f"NOT OK ({views}{r['first_error'] or r['errors']})"
    return f"{'; '.join(parts)}; {flag}"


# -- the table ---------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def medians(
    results: Results, scenario: Scenario, m: Metric, servers: tuple[str, ...]
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for kind in servers:
        values = []
        for r in results.runs.get((scenario.name, kind), []):
            with contextlib.suppress(ZeroDivisionError, KeyError, TypeError):
                if r["ok"]:
                    values.append(m.value(r))
        out[kind] = median(values)
    return out


def ratios(results: Results, scenario: Scenario, m: Metric, kind: str, against: str) -> list[float]:
    """*kind*'s value over *against*'s, round by round (the ratios are within a round)."""
    mine = results.runs.get((scenario.name, kind), [])
    theirs = results.runs.get((scenario.name, against), [])
    out = []
    for a, b in zip(mine, theirs, strict=False):
        with contextlib.suppress(ZeroDivisionError, KeyError, TypeError):
            if a["ok"] and b["ok"] and m.value(b):
                out.append(m.value(a) / m.value(b))
    return out


def verdicts(results: Results, scenario: Scenario, m: Metric, servers: tuple[str, ...]) -> str:
    med = medians(results, scenario, m, servers)
    said = []
    for goal in m.targets:
        for kind in goal.servers:
            if kind not in servers:
                continue
            name = TITLES[kind]
            if goal.limit is not None:
                value = med[kind]
                met = value is not None and value <= goal.limit
                said.append(f"{name} ≤ {goal.limit:g} {m.unit}: {'met' if met else 'missed'}")
                continue
            if goal.against not in servers or goal.ratio is None:
                continue
            ratio = median(ratios(results, scenario, m, kind, goal.against))
            sign = "≤" if m.lower_is_better else "≥"
            met = ratio is not None and (
                ratio <= goal.ratio if m.lower_is_better else ratio >= goal.ratio
            )
            vs = "" if goal.against == BASELINE else f" of {TITLES[goal.against]}"
            said.append(
                f"{name} {sign} {goal.ratio}x{vs}: {fmt(ratio, 2)}x, {'met' if met else 'missed'}"
            )
    return "; ".join(said)


def table(results: Results, chosen: list[Scenario], servers: tuple[str, ...]) -> str:
    """One row per metric, one column per server: the median over the rounds, and in
    brackets the median of the per-round ratios to websockets."""
    head = " | ".join(TITLES[k] for k in servers)
    rows = [
        f"| scenario | metric | {head} | targets |",
        "|---|---|" + "---:|" * len(servers) + "---|",
    ]
    for scenario in chosen:
        for m in metrics(scenario):
            med = medians(results, scenario, m, servers)
            cells = []
            for kind in servers:
                cell = fmt(med[kind], m.digits)
                if kind != BASELINE and m.ratio and BASELINE in servers:
                    ratio = median(ratios(results, scenario, m, kind, BASELINE))
                    if ratio is not None:
                        cell += f" ({ratio:.2f}x)"
                cells.append(cell)
            rows.append(
                f"| {scenario.name} | {m.label} ({m.unit}) | {' | '.join(cells)} | "
                f"{verdicts(results, scenario, m, servers)} |"
            )
        checks = []
        for kind in servers:
            rs = results.runs.get((scenario.name, kind), [])
            checks.append(f"{sum(1 for r in rs if r['ok'])}/{len(rs)}")
        lossless = scenario.kind in ("fanout", "latency")
        what = "rounds with zero loss and no error" if lossless else "rounds ok"
        rows.append(f"| {scenario.name} | {what} | {' | '.join(checks)} | |")
    return "\n".join(rows)


def header(args: argparse.Namespace, servers: tuple[str, ...]) -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ""
    with contextlib.suppress(OSError):
        load = f"; load average {os.getloadavg()[0]:.2f} at the start"
    return "\n".join(
        [
            f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}; "
            f"{os.cpu_count()} CPUs ({cpu}); Linux {platform.release()}; "
            f"Python {platform.python_version()}; {peer_versions(servers)}{load}",
            f"event loop of agentcast and the Python peers: {args.loop} (agentcast uvloop and "
            "trio: those loops)",
            f"mode: {'quick' if args.quick else 'full'}, {args.rounds} rounds, median; "
            f"server pinned to CPU {SERVER_CPU}, load generator (C, epoll) to CPU "
            f"{LOADGEN_CPU}",
            f"fan-out: through the HTTP batch API, POST /api/notifications with {BURST} "
            f"notifications (~{MSG_BYTES}-byte frames) per request; latency: {LATENCY_RATE} "
            "single notifications a second, in-process or one POST each",
            "(x) = the median of the per-round ratios to websockets",
        ]
    )


# -- profiling ---------------------------------------------------------------------------


def profile(scenario: Scenario, loop: str) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    tag = f"p{os.getpid()}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = BUILD / f"profile-{scenario.name}-{stamp}.txt"
    svg = BUILD / f"profile-{scenario.name}-{stamp}.svg"
    logfile = BUILD / "logs" / f"{tag}-{scenario.name}-profile.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with server("agentcast", loop, logfile, scenario) as (pid, port, pub_port):
        lg = subprocess.Popen(
            loadgen_cmd(scenario, pid, port, pub_port, tag),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        spy_cmd = [py_spy, "record", "--pid", str(pid), "--rate", "200"]
        spies = [
            subprocess.Popen(pinned(LOADGEN_CPU, [*spy_cmd, "--format", fmt_, "-o", str(out)]))
            for fmt_, out in (("raw", raw), ("flamegraph", svg))
        ]
        assert lg.stdout is not None
        assert lg.stdin is not None
        line = lg.stdout.readline()
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=60)
    lg.stdin.close()
    lg.wait(timeout=60)
    result = json.loads(line)
    log(f"{scenario.name} under py-spy (numbers inflated by the sampling): "
        f"{summary(scenario, result)}")  # fmt: skip
    print(f"flame graph: {svg}\ncollapsed stacks: {raw}")
    print(hot_frames(raw))


def hot_frames(raw: Path, top: int = 20) -> str:
    """The frames where the samples are (self time) and the ones they pass through
    (inclusive time), from py-spy's collapsed stacks (idle samples excluded, as py-spy
    does by default; the setup phase before the measured window is sampled too)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if any("(threading.py:" in f for f in frames):
            continue  # a worker thread (anyio's getaddrinfo pool), idle but sampled
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller scenarios (minutes)")
    parser.add_argument("--all", action="store_true", help="also fan-out 100/1,000 and storms")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (median; default 2)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--servers", default=",".join(SERVERS), help=",".join(SERVERS))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--profile", metavar="SCENARIO", help="py-spy agentcast on one")
    parser.add_argument("--clients", type=int, help="override the scenarios' client count")
    args = parser.parse_args()
    wanted = [n for n in args.only.split(",") if n]
    everything = scenarios(args.quick, everything=True)
    if args.clients:
        everything = [dataclasses.replace(s, clients=args.clients) for s in everything]
    names = {s.name for s in everything}
    unknown = set(wanted) - names
    if unknown or (args.profile and args.profile not in names):
        parser.error(f"scenarios are: {', '.join(sorted(names))}")
    default = {s.name for s in scenarios(args.quick, everything=args.all)}
    chosen = [s for s in everything if s.name in wanted or (not wanted and s.name in default)]
    asked = [k for k in args.servers.split(",") if k]
    if set(asked) - set(SERVERS):
        parser.error(f"servers are: {', '.join(SERVERS)}")
    servers = ensure_peers(tuple(k for k in SERVERS if k in asked))

    build_loadgen()
    raise_fd_limit(max(s.clients for s in chosen) + 1024)
    with contextlib.suppress(OSError):  # the driver sleeps; keep it off the server's CPU
        os.sched_setaffinity(0, {LOADGEN_CPU})
    if args.profile:
        profile(next(s for s in everything if s.name == args.profile), args.loop)
        return 0

    results = Results()
    started = time.monotonic()
    head = header(args, servers)
    for rnd in range(args.rounds):
        order = servers if rnd % 2 == 0 else tuple(reversed(servers))
        for scenario in chosen:
            for kind in order:
                tag = f"r{rnd}x{os.getpid() % 10000}"
                began = time.monotonic()
                try:
                    r = run_one(scenario, kind, args.loop, tag)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                    log(f"[round {rnd + 1}] {scenario.name} {kind}: FAILED: {exc}")
                    continue
                results.runs[(scenario.name, kind)].append(r)
                log(f"[round {rnd + 1}/{args.rounds}] {scenario.name} {kind}: "
                    f"{summary(scenario, r)} [{time.monotonic() - began:.0f} s]")  # fmt: skip
    text = f"{head}\n\n{table(results, chosen, servers)}\n"
    text += f"\n(total {time.monotonic() - started:.0f} s)\n"
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BUILD / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}.md").write_text(text)
    raw = {f"{name}/{kind}": runs for (name, kind), runs in results.runs.items()}
    (out / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
    log(f"written: {out / stamp}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
