"""TurnParser: thinking split off first, tool calls parsed in the answer only, the budget."""

from __future__ import annotations

import json

import pytest

from daemon.core import calls, tools
from daemon.core.reasoning import Thinking, ThinkTags
from daemon.core.turns import Reasoning, TurnParser

PLAN = tools.ToolPlan((), frozenset({"get_weather"}), tools.ToolFormat.HERMES, False, None)
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
OPENED = Thinking(ThinkTags(), started=True)


def _run(parser: TurnParser, text: str, step: int) -> list[object]:
    events: list[object] = []
    for i in range(0, len(text), step):
        events += parser.push(text[i : i + step], 1)
    return events + parser.finish()


def _merged(events: list[object]) -> tuple[str, str, list[calls.ToolCall]]:
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    content = "".join(e for e in events if isinstance(e, str))
    return reasoning, content, [e for e in events if isinstance(e, calls.ToolCall)]


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_call_after_thinking_parses_whatever_the_pieces(step: int) -> None:
    text = f"I should look it up.</think>\n\nChecking. {CALL}"
    reasoning, content, calls = _merged(_run(TurnParser(PLAN, OPENED), text, step))
    assert reasoning == "I should look it up."
    assert content.strip() == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_call_markup_inside_thinking_stays_reasoning(step: int) -> None:
    text = f"Maybe {CALL} would do.</think>The answer."
    reasoning, content, calls = _merged(_run(TurnParser(PLAN, OPENED), text, step))
    assert reasoning == f"Maybe {CALL} would do."
    assert (content, calls) == ("The answer.", [])


def test_leading_think_tag_when_the_prompt_did_not_open_it() -> None:
    text = f"<think>hmm</think>{CALL}"
    reasoning, content, calls = _merged(_run(TurnParser(PLAN, OPENED.answer_only()), text, 2))
    assert (reasoning, content.strip(), len(calls)) == ("hmm", "", 1)


def test_budget_is_spent_only_while_thinking() -> None:
    parser = TurnParser(None, OPENED, budget=3)
    for piece in ("a", "b"):
        parser.push(piece, 1)
        assert not parser.spent
    parser.push("c", 1)
    assert parser.spent
    answered = TurnParser(None, OPENED, budget=2)
    answered.push("x</think>", 1)
    answered.push("y", 1)
    answered.push("z", 1)
    assert not answered.spent  # the answer's tokens do not count against the budget


def test_without_thinking_the_parser_is_the_call_parser() -> None:
    reasoning, content, calls = _merged(_run(TurnParser(PLAN, None), f"<think>x</think>{CALL}", 4))
    assert reasoning == "" and content == "<think>x</think>" and len(calls) == 1
