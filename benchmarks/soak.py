"""Soak: the server under a long, mixed, churning load, checked message by message.

    .venv/bin/python benchmarks/soak.py                       # 5 minutes, 1,000 clients
    .venv/bin/python benchmarks/soak.py --seconds 30 --clients 200     # a quick check
    .venv/bin/python benchmarks/soak.py --backend trio
    .venv/bin/python benchmarks/soak.py --backend asyncio --no-uvloop

It starts ``agentcast serve`` as a subprocess (dev auth, an API key, the per-address,
per-user and rate limits lifted: every client comes from one address) and, in this
process, with the `websockets` client:

* keeps ``--clients`` WebSocket connections open over ``--users`` users (several
  connections per user), replacing ``--churn`` of them every second (most close cleanly,
  some drop the TCP connection without a close frame);
* changes the presence status of ``--presence`` connections a second;
* publishes ``--rate`` messages a second through the HTTP publish API: single chat
  messages and notifications to everyone, batches of chat messages, and notifications to
  one user (``userId``);
* checks, per connection lifetime, every broadcast it receives by id: every message
  addressed to it and published while it was connected arrived exactly once and in
  order, and nothing addressed to another user arrived;
* samples the server's RSS (``VmRSS``) every second and its CPU time;
* at the end closes every client, waits for ``/healthz`` to count 0 clients, stops the
  server with SIGTERM and prints one table. The exit status is 0 when every check passed.

When a connection's window starts and ends: a message must arrive if its publish request
was sent after the connection received its ``auth``, and its ``202`` was received before
the connection's last round trip (a JSON ``ping`` answered by a ``pong``, which the server
queues after everything published before it) that precedes its close. Messages published
around those edges may arrive or not; if they arrive they are still checked for order,
duplicates and audience.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "soak-key"
#: Items in one batch request.
BATCH = 10
#: Connections being opened at once while ramping up or replacing churned ones.
CONNECTING = 50


@dataclass(slots=True)
class Published:
    """One published message, as the publish API acknowledged it."""

    id: str
    user: str | None  # addressed to this user only, or to every authenticated connection
    sent_at: float  # the request was written (monotonic, this process)
    acked_at: float  # its 202 was read


@dataclass
class Totals:
    connections: int = 0
    clean_closes: int = 0
    drops: int = 0
    checked: int = 0  # deliveries matched against the publish log
    other_ids: int = 0  # id'd messages not from the publisher (user_presence)
    lost: int = 0
    duplicated_or_reordered: int = 0
    misdelivered: int = 0
    unexpected_closes: dict[str, int] = field(default_factory=dict)
    failed_connects: int = 0
    presence_changes: int = 0
    publishes_single: int = 0
    publishes_batch: int = 0
    publishes_user: int = 0
    messages_published: int = 0
    publish_errors: int = 0


class Log:
    """Every message the publisher got a 202 for, in id order (one publisher, which waits
    for each answer, so acknowledgement order is id order)."""

    def __init__(self) -> None:
        self.entries: list[Published] = []
        self.ids: list[str] = []

    def add(self, entry: Published) -> None:
        assert not self.ids or entry.id > self.ids[-1], "ids must increase"
        self.entries.append(entry)
        self.ids.append(entry.id)

    @property
    def last_id(self) -> str:
        return self.ids[-1] if self.ids else ""


class Client:
    """One connection lifetime and its running check against the publish log."""

    def __init__(self, user: str, log: Log, totals: Totals) -> None:
        self.user = user
        self.log = log
        self.totals = totals
        self.ws: ClientConnection | None = None
        self.cursor = len(log.entries)  # entries before this were acked before we connected
        self.authed_at: float | None = None
        self.window_end: float | None = None
        self.pending: list[str] = []
        self.last_id = ""
        self.pong = asyncio.Event()
        self.authed = asyncio.Event()
        self.closing = False

    # -- receiving -----------------------------------------------------------------------

    async def run(self, url: str) -> None:
        self.ws = ws = await connect(
            f"{url}?token={self.user}",
            proxy=None,
            ping_interval=None,  # the server's heartbeat pings; we answer them
            open_timeout=30,
            max_queue=None,
        )
        try:
            async for raw in ws:
                message = json.loads(raw)
                kind = message["type"]
                if "id" in message:
                    self.pending.append(message["id"])
                elif kind == "pong":
                    self.pong.set()
                elif kind == "auth":
                    assert message["data"]["success"], message
                    self.authed_at = time.monotonic()
                    self.authed.set()
        except ConnectionClosed:
            pass
        finally:
            self.authed.set()  # (also when it failed: the opener stops waiting)
        if not self.closing:
            rcvd = ws.close_rcvd
            key = "no close frame" if rcvd is None else f"{rcvd.code} {rcvd.reason}"
            self.totals.unexpected_closes[key] = self.totals.unexpected_closes.get(key, 0) + 1
            if self.window_end is None:
                self.window_end = time.monotonic()  # nothing is owed after the server closed

    async def barrier(self) -> None:
        """A round trip: once the pong is back, everything published before is here."""
        assert self.ws is not None
        self.pong.clear()
        started = time.monotonic()
        await self.ws.send('{"type":"ping"}')
        await asyncio.wait_for(self.pong.wait(), 30)
        self.window_end = started

    async def set_presence(self, status: str) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps({"type": "user_presence", "data": status}))

    # -- checking ------------------------------------------------------------------------

    def _owed(self, entry: Published) -> bool:
        """Whether *entry* had to reach this connection."""
        if entry.user is not None and entry.user != self.user_id:
            return False
        if self.authed_at is None or entry.sent_at <= self.authed_at:
            return False
        return self.window_end is None or entry.acked_at < self.window_end

    @property
    def user_id(self) -> str:
        return f"user_{self.user}"

    def check(self, upto: str, final: bool = False) -> None:
        """Account for the ids received so far, up to the publisher's last acked id."""
        log, totals = self.log, self.totals
        entries, ids = log.entries, log.ids
        processed = 0
        for mid in self.pending:
            if mid > upto and not final:
                break  # its 202 may not be back yet: wait, to keep the arrival order
            processed += 1
            if mid <= self.last_id:
                totals.duplicated_or_reordered += 1
                continue
            self.last_id = mid
            index = bisect.bisect_left(ids, mid, lo=self.cursor)
            for entry in entries[self.cursor : index]:
                if self._owed(entry):
                    totals.lost += 1
            self.cursor = index
            if index < len(ids) and ids[index] == mid:
                entry = entries[index]
                if entry.user is not None and entry.user != self.user_id:
                    totals.misdelivered += 1
                else:
                    totals.checked += 1
                self.cursor = index + 1
            else:
                totals.other_ids += 1
        del self.pending[:processed]
        if final:
            for entry in entries[self.cursor :]:
                if self._owed(entry):
                    totals.lost += 1
            self.cursor = len(entries)


