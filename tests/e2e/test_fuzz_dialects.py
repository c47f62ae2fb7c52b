"""Fuzzed Ollama and llama-server bodies: never a 5xx, errors in each dialect's own shape.

A small context (128 tokens) and output cap (6 tokens) bound every generation a fuzzed body can
ask for (asking for more is a 400, which is fuzzed too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.api.ollama.dispatch import is_ollama
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

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
TEXT = st.text(max_size=40)
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
MODEL = st.sampled_from(
    ["SmolLM2-135M-Instruct.Q4_1", "SmolLM2-135M-Instruct.Q4_1:latest", "nope", ""]
)
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
            "model": MODEL,
            "messages": st.lists(MESSAGE, max_size=3),
            "tools": st.lists(TOOL, max_size=2),
            "format": st.one_of(st.sampled_from(["", "json", "xml"]), SCHEMA),
            "options": st.one_of(OPTIONS, ANY),
            "stream": st.booleans(),
            "keep_alive": st.one_of(st.sampled_from(["5m", "-1", "x", "0"]), st.integers(-1, 10)),
            "think": ANY,
        }
    ),
    "/api/generate": body(
        {
            "model": MODEL,
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
        }
    ),
    "/api/embed": body(
        {
            "model": MODEL,
            "input": st.one_of(TEXT, st.lists(TEXT, max_size=3), ANY),
            "dimensions": st.integers(-2, 2000),
            "truncate": ANY,
        }
    ),
    "/api/embeddings": body({"model": MODEL, "prompt": st.one_of(TEXT, ANY)}),
    "/api/show": body({"model": MODEL, "name": ANY, "verbose": ANY}),
    "/api/copy": body({"source": MODEL, "destination": TEXT}),
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
            "logit_bias": st.one_of(st.lists(st.lists(ANY, max_size=3), max_size=3), ANY),
            "ignore_eos": st.booleans(),
            "return_tokens": st.booleans(),
            "mirostat": st.integers(0, 2),
            "cache_prompt": ANY,
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
    "/apply-template": body({"messages": st.lists(MESSAGE, max_size=3)}),
    "/tokenize": body({"content": st.one_of(TEXT, ANY), "with_pieces": ANY, "add_special": ANY}),
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("fuzz_dialects"),
        "--ctx-size",
        "128",
        "--parallel",
        "4",
        "--max-tokens-cap",
        "6",
    )
    yield srv
    stop_server(srv)


def _check_shape(path: str, status: int, payload: Any, sent: Any) -> None:
    if path == "/api/generate" and not is_ollama(sent):
        assert isinstance(payload["error"]["message"], str)  # the seed dialect's shape
    elif path.startswith("/api/"):
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str), payload
    elif path == "/tokenize":
        assert isinstance(payload["error"]["message"], str)
    else:
        err = payload["error"]
        assert err["code"] == status and isinstance(err["message"], str), payload


@pytest.mark.parametrize("path", list(ROUTES))
def test_fuzzed_bodies_never_5xx(fuzz_server: Server, path: str) -> None:
    client = httpx.Client(base_url=fuzz_server.url, timeout=120)

    @settings(
        max_examples=25,
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
            return
        ctype = r.headers.get("content-type", "")
        if "ndjson" in ctype:
            lines = [json.loads(x) for x in r.text.splitlines() if x]
            assert lines and (
                lines[-1].get("done") is True or "error" in lines[-1] or "status" in lines[-1]
            )
        elif "event-stream" in ctype:
            assert "data:" in r.text

    try:
        run()
    finally:
        client.close()
    assert httpx.get(f"{fuzz_server.url}/health").status_code == 200
