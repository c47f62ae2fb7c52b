"""Fuzzed bodies on every non-OpenAI dialect route: never a 5xx, errors in the route's shape.

One server with a small context (128 tokens) and output cap (6 tokens) bounds what a fuzzed
body can ask for (asking for more is a 400, fuzzed too). It serves the embedded model and a
copy whose template thinks, so thinking fields reach a reasoning template. Bodies are mostly
well-formed with junk mixed in, so validation and the translation behind it are both reached.
`EDGED_FUZZ_SCALE` multiplies the example counts (EXAMPLES per route at scale 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.api.dispatch import is_ollama
from tests.conftest import Server, start_server, stop_server, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a busy machine starts servers slowly

EXAMPLES = 80
SCALE = float(os.environ.get("EDGED_FUZZ_SCALE", "1"))
MODEL = "SmolLM2-135M-Instruct.Q4_1"
THINKER = "thinker"
TEXT = st.text(max_size=40)

# ---- Anthropic Messages and OpenAI Responses ----------------------------------------------

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

anthropic_block = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "tool_use", "tool_result", "image", "thinking", "redacted_thinking", "x"]
        )
    },
    optional={
        "thinking": maybe(TEXT),
        "signature": maybe(st.text(max_size=8)),
        "data": maybe(st.text(max_size=8)),
        "text": maybe(TEXT),
        "id": maybe(st.text(max_size=8)),
        "name": maybe(st.sampled_from(["get_weather", "f", ""])),
        "input": maybe(st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)),
        "tool_use_id": maybe(st.text(max_size=8)),
        "content": maybe(
            TEXT
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)
        ),
        "is_error": maybe(st.booleans()),
    },
)
anthropic_message = st.fixed_dictionaries(
    {
        "role": maybe(st.sampled_from(["user", "assistant"])),
        "content": maybe(TEXT | st.lists(anthropic_block, max_size=3)),
    }
)
anthropic_tool = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["get_weather", "lookup", "bad name"]))},
    optional={"input_schema": maybe(schema), "description": maybe(TEXT), "type": junk},
)
anthropic_body = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, THINKER, THINKER, "claude-x"]), "max_tokens": budget},
    optional={
        "messages": maybe(st.lists(anthropic_message, min_size=1, max_size=3)),
        "system": maybe(
            TEXT
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)
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
        "thinking": maybe(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["enabled", "disabled", "adaptive", "x"])},
                optional={"budget_tokens": budget},
            )
        ),
        "output_config": maybe(
            st.fixed_dictionaries(
                {}, optional={"effort": st.sampled_from(["low", "medium", "high", "max", "x"])}
            )
        ),
    },
)

part = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["input_text", "output_text", "input_image", "refusal", "reasoning_text", "x"]
        )
    },
    optional={"text": maybe(TEXT)},
)
response_item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]),
        "role": maybe(st.sampled_from(["user", "assistant", "system", "developer"])),
        "content": maybe(TEXT | st.lists(part, max_size=2)),
        "call_id": maybe(st.text(max_size=6)),
        "name": maybe(st.sampled_from(["get_weather", "f"])),
        "arguments": maybe(st.sampled_from(['{"city": "Paris"}', "{", "[]"])),
        "output": maybe(TEXT),
        "summary": maybe(st.lists(part, max_size=2)),
        "encrypted_content": maybe(TEXT),
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
    {"input": maybe(TEXT | st.lists(response_item, max_size=3)), "max_output_tokens": budget},
    optional={
        "model": st.sampled_from([MODEL, THINKER, "nope"]),
        "instructions": maybe(TEXT),
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
        "reasoning": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "effort": st.sampled_from(["none", "minimal", "low", "high", "x"]),
                    "summary": st.sampled_from(["auto", "concise", "detailed", "x"]),
                },
            )
        ),
        "background": junk,
        "include": junk,
        "truncation": junk,
        # llama-server's streamed telemetry (prompt_progress events, timings on each event).
        "return_progress": maybe(st.booleans()),
        "timings_per_token": maybe(st.booleans()),
    },
)


# ---- Ollama and llama-server ---------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
ANY = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SMALL_INT = st.integers(-3, 12)
NUMBER = st.one_of(st.floats(-3, 3, allow_nan=False), st.integers(-2, 3))
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "robot", ""])
MESSAGE = st.fixed_dictionaries(
    {"role": ROLE, "content": st.one_of(TEXT, ANY)},
    optional={
        "images": st.lists(st.text(max_size=8), max_size=2),
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {
                    "function": st.fixed_dictionaries(
                        {"name": TEXT, "arguments": st.one_of(ANY, TEXT)}
                    )
                }
            ),
            max_size=2,
        ),
        "tool_name": TEXT,
        "thinking": st.one_of(TEXT, ANY),
    },
)
SCHEMA = st.one_of(
    st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
    st.just({"type": "string", "maxLength": 3}),
    st.just({"type": "integer", "minimum": 1}),
    st.just({"type": "nonsense"}),
    ANY,
)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "temperature": NUMBER,
        "top_k": st.integers(-5, 2000),
        "top_p": NUMBER,
        "min_p": NUMBER,
        "num_predict": SMALL_INT,
        "stop": st.one_of(TEXT, st.lists(TEXT, max_size=20)),
        "seed": st.integers(-5, 2**64),
        "repeat_penalty": NUMBER,
        "repeat_last_n": st.integers(-3, 300),
        "presence_penalty": NUMBER,
        "frequency_penalty": NUMBER,
        "num_ctx": st.integers(-1, 300),
        "mirostat": st.integers(0, 2),
        "num_gpu": ANY,
        "unknown": ANY,
    },
)
TOOL = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["function", "code"]),
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "get_x", "", "bad name"])},
            optional={"parameters": SCHEMA, "description": TEXT},
        ),
    }
)
NAME = st.sampled_from([MODEL, f"{MODEL}:latest", THINKER, THINKER, "nope", ""])
THINK = st.one_of(st.booleans(), st.sampled_from(["low", "medium", "high", "x"]), ANY)
PROMPT = st.one_of(
    TEXT,
    st.lists(st.one_of(st.integers(-5, 60000), TEXT), max_size=6),
    st.lists(st.lists(st.integers(0, 49000), min_size=1, max_size=4), max_size=3),
    ANY,
)


def body(fields: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Bodies with any subset of `fields`, or (sometimes) any JSON value at all."""
    return st.one_of(st.fixed_dictionaries({}, optional=fields), ANY)


