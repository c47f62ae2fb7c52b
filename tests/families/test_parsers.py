"""Each family's documented outputs parse into reasoning, content and calls, and streaming them
cut at any point (every split point, char by char) gives exactly the whole text's parse."""

from __future__ import annotations

import json

import pytest

from daemon.core import tools
from daemon.core.calls import ToolCall, parse_message
from daemon.core.reasoning import Thinking, detect
from daemon.core.turns import TurnParser
from tests.families.conftest import chunkings, template, turn
from tests.families.test_grammars import request

PARIS = json.dumps({"city": "Paris"})
W = ("get_weather", PARIS)

# (template, started, output, reasoning, content, calls)
CASES: list[tuple[str, bool, str, str, str, list[tuple[str, str]]]] = [
    (
        "Qwen-Qwen2.5-7B-Instruct",
        False,
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        "",
        "Let me check.\n",
        [W, ("get_time", "{}")],
    ),
    (
        "Qwen-Qwen3-0.6B",
        False,
        "<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "The user wants the weather.\n",
        "",
        [W],
    ),
    (
        "Qwen3-Coder",
        False,
        "I will look it up.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
        "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        "",
        "I will look it up.\n",
        [("get_weather", json.dumps({"city": "Paris", "days": 3}))],
    ),
    (
        "meta-llama-Llama-3.1-8B-Instruct",
        False,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        "",
        [W],
    ),
    (
        "meta-llama-Llama-3.1-8B-Instruct",
        False,
        '<|python_tag|>brave_search.call(query="weather in Paris")',
        "",
        "",
        [("brave_search", json.dumps({"query": "weather in Paris"}))],
    ),
    (
        "meta-llama-Llama-3.3-70B-Instruct",
        False,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        "",
        [W],
    ),
    (
        "meta-llama-Llama-3.2-3B-Instruct",
        False,
        "Paris is sunny {most days}.",
        "",
        "Paris is sunny {most days}.",
        [],
    ),
    (
        "mistralai-Mistral-Nemo-Instruct-2407",
        False,
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]',
        "",
        "",
        [W],
    ),
    (
        "Mistral-Small-3.2-24B-Instruct-2506",
        False,
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}',
        "",
        "Checking.",
        [W, ("get_time", "{}")],
    ),
    (
        "unsloth-mistral-Devstral-Small-2507",
        False,
        '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}',
        "",
        "",
        [W],
    ),
    (
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
        True,  # the generation prompt ends with "<think>\n"
        "The user asks for the weather.\n</think>\n\n"
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "The user asks for the weather.\n",
        "",
        [W],
    ),
    (
        "deepseek-ai-DeepSeek-V3.1",
        False,
        "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "",
        "Sure.",
        [W, ("get_time", "{}")],
    ),
    (
        "openai-gpt-oss-120b",
        False,
        "<|channel|>analysis<|message|>Need the weather tool.<|end|><|start|>assistant"
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Paris"}',
        "Need the weather tool.",
        "",
        [W],
    ),
    (
        "openai-gpt-oss-120b",
        False,
        "<|channel|>analysis<|message|>Simple greeting.<|end|><|start|>assistant"
        "<|channel|>final<|message|>Hello! How can I help?",
        "Simple greeting.",
        "Hello! How can I help?",
        [],
    ),
    (
        "openai-gpt-oss-120b",
        False,
        # The recipient before the channel, as the template writes past calls.
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
        '{"city": "Paris"}<|call|>',
        "",
        "",
        [W],
    ),
    (
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
        False,
        "<|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n'
        "]<|END_ACTION|>",
        "I will look up the weather.",
        "",
        [W],
    ),
    (
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
        False,
        "<|START_RESPONSE|>It is sunny in Paris.<|END_RESPONSE|>",
        "",
        "It is sunny in Paris.",
        [],
    ),
    (
        "ibm-granite-granite-3.3-2B-Instruct",
        False,
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "",
        "",
        [W],
    ),
    (
        "ibm-granite-granite-3.3-2B-Instruct",
        False,
        "<think>Weather questions need a tool, but this is a greeting.</think>"
        "<response>Hello there!</response>",
        "Weather questions need a tool, but this is a greeting.",
        "Hello there!",
        [],
    ),
    (
        "meetkai-functionary-medium-v3.1",
        False,
        'Let me see. <function=get_weather>{"city": "Paris"}</function>',
        "",
        "Let me see. ",
        [W],
    ),
    (
        "meetkai-functionary-medium-v3.2",
        False,  # the generation prompt ends with ">>>"
        'all\nLet me check.\n>>>get_weather\n{"city": "Paris"}',
        "",
        "Let me check.\n",
        [W],
    ),
]
ALLOWED = ("get_weather", "get_time", "brave_search")


def _plan(name: str) -> tools.ToolPlan:
    tool_list = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ALLOWED
    ]
    tool_list[0] = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
    plan = tools.plan_tools(request(tools=tool_list), template(name))
    assert plan is not None
    return plan


