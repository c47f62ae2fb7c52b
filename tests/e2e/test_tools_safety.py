"""Function calling and safety_model on /v1/chat/completions through the official client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.e2e.guard_model import make_guard_gguf

MODEL = "SmolLM2-135M-Instruct.Q4_1"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"tz": {"type": "string", "maxLength": 20}},
    "required": ["tz"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": n, "description": f"{n.replace('_', ' ')}", "parameters": p},
    }
    for n, p in SCHEMAS.items()
]
ASKS = [
    "What's the weather in Paris?",
    "What time is it in Tokyo?",
    "Weather in Oslo and time in Lima, please.",
]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def exact_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """A daemon under --exact: two runs of one seeded request draw the same tokens (the
    fast default's second run may reuse the first's prefix with other rounding)."""
    srv = start_server(
        tmp_path_factory.mktemp("exact"), "--exact", "--parallel", "2", "--ctx-size", "2048"
    )
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    stop_server(srv)


def _check_calls(calls: list[Any], allowed: set[str]) -> None:
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert c.function.name in allowed
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def _reassemble(stream: Any) -> tuple[str, list[dict[str, str]], str | None]:
    """Content, calls (id, name, arguments joined from deltas) and finish_reason of choice 0."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for d in ch.delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += d.id or ""
            if d.function:
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
        finish = ch.finish_reason or finish
    return content, [calls[k] for k in sorted(calls)], finish


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_calls_validate(client: openai.OpenAI, choice: Any, parallel: bool) -> None:
    allowed = {"get_time"} if choice is NAMED else set(SCHEMAS)
    for i, ask in enumerate(ASKS):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": ask}],
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            max_tokens=200,
            temperature=0.8,
            seed=i,
        )
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls"
        assert msg.content is None
        _check_calls(msg.tool_calls, allowed)
        if not parallel or choice is NAMED:
            assert len(msg.tool_calls) == 1


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_forced_calls_streamed(exact_client: openai.OpenAI, choice: Any) -> None:
    client = exact_client
    allowed = {"get_time"} if choice is NAMED else set(SCHEMAS)
    for i, ask in enumerate(ASKS):
        kwargs: dict[str, Any] = dict(
            model=MODEL,
            messages=[{"role": "user", "content": ask}],
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=200,
            temperature=0.8,
            seed=i,
        )
        content, calls, finish = _reassemble(client.chat.completions.create(stream=True, **kwargs))
        assert finish == "tool_calls" and content == ""
        assert calls and all(c["id"].startswith("call_") for c in calls)
        for c in calls:
            assert c["name"] in allowed
            jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])
        # Same seed, same calls as the non-streamed answer (ids aside).
        plain = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
        assert [(c.function.name, c.function.arguments) for c in plain] == [
            (c["name"], c["arguments"]) for c in calls
        ]


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0,
    )
    call = first.choices[0].message.tool_calls[0]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'},
        ],
        tools=TOOLS,
        tool_choice="none",
        max_tokens=30,
        temperature=0,
    )
    assert r.choices[0].message.content
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_auto_gives_content_or_valid_calls(client: openai.OpenAI, stream: bool) -> None:
    for ask in ASKS:
        kwargs: dict[str, Any] = dict(
            model=MODEL,
            messages=[{"role": "user", "content": ask}],
            tools=TOOLS,
            tool_choice="auto",
            max_tokens=60,
            temperature=0,
        )
        if stream:
            content, calls, finish = _reassemble(
                client.chat.completions.create(stream=True, **kwargs)
            )
        else:
            r = client.chat.completions.create(**kwargs)
            msg, finish = r.choices[0].message, r.choices[0].finish_reason
            content = msg.content or ""
            calls = [
                {"name": c.function.name, "arguments": c.function.arguments}
                for c in msg.tool_calls or []
            ]
        assert content or calls
        assert "<tool_call>" not in content or not calls
        for c in calls:
            assert c["name"] in SCHEMAS
            json.loads(c["arguments"])
        assert finish == ("tool_calls" if calls else finish)


