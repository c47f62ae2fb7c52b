"""Stop-string matching with hold-back of partial matches."""

import itertools

from hypothesis import assume, given
from hypothesis import strategies as st

from daemon.engine.decode.stops import StopMatcher


def feed(m: StopMatcher, deltas: list[str]) -> str:
    out = []
    for d in deltas:
        out.append(m.push(d))
        if m.stopped:
            return "".join(out)
    out.append(m.flush())
    return "".join(out)


def test_no_stops_passes_through() -> None:
    m = StopMatcher(())
    assert m.push("abc") == "abc"
    assert not m.stopped


def test_stop_inside_one_delta() -> None:
    m = StopMatcher(["\n\n"])
    assert m.push("Paris.\n\nNext") == "Paris."
    assert m.stopped


def test_stop_split_across_deltas_is_held_back() -> None:
    m = StopMatcher(["END"])
    assert m.push("abc E") == "abc "
    assert m.push("N") == ""
    assert m.push("D tail") == ""
    assert m.stopped


def test_partial_that_does_not_complete_is_released() -> None:
    m = StopMatcher(["END"])
    assert m.push("EN") == ""
    assert m.push("x") == "ENx"
    assert not m.stopped


def test_flush_releases_held_tail() -> None:
    m = StopMatcher(["stop"])
    assert m.push("sto") == ""
    assert m.flush() == "sto"


def test_earliest_of_several_stops_wins() -> None:
    m = StopMatcher(["b", "abc"])
    assert m.push("xxabc") == "xx"


@given(
    text=st.text(alphabet="abcE\nND", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stops=st.lists(st.text(alphabet="abcEND\n", min_size=1, max_size=4), max_size=3),
)
def test_streaming_equals_whole_text(text: str, cuts: list[int], stops: list[str]) -> None:
    """However the text is split, the output is the text up to the first stop."""
    # When one stop contains another, which one fires first depends on the split.
    assume(not any(a != b and a in b for a in stops for b in stops))
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    hits = [text.find(s) for s in stops if s in text]
    expected = text[: min(hits)] if hits else text
    assert feed(StopMatcher(stops), deltas) == expected


def test_matched_names_the_earliest_stop() -> None:
    m = StopMatcher(["world", "lo w"])
    out = m.push("hel") + m.push("lo wor")
    assert m.stopped and m.matched == "lo w" and out == "hel"
    assert StopMatcher(["x"]).matched is None
