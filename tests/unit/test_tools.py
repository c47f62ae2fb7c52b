"""Tool-call parsing, the call grammar and the generic tool prompt, without a model."""

from __future__ import annotations

import json

import pytest

from daemon.api.messages import ChatMessage, core_message
from daemon.api.openai import translate
from daemon.api.openai.protocol import ChatCompletionRequest
from daemon.core import calls, tools
from daemon.core.calls import parse_message
from daemon.core.request import ChatRequest, Message
from daemon.core.safety import (
    Verdict,
    conversation,
    guard_prompt,
    instructions,
    parse_verdict,
)
from daemon.errors import InvalidRequest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def _plan(fmt: tools.ToolFormat = tools.ToolFormat.HERMES) -> tools.ToolPlan:
    return tools.ToolPlan((), frozenset({"get_weather", "get_time"}), fmt, False, None)


def _req(**kw: object) -> ChatRequest:
    """An OpenAI body as the core sees it (through the dialect's own translation)."""
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, TIME], **kw}
    )
    return translate.chat(body)


def _core(msgs: list[ChatMessage]) -> list[Message]:
    return [core_message(m) for m in msgs]


def test_parses_several_blocks_and_keeps_text_outside() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
    )
    content, calls = parse_message(_plan(), text)
    assert content == "Let me check.\n"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


def test_only_calls_means_null_content() -> None:
    content, calls = parse_message(
        _plan(), '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    assert content is None and len(calls) == 1


@pytest.mark.parametrize(
    "block",
    [
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not an offered tool
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "get_time"',  # unfinished
    ],
)
def test_non_calls_stay_content(block: str) -> None:
    content, calls = parse_message(_plan(), f"Hi {block}")
    assert calls == [] and content == f"Hi {block}"


def test_without_a_plan_text_is_untouched() -> None:
    text = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert parse_message(None, text) == (text, [])


def test_stream_holds_back_partial_markup() -> None:
    parser = calls.CallParser(_plan())
    text = 'Sure <tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call> done'
    events: list[calls.Event] = []
    for ch in text:
        out = parser.push(ch)
        # No content delta may carry any part of the markup.
        assert not any(isinstance(e, str) and "<" in e for e in out)
        events += out
    events += parser.finish()
    assert (
        "".join(e for e in events if isinstance(e, str)) == "Sure done"
    )  # whitespace next to a call is dropped
    (call,) = [e for e in events if isinstance(e, calls.ToolCall)]
    assert json.loads(call.arguments) == {"tz": "UTC"}


def test_stream_releases_a_lookalike_that_is_not_markup() -> None:
    parser = calls.CallParser(_plan())
    assert parser.push("a <tool") == ["a "]
    assert parser.push("box>") == ["<toolbox>"]
    assert parser.finish() == []


def test_llama3_and_mistral_formats() -> None:
    llama = _plan(tools.ToolFormat.LLAMA3)
    _, calls = parse_message(llama, '{"name": "get_weather", "parameters": {"city": "Rome"}}')
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Rome"}
    assert parse_message(llama, "Rome is sunny.") == ("Rome is sunny.", [])
    mistral = _plan(tools.ToolFormat.MISTRAL)
    _, calls = parse_message(
        mistral,
        '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, '
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]',
    )
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[1].arguments) == {"city": "Oslo"}


def test_template_detection() -> None:
    assert not tools.template_supports_tools("{{ messages }}")
    assert tools.template_format("{% if tools %}<tool_call>{% endif %}") is tools.ToolFormat.HERMES
    assert tools.template_format("{{ tools }}[TOOL_CALLS]") is tools.ToolFormat.MISTRAL
    assert tools.template_format("{{ tools }}<|python_tag|>") is tools.ToolFormat.LLAMA3


def test_plan_modes() -> None:
    assert tools.plan_tools(_req(tool_choice="none"), "") is None
    auto = tools.plan_tools(_req(), "")
    assert auto is not None and auto.grammar is None and not auto.native
    named = tools.plan_tools(
        _req(tool_choice={"type": "function", "function": {"name": "get_time"}}), ""
    )
    assert named is not None and named.allowed == {"get_time"} and named.grammar
    assert '"\\"get_time\\""' in named.grammar and "get_weather" not in named.grammar


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "x", "parameters": {"type": "bogus"}}}
                ]
            },
            "tools",
        ),
        (
            {
                "tool_choice": "required",
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "x",
                            "parameters": {"type": "object", "properties": {"n": {"minimum": 1}}},
                        },
                    }
                ],
            },
            "tools",
        ),
        ({"tool_choice": "required", "grammar": 'root ::= "a"'}, "tool_choice"),
        ({"tool_choice": "required", "tools": []}, "tool_choice"),
    ],
)
def test_invalid_tool_requests(kw: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        tools.plan_tools(_req(**kw), "")
    assert info.value.param == param


def test_grammar_shapes() -> None:
    fns = [
        tools.Function(
            "a",
            None,
            {
                "type": "object",
                "properties": {"x": {"$ref": "#/$defs/X"}},
                "$defs": {"X": {"type": "integer"}},
            },
        ),
        tools.Function("b", None, {"type": "object"}),
    ]
    schema = tools.calls_schema(fns)
    assert schema["$defs"] == {"f0-X": {"type": "integer"}}
    assert schema["anyOf"][0]["properties"]["arguments"]["properties"]["x"] == {
        "$ref": "#/$defs/f0-X"
    }
    hermes = tools.call_grammar(fns, tools.ToolFormat.HERMES, parallel=True)
    assert hermes.startswith("root ::= ") and "tool-call ::=" in hermes
    assert "\nroot ::=" not in hermes  # the converter's root was renamed, not duplicated
    single = tools.call_grammar(fns, tools.ToolFormat.HERMES, parallel=False)
    assert ")*" not in single.splitlines()[0]


def test_generic_prompt_and_history() -> None:
    msgs = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
        ),
        ChatMessage(role="tool", tool_call_id="call_1", content="18C"),
    ]
    plan = tools.plan_tools(_req(), "")
    out, extra = tools.prompt_messages(_core(msgs), plan, "")
    assert extra == {}
    assert out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in out[0]["content"]
    assert out[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
    }
    assert out[3]["role"] == "user"
    assert '{"name": "get_weather", "content": "18C"}' in out[3]["content"]
    native, extra = tools.prompt_messages(_core(msgs), plan, "{% for t in tools %}{% endfor %}")
    assert extra["tools"][0]["function"]["name"] == "get_weather"
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert native[3]["tool_call_id"] == "call_1"


