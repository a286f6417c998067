"""The garbage-collection policy of ``agentcast serve`` (adapters/collector.py): Python's
full collections wait while connections are opening, for a bounded time, and reference
cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agentcast.adapters.cli import build_parser
from agentcast.adapters.collector import CALM, Collector, Hold
from agentcast.adapters.config import ConfigError, build_config
from agentcast.adapters.service import clock
from agentcast.protocol import Hub

POSTPONE = 60.0


# -- when (no clock, no collector) --------------------------------------------------------


def test_held_while_sessions_open_and_released_after_a_calm_second():
    hold = Hold(POSTPONE, now=0.0)
    assert not hold.held(0.0, opened=0, full_collections=0)  # calm from the start
    assert hold.held(1.0, opened=100, full_collections=0)  # a storm begins
    assert hold.held(1.0 + CALM / 2, opened=200, full_collections=0)
    assert hold.held(1.0 + CALM, opened=200, full_collections=0)  # not a second yet
    assert not hold.held(1.5 + CALM, opened=200, full_collections=0)  # a calm second


def test_a_long_storm_lets_python_collect_once_per_postponement():
    hold = Hold(POSTPONE, now=0.0)
    now, opened = 0.0, 0

    def step(full: int = 0) -> bool:
        nonlocal now, opened
        now += CALM / 4
        opened += 25
        return hold.held(now, opened, full)

    def held_for(full: int) -> float:
        """Held from this step on: for how long."""
        assert step(full)
        began = now
        while step(full):
            pass
        return now - began

    assert held_for(full=0) == POSTPONE  # then Python's threshold is back...
    assert not step()  # ...until Python has run its full collection
    assert held_for(full=1) == POSTPONE  # then held again, for as long


# -- the collector, on the process's real garbage collector --------------------------------


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A collector on a hub, with small thresholds so that Python's own automatic
    collections come after a few allocations (and Python's 25 % rule met: the old
    generation is almost empty once frozen)."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(100, 2, 2)
    hub = Hub()
    collector = Collector(hub, POSTPONE)
    collector.start()
    gc.collect()
    try:
        yield collector
    finally:
        collector.stop()
        gc.set_threshold(*thresholds)
        assert gc.get_freeze_count() == 0
        gc.collect()


def old_cycle() -> weakref.ref[Node]:
    """A reference cycle that became garbage after reaching the old generation (as a
    long-lived object in a cycle does when it ends)."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(1)  # still referenced: moved to the old generation
    return weakref.ref(a)


def allocate() -> None:
    """Enough allocations for Python's automatic collections, all of them."""
    for _ in range(50):
        keep = [Node() for _ in range(100)]
        del keep


def test_a_storm_holds_python_s_full_collections_back_then_lets_them_run(collector):
    hub = collector._hub
    now = clock()
    hub.stats.opened_total += 1  # a session opens: the storm
    collector.look(now)
    assert collector.holding
    cycle = old_cycle()
    allocate()
    assert cycle() is not None  # young collections ran; the full one waited
    collector.look(now + CALM)  # a calm second
    assert not collector.holding
    allocate()
    assert cycle() is None  # Python's own full collection freed it


def test_without_a_storm_python_collects_as_usual(collector):
    collector.look(clock())
    assert not collector.holding
    cycle = old_cycle()
    allocate()
    assert cycle() is None


def test_the_start_up_objects_are_frozen(collector):
    assert gc.get_freeze_count() > 0
    made_later = Node()
    assert any(obj is made_later for obj in gc.get_objects())


def test_gc_postpone_zero_leaves_python_s_collector_alone():
    args = build_parser({}).parse_args(["serve", "--gc-postpone", "0"])
    assert build_config(args).gc_postpone == 0
    args = build_parser({}).parse_args(["serve", "--gc-postpone", "-1"])
    with pytest.raises(ConfigError, match="--gc-postpone must not be negative"):
        build_config(args)
