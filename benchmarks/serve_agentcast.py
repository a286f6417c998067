"""``agentcast serve`` for the benchmarks: the same flags, minus the per-host limits.

The load generator opens thousands of connections from one address, several thousand of
them as one user in the fan-out scenarios, as fast as it can: the server's admission limits
(connections per address, per user, per second, in total) would refuse most of
them. This runs exactly what ``agentcast serve ARGS`` runs (same parser, settings,
logging and start-up) with those four limits lifted, since the peers have none either.

With ``--inproc-count N`` (and ``--inproc-rate R``, ``--msg-bytes B``, given before
``serve``), the latency scenario's in-process publisher: on SIGUSR2, N notifications
through the server's in-process API (``Server.send_notification``), R a second, each as
soon as it is due, carrying its scheduled time (see ``_peers.py``).

Run: ``python benchmarks/serve_agentcast.py serve --port 8001 --api-key K``.

``AGENTCAST_BENCH_GC_LOG=1`` reports garbage-collection passes over 1 ms and event-loop
stalls over 20 ms (``_gclog``).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from typing import Any

import anyio

from agentcast.adapters import configure_logging
from agentcast.adapters.cli import _serve, build_config, build_parser
from agentcast.adapters.server import Server

_UNLIMITED = ("max_connections", "max_connections_per_ip", "max_connections_per_user")
_NO_RATE = ("connection_rate",)


async def publish_inproc(server: Server, rate: float, count: int, msg_bytes: int) -> None:
    from _peers import inproc_text  # noqa: PLC0415 (next to this script)

    with anyio.open_signal_receiver(signal.SIGUSR2) as signals:
        async for _ in signals:
            break
    t0 = time.monotonic()  # CLOCK_MONOTONIC, as the load generator's clock
    seq = 0
    while seq < count:
        # Several due at once (the loop was late): one batch, as the HTTP batch API does,
        # so that the slow-client rule (1013) judges each client by what it had not
        # drained when the burst began, not by what the burst queued before any write.
        with server.hub.publishing_batch():
            now = time.monotonic()
            while seq < count and t0 + seq / rate <= now:
                server.send_notification("info", inproc_text(seq, t0 + seq / rate, msg_bytes))
                seq += 1
                now = time.monotonic()
        if seq < count:
            await anyio.sleep(max(0.0, t0 + seq / rate - now))


async def run(server: Server, inproc: argparse.Namespace, gc_postpone: float) -> None:
    import _gclog  # noqa: PLC0415 (next to this script; see _gclog.py)

    async with anyio.create_task_group() as tg:
        if _gclog.enabled():
            tg.start_soon(_gclog.watch_stalls)
        if inproc.inproc_count > 0:
            tg.start_soon(
                publish_inproc, server, inproc.inproc_rate, inproc.inproc_count, inproc.msg_bytes
            )
        await _serve(server, gc_postpone)  # as agentcast serve does it
        tg.cancel_scope.cancel()


def main() -> int:
    import _gclog  # noqa: PLC0415 (next to this script; see _gclog.py)

    _gclog.install()
    bench = argparse.ArgumentParser(add_help=False)
    bench.add_argument("--inproc-rate", type=float, default=1000.0)
    bench.add_argument("--inproc-count", type=int, default=0)
    bench.add_argument("--msg-bytes", type=int, default=200)
    inproc, rest = bench.parse_known_args(sys.argv[1:])
    args = build_parser().parse_args(rest)
    config = build_config(args)
    names = {f.name for f in dataclasses.fields(config.settings)}
    lifted = {name: None for name in (*_UNLIMITED, *_NO_RATE) if name in names}
    config = dataclasses.replace(config, settings=dataclasses.replace(config.settings, **lifted))
    configure_logging(config.log_level, config.log_format)
    options: dict[str, Any] = {"use_uvloop": True} if config.uvloop else {}
    anyio.run(
        run,
        config.server(),
        inproc,
        config.gc_postpone,
        backend=config.backend,
        backend_options=options,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
