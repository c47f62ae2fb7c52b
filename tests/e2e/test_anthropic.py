"""Anthropic's Messages API over real HTTP, driven by the official `anthropic` client."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# The SDK leaves sampling knobs to extra_body; edged honours them.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0)


def assert_anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    """The response is Anthropic's error shape with this status and type; returns the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def _chat_text(base_url: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
    """The greedy answer of the OpenAI chat route to the same conversation."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


def _prompt(usage: Any) -> int:
    """The whole prompt's tokens: computed (`input_tokens`) plus read from the cache."""
    return int(usage.input_tokens + (usage.cache_read_input_tokens or 0))


def test_message_plain(client: anthropic.Anthropic, base_url: str) -> None:
    m = client.messages.create(
        model=MODEL,
        max_tokens=24,
        system=[{"type": "text", "text": "You are a helpful assistant."}],
        messages=PARIS,
        metadata={"user_id": "u-1"},
        **GREEDY,
    )
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == MODEL
    assert m.content[0].type == "text" and m.content[0].text
    # A thin translation: the same conversation answers the same as on the chat route.
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    assert m.content[0].text == _chat_text(base_url, system + PARIS, 24)
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.stop_sequence is None
    assert _prompt(m.usage) > 10 and 0 < m.usage.output_tokens <= 24


def test_max_tokens_and_stop_sequence(client: anthropic.Anthropic) -> None:
    short = client.messages.create(model=MODEL, max_tokens=3, **GREEDY, messages=PARIS)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    full = client.messages.create(model=MODEL, max_tokens=24, **GREEDY, messages=PARIS)
    word = full.content[0].text.split()[2]  # a word the greedy answer reaches
    m = client.messages.create(
        model=MODEL, max_tokens=24, **GREEDY, messages=PARIS, stop_sequences=["zzz", word]
    )
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == word
    assert word not in m.content[0].text
    assert full.content[0].text.startswith(m.content[0].text)


def test_stream_event_sequence(client: anthropic.Anthropic) -> None:
    kinds: list[str] = []
    text: list[str] = []
    with client.messages.stream(model=MODEL, max_tokens=16, **GREEDY, messages=PARIS) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text.append(event.delta.text)
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert kinds.index("message_delta") == len(kinds) - 2
    assert final.content[0].text == "".join(text) and text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0
    plain = client.messages.create(model=MODEL, max_tokens=16, **GREEDY, messages=PARIS)
    assert plain.content[0].text == final.content[0].text


def test_raw_stream_names_events_and_pings(base_url: str) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": PARIS, "stream": True}
    names, datas = [], []
    with httpx.stream("POST", f"{base_url}/v1/messages", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                names.append(line[6:].strip())
            elif line.startswith("data:"):
                datas.append(json.loads(line[5:]))
    assert "ping" in names
    assert names == [d["type"] for d in datas]  # every event's name is its data's type


def _tool_call(client: anthropic.Anthropic, stream: bool) -> Any:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "extra_body": {"temperature": 0},
        "tools": [WEATHER],
        "tool_choice": {
            "type": "tool",
            "name": "get_weather",
            "disable_parallel_tool_use": True,
        },
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    }
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as s:
        deltas = [
            e.delta.partial_json
            for e in s
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        final = s.get_final_message()
    assert json.loads("".join(deltas)) == final.content[-1].input
    return final


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(client: anthropic.Anthropic, stream: bool) -> None:
    m = _tool_call(client, stream)
    assert m.stop_reason == "tool_use"
    use = m.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert isinstance(use.input, dict) and isinstance(use.input.get("city"), str)
    answer = client.messages.create(
        model=MODEL,
        max_tokens=32,
        **GREEDY,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in m.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"}
                ],
            },
        ],
    )
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert _prompt(answer.usage) > _prompt(m.usage)


