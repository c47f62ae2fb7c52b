"""Reasoning models: a template with <think> splits the thinking into reasoning_content
(message and stream alike), and chat_template_kwargs / reasoning_effort reach the template."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_errors import assert_error

# ChatML, the assistant turn opened inside <think> unless enable_thinking is false (Qwen3-style).
THINKING_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)
# Grammars make the small model's output known: thinking, the closing tag, the answer.
THINK_THEN_ANSWER = 'root ::= "Let me think." "</think>" "\\n\\nParis is the capital."'
ANSWER_ONLY = 'root ::= "Paris is the capital."'
MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def make_thinking_gguf(source: Path, out: Path, template: str = THINKING_TEMPLATE) -> Path:
    """The embedded model with a thinking chat template (gguf-py rewrite)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(source),
            str(out),
            "--chat-template",
            template,
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def thinking_server(
    tmp_path_factory: pytest.TempPathFactory, thinker_gguf: Path
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("thinking")
    srv = start_server(tmp, "--parallel", "4", "--alias", f"thinker={thinker_gguf}")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(thinking_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="unused", max_retries=0)


def _chat(client: openai.OpenAI, grammar: str, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="thinker",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        extra_body={"grammar": grammar, **extra},
    )


def test_thinking_is_split_from_the_answer(client: openai.OpenAI) -> None:
    r = _chat(client, THINK_THEN_ANSWER)
    msg = r.choices[0].message
    assert msg.model_extra["reasoning_content"] == "Let me think."
    assert msg.content == "Paris is the capital."
    assert r.choices[0].finish_reason == "stop"


def test_streamed_reasoning_content_adds_up(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="thinker",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        n=2,
        stream=True,
        extra_body={"grammar": THINK_THEN_ANSWER},
    )
    reasoning, content = ["", ""], ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            reasoning[c.index] += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content[c.index] += c.delta.content or ""
            # A tag is never sent in pieces: no delta carries part of "</think>".
            assert "<" not in ((c.delta.model_extra or {}).get("reasoning_content") or "")
    assert reasoning == ["Let me think."] * 2
    assert content == ["Paris is the capital."] * 2


@pytest.mark.parametrize(
    "extra", [{"chat_template_kwargs": {"enable_thinking": False}}, {"reasoning_effort": "none"}]
)
def test_thinking_turned_off_through_the_template(
    client: openai.OpenAI, extra: dict[str, Any]
) -> None:
    r = _chat(client, ANSWER_ONLY, **extra)
    msg = r.choices[0].message
    assert msg.content == "Paris is the capital."
    assert "reasoning_content" not in (msg.model_extra or {})


def test_model_without_thinking_has_no_reasoning_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=4,
        extra_body={"chat_template_kwargs": {"unused_by_this_template": 1}},
    )
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": 3}, "reasoning_effort"),
    ],
)
def test_bad_reasoning_fields(thinking_server: Server, extra: dict[str, Any], param: str) -> None:
    body = {"model": "thinker", "messages": MSGS, "max_tokens": 2, **extra}
    r = httpx.post(f"{thinking_server.url}/v1/chat/completions", json=body, timeout=60)
    assert_error(r, 400, param)


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kwargs=st.dictionaries(st.text(max_size=12), _any_json, max_size=4) | _any_json,
    effort=st.sampled_from(["none", "low", "high"]) | _any_json,
    stream=st.booleans(),
)
def test_fuzz_reasoning_fields_never_500(
    thinking_server: Server, kwargs: Any, effort: Any, stream: bool
) -> None:
    """Any chat_template_kwargs / reasoning_effort: a 200 or a 4xx in the one error shape."""
    body = {
        "model": "thinker",
        "messages": MSGS,
        "max_tokens": 3,
        "stream": stream,
        "chat_template_kwargs": kwargs,
        "reasoning_effort": effort,
    }
    r = httpx.post(
        f"{thinking_server.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error(r, r.status_code)
    elif stream:
        assert r.text.rstrip().endswith("data: [DONE]")


def test_constrained_answers_are_never_swallowed_as_reasoning(client: openai.OpenAI) -> None:
    """The prompt opened <think>, but a schema or a required call shapes the answer itself."""
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="thinker",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=30,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    msg = r.choices[0].message
    assert json.loads(msg.content or "")["city"] in ("Paris", "Rome")
    assert "reasoning_content" not in (msg.model_extra or {})
    tool = {
        "type": "function",
        "function": {"name": "capital", "parameters": schema},
    }
    r = client.chat.completions.create(
        model="thinker",
        messages=MSGS,  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "capital"}},
        parallel_tool_calls=False,
    )
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["capital"]
    assert json.loads(calls[0].function.arguments)["city"] in ("Paris", "Rome")


def _prefilled(client: openai.OpenAI, prefill: str, grammar: str) -> Any:
    return client.chat.completions.create(
        model="thinker",
        messages=[*MSGS, {"role": "assistant", "content": prefill}],  # type: ignore[list-item]
        max_tokens=40,
        temperature=0,
        extra_body={"grammar": grammar},
    )


def test_a_prefill_meets_a_thinking_model(client: openai.OpenAI) -> None:
    """A final assistant message is continued (a prefill) whatever the template does with
    thinking: its continuation is the answer, and a prefill that opened a thinking block
    (and did not close it) continues the thinking, split from the answer as usual."""
    answer = _prefilled(client, "The capital is", 'root ::= " Paris."')
    msg = answer.choices[0].message
    assert msg.content == " Paris." and "reasoning_content" not in (msg.model_extra or {})

    thinking = _prefilled(client, "<think>\nHmm,", 'root ::= " France." "</think>" "\\n\\nParis."')
    msg = thinking.choices[0].message
    assert (msg.model_extra or {}).get("reasoning_content") == " France."
    assert msg.content == "Paris."

    closed = _prefilled(client, "<think>Done.</think>\n\nIt is", 'root ::= " Paris."')
    assert closed.choices[0].message.content == " Paris."
    assert "reasoning_content" not in (closed.choices[0].message.model_extra or {})
