"""``agentcast serve`` for the benchmarks: the same flags, minus the per-host limits.

The load generator opens thousands of connections from one address, several thousand of
them as one user in the fan-out scenarios, as fast as it can: the server's admission limits
(connections per address, per user, per second, in total) would refuse most of
them. This runs exactly what ``agentcast serve ARGS`` runs (same parser, same settings,
same logging) with those four limits lifted, since the websockets peer has none either.

Run: ``python benchmarks/serve_agentcast.py serve --port 8001 --api-key K``.

``AGENTCAST_BENCH_GC_LOG=1`` reports garbage-collection passes over 1 ms (``_gclog``).
"""

from __future__ import annotations

import dataclasses
import sys

from agentcast.adapters import configure_logging
from agentcast.adapters.cli import build_config, build_parser, serve

_UNLIMITED = ("max_connections", "max_connections_per_ip", "max_connections_per_user")
_NO_RATE = ("connection_rate",)


def main() -> int:
    import _gclog  # noqa: PLC0415 (next to this script; see _gclog.py)

    _gclog.install()
    args = build_parser().parse_args(sys.argv[1:])
    config = build_config(args)
    names = {f.name for f in dataclasses.fields(config.settings)}
    lifted = {name: None for name in (*_UNLIMITED, *_NO_RATE) if name in names}
    config = dataclasses.replace(config, settings=dataclasses.replace(config.settings, **lifted))
    configure_logging(config.log_level, config.log_format)
    serve(config)  # as agentcast serve does it
    return 0


if __name__ == "__main__":
    sys.exit(main())
