"""Broadcast ids and the in-memory history (PROTOCOL.md 3 and 7), with explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.protocol.history import (
    HistoryEntry,
    MemoryHistory,
    format_id,
    parse_id,
)
from agentcast.protocol.messages import PreparedMessage


def publish(history: MemoryHistory, at: float, text: str = "m") -> str:
    message_id = history.next_id()
    message = PreparedMessage.build("notification", {"level": "info", "message": text}, 0.0)
    history.append(HistoryEntry(message_id, message, at))
    return message_id


def ids(entries: list[HistoryEntry] | None) -> list[str] | None:
    return None if entries is None else [e.id for e in entries]


def test_ids_are_fixed_width_and_increase_as_strings():
    history = MemoryHistory(epoch=1_764_441_600_000)
    issued = [history.next_id() for _ in range(1001)]
    assert issued[0] == "1764441600000-000000000001"
    assert len({len(i) for i in issued}) == 1
    assert issued == sorted(issued)
    assert len(set(issued)) == len(issued)


def test_a_new_epoch_sorts_after_every_id_of_the_previous_one():
    before = MemoryHistory(epoch=1_764_441_600_000)
    for _ in range(10_000):
        last = before.next_id()
    after = MemoryHistory(epoch=1_764_441_600_001)
    assert after.next_id() > last


@given(st.integers(0, 10**13 - 1), st.integers(0, 10**12 - 1))
def test_id_round_trip(epoch: int, seq: int):
    assert parse_id(format_id(epoch, seq)) == (epoch, seq)


def test_replay_is_everything_after_the_id_in_order():
    history = MemoryHistory()
    published = [publish(history, at=float(i)) for i in range(10)]
    assert ids(history.since(published[3], now=10.0)) == published[4:]
    assert ids(history.since(published[-1], now=10.0)) == []


def test_a_presence_id_is_a_resume_point_too():
    history = MemoryHistory()
    first = publish(history, 0.0)
    presence = history.next_id()  # issued, never kept (presence is not replayed)
    second = publish(history, 1.0)
    assert ids(history.since(presence, now=2.0)) == [second]
    assert ids(history.since(first, now=2.0)) == [second]


def test_count_bound():
    history = MemoryHistory(size=3)
    published = [publish(history, at=0.0) for _ in range(5)]
    assert len(history) == 3
    assert ids(history.since(published[1], now=0.0)) == published[2:]  # the last dropped
    assert history.since(published[0], now=0.0) is None  # after it, one is gone


def test_age_bound():
    history = MemoryHistory(ttl=300.0)
    old = publish(history, at=0.0)
    newer = publish(history, at=100.0)
    latest = publish(history, at=200.0)
    assert ids(history.since(old, now=299.999)) == [newer, latest]
    # At 300 s the first message is 5 minutes old and dropped: resuming from before it
    # is incomplete, from it is not (nothing after it was dropped).
    assert history.since(format_id(0, 0), now=300.0) is None
    assert ids(history.since(old, now=300.0)) == [newer, latest]
    assert history.since(old, now=400.0) is None
    assert ids(history.since(newer, now=400.0)) == [latest]
    assert len(history) == 1


@pytest.mark.parametrize(
    "since",
    [
        "",
        "abc",
        "0000000000001",
        "0000000000000-00000000000x",
        "0000000000000-0000000000001",  # one digit short
        " 0000000000000-000000000001",
        "０000000000000-000000000001",  # a non-ASCII digit
        "0000000000000-000000000999",  # never issued
        "0000000000001-000000000001",  # another epoch
    ],
)
def test_unknown_or_malformed_ids_cannot_resume(since: str):
    history = MemoryHistory()
    for i in range(3):
        publish(history, at=float(i))
    assert history.since(since, now=3.0) is None


def test_an_id_of_a_previous_epoch_cannot_resume():
    before = MemoryHistory(epoch=1000)
    seen = publish(before, 0.0)
    restarted = MemoryHistory(epoch=2000)
    publish(restarted, 0.0)
    assert restarted.since(seen, now=1.0) is None


def test_size_zero_keeps_nothing_but_knows_the_latest_id():
    history = MemoryHistory(size=0)
    first = publish(history, 0.0)
    second = publish(history, 0.0)
    assert ids(history.since(second, now=0.0)) == []
    assert history.since(first, now=0.0) is None


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 50)), max_size=60),
    st.integers(0, 10),
    st.floats(1, 100),
    st.data(),
)
def test_replay_is_exact_or_refused(ops, size, ttl, data):
    """For any publish history, any resume point is answered with exactly the kept
    messages after it, or refused when one after it was dropped."""
    history = MemoryHistory(size=size, ttl=ttl)
    now = 0.0
    issued: list[tuple[str, bool, float]] = []  # id, kept (not presence), published at
    for is_presence, step in ops:
        now += step
        if is_presence:
            issued.append((history.next_id(), False, now))
        else:
            issued.append((publish(history, now), True, now))
    if not issued:
        return
    since_index = data.draw(st.integers(0, len(issued) - 1))
    since = issued[since_index][0]
    later = [i for i in issued[since_index + 1 :] if i[1]]
    replay = history.since(since, now)
    kept_count = sum(1 for i in issued if i[1])
    # Which broadcasts are still kept: the newest `size`, younger than ttl.
    kept = [i for i in issued if i[1]][max(0, kept_count - size) :]
    kept = [i for i in kept if i[2] > now - ttl]
    lost = [i for i in later if i not in kept]
    if lost:
        assert replay is None
    else:
        assert ids(replay) == [i[0] for i in later]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"size": -1}, "size"),
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"epoch": -1}, "epoch"),
        ({"epoch": 10**13}, "epoch"),
    ],
)
def test_bad_bounds_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        MemoryHistory(**options)


def test_only_its_own_ids_in_order_are_appended():
    history = MemoryHistory(epoch=7)
    assert history.epoch == 7
    message = PreparedMessage.build("notification", {"level": "info", "message": "m"}, 0.0)
    first = history.next_id()
    for bad in ["0000000000000001", format_id(8, 1), format_id(7, 2)]:
        with pytest.raises(ValueError, match="not the next id"):
            history.append(HistoryEntry(bad, message, 0.0))
    history.append(HistoryEntry(first, message, 0.0))
    with pytest.raises(ValueError, match="not the next id"):
        history.append(HistoryEntry(first, message, 0.0))  # twice


def test_the_sequence_never_wraps_a_new_epoch_begins():
    history = MemoryHistory(epoch=5)
    seen = publish(history, 0.0)
    history._seq = 10**12 - 2  # a trillion messages later (as if; no other way to get there)
    last = history.next_id()
    after = history.next_id()
    assert last == format_id(5, 10**12 - 1)
    assert after == format_id(6, 1)
    assert after > last
    assert history.epoch == 6
    assert history.since(seen, now=0.0) is None