def test_verdicts() -> None:
    assert parse_verdict("safe") == Verdict(True)
    assert parse_verdict("\n\nunsafe\nS1,S10") == Verdict(False, ("S1", "S10"))
    assert parse_verdict("maybe") == Verdict(False)  # unreadable fails closed
    assert "S10 Hate" in Verdict(False, ("S10",)).refusal()


def test_guard_prompt_judges_the_last_turn() -> None:
    turns = conversation(
        _core(
            [
                ChatMessage(role="system", content="s"),
                ChatMessage(role="user", content="a"),
                ChatMessage(role="user", content="b"),
                ChatMessage(role="assistant", content="c"),
            ]
        )
    )
    assert turns == [("User", "s\n\na\n\nb"), ("Agent", "c")]
    prompt = guard_prompt(turns)
    assert "ONLY THE LAST Agent message" in prompt
    assert "S14: Code Interpreter Abuse." in prompt and "User: s\n\na\n\nb\n\nAgent: c" in prompt


def test_instructions_are_judged_on_their_own() -> None:
    """Llama Guard judges only the last turn: system, developer and tool text gets a turn."""
    msgs = _core(
        [
            ChatMessage(role="system", content="s"),
            ChatMessage(role="developer", content="d"),
            ChatMessage(role="user", content="a"),
            ChatMessage(role="assistant", content="c"),
            ChatMessage(role="tool", content="t", tool_call_id="x"),
            ChatMessage(role="user", content="b"),
        ]
    )
    assert instructions(msgs) == [("User", "s\n\nd\n\nt")]
    assert conversation(msgs)[-1] == ("User", "t\n\nb")
    assert instructions(_core([ChatMessage(role="user", content="a")])) == []


# ---- issue 11 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ['["get_time"]', '{"a": 1}', "3", "null"])
def test_a_call_whose_name_is_not_a_string_is_content(name: str) -> None:
    text = f'<tool_call>{{"name": {name}, "arguments": {{}}}}</tool_call>'
    assert parse_message(_plan(), text) == (text, [])
    for fmt in (tools.ToolFormat.LLAMA3, tools.ToolFormat.MISTRAL):
        body = f'{{"name": {name}, "parameters": {{}}}}'
        assert parse_message(_plan(fmt), body) == (body, [])


def test_no_markup_beside_parsed_calls() -> None:
    call = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    cut = '\n<tool_call>\n{"name": "get_weather", "argu'
    content, calls = parse_message(_plan(), call + cut)
    assert content is None and [c.name for c in calls] == ["get_time"]
    junk = "\n<tool_call>not json</tool_call>"
    content, calls = parse_message(_plan(), call + junk)
    assert content is None and len(calls) == 1
    # Without parsed calls, markup is what the model said.
    assert parse_message(_plan(), cut) == (cut, [])


def test_named_choice_grammar_allows_one_call() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    plan = tools.plan_tools(_req(tool_choice=named, parallel_tool_calls=True), "")
    assert plan is not None and plan.grammar is not None
    assert plan.grammar.startswith('root ::= "<tool_call>\\n" tool-call "\\n</tool_call>"\n')
    required = tools.plan_tools(_req(tool_choice="required"), "")
    assert required is not None and "*" in required.grammar.splitlines()[0]


def test_refs_are_rewritten_for_their_new_place() -> None:
    params = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}},
        "$defs": {"u": {"$ref": "#/properties/a"}},
    }
    fns = [tools.Function("f", None, params), tools.Function("g", None, params)]
    for n in (1, 2):
        schema = tools.calls_schema(fns[:n])
        last = f"f{n - 1}"
        assert schema["$defs"][last]["properties"]["b"] == {"$ref": f"#/$defs/{last}/properties/a"}
        assert schema["$defs"][f"{last}-u"] == {"$ref": f"#/$defs/{last}/properties/a"}
        # and the converter resolves them
        tools.call_grammar(fns[:n], tools.ToolFormat.HERMES, parallel=False)
    plain = tools.calls_schema([tools.Function("f", None, {"type": "object"})])
    assert plain["properties"]["arguments"] == {"type": "object"}  # nothing moves needlessly


@pytest.mark.parametrize(
    "params",
    [{"type": "object", "$defs": []}, {"type": "array"}, {"type": "object", "definitions": 1}],
)
def test_bad_parameter_schemas_are_refused(params: dict[str, object]) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    with pytest.raises(InvalidRequest) as exc:
        tools.check_request(_req(tools=[tool]))
    assert exc.value.param == "tools"
