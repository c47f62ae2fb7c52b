"""Incremental detokenization never splits a UTF-8 character."""

from hypothesis import given
from hypothesis import strategies as st

from daemon.engine.decode.detokenize import IncrementalDetokenizer


@given(text=st.text(max_size=30), size=st.integers(1, 4))
def test_byte_pieces_reassemble_exactly(text: str, size: int) -> None:
    """Tokens that cut characters mid-way still yield only whole characters, in order."""
    data = text.encode("utf-8")
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    d = IncrementalDetokenizer(lambda t: pieces[t])
    out = []
    for i in range(len(pieces)):
        delta = d.push(i)
        assert "\ufffd" not in delta or "\ufffd" in text
        out.append(delta)
    out.append(d.flush())
    assert "".join(out) == text


def test_incomplete_tail_is_replaced_on_flush() -> None:
    d = IncrementalDetokenizer(lambda t: "é".encode()[:1])
    assert d.push(0) == ""
    assert d.flush() == "\ufffd"
