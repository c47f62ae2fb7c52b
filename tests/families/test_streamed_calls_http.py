"""On a real daemon, through the official SDKs' stream accumulators: a call's arguments arrive
in several deltas on OpenAI chat, Anthropic Messages and Responses, and what each SDK puts
together is the call the same request gets unstreamed (the embedded model carrying a family's
template, its output held to the family's call markup by a required tool choice)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import Server
from tests.families.test_daemon import MSGS, TOOLS

GENERIC = "SmolLM2-135M-Instruct.Q4_1"  # the embedded model's ChatML: `<tool_call>` blocks
# One of each call syntax the family server carries (the daemon is tests/families/conftest.py's).
SYNTAXES = [GENERIC, "qwen3coder", "mistral", "gptoss", "deepseek"]
FN = TOOLS[0]["function"]


@pytest.fixture(scope="module")
def oai(family_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{family_server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", SYNTAXES)
def test_openai_chat_streams_arguments(oai: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {
        "model": model,
        "messages": MSGS,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 200,
        "temperature": 0,
    }
    (whole,) = oai.chat.completions.create(**kw).choices[0].message.tool_calls or []
    pieces: list[str] = []
    with oai.chat.completions.stream(**kw) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                pieces.append(event.arguments_delta)
        final = stream.get_final_completion()
    choice = final.choices[0]
    (call,) = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls"
    assert len([p for p in pieces if p]) > 1, pieces  # written, not sent whole at the end
    assert "".join(pieces) == call.function.arguments
    assert (call.function.name, call.function.arguments) == (
        whole.function.name,
        whole.function.arguments,
    )
    assert json.loads(call.function.arguments)["city"] in ("Paris", "London", "Tokyo")


@pytest.mark.parametrize("model", [GENERIC, "qwen3coder"])
def test_anthropic_stream_sends_input_json_deltas(family_server: Server, model: str) -> None:
    client = anthropic.Anthropic(base_url=family_server.url, api_key="unused", max_retries=0)
    kw: dict[str, Any] = {
        "model": model,
        "max_tokens": 200,
        "extra_body": {"temperature": 0},  # this SDK version has no `temperature` argument
        "messages": MSGS,
        "tools": [
            {"name": FN["name"], "description": FN["description"], "input_schema": FN["parameters"]}
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    whole = client.messages.create(**kw)
    pieces: list[str] = []
    with client.messages.stream(**kw) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces.append(event.delta.partial_json)
        final = stream.get_final_message()
    (use,) = [b for b in final.content if b.type == "tool_use"]
    (expected,) = [b for b in whole.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len([p for p in pieces if p]) > 1, pieces
    assert json.loads("".join(pieces)) == use.input
    assert (use.name, use.input) == (expected.name, expected.input)


@pytest.mark.parametrize("model", [GENERIC, "gptoss"])
def test_responses_stream_sends_argument_deltas(oai: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {
        "model": model,
        "input": MSGS[0]["content"],
        "tools": [{"type": "function", **FN}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 200,
        "temperature": 0,
    }
    (expected,) = [o for o in oai.responses.create(**kw).output if o.type == "function_call"]
    pieces: list[str] = []
    with oai.responses.stream(**kw) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                pieces.append(event.delta)
        final = stream.get_final_response()
    (call,) = [o for o in final.output if o.type == "function_call"]
    assert len([p for p in pieces if p]) > 1, pieces
    assert "".join(pieces) == call.arguments
    assert (call.name, call.arguments) == (expected.name, expected.arguments)