ROUTES: dict[str, st.SearchStrategy[Any]] = {
    "/api/chat": body(
        {
            "model": NAME,
            "messages": st.lists(MESSAGE, max_size=3),
            "tools": st.lists(TOOL, max_size=2),
            "format": st.one_of(st.sampled_from(["", "json", "xml"]), SCHEMA),
            "options": st.one_of(OPTIONS, ANY),
            "stream": st.booleans(),
            "keep_alive": st.one_of(st.sampled_from(["5m", "-1", "x", "0"]), st.integers(-1, 10)),
            "think": THINK,
        }
    ),
    "/api/generate": body(
        {
            "model": NAME,
            "prompt": TEXT,
            "suffix": TEXT,
            "system": TEXT,
            "template": TEXT,
            "context": st.lists(st.integers(-3, 60000), max_size=5),
            "raw": st.booleans(),
            "images": st.lists(TEXT, max_size=1),
            "format": st.one_of(st.sampled_from(["", "json"]), SCHEMA),
            "options": st.one_of(OPTIONS, ANY),
            "stream": st.booleans(),
            "think": THINK,
        }
    ),
    "/api/embed": body(
        {
            "model": NAME,
            "input": st.one_of(TEXT, st.lists(TEXT, max_size=3), ANY),
            "dimensions": st.integers(-2, 2000),
            "truncate": ANY,
        }
    ),
    "/api/embeddings": body({"model": NAME, "prompt": st.one_of(TEXT, ANY)}),
    "/api/show": body({"model": NAME, "name": ANY, "verbose": ANY}),
    "/api/copy": body({"source": NAME, "destination": TEXT}),
    "/api/pull": body({"model": st.one_of(TEXT, st.just("a/b:Q4_0")), "stream": st.booleans()}),
    "/completion": body(
        {
            "prompt": PROMPT,
            "n_predict": SMALL_INT,
            "temperature": NUMBER,
            "top_k": st.integers(-3, 100),
            "top_p": NUMBER,
            "min_p": NUMBER,
            "seed": st.integers(-3, 2**64),
            "stop": st.lists(TEXT, max_size=3),
            "n_probs": st.integers(-1, 30),
            "stream": st.booleans(),
            "grammar": st.one_of(TEXT, st.just('root ::= "a"+')),
            "json_schema": SCHEMA,
            "logit_bias": st.one_of(
                st.lists(st.lists(ANY, max_size=3), max_size=3),
                ANY,
                # ids and texts (llama-server tokenizes a text key), numbers and `false`
                st.lists(
                    st.tuples(
                        st.one_of(TEXT, st.integers(-2, 60000), st.just("²")),
                        st.one_of(NUMBER, st.just(False), st.floats(-200, 200)),
                    ).map(list),
                    max_size=4,
                ),
                st.dictionaries(st.one_of(TEXT, st.integers(0, 60000).map(str)), NUMBER),
            ),
            "post_sampling_probs": st.one_of(st.booleans(), ANY),
            "ignore_eos": st.booleans(),
            "return_tokens": st.booleans(),
            "mirostat": st.integers(0, 2),
            "cache_prompt": ANY,
            "return_progress": st.one_of(st.booleans(), ANY),
            "timings_per_token": st.one_of(st.booleans(), ANY),
        }
    ),
    "/infill": body(
        {
            "input_prefix": TEXT,
            "input_suffix": TEXT,
            "input_extra": st.one_of(
                st.lists(st.fixed_dictionaries({"filename": TEXT, "text": TEXT}), max_size=2), ANY
            ),
            "prompt": TEXT,
            "n_predict": SMALL_INT,
            "stream": st.booleans(),
        }
    ),
    "/apply-template": body(
        {
            "model": NAME,
            "messages": st.lists(MESSAGE, max_size=3),
            "chat_template_kwargs": st.one_of(
                st.fixed_dictionaries({}, optional={"enable_thinking": ANY}), ANY
            ),
            "reasoning_effort": st.one_of(st.sampled_from(["none", "low", "high"]), ANY),
            "continue_final_message": st.one_of(st.none(), st.booleans(), ANY),
            "add_generation_prompt": st.one_of(st.booleans(), ANY),
        }
    ),
    "/tokenize": body({"content": st.one_of(TEXT, ANY), "with_pieces": ANY, "add_special": ANY}),
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, thinker_gguf: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz_dialects")
    srv = start_server(
        tmp,
        *("--ctx-size", "128", "--parallel", "4", "--max-tokens-cap", "6"),
        *("--alias", f"{THINKER}={thinker_gguf}"),
        wait=False,
    )
    wait_healthy(srv, timeout=600)
    yield srv
    stop_server(srv)


def _check_shape(path: str, status: int, payload: Any, sent: Any) -> None:
    if path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert payload["type"] == "error" and payload["error"]["type"] != "api_error", payload
    elif path == "/v1/responses":
        assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    elif path == "/api/generate" and not is_ollama(sent):
        assert isinstance(payload["error"]["message"], str)  # the seed dialect's shape
    elif path.startswith("/api/"):
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str), payload
    elif path == "/tokenize":
        assert isinstance(payload["error"]["message"], str)
    else:
        err = payload["error"]
        assert err["code"] == status and isinstance(err["message"], str), payload


