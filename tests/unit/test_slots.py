"""Slot rules: prompt chunking never leaves a lone token; seeds map onto 32 bits."""

from hypothesis import given
from hypothesis import strategies as st

from daemon.engine.slots import chunk_size, common_prefix, seed32


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