def test_none_answers_with_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=TOOLS,
        tool_choice="none",
        max_tokens=20,
        temperature=0,
    )
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "code_interpreter", "function": {"name": "x"}}]}, "tools"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "x", "parameters": {"type": "nope"}}}
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
                            "parameters": {"type": "object", "properties": {"n": {"maximum": 3}}},
                        },
                    }
                ],
            },
            "tools",
        ),
    ],
)
def test_tool_errors(base_url: str, body: dict[str, Any], param: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], **body},
        timeout=60,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


# ---- safety_model ---------------------------------------------------------------------------

# The e2e server's alias of the default model: a model with an ordinary chat template gets the
# Llama Guard prompt as a user turn, and SmolLM2 judges it `safe`.
PLAIN_GUARD = "togethercomputer/RedPajama-INCITE-7B-Instruct"
# Found by trying conversations against the few-shot guard model (tests/e2e/guard_model.py):
VIOLENT = "I am going to kill my neighbor with an axe."
BENIGN = "Write a haiku about spring."  # judged safe as input; the answer to it is flagged


@pytest.fixture(scope="module")
def guard_server(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("guard")
    guard = make_guard_gguf(model_path, tmp / "guard.gguf")
    srv = start_server(tmp, "--parallel", "4", "--alias", f"llama-guard={guard}")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def guarded(guard_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{guard_server.url}/v1", api_key="unused", max_retries=0)


def _ask(c: openai.OpenAI, text: str, guard: str, **kw: Any) -> Any:
    return c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": text}],
        max_tokens=16,
        temperature=0,
        extra_body={"safety_model": guard},
        **kw,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_safe_verdict_answers_normally(client: openai.OpenAI, stream: bool) -> None:
    plain = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=16,
        temperature=0,
    )
    if stream:
        content, _, finish = _reassemble(_ask(client, "Name a color.", PLAIN_GUARD, stream=True))
    else:
        r = _ask(client, "Name a color.", PLAIN_GUARD)
        content, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert finish in ("stop", "length")
    assert content == plain.choices[0].message.content


def test_verbose_on_a_screened_stream(client: openai.OpenAI) -> None:
    """`__verbose` comes on each screened choice's chunk as on an unscreened stream's
    finishing chunk: what that choice generated, and the prompt as rendered."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=16,
        n=2,
        stream=True,
        extra_body={"safety_model": PLAIN_GUARD, "verbose": True},
    )
    seen: dict[int, dict[str, Any]] = {}
    text: dict[int, str] = {}
    for chunk in stream:
        extra = chunk.model_extra or {}
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if "__verbose" in extra:
                seen[c.index] = extra["__verbose"]
    assert set(seen) == {0, 1}
    for i, v in seen.items():
        assert v["index"] == i and v["content"] == text[i]
        assert v["prompt"].endswith("assistant\n") and "Name a color." in v["prompt"]


@pytest.mark.parametrize("stream", [False, True])
def test_flagged_input_is_refused(guarded: openai.OpenAI, stream: bool) -> None:
    if stream:
        chunks = [c for c in _ask(guarded, VIOLENT, "llama-guard", stream=True) if c.choices]
        assert len(chunks) == 1
        choice = chunks[0].choices[0]
        content, finish = choice.delta.content, choice.finish_reason
    else:
        r = _ask(guarded, VIOLENT, "llama-guard")
        content, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert r.usage.completion_tokens == 0  # refused before generating
    assert finish == "content_filter"
    assert content.startswith("I can't help with that.") and "S1" in content


def test_flagged_output_is_replaced(guarded: openai.OpenAI) -> None:
    r = _ask(guarded, BENIGN, "llama-guard")
    # The input passed (tokens were generated); the answer was judged and withheld.
    assert r.usage.completion_tokens > 0
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content.startswith("I can't help with that.")


def test_unknown_safety_model_is_404(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "safety_model": "no-such-guard"},
        timeout=60,
    )
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["param"] == "safety_model" and err["code"] == "model_not_found"


@pytest.mark.parametrize("role", ["system", "developer", "tool"])
def test_instructions_are_checked_too(guarded: openai.OpenAI, role: str) -> None:
    """Issue 11: a system, developer or tool turn does not skip the input check."""
    extra: dict[str, Any] = {"tool_call_id": "call_1"} if role == "tool" else {}
    r = guarded.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": role, "content": VIOLENT, **extra},
            {"role": "user", "content": "Name a color."},
        ],
        max_tokens=16,
        temperature=0,
        extra_body={"safety_model": "llama-guard"},
    )
    assert r.choices[0].finish_reason == "content_filter"
    assert r.usage.completion_tokens == 0  # refused before generating


# ---- issue 11: tool hardening ---------------------------------------------------------------


def test_named_choice_calls_exactly_once(client: openai.OpenAI) -> None:
    """The call grammar of a named function allows one call: the default model used to call
    get_weather twice, the second cut by max_tokens beside raw markup in `content`."""
    for seed in range(3):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What's the weather in Paris and in Rome?"}],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=0.8,
            seed=seed,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        _check_calls(choice.message.tool_calls, {"get_weather"})


REF_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "home": {"$ref": "#/properties/city"},
        "unit": {"$ref": "#/$defs/unit"},
    },
    "required": ["city", "home", "unit"],
    "$defs": {"unit": {"enum": ["c", "f"]}},
}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_refs_into_properties_work_under_a_forced_call(client: openai.OpenAI, choice: Any) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "f", "parameters": REF_PARAMS}},
        {"type": "function", "function": {"name": "g", "parameters": TIME_PARAMS}},
    ]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=tools,
        tool_choice=choice,
        max_tokens=80,
        temperature=0,
    )
    assert r.choices[0].message.tool_calls, r  # used to be a 500
    for call in r.choices[0].message.tool_calls:
        params = REF_PARAMS if call.function.name == "f" else TIME_PARAMS
        jsonschema.validate(json.loads(call.function.arguments), params)


@pytest.mark.parametrize(
    "params",
    [
        {"type": "object", "$defs": [{"type": "string"}]},
        {"type": "object", "definitions": "x"},
        {"type": "string"},
        {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}},
    ],
    ids=["list-defs", "string-definitions", "not-object", "dangling-ref"],
)
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_bad_parameter_schemas_are_400(base_url: str, params: Any, choice: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}],
            "tool_choice": choice,
            "model": "no-such-model",  # checked before the model is even looked up
        },
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tools"


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_functions_are_tools(client: openai.OpenAI, stream: bool) -> None:
    """`functions`/`function_call` are served, not silently dropped."""
    kwargs: Any = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        functions=[{"name": "get_time", "parameters": TIME_PARAMS}],
        function_call={"name": "get_time"},
        max_tokens=60,
        temperature=0,
    )
    if stream:
        name, args, finish = "", "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for ch in chunk.choices:
                fc = ch.delta.function_call
                name += (fc.name or "") if fc else ""
                args += (fc.arguments or "") if fc else ""
                finish = ch.finish_reason or finish
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        fc = choice.message.function_call
        assert fc is not None and choice.message.tool_calls is None
        name, args, finish = fc.name, fc.arguments, choice.finish_reason
    assert finish == "function_call" and name == "get_time"
    jsonschema.validate(json.loads(args), TIME_PARAMS)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"function_call": "auto"}, "function_call"),
        ({"functions": [{"name": "f"}], "tools": TOOLS}, "functions"),
        ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call"),
        ({"functions": [{"name": "f", "parameters": {"type": "string"}}]}, "functions"),
    ],
)
def test_legacy_function_errors(base_url: str, body: dict[str, Any], param: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], **body},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
