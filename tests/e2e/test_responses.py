"""OpenAI's Responses API over real HTTP, driven by the official `openai` client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.service.conftest import assert_error

MODEL = "SmolLM2-135M-Instruct.Q4_1"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_create_plain(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        instructions="You are a helpful assistant.",
        input="What is the capital of France?",
        max_output_tokens=24,
        temperature=0,
        metadata={"k": "v"},
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete") and r.output_text
    # A thin translation: the same conversation answers the same as on the chat route.
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=24,
        temperature=0,
    )
    assert r.output_text == chat.choices[0].message.content
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.metadata == {"k": "v"} and r.instructions == "You are a helpful assistant."
    assert r.usage is not None and r.usage.input_tokens > 10
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_incomplete_on_max_output_tokens(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL, input="Count from 1 to 50.", max_output_tokens=3, temperature=0
    )
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3


def test_stream_semantic_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]}
            ],
            max_output_tokens=16,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == deltas
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == deltas and stored.id == final.id


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=MODEL,
        input="Name the capital of France and its country as JSON.",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema}},
        max_output_tokens=64,
        temperature=0,
    )
    jsonschema.validate(json.loads(r.output_text), schema)
    obj = client.responses.create(
        model=MODEL,
        input="Give a JSON object.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=48,
        temperature=0,
    )
    # Any JSON object is allowed, so it may run past the budget: whole only when completed.
    assert obj.output_text.lstrip().startswith("{")
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_round_trip(client: openai.OpenAI, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "input": "What is the weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "max_output_tokens": 64,
        "temperature": 0,
    }
    if stream:
        events = list(client.responses.create(**kwargs, stream=True))
        kinds = [e.type for e in events]
        assert "response.function_call_arguments.delta" in kinds
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        r = events[-1].response  # type: ignore[union-attr]
        assert done.arguments == r.output[-1].arguments
    else:
        r = client.responses.create(**kwargs)
    call = r.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments).get("city"), str)
    follow = client.responses.create(
        model=MODEL,
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}],
        tools=[WEATHER],
        max_output_tokens=32,
        temperature=0,
    )
    assert follow.previous_response_id == r.id and follow.output
    # The same conversation sent whole (stateless) is accepted too.
    whole = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"},
        ],
        tools=[WEATHER],
        max_output_tokens=8,
        store=False,
    )
    assert whole.output


def test_previous_response_chain_prefills_only_new_input(client: openai.OpenAI) -> None:
    turns = [
        "My name is Zorblax. Remember it.",
        "I live in a small town near the sea.",
        "What is my name?",
    ]
    prev: Any = None
    seen: list[Any] = []
    for text in turns:
        r = client.responses.create(
            model=MODEL,
            instructions="You are a helpful assistant.",
            input=text,
            previous_response_id=prev.id if prev else None,
            max_output_tokens=24,
            temperature=0,
        )
        if prev is not None:
            assert r.usage is not None and prev.usage is not None
            kept = prev.usage.input_tokens + prev.usage.output_tokens
            # The previous turn's prompt AND its answer come from the kept KV state...
            assert r.usage.input_tokens_details.cached_tokens >= kept - 1
            # ...so only this turn's input (a few dozen tokens) is prefilled.
            assert r.usage.input_tokens - r.usage.input_tokens_details.cached_tokens < 40
        seen.append(r)
        prev = r
    assert "Zorblax" in seen[-1].output_text
    # Changing the instructions changes the prompt's start: a full prefill, same service.
    other = client.responses.create(
        model=MODEL,
        instructions="You are a pirate.",
        input="Say hi.",
        previous_response_id=seen[0].id,
        max_output_tokens=8,
        temperature=0,
    )
    assert other.usage is not None and seen[0].usage is not None
    assert other.usage.input_tokens_details.cached_tokens < seen[0].usage.input_tokens


def test_retrieve_input_items_delete(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi!"},
        ],
        max_output_tokens=4,
    )
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    items = client.responses.input_items.list(r.id, order="asc")
    assert [i.role for i in items.data] == ["developer", "user"]  # type: ignore[union-attr]
    first = client.responses.input_items.list(r.id, limit=1)
    assert first.data[0].role == "user" and first.has_more  # type: ignore[union-attr]
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id=r.id)
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"top_logprobs": 3}, "top_logprobs"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input",
        ),
        ({"input": [{"type": "reasoning"}]}, "input"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input"),
        ({"input": []}, "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        (
            {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "schema": {"type": "object", "minProperties": 2},
                    }
                }
            },
            "text.format",
        ),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 10**6 - 1}, "max_tokens"),
    ],
)
def test_refusals_name_the_field(base_url: str, patch: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 4, **patch}
    r = httpx.post(f"{base_url}/v1/responses", json=body, timeout=60)
    err = assert_error(r, 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param or param in err["message"], err


def test_not_found_paths(base_url: str) -> None:
    for method, path in [
        ("GET", "/v1/responses/resp_missing"),
        ("DELETE", "/v1/responses/resp_missing"),
        ("GET", "/v1/responses/resp_missing/input_items"),
    ]:
        assert_error(httpx.request(method, base_url + path, timeout=30), 404)
    r = httpx.post(
        f"{base_url}/v1/responses",
        json={"input": "x", "previous_response_id": "resp_missing"},
        timeout=30,
    )
    assert assert_error(r, 404)["param"] == "previous_response_id"
    r = httpx.post(f"{base_url}/v1/responses", json={"model": "nope", "input": "x"}, timeout=30)
    assert_error(r, 404, "model_not_found")


def test_the_routes_answer_at_the_root_too(client: openai.OpenAI, base_url: str) -> None:
    """`/responses` as llama-server serves it: the same store, the same errors."""
    root = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    ask: dict[str, Any] = {"model": MODEL, "input": "Say hi.", "max_output_tokens": 4}
    made = root.responses.create(**ask, temperature=0)
    assert made.id.startswith("resp_")
    assert client.responses.retrieve(made.id).output_text == made.output_text
    assert root.responses.retrieve(made.id).id == made.id
    assert [i.type for i in root.responses.input_items.list(made.id).data] == ["message"]
    versioned = client.responses.create(**ask, temperature=0)
    assert versioned.output_text == made.output_text
    bad = {**ask, "temperature": 9}
    err = assert_error(httpx.post(f"{base_url}/responses", json=bad, timeout=30), 400)
    assert err == assert_error(httpx.post(f"{base_url}/v1/responses", json=bad, timeout=30), 400)
    assert err["param"] == "temperature"
    root.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
