"""Hypothesis bodies against a real server: Anthropic and Responses never answer with a 5xx.

Bodies are mostly well-formed with junk mixed into any field, so both the validation layer
and the translation behind it are reached. Generation budgets stay tiny to keep this fast.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "SmolLM2-135M-Instruct.Q4_1"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))  # per endpoint

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**7), 10**7)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=12)
)
junk = st.recursive(
    leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=6,
)
# Budgets: a few tokens, or something that is not a small integer at all (never absent:
# no budget means "until the context is full", far too slow for a fuzz run).
budget = st.integers(-2, 4) | st.text(max_size=4) | st.floats(-1, 3) | st.lists(st.integers())


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid shape, sometimes junk."""
    return st.one_of(valid, valid, valid, junk)


schema = st.sampled_from(
    [
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        {"type": "object"},
        {"type": "object", "minProperties": 1},
        {"type": "string", "pattern": "^a+$"},
        {"$ref": "#/nowhere"},
        {},
    ]
)
text = st.text(max_size=40)

anthropic_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "image", "thinking", "x"])},
    optional={
        "text": maybe(text),
        "id": maybe(st.text(max_size=8)),
        "name": maybe(st.sampled_from(["get_weather", "f", ""])),
        "input": maybe(st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)),
        "tool_use_id": maybe(st.text(max_size=8)),
        "content": maybe(
            text
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2)
        ),
        "is_error": maybe(st.booleans()),
    },
)
anthropic_message = st.fixed_dictionaries(
    {
        "role": maybe(st.sampled_from(["user", "assistant"])),
        "content": maybe(text | st.lists(anthropic_block, max_size=3)),
    }
)
anthropic_tool = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["get_weather", "lookup", "bad name"]))},
    optional={"input_schema": maybe(schema), "description": maybe(text), "type": junk},
)
anthropic_body = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, MODEL, "claude-x"]), "max_tokens": budget},
    optional={
        "messages": maybe(st.lists(anthropic_message, min_size=1, max_size=3)),
        "system": maybe(
            text
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2)
        ),
        "stop_sequences": maybe(st.lists(st.text(max_size=4), max_size=3)),
        "temperature": maybe(st.floats(0, 1)),
        "top_p": maybe(st.floats(0.01, 1)),
        "top_k": maybe(st.integers(0, 50)),
        "tools": maybe(st.lists(anthropic_tool, max_size=2)),
        "tool_choice": maybe(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["auto", "any", "tool", "none", "x"])},
                optional={"name": st.sampled_from(["get_weather", "lookup", "zzz"])},
            )
        ),
        "metadata": maybe(st.fixed_dictionaries({"user_id": st.text(max_size=8)})),
        "stream": maybe(st.booleans()),
        "thinking": junk,
    },
)

part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
    optional={"text": maybe(text)},
)
response_item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]),
        "role": maybe(st.sampled_from(["user", "assistant", "system", "developer"])),
        "content": maybe(text | st.lists(part, max_size=2)),
        "call_id": maybe(st.text(max_size=6)),
        "name": maybe(st.sampled_from(["get_weather", "f"])),
        "arguments": maybe(st.sampled_from(['{"city": "Paris"}', "{", "[]"])),
        "output": maybe(text),
    },
)
response_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "function", "web_search", "file_search"])},
    optional={
        "name": maybe(st.sampled_from(["get_weather", "lookup"])),
        "parameters": maybe(schema),
    },
)
responses_body = st.fixed_dictionaries(
    {"input": maybe(text | st.lists(response_item, max_size=3)), "max_output_tokens": budget},
    optional={
        "model": st.sampled_from([MODEL, "nope"]),
        "instructions": maybe(text),
        "tools": maybe(st.lists(response_tool, max_size=2)),
        "tool_choice": maybe(
            st.sampled_from(["auto", "none", "required", "x"])
            | st.fixed_dictionaries(
                {"type": st.sampled_from(["function", "mcp"])},
                optional={"name": st.sampled_from(["get_weather", "zzz"])},
            )
        ),
        "text": maybe(
            st.fixed_dictionaries(
                {
                    "format": st.fixed_dictionaries(
                        {"type": st.sampled_from(["text", "json_object", "json_schema", "x"])},
                        optional={"schema": schema, "name": st.just("n")},
                    )
                }
            )
        ),
        "temperature": maybe(st.floats(0, 2)),
        "top_p": maybe(st.floats(0.01, 1)),
        "parallel_tool_calls": maybe(st.booleans()),
        "metadata": maybe(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)),
        "store": maybe(st.booleans()),
        "previous_response_id": maybe(st.sampled_from(["resp_nope", ""])),
        "stream": maybe(st.booleans()),
        "reasoning": junk,
        "background": junk,
        "include": junk,
        "truncation": junk,
    },
)


def _check(r: httpx.Response, anthropic: bool) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        if anthropic:
            assert body["type"] == "error" and body["error"]["type"] != "api_error", body
        else:
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                assert data.get("type") != "error", data  # nothing failed mid-stream


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=60)


@FUZZ
@given(body=anthropic_body)
def test_fuzz_messages(http: httpx.Client, body: dict[str, Any]) -> None:
    _check(http.post("/v1/messages", json=body), anthropic=True)


@FUZZ
@given(body=anthropic_body)
def test_fuzz_count_tokens(http: httpx.Client, body: dict[str, Any]) -> None:
    _check(http.post("/v1/messages/count_tokens", json=body), anthropic=True)


@FUZZ
@given(body=responses_body)
def test_fuzz_responses(http: httpx.Client, body: dict[str, Any]) -> None:
    _check(http.post("/v1/responses", json=body), anthropic=False)


def test_server_still_healthy(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
