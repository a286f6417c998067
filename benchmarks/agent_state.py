"""A storm of late joiners: what the ``agent_state`` snapshot costs (PROTOCOL.md 4).

    .venv/bin/python benchmarks/agent_state.py [--joiners 5000] [--agents 100,1000,10000]

A micro-benchmark of the protocol core (no sockets: the part the snapshot adds is the
core's). The hub holds the latest status of ``--agents`` agents; then ``--joiners``
connections of distinct users open one after the other, each receiving ``auth``,
``presence_state``, ``agent_state`` and its own ``user_presence``; its output is taken as
an ASGI adapter would take it, and it closes (no presence grace), so that presence
broadcasts to earlier joiners do not swamp the figure.

Rows:

* ``shared``: the snapshot as the server builds it: encoded once, the same frame queued
  on every joiner (reused while nothing changes, for at most a second);
* ``per joiner``: the same with reuse switched off (``SNAPSHOT_REUSE = 0``), i.e. one
  encoding per connection, what a naive implementation costs;
* ``10 channels``: the agents' statuses are spread over 10 channels and each joiner
  subscribes to one of them with ``channels=``: one encoding per distinct set of visible
  scopes, so 10.

The table gives the encodings made, the frame bytes built, and the time per joiner
(median of ``--rounds``) of the whole opening and closing, so the snapshot's share is
visible against the rest (the ``0`` agents row is the cost without a snapshot to speak
of).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from agentcast.protocol import Hub, Identity, Session, Settings
from agentcast.protocol import agent_state as agent_state_module
from agentcast.protocol.outbox import Outbox

WALL0 = 1766754000.0


class Sink:
    """The smallest sink: an outbox, no pings, no close."""

    def __init__(self) -> None:
        self.outbox = Outbox()

    def send_ping(self, payload: bytes = b"") -> None:
        pass

    def close(self, code: int, reason: str, now: float) -> None:
        pass


def storm(agents: int, joiners: int, *, channels: int, reuse: bool) -> tuple[float, int, int]:
    """Seconds per joiner, encodings and frame bytes built, for one storm."""
    hub = Hub(Settings(agent_state_max=max(agents, 1), presence_grace=0.0))
    for index in range(agents):
        channel = f"team:{index % channels}" if channels else None
        hub.broadcast_agent_status(
            f"agent-{index:05d}",
            "working",
            f"Task number {index}",
            progress=index % 101,
            channel=channel,
            now=0.0,
            wall=WALL0,
        )
    saved = agent_state_module.SNAPSHOT_REUSE
    agent_state_module.SNAPSHOT_REUSE = saved if reuse else 0.0
    built = 0
    seen: set[int] = set()
    try:
        started = time.perf_counter()
        for index in range(joiners):
            sink = Sink()
            subscribe = (f"team:{index % channels}",) if channels else ()
            now = 0.5 + index * 1e-4  # 5,000 joiners within half a second
            session = Session(hub, sink, Identity(user_id=f"viewer-{index}"), now=now,
                              wall=WALL0 + now, channels=subscribe)  # fmt: skip
            for message in sink.outbox.take_messages():
                if message.kind == "agent_state" and id(message) not in seen:
                    seen.add(id(message))
                    built += len(message.frame)
            sink.outbox.sent()
            session.close(1000, "done", now, WALL0 + now)
            if not reuse:
                seen.clear()  # each one is new: count every frame
        elapsed = time.perf_counter() - started
    finally:
        agent_state_module.SNAPSHOT_REUSE = saved
    return elapsed / joiners, hub.agent_states.encodings, built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joiners", type=int, default=5_000)
    parser.add_argument("--agents", default="0,100,1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [
        "| agents | snapshot | encodings | frame bytes built | µs per joiner | joiners/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for agents in (int(a) for a in args.agents.split(",")):
        for label, channels, reuse in (
            ("shared", 0, True),
            ("per joiner", 0, False),
            ("10 channels", 10, True),
        ):
            times = []
            for _ in range(args.rounds):
                per, encodings, built = storm(agents, args.joiners, channels=channels, reuse=reuse)
                times.append(per)
            per = statistics.median(times)
            rows.append(
                f"| {agents:,} | {label} | {encodings:,} | {built:,} | {per * 1e6:,.1f} | "
                f"{1 / per:,.0f} |"
            )
    print("\n".join(rows))
    print(f"({args.joiners:,} joiners, median of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