# -- the publisher ---------------------------------------------------------------------


async def post(host: str, port: int, path: str, body: object) -> tuple[int, dict[str, object]]:
    data = json.dumps(body, separators=(",", ":")).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(content) if content else {}


async def publisher(
    host: str,
    port: int,
    *,
    rate: float,
    users: int,
    log: Log,
    totals: Totals,
    stop: asyncio.Event,
) -> None:
    """About *rate* messages a second: 40% single chat messages or notifications to
    everyone, 40% in batches of chat messages, 20% notifications to one user."""
    rng = random.Random(1)
    seq = 0
    next_at = time.monotonic()
    while not stop.is_set():
        choice = rng.random()
        user: str | None = None
        if choice < 0.4:
            seq += 1
            if seq % 2:
                path, body = "/api/notifications", {"level": "info", "message": f"n{seq}"}
            else:
                path, body = "/api/chat-messages", _chat(seq)
            totals.publishes_single += 1
            count = 1
        elif choice < 0.8:
            path, body = "/api/chat-messages", [_chat(seq + i + 1) for i in range(BATCH)]
            seq += BATCH
            totals.publishes_batch += 1
            count = BATCH
        else:
            seq += 1
            user = f"user_u{rng.randrange(users)}"
            path = "/api/notifications"
            body = {"level": "success", "message": f"n{seq}", "userId": user}
            totals.publishes_user += 1
            count = 1
        sent_at = time.monotonic()
        try:
            status, answer = await post(host, port, path, body)
        except (TimeoutError, OSError):
            totals.publish_errors += 1
            continue
        acked_at = time.monotonic()
        if status != 202:
            totals.publish_errors += 1
            continue
        ids = answer["ids"] if isinstance(body, list) else [answer["id"]]
        assert isinstance(ids, list)
        for mid in ids:
            log.add(Published(str(mid), user, sent_at, acked_at))
        totals.messages_published += count
        next_at += count / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        else:
            next_at = time.monotonic()  # behind: do not burst to catch up