@pytest.mark.parametrize("case", range(len(CASES)))
def test_documented_output_in_every_chunking(case: int) -> None:
    name, started, text, reasoning, content, calls = CASES[case]
    plan = _plan(name)
    for pieces in chunkings(text):
        got = turn(plan, template(name), pieces, started)
        assert got == (reasoning, content, calls), pieces


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Qwen-Qwen2.5-7B-Instruct", "<tool_call>\nnot json\n</tool_call>"),
        ("Qwen3-Coder", "<tool_call>\n<function get_weather>\n</tool_call>"),
        ("mistralai-Mistral-Nemo-Instruct-2407", "[TOOL_CALLS][{broken"),
        ("Mistral-Small-3.2-24B-Instruct-2506", "[TOOL_CALLS]get_weather{no args marker}"),
        ("deepseek-ai-DeepSeek-V3.1", "<｜tool▁calls▁begin｜>garbage<｜tool▁calls▁end｜>"),
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", "<|START_ACTION|>[oops]<|END_ACTION|>"),
        ("ibm-granite-granite-3.3-2B-Instruct", "<|tool_call|>maybe later"),
        ("meetkai-functionary-medium-v3.1", "<function=get_weather>bad</function>"),
    ],
)
def test_malformed_blocks_stay_content(name: str, text: str) -> None:
    plan = _plan(name)
    for pieces in chunkings(text):
        assert turn(plan, template(name), pieces) == ("", text, []), pieces


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Qwen-Qwen2.5-7B-Instruct", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
        ("Qwen3-Coder", "<tool_call>\n<function=rm_rf>\n</function>\n</tool_call>"),
        ("meta-llama-Llama-3.1-8B-Instruct", '{"name": "rm_rf", "parameters": {}}'),
        ("meta-llama-Llama-3.1-8B-Instruct", '<|python_tag|>wolfram_alpha.call(query="x")'),
        ("Mistral-Small-3.2-24B-Instruct-2506", "[TOOL_CALLS]rm_rf[ARGS]{}"),
        (
            "mistralai-Mistral-Nemo-Instruct-2407",
            '[TOOL_CALLS][{"name": "rm_rf", "arguments": {}}]',
        ),
        (
            "deepseek-ai-DeepSeek-V3.1",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>rm_rf<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
            "<｜tool▁calls▁end｜>",
        ),
        (
            "ibm-granite-granite-3.3-2B-Instruct",
            '<|tool_call|>[{"name": "rm_rf", "arguments": {}}]',
        ),
        ("meetkai-functionary-medium-v3.1", "<function=rm_rf>{}</function>"),
    ],
)
def test_unknown_functions_are_not_calls(name: str, text: str) -> None:
    plan = _plan(name)
    assert turn(plan, template(name), [text]) == ("", text, [])


def test_unknown_harmony_recipient_is_no_call() -> None:
    source = template("openai-gpt-oss-120b")
    text = "<|channel|>commentary to=functions.rm_rf <|constrain|>json<|message|>{}"
    _, content, calls = turn(_plan("openai-gpt-oss-120b"), source, [text])
    assert calls == [] and "rm_rf" in content


def test_mistral_ids_are_nine_characters() -> None:
    for name in ("Mistral-Small-3.2-24B-Instruct-2506", "mistralai-Mistral-Nemo-Instruct-2407"):
        plan = _plan(name)
        for text in (
            "[TOOL_CALLS]get_time[ARGS]{}",
            '[TOOL_CALLS][{"name": "get_time", "arguments": {}}]',
        ):
            if plan.fmt is tools.ToolFormat.MISTRAL and "[ARGS]" in text:
                continue
            if plan.fmt is tools.ToolFormat.MISTRAL_ARGS and "[ARGS]" not in text:
                continue
            _, calls = parse_message(plan, text)
            assert len(calls) == 1 and len(calls[0].id) == 9 and calls[0].id.isalnum()
    nemo = _plan("mistralai-Mistral-Nemo-Instruct-2407")
    _, calls = parse_message(nemo, CASES[7][2])
    assert calls[0].id == "abcDEF123"  # the model's own id is kept
    _, calls = parse_message(_plan("Qwen-Qwen2.5-7B-Instruct"), CASES[0][2])
    assert all(c.id.startswith("call_") for c in calls)


def test_calls_written_while_thinking_stay_reasoning() -> None:
    # A call inside <think> is the model thinking about a call; the one after it is the call.
    name = "Qwen-Qwen3-0.6B"
    block = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    text = f"<think>\nMaybe {block}?\n</think>\n\n{block}"
    for pieces in chunkings(text):
        reasoning, content, calls = turn(_plan(name), template(name), pieces)
        assert reasoning == f"Maybe {block}?\n" and content == "" and calls == [("get_time", "{}")]


def test_harmony_call_after_reasoning_streams_reasoning_first() -> None:
    name = "openai-gpt-oss-120b"
    style = detect(template(name))
    assert style is not None
    parser = TurnParser(_plan(name), Thinking(style, False))
    text = CASES[12][2]
    events = [e for ch in text for e in parser.push(ch)] + parser.finish()
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Reasoning" and kinds[-1] == "ToolCall"
    # No markup ever reaches the content.
    assert not any(isinstance(e, str) for e in events)
    assert isinstance(events[-1], ToolCall)
