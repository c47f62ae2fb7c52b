"""The reasoning splitter: whole and streamed output split alike, whatever the piece sizes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.core.reasoning import ReasoningSplitter, ThinkTags, detect, split, template_vars
from daemon.errors import InvalidRequest

TAGS = ThinkTags()


def _streamed(text: str, cuts: list[int], started: bool) -> tuple[str, str]:
    s = ReasoningSplitter(TAGS, started=started)
    reasoning, content, last = "", "", 0
    for cut in [*sorted(cuts), len(text)]:
        r, c = s.feed(text[last:cut])
        reasoning, content, last = reasoning + r, content + c, cut
    r, c = s.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize(
    ("text", "started", "want"),
    [
        ("<think>\nhmm, 2+2</think>\n\nIt is 4.", False, ("hmm, 2+2", "It is 4.")),
        ("  <think>a</think>b", False, ("a", "b")),
        ("hmm, 2+2</think>It is 4.", True, ("hmm, 2+2", "It is 4.")),
        ("no thinking here", False, (None, "no thinking here")),
        (
            "a <think> in the middle</think> stays",
            False,
            (None, "a <think> in the middle</think> stays"),
        ),
        ("<think>never closed", False, ("never closed", "")),
        ("cut off while thinking </thi", True, ("cut off while thinking </thi", "")),
        ("", True, ("", "")),
    ],
)
def test_split(text: str, started: bool, want: tuple[str | None, str]) -> None:
    assert split(text, TAGS, started=started) == want


@given(
    body=st.sampled_from(
        [
            "<think>\nstep one\nstep two</think>\n\nThe answer.",
            "plain answer <b>bold</b> < and >",
            "x</think>y</think>z",
            "<think></think>",
            "\n\n<think>\n\n</think>\n\nok",
        ]
    ),
    started=st.booleans(),
    cuts=st.lists(st.integers(0, 60), max_size=8),
)
def test_streamed_equals_whole(body: str, started: bool, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(body)]
    reasoning, content = split(body, TAGS, started=started)
    assert _streamed(body, cuts, started) == (reasoning or "", content)


def test_detect_from_the_template() -> None:
    assert detect("{{ '<think>' }}...{{ '</think>' }}") == TAGS
    assert detect("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert detect(None) is None


def test_template_vars() -> None:
    assert template_vars({"enable_thinking": False}, None) == {"enable_thinking": False}
    assert template_vars(None, "none") == {"reasoning_effort": "none", "enable_thinking": False}
    assert template_vars({"enable_thinking": True}, "none")["enable_thinking"] is True
    assert template_vars(None, "high") == {"reasoning_effort": "high"}
    for bad in ({"messages": []}, {"add_generation_prompt": False}, {"not a name": 1}):
        with pytest.raises(InvalidRequest):
            template_vars(bad, None)