def _check_stream(r: httpx.Response) -> None:
    ctype = r.headers.get("content-type", "")
    if "ndjson" in ctype:
        lines = [json.loads(x) for x in r.text.splitlines() if x]
        assert lines and (
            lines[-1].get("done") is True or "error" in lines[-1] or "status" in lines[-1]
        )
    elif "event-stream" in ctype:
        assert "data:" in r.text
        for line in r.text.splitlines():
            if line.startswith("data:") and line[5:].strip().startswith("{"):
                data = json.loads(line[5:])
                assert data.get("type") != "error", data  # nothing failed mid-stream


ROUTES |= {
    "/v1/streams/lookup": body({"conversation_ids": st.one_of(st.lists(TEXT, max_size=5), ANY)}),
    "/v1/messages": anthropic_body,
    "/v1/messages/count_tokens": anthropic_body,
    "/v1/responses": responses_body,
}


@pytest.mark.parametrize("path", list(ROUTES))
def test_fuzzed_bodies_never_5xx(fuzz_server: Server, path: str) -> None:
    client = httpx.Client(base_url=fuzz_server.url, timeout=120)

    @settings(
        max_examples=max(1, int(EXAMPLES * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(ROUTES[path])
    def run(payload: Any) -> None:
        r = client.post(
            path, content=json.dumps(payload), headers={"content-type": "application/json"}
        )
        assert r.status_code < 500, (payload, r.status_code, r.text)
        if r.status_code >= 400:
            _check_shape(path, r.status_code, r.json(), payload)
        else:
            _check_stream(r)

    try:
        run()
    finally:
        client.close()
    assert httpx.get(f"{fuzz_server.url}/health").status_code == 200
