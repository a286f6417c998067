"""Scoped fan-out (PROTOCOL.md section 4a) against the unscoped broadcast, agentcast only.

    .venv/bin/python benchmarks/scoped.py [--rounds 3] [--clients 5000] [--loop asyncio]

Both scenarios run the same way as run.py's fan-out (the same server command, the C load
generator, the same pinning and /proc accounting; see benchmarks/README.md):

* ``unscoped``: every notification goes to all N connections (run.py's ``fanout-N``,
  100 notifications per ``POST /api/notifications``);
* ``unscoped, 10 per request``: the same with 10 notifications per request, so that each
  connection receives about as many messages per burst (and per write) as in ``scoped``:
  the fair comparison, since the server writes a connection's whole backlog at once and
  the cost of a ``send()`` is shared by the messages it carries;
* ``scoped``: client i subscribes to channel ``ch<i mod 100>`` (``channels=`` in its URL),
  so each of the 100 channels has N/100 subscribers, and each notification names a
  pseudo-random channel; the load generator checks that every client receives exactly the
  notifications of its own channel, in order, and nothing else (a message outside its
  channel is counted as ``foreign`` and fails the round). 1,000 notifications per request
  (the batch limit), so that a client still gets several messages per burst.

Both deliver about the same number of messages (2,000,000 at N = 5,000). The table gives
the server's CPU per delivered message, and per published message: if a scoped publish
did any work for the connections outside its channel, its cost per delivered message
would grow with N / subscribers (100x here), not stay near the unscoped figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # the driver next to this file

CHANNELS = 100


def scenarios(clients: int) -> list[run.Scenario]:
    unscoped_msgs = 2_000_000 // clients  # 400 at 5,000 clients
    scoped_msgs = unscoped_msgs * CHANNELS
    scoped_burst = 1_000
    return [
        run.Scenario(
            "unscoped",
            "fanout",
            clients,
            ("--same-user", "--bursts", str(max(2, unscoped_msgs // run.BURST)),
             "--burst-size", str(run.BURST), "--msg-bytes", str(run.MSG_BYTES)),
        ),
        run.Scenario(
            "unscoped, 10 per request",
            "fanout",
            clients,
            ("--same-user", "--bursts", str(max(2, unscoped_msgs // 10)),
             "--burst-size", "10", "--msg-bytes", str(run.MSG_BYTES)),
        ),
        run.Scenario(
            "scoped",
            "fanout",
            clients,
            ("--same-user", "--channels", str(CHANNELS),
             "--bursts", str(max(2, scoped_msgs // scoped_burst)),
             "--burst-size", str(scoped_burst), "--msg-bytes", str(run.MSG_BYTES)),
        ),
    ]  # fmt: skip


def published(r: dict[str, Any], scenario: run.Scenario) -> int:
    args = scenario.args
    return int(args[args.index("--bursts") + 1]) * int(args[args.index("--burst-size") + 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=5_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    chosen = scenarios(args.clients)
    run.build_loadgen()
    run.raise_fd_limit(args.clients + 1024)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {run.LOADGEN_CPU})
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in chosen}
    started = time.monotonic()
    for rnd in range(args.rounds):
        order = chosen if rnd % 2 == 0 else list(reversed(chosen))
        for scenario in order:
            tag = f"s{rnd}x{os.getpid() % 10000}"
            try:
                r = run.run_one(scenario, "agentcast", args.loop, tag)
            except (RuntimeError, OSError, ValueError) as exc:
                run.log(f"[round {rnd + 1}] {scenario.name}: FAILED: {exc}")
                continue
            results[scenario.name].append(r)
            run.log(
                f"[round {rnd + 1}/{args.rounds}] {scenario.name}: "
                f"{run.summary(scenario, r)}; delivered {r['delivered']:,}, "
                f"server says {r['publish_reported_delivered']:,}, "
                f"outside the channel {r['errors']['foreign']}"
            )
    rows = [
        "| scenario | published | recipients per message | delivered | server CPU per "
        "delivered message (µs) | server CPU per published message (µs) | delivered msg/s "
        "| rounds ok |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    per_delivery: dict[str, float] = {}
    for scenario in chosen:
        rs = [r for r in results[scenario.name] if r["ok"]]
        if not rs:
            rows.append(f"| {scenario.name} | | | | | | | 0/{len(results[scenario.name])} |")
            continue
        sent = published(rs[0], scenario)
        delivered = statistics.median(r["delivered"] for r in rs)
        cpu = statistics.median(r["server_cpu_us"] / r["delivered"] for r in rs)
        cpu_pub = statistics.median(r["server_cpu_us"] / sent for r in rs)
        rate = statistics.median(r["delivered"] / r["window_s"] for r in rs)
        per_delivery[scenario.name] = cpu
        rows.append(
            f"| {scenario.name} | {sent:,} | {delivered / sent:,.0f} | {delivered:,.0f} | "
            f"{cpu:.2f} | {cpu_pub:,.1f} | {rate:,.0f} | {len(rs)}/{len(results[scenario.name])} |"
        )
    text = "\n".join(rows)
    if "scoped" in per_delivery:
        text += "\n"
        for name in ("unscoped", "unscoped, 10 per request"):
            if name in per_delivery:
                ratio = per_delivery["scoped"] / per_delivery[name]
                text += f"\nscoped / {name}, CPU per delivered message: {ratio:.2f}"
    text += (
        f"\n({args.clients:,} connections, {CHANNELS} channels, loop {args.loop}, "
        f"{args.rounds} rounds, median; total {time.monotonic() - started:.0f} s)"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
