"""``AGENTCAST_BENCH_GC_LOG=1``: report garbage-collection passes longer than 1 ms on stderr.

A diagnostic for latency spikes, used by both benchmark servers; not part of the
measurements (the callback itself costs a little).
"""

from __future__ import annotations

import gc
import os
import sys
import time


def install() -> None:
    """Install the reporting callback when the environment asks for it."""
    if not os.environ.get("AGENTCAST_BENCH_GC_LOG"):
        return
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1e3
        if ms > 1.0:
            print(
                f"gc: {time.monotonic():.3f} generation {info['generation']} took {ms:.1f} ms "
                f"(collected {info['collected']}, {len(gc.get_objects(2))} objects in gen 2)",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)