def test_tool_choice_none_and_any(client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    none = client.messages.create(
        model=MODEL,
        max_tokens=16,
        **GREEDY,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=ask,
    )
    assert all(b.type == "text" for b in none.content)
    anyone = client.messages.create(
        model=MODEL,
        max_tokens=64,
        **GREEDY,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=ask,
    )
    assert [b.type for b in anyone.content] == ["tool_use"] and anyone.stop_reason == "tool_use"


def test_structured_output(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    m = client.messages.create(
        model=MODEL,
        max_tokens=48,
        messages=[{"role": "user", "content": "The capital of France, as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        **GREEDY,
    )
    value = json.loads(m.content[0].text)
    assert isinstance(value["city"], str) and set(value) == {"city"}


def test_count_tokens_matches_usage(client: anthropic.Anthropic) -> None:
    system = "You are terse."
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=PARIS)
    m = client.messages.create(model=MODEL, max_tokens=1, system=system, messages=PARIS)
    assert counted.input_tokens == _prompt(m.usage) > 0
    with_tools = client.messages.count_tokens(
        model=MODEL, system=system, messages=PARIS, tools=[WEATHER]
    )
    assert with_tools.input_tokens > counted.input_tokens


def test_a_returning_prompt_is_read_from_the_cache(client: anthropic.Anthropic) -> None:
    """As Anthropic (and llama-server) count: the tokens the prompt cache gave are
    `cache_read_input_tokens`, not `input_tokens`; the sum is the prompt, streamed or not."""
    system = "You answer about capitals in one word; this system text is this test's own."
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=PARIS)
    first = client.messages.create(model=MODEL, max_tokens=4, system=system, messages=PARIS)
    again = client.messages.create(model=MODEL, max_tokens=4, system=system, messages=PARIS)
    with client.messages.stream(model=MODEL, max_tokens=4, system=system, messages=PARIS) as stream:
        streamed = stream.get_final_message()
    assert first.usage.cache_creation_input_tokens == 0
    for m in (first, again, streamed):
        assert _prompt(m.usage) == counted.input_tokens
    assert again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens < first.usage.input_tokens
    assert streamed.usage.cache_read_input_tokens > 0


def test_sdk_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        }
                    ],
                }
            ],
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "image" in bad.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-nope", max_tokens=8, messages=PARIS)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.parametrize(
    "patch",
    [
        {"max_tokens": None},
        {"max_tokens": 0},
        {"messages": []},
        {"temperature": 1.5},
        {"top_k": -1},
        {"stop_sequences": ["x"] * 17},
        {"system": [{"type": "image"}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"tools": [{"name": "bad name!", "input_schema": {}}]},
        {"tools": [WEATHER], "tool_choice": {"type": "tool"}},
        {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}},
        {"tool_choice": {"type": "any"}},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"output_config": {"effort": "extreme"}},
        {"thinking": {"type": "enabled"}},
        {"output_config": {"format": {"type": "json_schema", "schema": {"minimum": 1}}}},
        {"max_tokens": 10**7},
    ],
)
def test_invalid_bodies_are_anthropic_400s(base_url: str, patch: dict[str, Any]) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 4, "messages": PARIS, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx.post(f"{base_url}/v1/messages", json=body, timeout=60)
    assert_anthropic_error(r, 400, "invalid_request_error")


def test_malformed_json_and_count_tokens_errors(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/messages",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_anthropic_error(r, 400, "invalid_request_error")
    r = httpx.post(f"{base_url}/v1/messages/count_tokens", json={"model": MODEL}, timeout=30)
    assert_anthropic_error(r, 400, "invalid_request_error")
    r = httpx.post(
        f"{base_url}/v1/messages/count_tokens",
        json={"model": "nope", "messages": PARIS},
        timeout=30,
    )
    assert_anthropic_error(r, 404, "not_found_error")


def test_context_overflow_is_400(base_url: str) -> None:
    long = "word " * 5000
    r = httpx.post(
        f"{base_url}/v1/messages",
        json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": long}]},
        timeout=60,
    )
    assert_anthropic_error(r, 400, "invalid_request_error")
