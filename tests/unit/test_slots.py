"""Slot rules: prompt chunking never leaves a lone token; seeds map onto 32 bits."""

from hypothesis import given
from hypothesis import strategies as st

from daemon.engine.decode.slots import Slot, chunk_size, common_prefix, pick_slots, seed32


@given(pending=st.integers(1, 2000), budget=st.integers(0, 600))
def test_chunks_never_strand_a_single_token(pending: int, budget: int) -> None:
    n = chunk_size(pending, budget)
    assert 0 <= n <= min(pending, budget)
    if pending > 1 and n:
        assert n >= 2 and pending - n != 1
    if pending >= 3 and budget >= pending:
        assert n == pending


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0


def test_seed32_avoids_the_random_marker() -> None:
    assert seed32(5) == 5
    assert seed32(2**32 + 7) == 7
    assert seed32(0xFFFFFFFF) != 0xFFFFFFFF
    assert 0 <= seed32(None) < 2**31


def _slots(busy: set[int], n: int = 8) -> list[Slot]:
    return [Slot(seq=i, busy=i in busy, last_used=float(i)) for i in range(n)]


def test_pick_keeps_busy_slots_consecutive() -> None:
    # Equal prefixes: a slot next to a busy one beats the least recently used one.
    slots = _slots({3})
    assert [s.seq for s in pick_slots(slots, 1, [])] == [2]
    # Slots picked together count as busy for each other: one run, not scattered.
    assert sorted(s.seq for s in pick_slots(slots, 3, [])) == [0, 1, 2]


def test_pick_prefers_a_reusable_prefix_then_lru() -> None:
    slots = _slots({3})
    slots[6].tokens = [1, 2, 3]
    assert [s.seq for s in pick_slots(slots, 1, [1, 2, 3, 4])] == [6]
    # Nothing busy, nothing shared: the least recently used slot.
    assert [s.seq for s in pick_slots(_slots(set()), 1, [])] == [0]


@given(busy=st.sets(st.integers(0, 7), max_size=7), n=st.integers(1, 8))
def test_pick_never_takes_a_busy_slot(busy: set[int], n: int) -> None:
    slots = _slots(busy)
    n = min(n, 8 - len(busy))
    if n == 0:
        return
    picked = pick_slots(slots, n, [])
    assert len({s.seq for s in picked}) == n
    assert not any(s.busy for s in picked)
