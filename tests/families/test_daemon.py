"""On a real daemon, through the official openai SDK: the embedded model carrying a family's
chat template, with a required tool choice, writes its call in the family's own markup (the
grammar allows nothing else) and the client receives it parsed, whole and streamed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from daemon.core.families import family_of
from tests.conftest import Server
from tests.families.conftest import FAMILIES, template

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                # An enum keeps the tiny model's arguments short (free text may ramble on).
                "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
                "required": ["city"],
            },
        },
    }
]
MSGS: list[Any] = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def client(family_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{family_server.url}/v1", api_key="unused", max_retries=0)


def _city(arguments: str) -> str:
    args = json.loads(arguments)
    assert set(args) == {"city"} and args["city"] in ("Paris", "London", "Tokyo")
    return args["city"]


@pytest.mark.parametrize("alias", sorted(FAMILIES))
def test_required_call_in_the_family_format(client: openai.OpenAI, alias: str) -> None:
    out = client.chat.completions.create(
        model=alias,
        messages=MSGS,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # one call: the grammar then ends the answer after it
        max_tokens=200,
        temperature=0,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    _city(call.function.arguments)
    if alias == "mistral":
        assert len(call.id) == 9 and call.id.isalnum()
    # Streamed, the same call arrives in deltas.
    stream = client.chat.completions.create(
        model=alias,
        messages=MSGS,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # one call: the grammar then ends the answer after it
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    name, args, content, finish = "", "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, finish, content) == ("get_weather", "tool_calls", "")
    assert _city(args) == _city(call.function.arguments)


def test_show_and_props_name_the_family(family_server: Server) -> None:
    for alias, name in FAMILIES.items():
        r = httpx.post(f"{family_server.url}/api/show", json={"model": alias}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["chat_family"] == family_of(template(name)).wire()
    props = httpx.get(f"{family_server.url}/props", timeout=120).json()
    assert props["chat_family"] == family_of(props["chat_template"]).wire()
    assert props["chat_family"]["family"] == "generic"  # the embedded model's ChatML


def test_a_control_token_marker_reaches_the_parser(client: openai.OpenAI) -> None:
    """`[TOOL_CALLS]` as the single control token (id 7, pushed by logit_bias where the grammar
    allows it) renders for the parser: the call arrives parsed, whole and streamed."""
    kw: dict[str, Any] = {
        "model": "nemo",
        "messages": MSGS,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 120,
        "temperature": 0,
        "logit_bias": {"7": 100},
        "logprobs": True,
    }
    out = client.chat.completions.create(**kw)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and len(call.id) == 9
    _city(call.function.arguments)
    assert choice.logprobs is not None and choice.logprobs.content
    # The first token was the control token: log-probabilities render control tokens as ""
    # (spelled out, the marker would start with "["), yet the parser saw `[TOOL_CALLS]`.
    first = choice.logprobs.content[0]
    assert first.token in ("", "[TOOL_CALLS]"), first
    kw.pop("logprobs")
    names = [
        tc.function.name
        for chunk in client.chat.completions.create(stream=True, **kw)
        for tc in chunk.choices[0].delta.tool_calls or []
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"]


@pytest.mark.parametrize("alias", ["gptoss", "qwen3coder"])
def test_anthropic_sdk_gets_the_family_call(family_server: Server, alias: str) -> None:
    """The same parsing on another dialect: Anthropic's `any` tool choice, a tool_use block."""
    import anthropic

    client = anthropic.Anthropic(base_url=family_server.url, api_key="unused", max_retries=0)
    fn = TOOLS[0]["function"]
    out = client.messages.create(
        model=alias,
        max_tokens=200,
        extra_body={"temperature": 0},  # this SDK version has no `temperature` argument
        messages=MSGS,
        # gpt-oss's template concatenates the description: it must be there.
        tools=[
            {"name": fn["name"], "description": fn["description"], "input_schema": fn["parameters"]}
        ],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert out.stop_reason == "tool_use", out
    (use,) = [b for b in out.content if b.type == "tool_use"]
    assert use.name == "get_weather" and _city(json.dumps(use.input))
    assert not [b for b in out.content if b.type == "text" and b.text.strip()]