def _chat(seq: int) -> dict[str, str]:
    return {
        "conversationId": f"conv-{seq % 7}",
        "messageId": f"m{seq}",
        "content": f"message {seq}",
        "sender": "soak",
    }


# -- the server --------------------------------------------------------------------------


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str, list[str]]:
    argv = [
        sys.executable,
        "-m",
        "agentcast.adapters",
        "serve",
        "--port",
        "0",
        "--backend",
        args.backend,
        "--uvloop" if args.uvloop else "--no-uvloop",
        "--api-key",
        API_KEY,
        "--max-connections",
        "0",
        "--max-connections-per-ip",
        "0",
        "--max-connections-per-user",
        "0",
        "--connection-rate",
        "0",
        "--heartbeat-interval",
        str(args.heartbeat),
        "--heartbeat-timeout",
        str(2 * args.heartbeat),
        "--log-level",
        "warning",
    ]
    if args.backend == "trio":
        argv.remove("--no-uvloop" if not args.uvloop else "--uvloop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode(errors="replace")
        if not line:
            break
        lines.append(line.rstrip())
        match = re.search(r"agentcast listening on (ws://\S+)", line)
        if match:
            return process, match.group(1), lines
    process.kill()
    raise SystemExit("the server did not start:\n" + "".join(lines))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def send_backlog(host: str, port: int) -> int:
    """The server's ``agentcast_send_backlog_bytes``: output queued for slow readers
    (memory that is the client's doing, not a leak)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    match = re.search(rb"^agentcast_send_backlog_bytes (\S+)$", answer, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


async def healthz(host: str, port: int) -> dict[str, object]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return dict(json.loads(answer.partition(b"\r\n\r\n")[2]))


# -- the run -----------------------------------------------------------------------------


async def soak(args: argparse.Namespace, url: str, pid: int) -> dict[str, object]:
    host, port = re.match(r"ws://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    port_n = int(port)
    log = Log()
    totals = Totals()
    rng = random.Random(2)
    live: dict[Client, asyncio.Task[None]] = {}
    done: list[Client] = []
    connecting = asyncio.Semaphore(CONNECTING)

    async def open_one() -> None:
        client = Client(f"u{rng.randrange(args.users)}", log, totals)
        async with connecting:
            task = asyncio.create_task(client.run(url))
            waiting = asyncio.create_task(client.authed.wait())
            await asyncio.wait((task, waiting), return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        if client.authed_at is None:
            totals.failed_connects += 1
            with contextlib.suppress(Exception):
                await task
            return
        totals.connections += 1
        live[client] = task

    async def close_one(client: Client, clean: bool) -> None:
        task = live.pop(client)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await client.barrier()
        client.closing = True
        assert client.ws is not None
        if clean:
            totals.clean_closes += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(), 30)
        else:
            totals.drops += 1
            client.ws.transport.abort()
        with contextlib.suppress(Exception):
            await task
        client.check(log.last_id, final=True)
        done.append(client)

    async def check_all() -> None:
        upto = log.last_id
        for client in list(live):
            client.check(upto)

    samples: list[tuple[float, int]] = []
    backlogs: list[int] = []
    start = time.monotonic()
    print(f"ramping up to {args.clients} clients ...", file=sys.stderr)
    await asyncio.gather(*(open_one() for _ in range(args.clients)))
    ramped = time.monotonic()
    cpu_start = cpu_seconds(pid)
    stop = asyncio.Event()
    publishing = asyncio.create_task(
        publisher(host, port_n, rate=args.rate, users=args.users, log=log, totals=totals, stop=stop)
    )
    statuses = ("online", "away", "busy", "online")
    end = ramped + args.seconds
    background: set[asyncio.Task[None]] = set()
    tick = 0
    while time.monotonic() < end:
        tick += 1
        await asyncio.sleep(1.0)
        samples.append((time.monotonic() - ramped, rss_kib(pid)))
        backlogs.append(await send_backlog(host, port_n))
        # churn: replace some connections
        for client in rng.sample(list(live), min(len(live), int(args.churn))):
            clean = rng.random() < 0.8
            for coro in (close_one(client, clean), open_one()):
                task = asyncio.create_task(coro)
                background.add(task)
                task.add_done_callback(background.discard)
        # presence changes
        for client in rng.sample(list(live), min(len(live), int(args.presence))):
            with contextlib.suppress(ConnectionClosed):
                await client.set_presence(rng.choice(statuses))
                totals.presence_changes += 1
        await check_all()
        if tick % 10 == 0:
            print(
                f"{int(time.monotonic() - ramped)} s: {len(live)} clients, "
                f"{totals.messages_published} published, {totals.checked} checked, "
                f"{totals.lost} lost, RSS {samples[-1][1] / 1024:.1f} MiB, "
                f"send backlog {backlogs[-1] / 1024:.0f} KiB",
                file=sys.stderr,
            )
    stop.set()
    await publishing
    if background:
        await asyncio.gather(*background)
    loaded_seconds = time.monotonic() - ramped
    cpu = cpu_seconds(pid) - cpu_start
    rss_end_loaded = rss_kib(pid)
    print("closing every client ...", file=sys.stderr)
    closing = list(live)
    for i in range(0, len(closing), CONNECTING):
        await asyncio.gather(*(close_one(c, True) for c in closing[i : i + CONNECTING]))
    health: dict[str, object] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = await healthz(host, port_n)
        if health.get("clients") == 0 and health.get("authenticated") == 0:
            break
        await asyncio.sleep(0.2)
    return {
        "log": log,
        "totals": totals,
        "samples": samples,
        "loaded_seconds": loaded_seconds,
        "ramp_seconds": ramped - start,
        "cpu": cpu,
        "rss_end_loaded": rss_end_loaded,
        "rss_after": rss_kib(pid),
        "backlog_max": max(backlogs, default=0),
        "backlog_end": backlogs[-1] if backlogs else 0,
        "health": health,
    }


def rss_verdict(samples: list[tuple[float, int]]) -> tuple[float, float, float, bool]:
    """(MiB after warm-up, MiB at the end, slope in MiB per minute over the run after
    warm-up, no growth?). Warm-up: the first fifth of the run. Growth: the median of the
    last fifth more than 5% + 2 MiB over the median of the second fifth."""
    if len(samples) < 10:
        values = [kib for _, kib in samples] or [0]
        return values[0] / 1024, values[-1] / 1024, 0.0, True
    fifth = len(samples) // 5
    warm = statistics.median(kib for _, kib in samples[fifth : 2 * fifth]) / 1024
    last = statistics.median(kib for _, kib in samples[-fifth:]) / 1024
    after = samples[fifth:]
    xs = [t for t, _ in after]
    ys = [kib / 1024 for _, kib in after]
    slope = statistics.linear_regression(xs, ys).slope * 60
    return warm, last, slope, last <= warm * 1.05 + 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="loaded time (300)")
    parser.add_argument("--clients", type=int, default=1000, help="connections kept open")
    parser.add_argument("--users", type=int, default=0, help="users (default: clients / 3)")
    parser.add_argument("--rate", type=float, default=40.0, help="messages published a second")
    parser.add_argument("--churn", type=float, default=0, help="connections replaced a second")
    parser.add_argument("--presence", type=float, default=0, help="presence changes a second")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--uvloop", action=argparse.BooleanOptionalAction, default=None, help="(asyncio default)"
    )
    args = parser.parse_args(argv)
    if args.uvloop is None:
        args.uvloop = args.backend == "asyncio"
    if args.uvloop and args.backend == "trio":
        parser.error("--uvloop needs --backend asyncio")
    args.users = args.users or max(1, args.clients // 3)
    args.churn = args.churn or max(1.0, args.clients / 100)  # 1% a second
    args.presence = args.presence or max(1.0, args.clients / 200)
    raise_nofile()
    process, url, _ = start_server(args)
    try:
        result = asyncio.run(soak(args, url, process.pid))
    except BaseException:
        process.kill()
        raise
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
        exit_code: int | str = process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        exit_code = "killed (no exit 30 s after SIGTERM)"
    return report(args, result, exit_code, output.decode(errors="replace"))


def report(
    args: argparse.Namespace, result: dict[str, object], exit_code: object, output: str
) -> int:
    totals = result["totals"]
    assert isinstance(totals, Totals)
    samples = result["samples"]
    assert isinstance(samples, list)
    health = result["health"]
    warm, last, slope, flat = rss_verdict(samples)
    loop = "trio" if args.backend == "trio" else ("uvloop" if args.uvloop else "asyncio")
    seconds = float(result["loaded_seconds"])  # type: ignore[arg-type]
    tracebacks = output.count("Traceback")
    checks = {
        "no loss": totals.lost == 0,
        "no duplicate or reordering": totals.duplicated_or_reordered == 0,
        "no misdelivery": totals.misdelivered == 0,
        "no unexpected close": not totals.unexpected_closes,
        "no failed connect or publish": totals.failed_connects == 0 and totals.publish_errors == 0,
        "healthz back to 0": health
        == {"status": "ok", "clients": 0, "authenticated": 0, "unauthenticated": 0},
        "RSS flat": flat,
        "exit 0 on SIGTERM": exit_code == 0,
        "no traceback logged": tracebacks == 0,
    }
    ok = all(checks.values())
    rows = [
        ("event loop", loop),
        ("loaded time (s)", f"{seconds:.0f}"),
        ("clients kept open / users", f"{args.clients} / {args.users}"),
        ("ramp-up to all clients (s)", f"{float(result['ramp_seconds']):.1f}"),  # type: ignore[arg-type]
        (
            "connection lifetimes (clean close / dropped)",
            f"{totals.connections:,} ({totals.clean_closes:,} / {totals.drops:,})",
        ),
        ("presence changes sent", f"{totals.presence_changes:,}"),
        (
            "publish requests: single / batch / to one user",
            f"{totals.publishes_single:,} / {totals.publishes_batch:,} / {totals.publishes_user:,}",
        ),
        (
            "messages published (per second)",
            f"{totals.messages_published:,} ({totals.messages_published / seconds:,.1f})",
        ),
        (
            "deliveries checked by id (per second)",
            f"{totals.checked:,} ({totals.checked / seconds:,.0f})",
        ),
        ("other id'd messages received (user_presence)", f"{totals.other_ids:,}"),
        ("lost", f"{totals.lost:,}"),
        ("duplicated or out of order", f"{totals.duplicated_or_reordered:,}"),
        ("delivered to the wrong user", f"{totals.misdelivered:,}"),
        (
            "closed by the server unexpectedly",
            ", ".join(f"{k}: {v}" for k, v in totals.unexpected_closes.items()) or "0",
        ),
        (
            "failed connects / failed publishes",
            f"{totals.failed_connects} / {totals.publish_errors}",
        ),
        ("/healthz after every client closed", json.dumps(health, separators=(",", ":"))),
        ("server RSS after warm-up / at the end, loaded (MiB)", f"{warm:.1f} / {last:.1f}"),
        ("server RSS trend after warm-up (MiB per minute)", f"{slope:+.2f}"),
        (
            "server send backlog, max / last sample (KiB)",
            f"{int(result['backlog_max']) / 1024:,.0f} / {int(result['backlog_end']) / 1024:,.0f}",  # type: ignore[call-overload]
        ),
        ("server RSS once every client left (MiB)", f"{int(result['rss_after']) / 1024:.1f}"),  # type: ignore[call-overload]
        (
            "server CPU while loaded (s, % of one core)",
            f"{float(result['cpu']):.1f} ({100 * float(result['cpu']) / seconds:.0f} %)",
        ),  # type: ignore[arg-type]
        ("server exit status after SIGTERM", str(exit_code)),
        ("tracebacks in the server log", str(tracebacks)),
        ("verdict", "PASS" if ok else "FAIL: " + ", ".join(k for k, v in checks.items() if not v)),
    ]
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    print(f"| {'soak':<{width}} | {'':>{vwidth}} |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 1)}:|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value:>{vwidth}} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
