"""Required and named tool choices are constrained in the family's own markup: llama.cpp's
grammar engine (the sampler's grammar stage) accepts each family's documented call text and
refuses another family's."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.api.openai import translate
from daemon.api.openai.protocol import ChatCompletionRequest
from daemon.core import tools
from daemon.core.request import ChatRequest
from daemon.engine.native.llama import Model, grammar_is_valid, lc
from tests.families.conftest import template, turn

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def request(**kw: object) -> ChatRequest:
    """An OpenAI body with two tools, as the core sees it."""
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, TIME], **kw}
    )
    return translate.chat(body)


@pytest.fixture(scope="module")
def model(smollm_gguf: Path) -> Iterator[Model]:
    m = Model(smollm_gguf)
    yield m
    m.close()


def accepts(model: Model, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar stage lets `text` through token by token, then lets the
    output end there."""
    sampler = lc.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar"
    try:
        tokens = model.tokenize(text, add_special=False, parse_special=False)
        for token in [*tokens, model.eos]:
            cand = (lc.llama_token_data * 1)()
            cand[0].id, cand[0].logit, cand[0].p = token, 0.0, 0.0
            arr = lc.llama_token_data_array(cand, 1, -1, False)
            lc.llama_sampler_apply(sampler, ctypes.byref(arr))
            if math.isinf(cand[0].logit):
                return False
            if token != model.eos:
                lc.llama_sampler_accept(sampler, token)
        return True
    finally:
        lc.llama_sampler_free(sampler)


# template -> a call to get_weather(city=Paris, days=3) as the family documents it
CALLS: dict[str, str] = {
    "Qwen-Qwen2.5-7B-Instruct": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
        "</tool_call>"
    ),
    "Qwen3-Coder": (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    ),
    "meta-llama-Llama-3.1-8B-Instruct": (
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}'
    ),
    "mistralai-Mistral-Nemo-Instruct-2407": (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]'
    ),
    "Mistral-Small-3.2-24B-Instruct-2506": (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}'
    ),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris", "days": 3}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
    ),
    "deepseek-ai-DeepSeek-V3.1": (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris", "days": 3}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
    ),
    "openai-gpt-oss-120b": (
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Paris", "days": 3}'
    ),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": (
        '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", '
        '"parameters": {"city": "Paris", "days": 3}}\n]<|END_ACTION|>'
    ),
    "ibm-granite-granite-3.3-2B-Instruct": (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]'
    ),
    "meetkai-functionary-medium-v3.1": (
        '<function=get_weather>{"city": "Paris", "days": 3}</function>'
    ),
    # The generation prompt ends with `>>>`: the output starts at the name.
    "meetkai-functionary-medium-v3.2": 'get_weather\n{"city": "Paris", "days": 3}',
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_required_grammar_accepts_the_family_call(model: Model, name: str) -> None:
    source = template(name)
    plan = tools.plan_tools(request(tool_choice="required"), source)
    assert plan is not None and plan.grammar is not None
    assert grammar_is_valid(model, plan.grammar)
    text = CALLS[name]
    assert accepts(model, plan.grammar, text), plan.grammar
    # What the grammar lets through parses back into the call.
    _, content, calls = turn(plan, source, [text])
    assert content == "" and calls == [("get_weather", '{"city": "Paris", "days": 3}')]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_required_grammar_refuses_other_formats_and_free_text(model: Model, name: str) -> None:
    plan = tools.plan_tools(request(tool_choice="required"), template(name))
    assert plan is not None and plan.grammar is not None
    assert not accepts(model, plan.grammar, "It is sunny in Paris.")
    for other, text in CALLS.items():
        if tools.plan_tools(request(), template(other)).fmt is not plan.fmt:  # type: ignore[union-attr]
            assert not accepts(model, plan.grammar, text), other


@pytest.mark.parametrize("name", sorted(CALLS))
def test_named_grammar_allows_only_that_function(model: Model, name: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    plan = tools.plan_tools(request(tool_choice=named), template(name))
    assert plan is not None and plan.grammar is not None
    assert not accepts(model, plan.grammar, CALLS[name])  # get_weather is not allowed


def test_grammar_enforces_the_argument_schema(model: Model) -> None:
    plan = tools.plan_tools(request(tool_choice="required"), template("Qwen3-Coder"))
    assert plan is not None and plan.grammar is not None
    missing_city = "<tool_call>\n<function=get_weather>\n</function>\n</tool_call>"
    assert not accepts(model, plan.grammar, missing_city)
    not_a_number = CALLS["Qwen3-Coder"].replace("\n3\n", "\nthree\n")
    assert not accepts(model, plan.grammar, not_a_number)
    mistral = tools.plan_tools(
        request(tool_choice="required"), template("Mistral-Small-3.2-24B-Instruct-2506")
    )
    assert mistral is not None and mistral.grammar is not None
    assert not accepts(model, mistral.grammar, '[TOOL_CALLS]get_weather[ARGS]{"days": 3}')


def test_parallel_calls_in_the_family_markup(model: Model) -> None:
    cases = {
        "Mistral-Small-3.2-24B-Instruct-2506": (
            '[TOOL_CALLS]get_time[ARGS]{}[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}'
        ),
        "deepseek-ai-DeepSeek-V3.1": (
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
            '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Oslo"}<｜tool▁call▁end｜>'
            "<｜tool▁calls▁end｜>"
        ),
        "meetkai-functionary-medium-v3.2": 'get_time\n{}>>>get_weather\n{"city": "Oslo"}',
        "Qwen3-Coder": (
            "<tool_call>\n<function=get_time>\n</function>\n</tool_call>\n<tool_call>\n"
            "<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n"
            "</tool_call>"
        ),
    }
    for name, text in cases.items():
        plan = tools.plan_tools(request(tool_choice="required"), template(name))
        assert plan is not None and plan.grammar is not None
        assert accepts(model, plan.grammar, text), name
        _, _, calls = turn(plan, template(name), [text])
        assert [c[0] for c in calls] == ["get_time", "get_weather"], name


def test_qwen3_xml_enums_are_bare_and_typed_values_are_json(model: Model) -> None:
    fn = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {
                    "color": {"type": "string", "enum": ["red", "blue"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["color", "tags"],
            },
        },
    }
    plan = tools.plan_tools(request(tools=[fn], tool_choice="required"), template("Qwen3-Coder"))
    assert plan is not None and plan.grammar is not None
    text = (
        "<tool_call>\n<function=pick>\n<parameter=color>\nred\n</parameter>\n"
        '<parameter=tags>\n["a", "b"]\n</parameter>\n</function>\n</tool_call>'
    )
    assert accepts(model, plan.grammar, text)
    assert not accepts(model, plan.grammar, text.replace("\nred\n", "\ngreen\n"))
    assert not accepts(model, plan.grammar, text.replace('["a", "b"]', "a, b"))
    _, _, calls = turn(plan, template("Qwen3-Coder"), [text])
    assert calls == [("pick", '{"color": "red", "tags": ["a", "b"]}')]
