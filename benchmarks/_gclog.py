"""``AGENTCAST_BENCH_GC_LOG=1``: report garbage-collection passes longer than 1 ms on
stderr, and (:func:`watch_stalls`, agentcast's server) event-loop stalls over 20 ms.

A diagnostic for latency spikes, used by both benchmark servers; not part of the
measurements (the callback itself costs a little). Each line gives the wall time and the
CPU time this thread used meanwhile: on a machine shared with other work, a pause whose
CPU time is much shorter than its wall time was the process waiting for its core, not
working.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import anyio

#: A stall is a wake-up this much later than asked (seconds).
STALL = 0.020
_TICK = 0.005


def enabled() -> bool:
    return bool(os.environ.get("AGENTCAST_BENCH_GC_LOG"))


def install() -> None:
    """Install the reporting callback when the environment asks for it."""
    if not enabled():
        return
    started = [0.0, 0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = time.perf_counter(), time.thread_time()
            return
        ms = (time.perf_counter() - started[0]) * 1e3
        if ms > 1.0:
            cpu = (time.thread_time() - started[1]) * 1e3
            print(
                f"gc: {time.monotonic():.3f} generation {info['generation']} took {ms:.1f} ms "
                f"(CPU {cpu:.1f} ms; collected {info['collected']}, "
                f"{len(gc.get_objects(2))} objects in gen 2)",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)


async def watch_stalls() -> None:
    """Every 5 ms, note how late the event loop woke up; report the stalls over
    :data:`STALL`, with the CPU time the thread used meanwhile. Until cancelled."""
    while True:
        wall, cpu = time.perf_counter(), time.thread_time()
        await anyio.sleep(_TICK)
        late = time.perf_counter() - wall - _TICK
        if late > STALL:
            used = (time.thread_time() - cpu) * 1e3
            print(
                f"stall: {time.monotonic():.3f} the loop was {late * 1e3:.1f} ms late "
                f"(CPU {used:.1f} ms)",
                file=sys.stderr,
                flush=True,
            )
